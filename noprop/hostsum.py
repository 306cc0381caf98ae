"""A sum over the ranks of a process group that share one machine's memory, without the network.

On a CPU machine gloo sends every all-reduce through TCP on the loopback address: on the 2-core
machine measured here (bench/collective_latency.py, results/collectives-amx.json) a BatchNorm
layer's statistics (4 KB) take 0.5 ms between two processes and NoProp-CT's gradient (3.5 MB)
4.1 ms. The synchronised BatchNorm pays the first once per layer and pass, every step the second.
Ranks on one machine can instead meet in shared memory: each copies its tensor into its own slot of
a segment in /dev/shm, publishes a counter, waits for the others' counters, and adds the slots up:
0.02 ms and 1.1 ms for the same two sums.

Every rank adds the slots in rank order, so all ranks hold the same bits (with two ranks also
gloo's: a + b = b + a). Slots are used by alternate calls (double buffering): a rank can only start call k + 2
after every rank published call k + 1, which each does after it read call k's slots, so no slot is
overwritten while someone still reads it.

Used only where it is safe and possible; otherwise ``HostSum.create`` returns None and the caller
keeps gloo: every rank of the group on one machine (same host name and boot), an x86-64 CPU (its
memory order makes a counter written after the data visible after it; other CPUs would need
fences Python cannot issue), and room for the segment in /dev/shm (a tmpfs that runs out of space
kills a process touching it with SIGBUS, so the free space is checked first). ``NOPROP_HOST_SUM=0``
turns it off. The segment's file is unlinked as soon as every rank has mapped it, so a killed job
leaves nothing behind in /dev/shm.
"""

from __future__ import annotations

import mmap
import os
import platform
import socket
import sys
import time
import uuid

import torch
import torch.distributed as dist

from .errors import DistributedError

SHM = "/dev/shm"
LINE = 64  # bytes: each rank's counter on a cache line of its own


def _machine() -> str:
    """Which machine this process runs on (the boot id tells apart containers with one host name)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def enabled() -> bool:
    return os.environ.get("NOPROP_HOST_SUM", "1") != "0" and platform.machine().lower() in ("x86_64", "amd64")


class HostSum:
    """In-place sums over one process group (``sum_(t)``), for tensors of up to ``capacity`` bytes."""

    def __init__(self, group, mm: mmap.mmap, rank: int, world: int, capacity: int, timeout_s: float):
        self.group, self.mm, self.rank, self.world = group, mm, rank, world
        self.capacity, self.timeout_s = capacity, timeout_s
        self.counters = memoryview(mm).cast("q")  # counter of rank r at index r * LINE // 8
        base = world * LINE
        self.slots = torch.frombuffer(mm, dtype=torch.uint8, offset=base,
                                      count=2 * world * capacity).view(2, world, capacity)
        self.calls = 0
        self.others = [r * LINE // 8 for r in range(world) if r != rank]  # the counters to wait for

    @classmethod
    def create(cls, group, capacity: int, timeout_s: float) -> HostSum | None:
        """Set up a segment for the group (a collective: every rank of the group calls it), or None
        where it cannot be used (see the module docstring); all ranks get the same answer."""
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        machines = [None] * world
        dist.all_gather_object(machines, (enabled(), _machine()), group=group)
        if not all(ok for ok, _ in machines) or len({m for _, m in machines}) > 1:
            return None
        capacity = -(-capacity // LINE) * LINE
        size = world * LINE + 2 * world * capacity
        path = None
        if rank == 0:
            try:
                st = os.statvfs(SHM)
                if st.f_bavail * st.f_frsize > 2 * size:  # leave room for everyone else
                    path = os.path.join(SHM, f"noprop-sum-{os.getpid()}-{uuid.uuid4().hex[:8]}")
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
                    try:
                        os.ftruncate(fd, size)
                    finally:
                        os.close(fd)
            except OSError:
                if path is not None and os.path.exists(path):
                    os.unlink(path)
                path = None
            if path is None:  # on one machine and allowed, but no segment: say so once, keep gloo
                print(f"noprop: cannot make a {size / 1e6:.0f} MB shared-memory segment in {SHM} (twice "
                      "that must be free there); the ranks sum through the backend instead, which is "
                      "slower. A container can be given more with --shm-size.", file=sys.stderr)
        box = [path]
        dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0), group=group)
        path, mm = box[0], None
        if path is not None:
            try:
                fd = os.open(path, os.O_RDWR)
                try:
                    mm = mmap.mmap(fd, size)
                finally:
                    os.close(fd)
            except OSError:
                mm = None
        mapped = [None] * world
        dist.all_gather_object(mapped, mm is not None, group=group)
        if rank == 0 and path is not None:
            os.unlink(path)  # every rank has mapped it (or given up): the memory lives while mapped
        if not all(mapped):
            if mm is not None:
                mm.close()
            return None
        return cls(group, mm, rank, world, capacity, timeout_s)

    def sum_(self, t: torch.Tensor, divide_by: int = 1) -> bool:
        """Replace t (contiguous, on the CPU) by its sum over the group's ranks, each rank's share
        first divided by ``divide_by`` (as DistributedDataParallel's own hook divides before it
        sums: a mean in one call); False (t untouched) when it is larger than the segment's slots,
        which every rank decides alike.

        The division rides on the copy into the slot and the first addition writes straight into
        t: three passes over the data, not the five of copy, copy back, add, divide (NoProp-CT's
        3.5 MB gradient is memory-bound: each pass costs about a third of a millisecond here)."""
        nbytes = t.numel() * t.element_size()
        if nbytes > self.capacity:
            return False
        self.calls += 1
        k, slot = self.calls, self.slots[self.calls % 2]
        flat = t.view(-1)
        mine = slot[self.rank, :nbytes].view(t.dtype)
        if divide_by == 1:
            mine.copy_(flat)
        else:
            torch.div(flat, divide_by, out=mine)
        self.counters[self.rank * LINE // 8] = k
        self._wait(k)
        if self.world == 1:
            flat.copy_(mine)
            return True
        torch.add(slot[0, :nbytes].view(t.dtype), slot[1, :nbytes].view(t.dtype), out=flat)
        for r in range(2, self.world):  # rank order, so every rank holds the same bits
            flat.add_(slot[r, :nbytes].view(t.dtype))
        return True

    def _wait(self, k: int) -> None:
        spins, deadline = 0, None
        while any(self.counters[i] < k for i in self.others):
            spins += 1
            if spins < 2_000:
                continue  # the usual case: the peer is a few microseconds behind
            time.sleep(0 if spins < 20_000 else 1e-4)  # let an oversubscribed core run the peer
            if spins % 1_000 == 0:
                now = time.monotonic()
                deadline = deadline or now + self.timeout_s
                if now > deadline:
                    raise DistributedError(f"a rank of the group did not reach the same sum within "
                                           f"{self.timeout_s:.0f} s (NOPROP_DIST_TIMEOUT); it has probably died")

    def close(self) -> None:
        self.slots = None
        self.counters.release()
        self.mm.close()
