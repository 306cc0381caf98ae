"""Checkpoints and result files that cannot execute code on load, written atomically.

Two kinds of safetensors file, neither ever unpickled:

- **weights** (``last.safetensors``, ``best.safetensors``): the model's ``state_dict`` under its own
  plain keys, so ``model.load_state_dict(safetensors.torch.load_file(path))`` works on a model built
  from the run's config, with or without noprop. The metadata (strings, read with safetensors'
  ``safe_open(...).metadata()``) says what built it: the config, image shape, classes, epoch,
  package version and git commit.
- **train state** (``train_state.safetensors``): everything a resume needs (model, optimizers,
  counters, history). Nested state is split into a flat dict of tensors and a JSON skeleton that
  stands in the file's metadata.

Every write goes to a temporary file in the same folder, is flushed to disk, and is then renamed
over the target, so a crash mid-write leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save as st_save

from .errors import CheckpointError

FORMAT = "noprop-checkpoint-1"      # train state (and, before version 0.2, every checkpoint)
WEIGHTS_FORMAT = "noprop-weights-1"
JSON_METADATA = ("config", "image_shape", "num_classes", "epoch")  # stored as JSON text


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _pack(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """Replace every tensor in a nested structure by {"__tensor__": key}."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"{prefix}: only str/int keys can be saved")
        # int keys (optimizer state ids) are kept apart from str keys so they round-trip
        return {"__dict__": [[k, _pack(v, tensors, f"{prefix}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_pack(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"{prefix}: cannot save a {type(obj).__name__}")


def _unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        return {k: _unpack(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    return obj


def save(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """A nested train state (see the module docstring)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _pack(state, tensors, "s")
    data = st_save(tensors, metadata={"format": FORMAT, "state": json.dumps(skeleton)})
    atomic_write_bytes(path, data)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file, by safetensors' own reader."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: cannot read checkpoint (no such file)")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a noprop checkpoint (unreadable safetensors: {e})") from e


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return st_load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a noprop checkpoint (unreadable safetensors: {e})") from e


def load(path: str | os.PathLike) -> dict[str, Any]:
    """A nested train state written by save()."""
    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a noprop train state (format {meta.get('format')!r}, "
                              f"expected {FORMAT!r})")
    return _unpack(json.loads(meta["state"]), _read_tensors(path))


def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """A model's state_dict under its own keys, with string metadata (JSON_METADATA fields as JSON)."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    meta = {"format": WEIGHTS_FORMAT}
    meta.update({k: json.dumps(v) if k in JSON_METADATA else str(v) for k, v in metadata.items()
                 if v is not None})
    atomic_write_bytes(path, st_save(tensors, metadata=meta))


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, metadata with its JSON values decoded). A checkpoint of the format before
    version 0.2 (one file with prefixed keys) is read too: its model part is returned."""
    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format") == FORMAT:  # the old single-file format: convert on the fly
        state = load(path)
        return state["model"], {"config": state["config"], "image_shape": state["image_shape"],
                                "num_classes": state["num_classes"], "epoch": state["epoch"],
                                "format": FORMAT}
    if meta.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(f"{path}: not a noprop checkpoint (format {meta.get('format')!r}, "
                              f"expected {WEIGHTS_FORMAT!r})")
    decoded = dict(meta)
    for k in JSON_METADATA:
        if k in decoded:
            try:
                decoded[k] = json.loads(decoded[k])
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{path}: its metadata field {k!r} is not JSON ({e})") from e
    return _read_tensors(path), decoded
