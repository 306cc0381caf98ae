"""Building a method's model from a Config, and the portable weights file it is saved in and loaded
from. Evaluation, the CLI and the Python API load models through here, never through the trainer.

A built model carries what made it: ``model.config`` (the validated Config), ``model.image_shape``
and ``model.num_classes``; ``weights_metadata`` turns these into the checkpoint's metadata.
"""

from __future__ import annotations

import os

import torch

from . import checkpoint, device
from .config import Config
from .embedding import ClassEmbedding, prototype_init
from .machine import provenance
from .method import Method
from .methods import get_method


def build_embedding(cfg: Config, image_shape, num_classes: int, train_split=None) -> ClassEmbedding:
    """W_Embed of cfg.embedding. A prototype embedding is initialised from train_split when given
    (otherwise randomly: a checkpoint's weights then replace it)."""
    c, h, w = image_shape
    if cfg.embedding == "prototype":
        init = None if train_split is None else prototype_init(train_split.x, train_split.y, num_classes)
        return ClassEmbedding("prototype", num_classes, c * h * w, init=init)
    return ClassEmbedding(cfg.embedding, num_classes, cfg.embed_dim)


def build(cfg: Config, image_shape, num_classes: int, train_split=None) -> Method:
    """The model of cfg.method, with its config attached."""
    cfg = cfg.validate()
    image_shape = tuple(int(v) for v in image_shape)
    cls = get_method(cfg.method)
    model = cls.from_config(cfg, image_shape, num_classes, build_embedding(cfg, image_shape, num_classes,
                                                                           train_split))
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.config, model.image_shape, model.num_classes = cfg, image_shape, num_classes
    return model


def blocks_for(cfg: Config) -> int:
    """How many independently trained blocks cfg's model has (before building it)."""
    return get_method(cfg.validate().method).blocks_for(cfg)


def weights_metadata(model: Method, epoch: int | None = None) -> dict:
    return {"config": model.config.to_dict(), "image_shape": list(model.image_shape),
            "num_classes": model.num_classes, "epoch": epoch, "method": model.config.method,
            **provenance()}


def save(path: str | os.PathLike, model: Method, epoch: int | None = None) -> None:
    """The portable weights file of a model (atomic)."""
    checkpoint.save_weights(path, model.state_dict(), weights_metadata(model, epoch))


def load(path: str | os.PathLike, device_name: str = "cpu") -> Method:
    """A trained model from a weights file, in eval mode, ready for ``predict`` (no data needed:
    prototype rows come from the weights). ``model.checkpoint_metadata`` holds the file's metadata."""
    state_dict, meta = checkpoint.load_weights(path)
    for key in ("config", "image_shape", "num_classes"):
        if key not in meta:
            raise checkpoint.CheckpointError(f"{path}: its metadata lacks {key!r}; it was not written by noprop")
    cfg = Config.from_dict(meta["config"])
    model = build(cfg, meta["image_shape"], meta["num_classes"]).to(device.resolve(device_name))
    model.load_state_dict(legacy_keys(state_dict, model))
    model.eval()
    model.checkpoint_metadata = meta
    return model


def legacy_keys(state_dict: dict, model: Method) -> dict:
    """Checkpoints written before version 0.2 held schedule buffers (alpha_bar, coef_*, l2_weight)
    that are now plain attributes, and keys their method has since dropped (Method.is_legacy_key)."""
    if all(k in state_dict for k in model.state_dict()) and len(state_dict) == len(model.state_dict()):
        return state_dict
    legacy = {"alpha_bar", "coef_a", "coef_b", "coef_c", "l2_weight"}
    wanted = model.state_dict().keys()
    return {k: v for k, v in state_dict.items()
            if k in wanted or not (k in legacy or model.is_legacy_key(k))}
