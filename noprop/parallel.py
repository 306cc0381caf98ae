"""Training over processes and machines with torch.distributed: every collective lives here.

**Layout.** A world of W ranks is G block groups x D data shards (W = G * D). A method trained as
B independent blocks (``Method.num_blocks``: NoProp-DT's T blocks; 1 for every one-network method)
has its blocks split into G contiguous shares, one per group; within a group the D shards split each
global batch (``--batch-size`` is the global batch, so a run means the same at any worker count).

- Block gradients are averaged over the D shards of their group; the parameters every block shares
  (NoProp-DT's head and a learned embedding) over all W ranks. A one-network method (G = 1) is
  wrapped in torch's DistributedDataParallel over its D shards.
- BatchNorm layers see the whole global batch: with D > 1 they are synchronised over the shards
  (``SyncBatchNorm1d``, which works on CPU/gloo, where torch's own is CUDA-only). With
  ``--batchnorm-stats local`` each shard normalises by its own share of the batch instead, as torch's
  DistributedDataParallel does unless told otherwise: no collective inside the forward pass, but the
  update then depends on the worker count (the saved running statistics are rank 0's).
- No images travel: every rank loads the data and rebuilds the epoch's order from the seed.
- With one group (G > 1) ranks hold only their blocks; at the end of each epoch rank 0 gathers every
  block and writes the checkpoint a single process would write, so any kind of run resumes or
  evaluates any other's.
- Each step also all-reduces a status word ("some rank's loss was NaN/inf"), so a diverging rank
  stops all of them before any update.
- The per-step sums (gradients, DDP's buckets through a comm hook, BatchNorm statistics, the status
  word) of ranks that share a machine go through shared memory (``hostsum.HostSum``), not through
  gloo's TCP on the loopback address; between machines, and with ``NOPROP_HOST_SUM=0``, through
  the backend.

**Choosing G.** ``--block-groups`` sets it; by default the divisor G of W (G <= B) that balances the
blocks best (B / (G * ceil(B / G)), the share of time no group idles), and among equally balanced
choices the largest, since whole blocks need no per-step gradient averaging. NoProp-DT with T = 10:
2 workers -> 2 x 1 (block-parallel), 4 -> 2 x 2, 5 -> 5 x 1; a one-network method: 1 x W.

**Launch.** ``noprop train --workers N`` starts N processes on this machine through torch's elastic
launcher (``torch.distributed.launcher.api.elastic_launch``, c10d rendezvous on 127.0.0.1), or
``torchrun --nproc-per-node N -m noprop train ...``, on one machine or several. Under
``--max-restarts K`` a failed rank makes the agent restart the whole group, which resumes from the
last checkpoint on its own. Every collective has a timeout (``NOPROP_DIST_TIMEOUT``, seconds,
default 300) after which the survivors raise instead of hanging.
"""

from __future__ import annotations

import datetime
import inspect
import logging
import math
import os
import socket
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .device import backend, resolve
from .errors import ConfigError, DistributedError
from .hostsum import HostSum


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    groups: int = 1   # G block groups; world // groups data shards in each

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def shards(self) -> int:
        return self.world // self.groups

    @property
    def group(self) -> int:
        return self.rank // self.shards

    @property
    def shard(self) -> int:
        return self.rank % self.shards


SINGLE = Dist()


def owned_blocks(num_blocks: int, groups: int, group: int) -> list[int]:
    """Blocks (1-based) of one group: contiguous, as even as possible, earlier groups take the extra."""
    base, extra = divmod(num_blocks, groups)
    start = group * base + min(group, extra)
    return list(range(start + 1, start + base + (group < extra) + 1))


