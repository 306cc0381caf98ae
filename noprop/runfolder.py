"""A training run's folder: claimed once, written atomically, resumed from.

    config.json              the run's whole configuration (noprop train --config repeats it)
    metrics.jsonl            one line per epoch
    last.safetensors         the final model's portable weights (models.save)
    best.safetensors         the best-validation model's
    train_state.safetensors  what a resume needs: model, optimizers, counters, history
    result.json              the final evaluation (written by trainer.run)

A folder that already holds a run is never overwritten unless the run is resumed; a failed write
(a full disk) stops the run by name and leaves the previous files intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import checkpoint, models
from .checkpoint import CheckpointError

LAST, BEST, STATE, CONFIG, METRICS, RESULT = ("last.safetensors", "best.safetensors", "train_state.safetensors",
                                              "config.json", "metrics.jsonl", "result.json")


class RunDirError(RuntimeError):
    """The output folder cannot be used as asked."""


class RunFolder:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def holds_run(self) -> bool:
        return any((self.path / f).exists() for f in (STATE, LAST, RESULT))

    def claim(self, resume: bool, main: bool) -> dict | None:
        """Check the folder (rank 0 creates it and clears writes a crash cut short) and return the
        train state to resume from (None for a new run). Refuses to start over an existing run."""
        if main:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                probe = self.path / f".write-test-{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
                for stale in self.path.glob(".*.tmp"):
                    stale.unlink()
            except OSError as e:
                raise RunDirError(f"--out {self.path}: cannot write there ({e.strerror}); choose a "
                                  "writable folder") from e
        if resume:
            if (self.path / STATE).exists():
                return checkpoint.load(self.path / STATE)
            legacy = self.path / LAST  # before version 0.2 the whole state was in last.safetensors
            if legacy.exists() and checkpoint.read_metadata(legacy).get("format") == checkpoint.FORMAT:
                return checkpoint.load(legacy)
            raise RunDirError(f"--resume: {self.path} holds no run to continue (no {STATE}); leave out "
                              "--resume to start a new run there")
        if main and self.holds_run():
            raise RunDirError(f"--out {self.path} already holds a run; pass --resume to continue it or "
                              "choose another folder (nothing was overwritten)")
        return None

    def write_config(self, cfg) -> None:
        checkpoint.atomic_write_text(self.path / CONFIG, cfg.to_json())

    def save(self, state: dict, model, epoch: int, best: bool, history: list[dict]) -> None:
        try:
            checkpoint.save(self.path / STATE, state)
            models.save(self.path / LAST, model, epoch)
            if best:
                models.save(self.path / BEST, model, epoch)
            checkpoint.atomic_write_text(self.path / METRICS, "".join(json.dumps(h) + "\n" for h in history))
        except OSError as e:  # a full disk, a quota, a vanished folder: the old files are intact
            raise RunDirError(f"--out {self.path}: writing the epoch {epoch} checkpoint failed "
                              f"({e.strerror or e}); the previous checkpoint is intact. Free space, then "
                              "rerun with --resume") from e

    def write_result(self, result: dict) -> None:
        checkpoint.atomic_write_text(self.path / RESULT, json.dumps(result, indent=2))


__all__ = ["RunFolder", "RunDirError", "CheckpointError", "LAST", "BEST", "STATE", "CONFIG", "METRICS", "RESULT"]
