"""Settings the measurements and the tables made from their results share. Light on purpose: the
CLI's parser and the bench scripts read them without loading the bench (torch.utils.benchmark) or
the table renderer.
"""

from __future__ import annotations

# `noprop bench --what workers --workers-batch`, bench/step_breakdown.py and two_process_ceiling.py
# --batch: a multi-process measurement keeps the method's global batch at every process count
# ("global": the same training, split), or gives each data shard that batch ("per-rank").
WORKERS_BATCH = ("global", "per-rank")

# bench/step_breakdown.py's settings: (result key, label, processes, global batch = images a step,
# whether the processes exchange: False runs them at once but each alone, a one-process job each).
# "global" keeps the paper's 128 split over the shards; "per-rank" gives each process 128.
STEP_SETTINGS = {
    "global": (("one_process_batch128", "1 process, batch 128", 1, 128, True),
               ("one_process_batch64", "1 process, batch 64", 1, 64, True),
               ("two_processes_batch64_each", "2 processes, 64 each", 2, 128, True)),
    "per-rank": (("one_process_batch128", "1 process, batch 128", 1, 128, True),
                 ("two_alone_batch128_each", "2 processes at once, no exchange, 128 each", 2, 256, False),
                 ("two_processes_batch128_each", "2 processes, 128 each", 2, 256, True)),
}
