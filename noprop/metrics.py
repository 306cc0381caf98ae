"""What a training epoch records and says: the mean of each part a method's loss logs (Loss.logged;
per block for the method's per_block_metrics), the line printed for each epoch, and each block's
optimizer steps over a run's history (the per-epoch entries that metrics.jsonl holds)."""

from __future__ import annotations

from .method import Loss


class LossMeans:
    """The epoch's mean of each logged loss part over the steps that computed it."""

    def __init__(self, num_blocks: int, per_block: tuple[str, ...]):
        self.num_blocks, self.per_block = num_blocks, per_block
        self.sums: dict = {}  # name -> (sum, steps); ("per_block", name) -> ({block: sum}, {block: steps})

    def add(self, loss: Loss, blocks: list[int]) -> None:
        for k, v in loss.logged().items():
            v = v.detach().float().reshape(-1).cpu()
            if k in self.per_block:
                for t, value in zip(blocks, v.tolist()):
                    s, n = self.sums.setdefault(("per_block", k), ({}, {}))
                    s[t], n[t] = s.get(t, 0.0) + value, n.get(t, 0) + 1
            else:
                s, n = self.sums.get(k, (0.0, 0))
                self.sums[k] = (s + float(v.mean()), n + 1)

    def means(self) -> dict:
        out = {}
        for k, (s, n) in self.sums.items():
            if isinstance(k, tuple):
                out[f"{k[1]}_per_block"] = [s[t] / n[t] if t in s else float("nan")
                                            for t in range(1, self.num_blocks + 1)]
            else:
                out[k] = s / max(n, 1)
        return out


def epoch_line(stats: dict, epoch: int, epochs: int, finished: bool, done_fraction: float, cut: bool,
               n_batches: int, val: float, val_rules: dict | None, train_s: float) -> str:
    """The line printed after an epoch (or after a time budget stopped one): its mean losses and
    validation accuracy, under every rule scored (val_rules: after the last epoch)."""
    losses = "  ".join(f"{k} {v:.4f}" for k, v in stats.items() if isinstance(v, float))
    what = (f"epoch {epoch}/{epochs}" if finished else
            f"time budget spent {100 * done_fraction:.0f}% into epoch {epoch + 1}")
    if cut:
        steps = stats["steps_per_block"]
        what += f" (time budget: each block trained on its share, {min(steps)}-{max(steps)} of {n_batches} steps)"
    rules = "".join(f", {k} {v['mean']:.2f}%" for k, v in (val_rules or {}).items() if k != "stochastic")
    return f"{what}: {losses}  val acc {val:.2f}%{rules}  ({train_s:.0f}s train)"


def steps_per_block(history: list[dict]) -> list[int] | None:
    """Each block's optimizer steps over the whole run (None when a resumed history predates the
    count)."""
    counts = [h.get("steps_per_block") for h in history]
    if not counts or any(c is None for c in counts):
        return None
    return [sum(c) for c in zip(*counts)]
