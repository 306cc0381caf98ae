"""The training loop, checkpoints and logs.

Optimisers: each block owns an AdamW over its own parameters; the output head and a learned
W_Embed share one more ("each block has its own optimizer; only the head and a learned embedding
are shared"). Three training orders:

- ``paper``  (Alg. 1): each epoch trains block 1 over the whole training set, then block 2, ...
- ``all``:    every block on every minibatch, one pass over the data per epoch. The blocks' L2
              terms (each with its Eq. 61 weight) are summed with one CE + KL; since no gradient
              crosses blocks, each block gets exactly the gradient it would get from L_t alone.
- ``random``: one block drawn uniformly per minibatch (the unbiased estimator of Eq. 58).

Every epoch (in the paper order: every block's pass) starts from RNG state derived from the seed,
the epoch (and the block), so a run resumed from a checkpoint draws the same data order and noise as
an uninterrupted one, and a block trains identically on whichever process owns it.

A run folder holds config.json, metrics.jsonl (one line per epoch), last.safetensors (after every
epoch), best.safetensors (best validation accuracy) and, once finished, result.json.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from . import checkpoint, device
from .checkpoint import CheckpointError
from .config import Config, ConfigError
from .data import Dataset, augment, batches, load_dataset, subset
from .backprop import Adjoint, Backprop
from .ct import NoPropCT
from .dt import NoPropDT
from .fm import NoPropFM
from .parallel import SINGLE, Dist, DistributedError, agree, check_parallel, gather, owned_blocks
from .embedding import ClassEmbedding, prototype_init
from .evaluate import accuracy_runs, mean_se
from .schedule import CosineSchedule


class DivergenceError(RuntimeError):
    """A loss became NaN or inf. The last good checkpoint is kept."""


class RunDirError(RuntimeError):
    """The output folder cannot be used as asked."""


LAST, BEST, CONFIG, METRICS, RESULT = ("last.safetensors", "best.safetensors", "config.json",
                                       "metrics.jsonl", "result.json")


# --------------------------------------------------------------------------------------------
def load_data(cfg: Config, data_dir=None, allow_download=False) -> Dataset:
    data = load_dataset(cfg.dataset, data_dir=data_dir, allow_download=allow_download,
                        val_size=cfg.val_size, split_seed=cfg.seed)
    data.train = subset(data.train, cfg.train_subset, cfg.seed)
    data.val = subset(data.val, cfg.val_subset, cfg.seed)
    data.test = subset(data.test, cfg.test_subset, 0)  # the same images whatever the seed
    if cfg.batch_size > len(data.train):
        raise ConfigError(f"--batch-size: {cfg.batch_size} is larger than the {len(data.train)} "
                          "training images; lower it or use more data")
    return data


def build_model(cfg: Config, image_shape, num_classes: int, train_split=None) -> nn.Module:
    """The model of cfg.method. A prototype embedding is initialised from train_split when given
    (otherwise randomly: a checkpoint's weights then replace it)."""
    c, h, w = image_shape
    if cfg.embedding == "prototype":
        init = None
        if train_split is not None:
            init = prototype_init(train_split.x, train_split.y, num_classes)
        embed = ClassEmbedding("prototype", num_classes, c * h * w, init=init)
    else:
        embed = ClassEmbedding(cfg.embedding, num_classes, cfg.embed_dim)
    if cfg.method == "dt":
        model = NoPropDT(image_shape, embed, T=cfg.T, eta=cfg.eta, head=cfg.head,
                         posterior_sigma=cfg.posterior_sigma, schedule=CosineSchedule(cfg.T, cfg.schedule_eps))
    elif cfg.method == "ct":
        model = NoPropCT(image_shape, embed, eta=cfg.eta, steps=cfg.steps, solver=cfg.solver or "stochastic")
    elif cfg.method == "fm":
        model = NoPropFM(image_shape, embed, steps=cfg.steps, solver=cfg.solver or "euler", sigma=cfg.fm_sigma)
    elif cfg.method == "backprop":
        model = Backprop(image_shape, embed, T=cfg.T)
    else:
        model = Adjoint(image_shape, embed, steps=cfg.steps)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_optimizers(model: nn.Module, cfg: Config):
    """DT: one optimizer per block plus one shared (head, learned embedding). Every other method
    is one network trained as a whole: a single optimizer, returned as the 'shared' one."""
    opt_class = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam

    def make(params):
        # fused: one kernel for the whole update, about 10x faster than the per-tensor loop on
        # CPU (3.2 ms -> 0.3 ms a DT block step); see match_layout for what it asks of a resume
        return opt_class(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    if cfg.method != "dt":
        return [], make(model.parameters())
    block_opts = [make(b.parameters()) for b in model.blocks]
    shared = list(model.head.parameters()) + ([model.embed.weight] if model.embed.trainable else [])
    return block_opts, make(shared)


def match_layout(opt: torch.optim.Optimizer) -> None:
    """Give each loaded optimizer state tensor its parameter's memory layout. A checkpoint stores
    tensors contiguous, but a channels_last conv weight's moments must be channels_last too: the
    fused Adam kernel walks parameter, gradient and moments as flat memory, so a layout mismatch
    would pair the wrong elements (found by the resume-equals-uninterrupted test)."""
    for p, st in opt.state.items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2 ** 63)


def block_seed(seed: int, epoch: int, block: int) -> int:
    return (epoch_seed(seed, epoch) * 1_009 + block) % (2 ** 63)


# --------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: Config, data: Dataset, out_dir: str | os.PathLike, quiet: bool = False,
                 dist: Dist = SINGLE):
        self.cfg, self.data, self.out, self.dist = cfg.validate(), data, Path(out_dir), dist
        self.quiet = quiet or not dist.main
        check_parallel(cfg, dist.world)
        self.device = device.resolve(cfg.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL collectives and gather_object use it
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, data.image_shape, data.num_classes, data.train).to(self.device)
        self.block_opts, self.shared_opt = make_optimizers(self.model, cfg)
        # the blocks this process trains (all of them in a single process)
        self.owned = owned_blocks(cfg.T, dist.world, dist.rank) if cfg.method == "dt" else []
        self.shared_params = [p for g in self.shared_opt.param_groups for p in g["params"]]
        self.epoch = 0          # epochs completed
        self.best_val = -1.0
        self.history: list[dict] = []
        self.precision = device.resolve_precision(cfg.precision, self.device)
        self.autocast = device.autocast(self.device, self.precision)

    # --- run folder ------------------------------------------------------------------------------
    def prepare_dir(self, resume: bool) -> None:
        """Rank 0 checks and claims the run folder; every rank loads the checkpoint when resuming."""
        def prepare() -> None:
            if self.dist.main:
                try:
                    self.out.mkdir(parents=True, exist_ok=True)
                    probe = self.out / ".write-test"
                    probe.write_bytes(b"")
                    probe.unlink()
                    for stale in self.out.glob(".*.tmp"):  # a write cut short by a crash
                        stale.unlink()
                except OSError as e:
                    raise RunDirError(f"--out {self.out}: cannot write there ({e.strerror}); choose a "
                                      "writable folder") from e
            last = self.out / LAST
            if resume and last.exists():
                self.load_state(checkpoint.load(last))
            elif resume and self.dist.main and not self.quiet:
                print(f"--resume: no checkpoint in {self.out} yet; starting from scratch", file=sys.stderr)
            elif self.dist.main and (last.exists() or (self.out / RESULT).exists()):
                raise RunDirError(f"--out {self.out} already holds a run; pass --resume to continue it or "
                                  "choose another folder (nothing was overwritten)")
            if self.dist.main:
                checkpoint.atomic_write_text(self.out / CONFIG, self.cfg.to_json())

        if not self.dist.active:
            return prepare()
        error = None
        try:
            prepare()
        except (RunDirError, CheckpointError) as e:
            error = str(e)
        agree(self.dist, error)
        epochs = gather(self.dist, self.epoch)
        if len(set(epochs)) > 1:
            raise DistributedError(f"the ranks resumed from different epochs {epochs}: every rank must "
                                   f"see the same {self.out / LAST} (a shared file system)")

    def state(self) -> dict:
        return {"config": self.cfg.to_dict(), "image_shape": list(self.data.image_shape),
                "num_classes": self.data.num_classes, "epoch": self.epoch, "best_val": self.best_val,
                "history": self.history, "model": self.model.state_dict(),
                "block_opts": [o.state_dict() for o in self.block_opts],
                "shared_opt": self.shared_opt.state_dict()}

    def load_state(self, state: dict) -> None:
        saved = Config.from_dict(state["config"])
        diff = saved.differences(self.cfg)
        if diff:
            raise RunDirError(f"the checkpoint in {self.out} was trained with different settings "
                              f"({', '.join(diff)}); resume with the same options or use another --out")
        self.model.load_state_dict(state["model"])
        for o, s in zip(self.block_opts, state["block_opts"]):
            o.load_state_dict(s)
        self.shared_opt.load_state_dict(state["shared_opt"])
        for o in self.block_opts + [self.shared_opt]:
            match_layout(o)
        self.epoch, self.best_val, self.history = state["epoch"], state["best_val"], state["history"]

    def save(self, best: bool) -> None:
        state = self.state()
        try:
            checkpoint.save(self.out / LAST, state)
            if best:
                checkpoint.save(self.out / BEST, state)
            lines = "".join(json.dumps(h) + "\n" for h in self.history)
            checkpoint.atomic_write_text(self.out / METRICS, lines)
        except OSError as e:  # a full disk, a quota, a vanished folder: the old files are intact
            raise RunDirError(f"--out {self.out}: writing the epoch {self.epoch} checkpoint failed "
                              f"({e.strerror or e}); the previous checkpoint is intact. Free space, then "
                              "rerun with --resume") from e

    # --- one optimisation step ----------------------------------------------------------------
    def lr_at(self, progress: float) -> float:
        """The learning rate after `progress` epochs (a float) of cfg.epochs."""
        if self.cfg.lr_schedule == "cosine":
            return self.cfg.lr * (1 + math.cos(math.pi * min(progress / max(self.cfg.epochs, 1), 1.0))) / 2
        return self.cfg.lr

    def _step(self, loss: torch.Tensor | None, opts, where: str, frac: float = 0.0, split=None) -> None:
        """One optimizer step, `frac` of the way through the current epoch (or block pass). loss
        None: this rank has no block to train at this step but still takes part in averaging the
        shared parameters' gradients (block-parallel training).

        split = (early, late), early + late = loss, where early alone gives the shared parameters
        their gradient (CE + KL with a fixed embedding) and late only the block's (its weighted
        L2). Block-parallel training then back-propagates early first and averages the shared
        gradients in the background while late is back-propagated and the block steps: the same
        gradients and updates, with the all-reduce (a wait for the slower rank) off the critical
        path."""
        lr = self.lr_at(self.epoch + frac)
        for o in opts:
            for group in o.param_groups:
                group["lr"] = lr
        bad = loss is not None and not bool(torch.isfinite(loss))
        message = (f"non-finite loss ({loss.item() if loss is not None else ''}) at {where}; the last "
                   f"good checkpoint in {self.out} is kept. Try a lower --lr.")
        if bad and not self.dist.active:
            raise DivergenceError(message)
        for o in opts:
            o.zero_grad(set_to_none=True)
        if self.dist.active and split is not None and not bad:
            early, late = split
            early.backward()
            pending = self._launch_average(contributed=True, bad=False)
            late.backward()
            for o in opts:
                if o is not self.shared_opt:
                    o.step()
            self._finish_average(*pending, bad=False, message=message)
            self.shared_opt.step()
            return
        if loss is not None and not bad:
            loss.backward()
        if self.dist.active:
            self._average_shared_grads(contributed=loss is not None and not bad, bad=bad, message=message)
        for o in opts:
            o.step()

    def _launch_average(self, contributed: bool, bad: bool):
        """Start the all-reduce of the shared gradients (a copy: the parameters' .grad may change
        meanwhile) plus two counters: ranks that diverged, ranks that contributed."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.shared_params]
        flags = torch.tensor([float(bad), float(contributed)], device=self.device)
        flat = torch.cat([g.flatten() for g in grads] + [flags])
        return flat, torch.distributed.all_reduce(flat, async_op=True)

    def _average_shared_grads(self, contributed: bool, bad: bool, message: str) -> None:
        """All-reduce the head's (and a learned embedding's) gradients. Every rank then holds the
        same averaged gradient."""
        self._finish_average(*self._launch_average(contributed, bad), bad=bad, message=message)

    def _finish_average(self, flat: torch.Tensor, work, bad: bool, message: str) -> None:
        work.wait()
        if flat[-2] > 0:
            raise DivergenceError(message if bad else "another worker's loss became non-finite (its "
                                  f"message names the block and step); the last good checkpoint in "
                                  f"{self.out} is kept")
        flat = flat[:-2] / flat[-1].clamp(min=1)
        offset = 0
        for p in self.shared_params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    def _batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch as the network takes it: augmented if asked (on the CPU, from the
        seeded generator), on the run's device, in the chosen layout."""
        if self.cfg.augment:
            x = augment(x)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        return (x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x), y

    def train_epoch(self) -> dict:
        cfg = self.cfg
        e = self.epoch + 1
        torch.manual_seed(epoch_seed(cfg.seed, e))
        gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, e))
        self.model.train()
        if cfg.method == "dt":
            stats = self._train_epoch_dt(e, gen)
            # every rank's peak memory (one entry per rank): what block-parallel training saves
            stats["peak_memory_mb"] = gather(self.dist, device.peak_memory_mb(self.device))
            return stats
        sums: dict[str, float] = {}
        n, n_batches = 0, len(self.data.train) // cfg.batch_size
        bar = tqdm(total=n_batches, desc=f"epoch {e}", leave=False,
                   disable=self.quiet or None)
        for step, (x, y) in enumerate(batches(self.data.train, cfg.batch_size, gen, drop_last=True)):
            with torch.autocast(**self.autocast):
                parts = self.model.loss(*self._batch(x, y))
            self._step(parts["loss"], [self.shared_opt], f"epoch {e}, step {step} ({cfg.method})",
                       step / n_batches)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            n += 1
            bar.update()
        bar.close()
        return {k: v / max(n, 1) for k, v in sums.items()}

    def _train_epoch_dt(self, e: int, gen: torch.Generator) -> dict:
        cfg, model, T = self.cfg, self.model, self.cfg.T
        l2_sum, l2_n = torch.zeros(T), torch.zeros(T)
        ce_sum, ce_n = 0.0, 0
        n_batches = len(self.data.train) // cfg.batch_size

        def record(ts, l2, ce):
            nonlocal ce_sum, ce_n
            idx = torch.tensor(ts) - 1
            l2_sum[idx] += l2.detach().float().cpu()
            l2_n[idx] += 1
            ce_sum += ce.item()
            ce_n += 1

        if cfg.order == "paper":
            # Block t's pass draws its data order and noise from (seed, epoch, t) alone, so it is the
            # same whichever process trains it. Ranks owning fewer blocks idle through the last round.
            rounds = len(owned_blocks(T, self.dist.world, 0))
            bar = tqdm(total=rounds * n_batches, desc=f"epoch {e}", leave=False, disable=self.quiet or None)
            for i in range(rounds):
                t = self.owned[i] if i < len(self.owned) else None
                if t is not None:
                    torch.manual_seed(block_seed(cfg.seed, e, t))
                    data = batches(self.data.train, cfg.batch_size,
                                   torch.Generator().manual_seed(block_seed(cfg.seed, e, t)), drop_last=True)
                for step in range(n_batches):
                    if t is None:
                        self._step(None, [self.shared_opt], f"epoch {e}, idle step {step}", step / n_batches)
                    else:
                        x, y = self._batch(*next(data))
                        with torch.autocast(**self.autocast):
                            parts = model.block_loss(t, x, y)
                        split = None
                        if self.dist.active and not model.embed.trainable:  # see _step: L2 misses the head
                            split = (parts["ce"] + parts["kl"], model.l2_weight[t - 1] * parts["l2"])
                        self._step(parts["loss"], [self.block_opts[t - 1], self.shared_opt],
                                   f"epoch {e}, block {t}, step {step}", step / n_batches, split)
                        record([t], parts["l2"][None], parts["ce"])
                    bar.update()
            bar.close()
        else:
            if self.dist.active:  # same data order on every rank, different noise per rank
                torch.manual_seed(block_seed(cfg.seed, e, T + 1 + self.dist.rank))
            bar = tqdm(total=n_batches, desc=f"epoch {e}", leave=False, disable=self.quiet or None)
            for step, (x, y) in enumerate(batches(self.data.train, cfg.batch_size, gen, drop_last=True)):
                x, y = self._batch(x, y)
                with torch.autocast(**self.autocast):
                    if cfg.order == "all":
                        ts = self.owned
                        ce, kl = model.shared_loss(y)
                        l2 = torch.stack([model.denoise_loss(t, x, y) for t in ts])
                        weighted = (model.l2_weight[torch.tensor(ts) - 1] * l2).sum()
                        loss = ce + kl + weighted
                        split = (ce + kl, weighted) if self.dist.active and not model.embed.trainable else None
                        where = f"epoch {e}, step {step} (blocks {ts[0]}-{ts[-1]})"
                    else:
                        t = int(torch.randint(1, T + 1, (1,), generator=gen))
                        parts = model.block_loss(t, x, y)
                        ts, loss, ce, l2 = [t], parts["loss"], parts["ce"], parts["l2"][None]
                        split = None  # the random order is single-process only
                        where = f"epoch {e}, block {t}, step {step}"
                self._step(loss, [self.block_opts[t - 1] for t in ts] + [self.shared_opt], where,
                           step / n_batches, split)
                record(ts, l2, ce)
                bar.update()
            bar.close()
        self._gather_blocks()
        return {"l2_per_block": (l2_sum / l2_n.clamp(min=1)).tolist(), "ce": ce_sum / max(ce_n, 1)}

    def _gather_blocks(self) -> None:
        """Block-parallel: bring every block (weights, BatchNorm statistics, optimizer state) to
        rank 0, which then holds the whole model, validates it and writes the checkpoint."""
        if not self.dist.active:
            return
        # the shared parameters must be bit-identical on every rank: check it, cheaply, each epoch
        sums = gather(self.dist, [float(p.detach().double().sum()) for p in self.shared_params])
        if any(x != sums[0] for x in sums):
            raise DistributedError(f"the shared parameters differ between ranks ({sums}); this is a bug")
        mine = {t: (self.model.blocks[t - 1].state_dict(), self.block_opts[t - 1].state_dict())
                for t in self.owned}
        parts = [None] * self.dist.world if self.dist.main else None
        torch.distributed.gather_object(mine, parts, dst=0)
        if self.dist.main:
            for part in parts:
                for t, (block_state, opt_state) in part.items():
                    self.model.blocks[t - 1].load_state_dict(block_state)
                    self.block_opts[t - 1].load_state_dict(opt_state)
                    match_layout(self.block_opts[t - 1])

    @property
    def eval_kw(self) -> dict:
        return dict(batch_size=self.cfg.eval_batch_size, channels_last=self.cfg.channels_last,
                    autocast_dtype=device.eval_dtype(self.precision))

    def validate(self) -> float:
        return accuracy_runs(self.model, self.data.val, runs=1, seed=self.cfg.seed, **self.eval_kw)[0]

    def fit(self, resume: bool = False, log=print, stop=None) -> dict:
        """Train until cfg.epochs, or until stop(history) is true after an epoch (single process;
        history is the list of per-epoch entries, resumed ones included)."""
        self.prepare_dir(resume)
        while self.epoch < self.cfg.epochs:
            t0 = time.perf_counter()
            stats = self.train_epoch()
            train_s = time.perf_counter() - t0
            self.epoch += 1
            if not self.dist.main:  # rank 0 alone validates and writes; the others go on
                continue
            val = self.validate() if len(self.data.val) else float("nan")
            best = val > self.best_val
            if best:
                self.best_val = val
            entry = {"epoch": self.epoch, **stats, "val_acc": val, "train_seconds": train_s}
            if self.cfg.test_curve:  # for plots only: selection never looks at it
                entry["test_acc"] = accuracy_runs(self.model, self.data.test, runs=1, seed=self.cfg.seed,
                                                  **self.eval_kw)[0]
            entry["seconds"] = time.perf_counter() - t0
            self.history.append(entry)
            self.save(best)
            if log:
                losses = "  ".join(f"{k} {v:.4f}" for k, v in stats.items() if isinstance(v, float))
                log(f"epoch {self.epoch}/{self.cfg.epochs}: {losses}  val acc {val:.2f}%  "
                    f"({train_s:.0f}s train)")
            if stop is not None and stop(self.history):
                break
        return {"epochs": self.epoch, "best_val": self.best_val}


