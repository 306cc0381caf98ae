"""The shared-memory sum (noprop/hostsum.py) with real processes joined by gloo on 127.0.0.1: the
same bits as gloo's all-reduce on every rank, the fall-backs, no file left in /dev/shm, a clear
error when a rank never arrives, and the trainer's collectives actually using it."""

import os
import platform
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from noprop import hostsum
from noprop.parallel import free_port

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="the shared-memory sum is used on x86-64 only (its memory order)")


def _join(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _run(fn, world, *args):
    """Run fn(rank, world, queue, *args) in `world` processes; return each rank's queued result."""
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world, port, q, args)) for r in range(world)]
    for p in procs:
        p.start()
    out = dict(q.get() for _ in procs)
    for p in procs:
        p.join(60)
    errors = [v for v in out.values() if isinstance(v, str) and v.startswith("Traceback")]
    assert not errors, errors[0]
    return [out[r] for r in range(world)]


def _entry(fn, rank, world, port, q, args):
    try:
        _join(rank, world, port)
        q.put((rank, fn(rank, world, *args)))
        dist.destroy_process_group()
    except BaseException:
        q.put((rank, traceback.format_exc()))


def _sums(rank, world):
    before = set(os.listdir(hostsum.SHM))
    hs = hostsum.HostSum.create(dist.group.WORLD, capacity=4096 * 8, timeout_s=60)
    dist.barrier()
    leftover = [f for f in set(os.listdir(hostsum.SHM)) - before if f.startswith("noprop-sum")]
    results = []
    g = torch.Generator().manual_seed(rank)
    for dtype, n, divide in [(torch.float32, 1, 1), (torch.float32, 4096, 1), (torch.float64, 33, 1),
                             (torch.bfloat16, 1000, 1), (torch.float32, 4096, world), (torch.float32, 4096 * 2 + 1, 1)]:
        x = torch.randn(n, generator=g).to(dtype)
        ref = x / divide  # DistributedDataParallel's own hook: divide, then all-reduce
        dist.all_reduce(ref)
        used = hs.sum_(x, divide_by=divide)
        if not used:
            dist.all_reduce(x)
        # plain numbers back to the parent: a queued tensor would be shared through a file
        # descriptor that vanishes when this process exits first
        gap = float((x.double() - ref.double()).abs().max() / ref.double().abs().max().clamp(min=1))
        results.append((used, torch.equal(x, ref), gap, x.double().tolist()))
    hs.close()
    return leftover, results


@pytest.mark.parametrize("world", [2, 3])
def test_the_sum_equals_glooss_on_every_rank_and_big_tensors_fall_back(world):
    ranks = _run(_sums, world)
    assert ranks[0][0] == []  # rank 0 made the file and unlinked it once every rank had mapped it
    for _, results in ranks:
        assert [used for used, _, _, _ in results] == [True, True, True, True, True, False]  # the last: over the slots
        if world == 2:  # two addends: a + b = b + a, so gloo's bits; with 3 the order may differ
            assert all(same for _, same, _, _ in results)
        else:  # gloo's sum to rounding (bf16's: 3 significant digits)
            assert all(gap < 2e-2 for _, _, gap, _ in results)
            assert sum(gap < 1e-6 for _, _, gap, _ in results) >= 4  # the float32 and float64 sums
    for i in range(len(ranks[0][1])):  # every rank holds the same bits
        assert all(ranks[0][1][i][3] == r[1][i][3] for r in ranks)


def _disabled(rank, world):
    os.environ["NOPROP_HOST_SUM"] = "0" if rank == 1 else "1"
    return hostsum.HostSum.create(dist.group.WORLD, 64, 60) is None


def test_turned_off_on_any_rank_means_gloo_on_all():
    assert _run(_disabled, 2) == [True, True]


def _no_room(rank, world):
    if rank == 0:  # where rank 0 makes the segment: a folder that does not exist
        hostsum.SHM = "/nonexistent-noprop-shm"
    return hostsum.HostSum.create(dist.group.WORLD, 64, 60) is None


def test_no_segment_means_gloo_on_all_ranks_and_says_so(capfd):
    assert _run(_no_room, 2) == [True, True]
    assert "cannot make a" in capfd.readouterr().err


def _one_rank_stays_away(rank, world):
    hs = hostsum.HostSum.create(dist.group.WORLD, 64, timeout_s=1.0)
    if rank == 0:
        try:
            hs.sum_(torch.ones(4))
        except Exception as e:  # noqa: BLE001 (the test looks at what it is)
            return type(e).__name__, str(e)
        return None
    return "away"


def test_a_rank_that_never_arrives_is_an_error_after_the_timeout():
    name, message = _run(_one_rank_stays_away, 2)[0]
    assert name == "DistributedError" and "NOPROP_DIST_TIMEOUT" in message


