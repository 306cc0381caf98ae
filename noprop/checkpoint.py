"""Checkpoints and result files that cannot execute code on load, written atomically.

A checkpoint is one safetensors file. Nested state (model, optimizers, counters) is split into a
flat dict of tensors and a JSON skeleton that stands in the file's metadata; loading reads
tensors and JSON only, never pickle. Every write goes to a temporary file in the same folder,
is flushed to disk, and is then renamed over the target, so a crash mid-write leaves the previous
file intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

FORMAT = "noprop-checkpoint-1"


class CheckpointError(RuntimeError):
    pass


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
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _pack(state, tensors, "s")
    data = st_save(tensors, metadata={"format": FORMAT, "state": json.dumps(skeleton)})
    atomic_write_bytes(path, data)


def load(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror})") from e
    try:
        tensors = st_load(data)
        # the metadata sits in the JSON header: 8-byte little-endian length, then the header
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError) as e:
        raise CheckpointError(f"{path}: not a noprop checkpoint (unreadable safetensors: {e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a noprop checkpoint (format {meta.get('format')!r}, "
                              f"expected {FORMAT!r})")
    return _unpack(json.loads(meta["state"]), tensors)