def choose_groups(num_blocks: int, world: int, requested: int | None = None) -> int:
    """G for a world of W ranks (see the module docstring); `requested` (--block-groups) is checked."""
    if requested is not None:
        if requested < 1 or world % requested:
            raise ConfigError(f"--block-groups: {requested} does not divide the {world} workers into equal "
                              "data shards; choose a divisor of the worker count")
        if requested > num_blocks:
            raise ConfigError(f"--block-groups: {requested} groups for {num_blocks} block(s); use at most "
                              f"{num_blocks}")
        return requested
    options = [g for g in range(1, min(world, num_blocks) + 1) if world % g == 0]
    return max(options, key=lambda g: (num_blocks / (g * math.ceil(num_blocks / g)), g))


def check_layout(cfg, num_blocks: int, d: Dist) -> None:
    """Refuse configurations a layout cannot run, naming the option."""
    if not d.active:
        return
    if cfg.batch_size % d.shards:
        raise ConfigError(f"--batch-size: the global batch of {cfg.batch_size} does not split into "
                          f"{d.shards} equal data shards; use a multiple of {d.shards}")
    if cfg.batch_size // d.shards < 2:
        raise ConfigError(f"--batch-size: {cfg.batch_size} over {d.shards} shards leaves fewer than 2 "
                          "examples per rank")
    if cfg.order == "random" and d.groups > 1:
        raise ConfigError("--order: random draws one block per batch for the whole model, which leaves all "
                          "but one block group idle; use paper or all with block groups, or --block-groups 1")


def timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get("NOPROP_DIST_TIMEOUT", "300")))


def init_from_env(device_name: str = "auto", num_blocks: int = 1, groups: int | None = None) -> Dist:
    """Join the process group described by torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT); a plain single process when they are absent. NCCL when the ranks train on CUDA
    (each on GPU LOCAL_RANK), gloo on CPU.

    Each elastic restart gets a store prefix of its own: without it a restarted rank can read the
    previous attempt's addresses from the agent's store and fail to connect."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return SINGLE
    if not dist.is_initialized():
        store, rank, world = next(dist.rendezvous("env://", timeout=timeout()))
        store = dist.PrefixStore(f"noprop/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
        dist.init_process_group(backend(resolve(device_name)), store=store, rank=rank, world_size=world,
                                timeout=timeout())
    world = dist.get_world_size()
    return Dist(dist.get_rank(), world, choose_groups(num_blocks, world, groups))


def restart_count() -> int:
    """How many times the elastic agent has restarted this job (0 outside one)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def shutdown(wait: bool = True) -> None:
    """Leave the process group together: ranks > 0 finish training before rank 0 has evaluated and
    written the result, and a rank tearing down its connections while a peer still holds them can
    abort inside gloo. So every rank first meets the others at a barrier (with a long timeout:
    rank 0 may be evaluating), then all destroy the group."""
    if dist.is_initialized():
        if wait:
            long_wait()
        for hs in _host_sums.values():
            hs.close()
        _host_sums.clear()
        dist.destroy_process_group()


def long_wait() -> None:
    """A barrier that waits as long as rank 0 may take alone (validation, evaluation, writing)."""
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(hours=6))
        else:
            dist.barrier()
    except RuntimeError as e:
        raise DistributedError(f"another worker stopped while this one waited ({e})") from e


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


# ------------------------------------------------------------------------------------------------
_host_sums: dict = {}  # process group (None: the world) -> its HostSum, where the ranks share a machine


def sum_(t: torch.Tensor, group=None) -> None:
    """Sum t over the group's ranks in place (blocking): through shared memory where the group has
    a HostSum (noprop/hostsum.py), else through the backend's all-reduce."""
    hs = _host_sums.get(group)
    if hs is None or not hs.sum_(t):
        dist.all_reduce(t, group=group)


def _start_sum(t: torch.Tensor, group=None):
    """Start summing t over the group's ranks in place: through shared memory it is done at once
    (returns None); else an asynchronous all-reduce (returns its work, to wait on)."""
    hs = _host_sums.get(group)
    if hs is not None and hs.sum_(t):
        return None
    return dist.all_reduce(t, group=group, async_op=True)


