"""A training run's folder: claimed once, written atomically, resumed from.

    config.json              the run's whole configuration (noprop train --config repeats it)
    metrics.jsonl            one line per epoch
    last.safetensors         the final model's portable weights (models.save)
    best.safetensors         the best-validation model's
    train_state.safetensors  what a resume needs: model, optimizers, counters, history
    result.json              the final evaluation (written by runner.run)

A folder that already holds a run is never overwritten unless the run is resumed; a failed write
(a full disk) stops the run by name and leaves the previous files intact.

train_state.safetensors is the commit point: each save writes it first and the files derived from
it (last, best, metrics) after. A kill between the writes leaves them one save behind the state (or
absent after the first); a resume writes them again from the state (complete_save), so a resumed
run's folder is the one an uninterrupted run writes, whichever moment the kill hit.

What the train state holds of a trainer.Trainer, and how a run (every rank of a parallel one) claims
its folder and resumes, are here too: train_state, resume_from and open_run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from . import checkpoint, models
from .checkpoint import CheckpointError
from .config import Config
from .errors import DistributedError, RunDirError
from .optim import match_layout
from .parallel import agree, gather

LAST, BEST, STATE, CONFIG, METRICS, RESULT = ("last.safetensors", "best.safetensors", "train_state.safetensors",
                                              "config.json", "metrics.jsonl", "result.json")


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
        self._write(state, model, epoch, [LAST, BEST] if best else [LAST], history)

    def complete_save(self, model, epoch: int, history: list[dict]) -> None:
        """Write again what the save of the resumed state writes after the state itself (see the
        module docstring), where it is missing or differs from the state: the weights, the best
        weights if that save found a new best, the log. Files the save did finish stay untouched."""
        vals = [h.get("val_acc", float("nan")) for h in history]
        # the trainer's rule: an epoch is best when its validation accuracy beats every earlier one
        best = bool(vals) and vals[-1] > max([-1.0] + [v for v in vals[:-1] if v == v])
        stale = [f for f in ((LAST, BEST) if best else (LAST,)) if not _holds(self.path / f, model)]
        log = self.path / METRICS
        if stale or not log.exists() or log.read_text() != _log(history):
            self._write(None, model, epoch, stale, history)

    def _write(self, state: dict | None, model, epoch: int, weights: list[str], history: list[dict]) -> None:
        """The train state (None: already on disk), then the named weights files and the log."""
        try:
            if state is not None:
                checkpoint.save(self.path / STATE, state)
            for name in weights:
                models.save(self.path / name, model, epoch)
            checkpoint.atomic_write_text(self.path / METRICS, _log(history))
        except OSError as e:  # a full disk, a quota, a vanished folder: the old files are intact
            raise RunDirError(f"--out {self.path}: writing the epoch {epoch} checkpoint failed "
                              f"({e.strerror or e}); the previous checkpoint is intact. Free space, then "
                              "rerun with --resume") from e

    def write_result(self, result: dict) -> None:
        checkpoint.atomic_write_text(self.path / RESULT, json.dumps(result, indent=2))


def _log(history: list[dict]) -> str:
    return "".join(json.dumps(h) + "\n" for h in history)


def _holds(path: Path, model) -> bool:
    """Whether the weights file at path exists and holds exactly the model's weights."""
    try:
        weights, _ = checkpoint.load_weights(path)
    except CheckpointError:  # missing (or, against the atomic writes, unreadable): write it again
        return False
    own = model.state_dict()
    return weights.keys() == own.keys() and all(torch.equal(weights[k], own[k].cpu()) for k in own)


# --- a trainer's train state (tr: a trainer.Trainer) -----------------------------------------------
def open_run(tr, resume: bool) -> None:
    """Rank 0 checks and claims tr's run folder and writes config.json; every rank loads the train
    state when resuming, and all ranks agree that they did, from the same point."""
    if tr.out is None:
        if resume:
            raise RunDirError("--resume needs the run folder (--out) to continue")
        return
    error = None
    try:
        state = tr.folder.claim(resume, tr.dist.main)
        if state is not None:
            resume_from(tr, state)
            if tr.dist.main:
                tr.folder.complete_save(tr.model, tr.epoch, tr.history)
        if tr.dist.main:
            tr.folder.write_config(tr.cfg)
    except (RunDirError, CheckpointError) as e:
        if not tr.dist.active:
            raise
        error = str(e)
    agree(tr.dist, error)
    epochs = gather(tr.dist, (tr.epoch, tr.passes_done))
    if len(set(epochs)) > 1:
        raise DistributedError(f"the ranks resumed from different points {epochs}: every rank must "
                               f"see the same {tr.out / STATE} (a shared file system)")


def train_state(tr) -> dict:
    """What train_state.safetensors holds: the model, every optimizer, the counters that place a
    resume inside an epoch or a pass, the RNG state of a stop inside a pass, the history."""
    return {"config": tr.cfg.to_dict(), "epoch": tr.epoch, "passes_done": tr.passes_done,
            "steps_done": tr.steps_done, "rng_state": tr.rng_state,
            "best_val": tr.best_val, "history": tr.history, "model": tr.model.state_dict(),
            "block_opts": [tr.block_opts[t].state_dict() for t in sorted(tr.block_opts)],
            "shared_opt": tr.shared_opt.state_dict() if tr.shared_opt else None}


def resume_from(tr, state: dict) -> None:
    """Set tr to a train state; one trained with other settings is refused, naming them."""
    saved = Config.from_dict(state["config"])
    diff = saved.differences(tr.cfg)
    if diff:
        raise RunDirError(f"the checkpoint in {tr.out} was trained with different settings "
                          f"({', '.join(diff)}); resume with the same options or use another --out")
    tr.model.load_state_dict(models.legacy_keys(state["model"], tr.model))
    block_states, shared_state = state["block_opts"], state["shared_opt"]
    if not block_states and tr.shared_opt is None:  # before 0.2 one network's optimizer was 'shared'
        block_states, shared_state = [shared_state], None
    for t, s in zip(sorted(tr.block_opts), block_states):
        tr.block_opts[t].load_state_dict(s)
    if tr.shared_opt is not None:
        tr.shared_opt.load_state_dict(shared_state)
    for o in tr.optimizers():
        match_layout(o)
    tr.epoch, tr.best_val, tr.history = state["epoch"], state["best_val"], state["history"]
    tr.passes_done = state.get("passes_done", 0)
    tr.steps_done, tr.rng_state = state.get("steps_done", 0), state.get("rng_state")


__all__ = ["RunFolder", "RunDirError", "CheckpointError", "LAST", "BEST", "STATE", "CONFIG", "METRICS", "RESULT"]