def train_and_evaluate(cfg: Config, data: Dataset, out, eval_runs: int = 5, resume: bool = False,
                       quiet: bool = False, dist: Dist = SINGLE, log=print, t0: float | None = None,
                       stop=None) -> dict | None:
    """Train (or finish training) the run in `out`, then the final model's test accuracy over
    `eval_runs` inference runs, written to result.json. Returns the result (None on ranks > 0).
    stop: see Trainer.fit."""
    t0 = time.perf_counter() if t0 is None else t0
    trainer = Trainer(cfg, data, out, quiet=quiet, dist=dist)
    summary = trainer.fit(resume=resume, log=log if dist.main else None, stop=stop)
    if not dist.main:
        return None
    accs = accuracy_runs(trainer.model, data.test, runs=eval_runs, seed=0, **trainer.eval_kw)
    m, se = mean_se(accs)
    result = {"test_acc_mean": m, "test_acc_se": se, "test_acc_runs": accs, "epochs": summary["epochs"],
              "best_val_acc": summary["best_val"], "wall_seconds": time.perf_counter() - t0,
              "train_seconds": sum(h["train_seconds"] for h in trainer.history),
              "model": "final epoch", "threads": torch.get_num_threads(), "torch": torch.__version__,
              "precision": trainer.precision, "device": str(trainer.device)}
    checkpoint.atomic_write_text(Path(out) / RESULT, json.dumps(result, indent=2))
    return result


def load_model(path: str | os.PathLike, device_name: str = "cpu") -> tuple[nn.Module, Config, dict]:
    """A trained model from a checkpoint file (no data needed: the prototype rows come from the
    checkpoint's weights), on the given device (see device.py)."""
    state = checkpoint.load(path)
    cfg = Config.from_dict(state["config"])
    model = build_model(cfg, state["image_shape"], state["num_classes"]).to(device.resolve(device_name))
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg, state


@contextlib.contextmanager
def threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