def _host_sum_hook(hs, bucket):  # no return annotation: DDP checks it, and these are strings here
    """DistributedDataParallel's communication through a HostSum: the bucket's mean over the ranks,
    computed as DDP's own hook computes it (each rank's share divided by the world, then summed)."""
    buf = bucket.buffer()
    if not hs.sum_(buf, divide_by=hs.world):
        buf.div_(hs.world)
        dist.all_reduce(buf, group=hs.group)
    fut = torch.futures.Future()
    fut.set_result(buf)
    return fut


class _SyncBatchNorm(torch.autograd.Function):
    """Batch normalisation of x (N_r x C on rank r) by the statistics of the whole global batch
    (N = sum of N_r), forward and backward written out, two sums over the group in all.

    Forward: each rank's mean m_r and variance v_r (float32, two passes), summed as float64
    n_r m_r, n_r (v_r + m_r^2), n_r, so mean = sum n_r m_r / N and var = E[x^2] - mean^2 keep
    float32's precision however far the mean is from zero; y = (x - mean) / sqrt(var + eps) * w + b.
    Backward (the gradient through the global mean and variance, as one process would get it):
        dx_i = w / sqrt(var + eps) * (dy_i - sum_j dy_j / N - (x_i - mean) / (var + eps) * sum_j dy_j (x_j - mean) / N)
    with the two sums over j taken over the global batch (the second sum over the group); dw and db
    are this rank's own sums (DistributedDataParallel averages them like every gradient). Autograd
    through the elementwise formula in float64 cost the backprop baseline (60 layers, one process,
    batch 64, bf16, the sums stubbed out) 54-55 ms a step over BatchNorm1d; written out, 21-24 ms.
    One layer's forward and backward (batch 64, fp32, sums stubbed out, 256 / 128 channels): 490-510
    / 375 us with torch.var_mean's statistics, 385-395 / 320-335 us with the two-pass ones; torch's
    fused BatchNorm1d 250 / 90 us. What is left is mostly Python's cost of the ~40 small operations."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, group):
        xf = x.float()
        n, c = xf.shape
        # This rank's mean and variance in two passes (sum, then the sum of squared deviations):
        # as exact as torch.var_mean and 6x faster on a 64 x 256 batch (var_mean's CPU kernel
        # walks dim 0 one element at a time: 126 us against 19).
        mean_r = xf.sum(0).div_(n)
        dev = xf - mean_r
        var_r = (dev * dev).sum(0).div_(n)
        stats = torch.cat([mean_r, var_r, mean_r.new_ones(1)]).double()
        stats[c:2 * c].addcmul_(stats[:c], stats[:c])  # E[x^2] = var + mean^2, in float64
        stats.mul_(n)  # n m, n E[x^2], n
        sum_(stats, group)
        total = stats[2 * c]
        mean = stats[:c] / total
        var = (stats[c:2 * c] / total - mean * mean).clamp(min=0)
        invstd = torch.rsqrt(var + eps).float()
        xmu = xf - mean.float()
        scale = invstd * weight if weight is not None else invstd
        y = torch.addcmul(bias, xmu, scale) if bias is not None else xmu * scale
        ctx.save_for_backward(xmu, invstd, weight)
        ctx.total, ctx.group, ctx.dtype, ctx.has_bias = float(total), group, x.dtype, bias is not None
        count = stats[2 * c:]
        ctx.mark_non_differentiable(mean, var, count)
        return y.to(x.dtype), mean, var, count

    @staticmethod
    def backward(ctx, dy, _mean, _var, _count):
        xmu, invstd, weight = ctx.saved_tensors
        dyf = dy.float()
        c = xmu.shape[1]
        sums = torch.cat([dyf.sum(0), (dyf * xmu).sum(0)])
        grad_w = sums[c:] * invstd if weight is not None else None
        grad_b = sums[:c].clone() if ctx.has_bias else None
        total = sums.double()
        sum_(total, ctx.group)
        mean_dy = (total[:c] / ctx.total).float()
        mean_dy_xmu = (total[c:] / ctx.total).float()
        dx = (dyf - mean_dy).sub_(xmu * (invstd * invstd * mean_dy_xmu))
        dx.mul_(invstd * weight if weight is not None else invstd)
        return dx.to(ctx.dtype), grad_w, grad_b, None, None


class SyncBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the whole global batch, summed over a
    process group, so gradients flow through the other ranks' share of the mean and variance as
    they would in one process (_SyncBatchNorm). One sum per layer and pass: every collective is a
    point where the ranks wait for each other, and the backprop baseline has 60 of these layers.
    Same parameters, buffers and state_dict keys as BatchNorm1d; in eval mode it is BatchNorm1d.
    (torch's SyncBatchNorm is CUDA-only.)"""

    group = None

    @classmethod
    def convert(cls, module: nn.Module, group) -> nn.Module:
        for child in module.children():
            if type(child) is nn.BatchNorm1d:
                child.__class__ = cls
                child.group = group
            else:
                cls.convert(child, group)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.group is None:
            return super().forward(x)
        y, mean, var, count = _SyncBatchNorm.apply(x, self.weight, self.bias, self.eps, self.group)
        if self.track_running_stats:
            with torch.no_grad():
                total = float(count)
                self.num_batches_tracked += 1
                mom = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - mom).add_(mean.float(), alpha=mom)
                self.running_var.mul_(1 - mom).add_((var * total / (total - 1)).float(), alpha=mom)
        return y


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.zeros(0)


