"""Block-parallel NoProp-DT over processes and machines with torch.distributed.

NoProp-DT's blocks train independently, so they can live on different processes: rank r owns a
contiguous share of blocks 1..T and trains only those. No images travel: every rank loads the data
itself and rebuilds the same data order from the seed. What the blocks share -- the output head
and a learned embedding -- stays identical on every rank because their gradients are averaged
(all-reduce) at every step before each rank takes the same optimizer step. One extra element in
that all-reduce carries "some rank's loss was NaN/inf", so a diverging rank stops all of them at
once. At the end of each epoch the blocks are gathered on rank 0, which validates and writes the
same checkpoint a single process would write (so either kind of run resumes or evaluates the
other's checkpoint).

Launch:
- one machine:  ``noprop train --workers N ...`` (spawns N processes, gloo on 127.0.0.1; or nccl
  when training on CUDA), or ``torchrun --nproc-per-node N -m noprop train ...``.
- several:      ``torchrun --nnodes M --node-rank I --nproc-per-node N --master-addr HOST
  --master-port PORT -m noprop train --out SHARED_DIR ...`` on every machine. Every machine needs
  the data (bundled MNIST needs nothing), and --resume needs the run folder on a shared file system
  (rank 0 writes it; every rank reads it when resuming).

A rank that dies makes the others stop: under ``--workers`` the launcher ends the rest at once;
under torchrun its agent does; and every collective has a timeout (``NOPROP_DIST_TIMEOUT``,
seconds, default 120) after which the survivors raise instead of hanging.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Dist()


def owned_blocks(T: int, world: int, rank: int) -> list[int]:
    """Blocks (1-based) of one rank: contiguous, as even as possible, earlier ranks take the extra."""
    base, extra = divmod(T, world)
    start = rank * base + min(rank, extra)
    return list(range(start + 1, start + base + (rank < extra) + 1))


def check_parallel(cfg, world: int) -> None:
    """Refuse configurations that block-parallel training cannot run, naming the option."""
    from .config import ConfigError
    if world < 2:
        return
    if cfg.method != "dt":
        raise ConfigError(f"--workers: block-parallel training is for NoProp-DT; {cfg.method} trains one network")
    if cfg.order == "random":
        raise ConfigError("--order: random draws one block per batch for the whole model, which leaves all "
                          "but one worker idle; use paper or all with --workers")
    if world > cfg.T:
        raise ConfigError(f"--workers: {world} workers for {cfg.T} blocks; use at most T")


def timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get("NOPROP_DIST_TIMEOUT", "120")))


def init_from_env(device_name: str = "auto") -> Dist:
    """Join the process group described by torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT); a plain single process when they are absent. NCCL when the ranks train on CUDA
    (each on GPU LOCAL_RANK), gloo on CPU."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return SINGLE
    if not dist.is_initialized():
        from .device import backend, resolve
        dist.init_process_group(backend(resolve(device_name)), timeout=timeout())
    return Dist(dist.get_rank(), dist.get_world_size())


def shutdown(wait: bool = True) -> None:
    """Leave the process group together: ranks > 0 finish training before rank 0 has evaluated and
    written the result, and a rank tearing down its connections while a peer still holds them can
    abort inside gloo. So every rank first meets the others at a barrier (with a long timeout:
    rank 0 may be evaluating), then all destroy the group."""
    if dist.is_initialized():
        if wait:
            try:
                if dist.get_backend() == "gloo":
                    dist.monitored_barrier(timeout=datetime.timedelta(hours=6))
                else:
                    dist.barrier()
            except RuntimeError:
                pass  # a peer is gone already; nothing left to wait for
        dist.destroy_process_group()


def gather(d: Dist, obj) -> list:
    """Every rank's obj, on every rank."""
    if not d.active:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def agree(d: Dist, error: str | None) -> None:
    """Every rank states whether it failed; if any did, all raise with the first message. Used at
    points where one rank alone can fail (the run folder, loading a checkpoint)."""
    for r, e in enumerate(gather(d, error)):
        if e:
            raise DistributedError(e if r == d.rank else f"rank {r}: {e}")


class DistributedError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, argv: list[str], threads: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    from .cli import main
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # leave at once, skipping interpreter teardown (where gloo's threads can abort the process);
    # a non-zero exit makes the launcher stop the other ranks
    os._exit(code or 0)


def launch(world: int, argv: list[str], threads: int | None = None) -> int:
    """Run `noprop <argv>` in `world` processes on this machine; returns an exit code. If one
    process fails or is killed, the others are terminated and the failure is reported."""
    import torch.multiprocessing as mp

    threads = threads or max(1, (os.cpu_count() or 1) // world)
    try:
        mp.spawn(_worker, args=(world, free_port(), argv, threads), nprocs=world, join=True)
    except mp.ProcessExitedException as e:
        how = f"was killed by signal {-e.exit_code}" if e.exit_code < 0 else f"exited with code {e.exit_code}"
        print(f"noprop: error: worker {e.error_index} {how}; the other workers were stopped. The last "
              "completed epoch's checkpoint is kept: rerun with --resume.", file=sys.stderr)
        return 2 if e.exit_code > 0 else 1
    except mp.ProcessRaisedException as e:
        print(f"noprop: error: a worker failed:\n{e}", file=sys.stderr)
        return 1
    return 0