def _sums_made(sync) -> dict:
    """How many sums each of the trainer's groups has made through shared memory so far: the world
    (the status word), the shard group (DDP's buckets), the rest (synchronised BatchNorm)."""
    from noprop import parallel
    names = {None: "world", sync.shard_group: "shard"}
    return {names.get(g, "batchnorm"): hs.calls for g, hs in parallel._host_sums.items()}


def _trainer_collectives(rank, world, method):
    from noprop import parallel
    from noprop.config import Config, taken_by
    from noprop.models import build
    cfg = Config(**taken_by(method, dict(method=method, T=3))).validate()
    model = build(cfg, (1, 28, 28), 10)
    bn_layers = sum(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())
    d = parallel.Dist(rank, world, 1)
    sync = parallel.Collectives(d, model, torch.device("cpu"))
    # the sums made through shared memory by one training step of the wrapped model, per group
    before = _sums_made(sync)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    fwd = sync.wrap(model)
    fwd(x, y, None if model.num_blocks == 1 else [1, 2, 3]).total.backward()
    after = _sums_made(sync)
    return {k: after[k] - before[k] for k in after}, bn_layers


@pytest.mark.parametrize("method", ["backprop", "ct"])
def test_the_trainers_collectives_go_through_shared_memory(method):
    for calls, bn_layers in _run(_trainer_collectives, 2, method):
        assert set(calls) == ({"batchnorm", "shard", "world"} if bn_layers else {"shard", "world"})
        assert calls["shard"] >= 1  # DistributedDataParallel's buckets, through the comm hook
        assert calls.get("batchnorm", 0) == 2 * bn_layers  # each synchronised layer, forward and backward
    assert (bn_layers > 0) == (method == "backprop")


def _one_network_steps(rank, world, method, host_sum):
    os.environ["NOPROP_HOST_SUM"] = host_sum
    from noprop import parallel
    from noprop.config import Config, taken_by
    from noprop.data import load_data
    from noprop.trainer import DivergenceError, Trainer
    cfg = Config(**taken_by(method, dict(method=method, T=3, batch_size=16, train_subset=64, val_subset=16,
                                         test_subset=16, epochs=1))).validate()
    tr = Trainer(cfg, load_data(cfg), None, quiet=True, dist=parallel.Dist(rank, world, 1))
    gen = torch.Generator().manual_seed(0)  # the same global batch on both ranks, as from the epoch's order
    x, y = tr._batch(torch.randn(16, 1, 28, 28, generator=gen), torch.randint(0, 10, (16,), generator=gen))
    tr.step(tr.blocks, x, y, "step 1", 0.0)
    before = _sums_made(tr.sync)
    tr.step(tr.blocks, x, y, "step 2", 0.0)
    after = _sums_made(tr.sync)
    weights = [p.detach().clone() for p in tr.model.parameters()]
    try:  # rank 1's images turn to NaN: both ranks must stop before any update
        tr.step(tr.blocks, x * float("nan") if rank == 1 else x, y, "step 3", 0.0)
        raised = None
    except DivergenceError as e:
        raised = str(e)
    unchanged = all(torch.equal(a, p) for a, p in zip(weights, tr.model.parameters()))
    bn_layers = sum(isinstance(m, torch.nn.BatchNorm1d) for m in tr.model.modules())
    return {k: after[k] - before[k] for k in after}, bn_layers, raised, unchanged


@pytest.mark.parametrize("method, host_sum", [("ct", "1"), ("backprop", "1"), ("ct", "0")])
def test_a_rank_whose_loss_turns_nan_stops_every_rank_before_the_update(method, host_sum):
    """The status word a data-parallel step sums (through shared memory, or gloo with
    NOPROP_HOST_SUM=0): one rank's NaN loss stops both ranks, each saying which, and neither
    updates its weights; the good steps before it met through shared memory where allowed."""
    (calls0, bn, raised0, same0), (calls1, _, raised1, same1) = _run(_one_network_steps, 2, method, host_sum)
    for calls in (calls0, calls1):
        if host_sum == "1":  # the gradient bucket(s) and the status word, and each BatchNorm layer twice
            assert calls["shard"] >= 1 and calls["world"] == 1 and calls.get("batchnorm", 0) == 2 * bn
        else:
            assert calls == {}
    assert (bn > 0) == (method == "backprop")
    assert raised1 is not None and "non-finite loss" in raised1 and "step 3" in raised1
    # rank 0's own loss stays finite, unless synchronised BatchNorm's global statistics carry the NaN over
    assert raised0 is not None and ("non-finite loss" if bn else "another worker's loss became non-finite") in raised0
    assert same0 and same1