def _unflat_into_grads(flat: torch.Tensor, params: list[nn.Parameter]) -> None:
    """Set each parameter's gradient from its slice of `flat` (in logical element order), in the
    parameter's own memory layout: the fused optimizers walk parameter and gradient as flat memory,
    so a contiguous gradient for a channels_last weight would pair the wrong elements."""
    offset = 0
    for p in params:
        p.grad = torch.empty_like(p).copy_(flat[offset:offset + p.numel()].view(p.shape))
        offset += p.numel()


class Collectives:
    """The per-step and per-epoch communication of one rank in a G x D layout."""

    def __init__(self, d: Dist, model, device: torch.device, batchnorm_stats: str = "global"):
        self.d, self.model, self.device = d, model, device
        # every rank creates every group's subgroups, in the same order (torch requires it): one for
        # the gradients (DDP's or ours) and one for BatchNorm's statistics, whose all-reduces run
        # inside the backward pass; on one communicator the two could pair up out of order
        self.shard_group = bn_group = None
        for g in range(d.groups):
            ranks = list(range(g * d.shards, (g + 1) * d.shards))
            pgs = [dist.new_group(ranks, timeout=timeout()) for _ in range(2)] if d.shards > 1 else [None, None]
            if g == d.group:
                self.shard_group, bn_group = pgs
        self.shared = model.shared_parameters()
        if d.shards > 1 and batchnorm_stats == "global":
            SyncBatchNorm1d.convert(model, bn_group)
        if device.type == "cpu":
            self._host_sums(model, bn_group if batchnorm_stats == "global" else None)

    def _host_sums(self, model, bn_group) -> None:
        """Shared-memory sums for the groups whose ranks share this machine (each group's ranks
        set theirs up together; hostsum.HostSum.create says where it cannot be used)."""
        wait = timeout().total_seconds()
        grads = sum(p.numel() for p in model.parameters()) * 4
        flags = 2 * 4
        _host_sums[None] = HostSum.create(dist.group.WORLD, sum(p.numel() for p in self.shared) * 4 + flags, wait)
        if self.d.shards > 1:
            _host_sums[self.shard_group] = HostSum.create(self.shard_group, grads, wait)
            widths = [m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
            if bn_group is not None and widths:  # sums of x and x^2 and the count, float64
                _host_sums[bn_group] = HostSum.create(bn_group, (2 * max(widths) + 1) * 8, wait)
        for group in [g for g, hs in _host_sums.items() if hs is None]:
            del _host_sums[group]

    def wrap(self, model):
        """The module whose forward computes the loss: DDP over the shards for a one-network method."""
        if self.d.shards > 1 and model.num_blocks == 1:
            from torch.nn.parallel import DistributedDataParallel
            # gradients as views of DDP's buckets: no copy into the bucket and back each step (+6%
            # images/s for ct at 2 workers, fp32, A/B alternated); DDP gives the views the
            # parameters' strides, so the fused optimizers' flat walk stays paired (match_layout)
            # buffers (BatchNorm's running statistics) are not sent from rank 0 before each forward:
            # synchronised BatchNorm keeps them equal, and local statistics are rank 0's by design.
            # torch 2.13 renamed the option (the old name still works but warns in every run)
            no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                              inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False})
            ddp = DistributedDataParallel(model, process_group=self.shard_group, **no_buffer_sync,
                                          find_unused_parameters=type(model).find_unused_parameters,
                                          gradient_as_bucket_view=True)
            if self.shard_group in _host_sums:
                ddp.register_comm_hook(_host_sums[self.shard_group], _host_sum_hook)
            return ddp
        return model

    # --- every step ------------------------------------------------------------------------------
    def backward(self, loss, blocks: list[int], bad: bool) -> bool:
        """The distributed half of a training step: back-propagate this rank's loss (a method.Loss;
        None when this rank idles at this step), then average the gradients, the shared parameters'
        over every rank together with the status word, each of `blocks`' over its group's shards.
        Where the loss splits (Loss.shared_part, Loss.block_part), the shared gradients' sum
        overlaps block_part's backward pass. Returns True if any rank's loss was non-finite (bad:
        this rank's); then no rank may update."""
        split = loss is not None and loss.block_part is not None and bool(self.shared)
        if split:
            loss.shared_part.backward()
        elif loss is not None:
            loss.total.backward()
        shared = self.start_shared(contributed=loss is not None, bad=bad)
        if split:
            loss.block_part.backward()
        pending = [self.average_block(t) for t in blocks] if self.model.num_blocks > 1 else []
        for h in pending:
            self.finish_block(h)
        return self.finish_shared(shared)

    def start_shared(self, contributed: bool, bad: bool):
        """All-reduce (async) the shared parameters' gradients and two counters: ranks that
        diverged, ranks that contributed. Returns a handle for finish_shared."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.shared]
        flags = torch.tensor([float(bad), float(contributed)], device=self.device)
        flat = torch.cat([_flat(grads).to(self.device), flags])
        return flat, _start_sum(flat)

    def finish_shared(self, handle) -> bool:
        """Wait for start_shared's all-reduce, set the averaged gradients; True if any rank diverged."""
        flat, work = handle
        if work is not None:
            work.wait()
        if flat[-2] > 0:
            return True
        if self.shared:
            _unflat_into_grads(flat[:-2] / flat[-1].clamp(min=1), self.shared)
        return False

    def average_block(self, t: int):
        """Start averaging block t's gradients over this group's shards (async); None when D = 1."""
        if self.d.shards == 1:
            return None
        params = self.model.block_parameters(t)
        flat = _flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
        return params, flat, _start_sum(flat, self.shard_group)

    def finish_block(self, handle) -> None:
        if handle is None:
            return
        params, flat, work = handle
        if work is not None:
            work.wait()
        _unflat_into_grads(flat / self.d.shards, params)

    # --- every epoch -----------------------------------------------------------------------------
    def check_in_sync(self, owned: list[int]) -> None:
        """Parameters that must be bit-identical across ranks are: the shared ones everywhere, a
        block's over its group's shards. Cheap checksums, every epoch; a difference is a bug."""
        def checksum(params):
            return float(sum(p.detach().double().sum() for p in params)) if params else 0.0
        mine = (checksum(self.shared), {t: checksum(self.model.block_parameters(t)) for t in owned})
        every = gather(self.d, (self.d.group, mine))
        if any(s != every[0][1][0] for _, (s, _) in every):
            raise DistributedError(f"the shared parameters differ between ranks ({[s for _, (s, _) in every]}); "
                                   "this is a bug")
        for g, (_, blocks) in every:
            peer = next(b for gg, (_, b) in every if gg == g)
            if blocks != peer:
                raise DistributedError(f"block parameters differ between the shards of group {g}; this is a bug")

    def gather_blocks(self, owned: list[int], block_opts: dict, match_layout) -> None:
        """Bring every block (weights, BatchNorm statistics, optimizer state) to rank 0, which then
        holds the whole model, validates it and writes the checkpoint. Only shard 0 of each group
        sends (its shards hold the same blocks)."""
        if self.d.groups == 1:
            return
        mine = {}
        if self.d.shard == 0:
            mine = {t: (self._block_state(t), block_opts[t].state_dict()) for t in owned}
        parts = [None] * self.d.world if self.d.main else None
        dist.gather_object(mine, parts, dst=0)
        if self.d.main:
            for part in parts:
                for t, (block_state, opt_state) in part.items():
                    self._load_block_state(t, block_state)
                    block_opts[t].load_state_dict(opt_state)
                    match_layout(block_opts[t])

    def _block_state(self, t: int) -> dict:
        params, buffers = {id(p) for p in self.model.block_parameters(t)}, self._buffers_of(t)
        return {n: v.detach() for n, v in self._named_state() if id(v) in params or n in buffers}

    def _named_state(self):
        return list(self.model.named_parameters()) + list(self.model.named_buffers())

    def _buffers_of(self, t: int) -> set[str]:
        """Names of the buffers (BatchNorm statistics) in the modules that hold block t's parameters."""
        params = {id(p) for p in self.model.block_parameters(t)}
        names = set()
        for mname, module in self.model.named_modules():
            if any(id(p) in params for p in module.parameters(recurse=False)):
                names.update(f"{mname}.{b}" if mname else b for b, _ in module.named_buffers(recurse=False))
        return names

    def _load_block_state(self, t: int, state: dict) -> None:
        own = dict(self._named_state())
        with torch.no_grad():
            for n, v in state.items():
                own[n].copy_(v)


# ------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(entrypoint, args: tuple, nproc: int, threads: int | None = None, max_restarts: int = 0) -> int:
    """Run entrypoint(*args) in `nproc` processes on this machine with torch's elastic launcher;
    returns an exit code. If a process fails or is killed, the agent stops the others and, while
    restarts remain, starts them all again (the entrypoint resumes from the last checkpoint)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by the workers
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, rdzv_backend="c10d",
                          rdzv_endpoint=f"127.0.0.1:{free_port()}", run_id=f"noprop-{os.getpid()}",
                          max_restarts=max_restarts, monitor_interval=0.1)
    try:
        elastic_launch(config, entrypoint)(*args)
    except ChildFailedError as e:
        rank, failure = next(iter(sorted(e.failures.items())))
        if failure.exitcode < 0:
            how = f"was killed by signal {-failure.exitcode}"
        else:
            how = f"exited with code {failure.exitcode}"
            message = failure.error_file_data.get("message") if isinstance(failure.error_file_data, dict) else None
            if isinstance(message, dict):
                message = message.get("message")
            if message and message != "<NONE>":
                how += f": {message}"
        restarts = f" after {max_restarts} restart(s)" if max_restarts else ""
        print(f"noprop: error: worker {rank} {how}; the other workers were stopped{restarts}. The last "
              "completed epoch's checkpoint is kept: rerun with --resume.", file=sys.stderr)
        return 2 if failure.exitcode == 2 else 1
    return 0
