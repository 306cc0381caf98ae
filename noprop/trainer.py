"""The training loop: one method's blocks, their optimizers, the run folder.

Every method is trained as ``model.num_blocks`` blocks that learn independently (NoProp-DT: its T
blocks; a one-network method: one), each with its own optimizer, plus one optimizer for the
parameters all blocks share (NoProp-DT's head and a learned W_Embed). Three orders:

- ``paper``  (Alg. 1): each epoch trains block 1 over the whole training set, then block 2, ... (a
              one-network method simply trains over the data);
- ``all``:    every block on every minibatch, one pass over the data per epoch (CE + KL once, each
              block's weighted L2: each block still gets exactly the gradient of its own L_t);
- ``random``: one block drawn uniformly per minibatch (the unbiased estimator of Eq. 58).

A time budget (cfg.minutes) in paper order is divided among the epoch's block passes: each pass may
take the budget left over the passes left, so a budget shorter than an epoch still trains every
block, in Algorithm 1's order, on its share of the images. With one pass per epoch the budget is
checked after every step and a resume continues inside the pass.

Every block pass starts from RNG state derived from (seed, epoch, block) alone, so a resumed run
draws the same data order and noise as an uninterrupted one, and a block trains identically on
whichever process owns it. Collectives (parallel runs) are parallel.py's; model building and
checkpoint files are models.py's and checkpoint.py's.

The run folder (config, metrics, checkpoints, result) is runfolder.py's.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import device, models, noise
from .checkpoint import CheckpointError
from .config import Config
from .data import Dataset, augment, batches, load_data, subset
from .evaluation import accuracy_runs, mean_se, rules_accuracy
from .machine import describe, provenance
from .method import Loss
from .parallel import SINGLE, Collectives, Dist, DistributedError, agree, check_layout, gather, owned_blocks
from .runfolder import BEST, CONFIG, LAST, METRICS, RESULT, STATE, RunDirError, RunFolder


class DivergenceError(RuntimeError):
    """A loss became NaN or inf. The last good checkpoint is kept."""


def make_optimizer(params, cfg: Config) -> torch.optim.Optimizer:
    """Table 3's optimizer (AdamW or Adam), or SGD with momentum 0.9 (not in the paper; its updates
    are linear in the gradient, where Adam's first step is its sign, so runs that differ by float
    rounding stay close: the data-parallel equivalence tests use it). fused: one kernel for the
    whole update, about 10x faster than the per-tensor loop on CPU (3.2 ms -> 0.3 ms a DT block
    step); see match_layout for what it asks of a resume."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, fused=True)
    opt_class = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt_class(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def match_layout(opt: torch.optim.Optimizer) -> None:
    """Give each loaded optimizer state tensor its parameter's memory layout. A checkpoint stores
    tensors contiguous, but a channels_last conv weight's moments must be channels_last too: the
    fused Adam kernel walks parameter, gradient and moments as flat memory, so a layout mismatch
    would pair the wrong elements (found by the resume-equals-uninterrupted test)."""
    for p, st in opt.state.items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


BUDGET_CHECK_EVERY = 8  # steps between the ranks' checks of a pass's share of a time budget


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2 ** 63)


def block_seed(seed: int, epoch: int, block: int) -> int:
    return (epoch_seed(seed, epoch) * 1_009 + block) % (2 ** 63)


class Trainer:
    def __init__(self, cfg: Config, data: Dataset, out_dir: str | os.PathLike | None = None, quiet: bool = False,
                 dist: Dist = SINGLE, adapt_threads: bool = False):
        self.cfg, self.data, self.dist = cfg.validate(), data, dist
        self.out = Path(out_dir) if out_dir is not None else None
        self.folder = RunFolder(out_dir) if out_dir is not None else None
        self.quiet = quiet or not dist.main
        self.device = device.resolve(cfg.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL collectives and gather_object use it
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(cfg.seed)
        self.model = models.build(cfg, data.image_shape, data.num_classes, data.train).to(self.device)
        check_layout(cfg, self.model.num_blocks, dist)
        self.precision = device.resolve_precision(cfg.precision, self.device)
        self.autocast = device.autocast(self.device, self.precision)
        self.blocks = owned_blocks(self.model.num_blocks, dist.groups, dist.group)  # what this rank trains
        self.block_opts = {t: make_optimizer(self.model.block_parameters(t), cfg)
                           for t in range(1, self.model.num_blocks + 1)}
        shared = self.model.shared_parameters()
        self.shared_opt = make_optimizer(shared, cfg) if shared else None
        self.sync = Collectives(dist, self.model, self.device, cfg.batchnorm_stats) if dist.active else None
        self.forward = self.sync.wrap(self.model) if self.sync else self.model
        self.epoch = 0          # epochs completed
        self.passes_done = 0    # block passes of the current epoch completed (a time budget may stop mid-epoch)
        self.steps_done = 0     # steps of the next pass done (a one-network method's budget stops mid-pass)
        self.rng_state = None   # the RNG state at such a stop, so that the resume continues exactly
        self.best_val = -1.0
        self.history: list[dict] = []
        self.epoch_steps = [0] * self.model.num_blocks  # each block's optimizer steps in the current epoch
        # a single CPU process whose threads were not chosen: as many as the cores others leave idle
        self.threads = device.IdleCoreThreads() if adapt_threads and not dist.active and \
            self.device.type == "cpu" else None
        self.threads_used = {torch.get_num_threads()}
        self.val_rules: dict | None = None  # the last epoch's validation accuracy under each rule
        self.started = time.perf_counter()

    # --- run folder ------------------------------------------------------------------------------
    def prepare_dir(self, resume: bool) -> None:
        """Rank 0 checks and claims the run folder; every rank loads the train state when resuming."""
        if self.out is None:
            if resume:
                raise RunDirError("--resume needs the run folder (--out) to continue")
            return
        error = None
        try:
            state = self.folder.claim(resume, self.dist.main)
            if state is not None:
                self.load_state(state)
                if self.dist.main:
                    self.folder.complete_save(self.model, self.epoch, self.history)
            if self.dist.main:
                self.folder.write_config(self.cfg)
        except (RunDirError, CheckpointError) as e:
            if not self.dist.active:
                raise
            error = str(e)
        agree(self.dist, error)
        epochs = gather(self.dist, (self.epoch, self.passes_done))
        if len(set(epochs)) > 1:
            raise DistributedError(f"the ranks resumed from different points {epochs}: every rank must "
                                   f"see the same {self.out / STATE} (a shared file system)")

    def state(self) -> dict:
        return {"config": self.cfg.to_dict(), "epoch": self.epoch, "passes_done": self.passes_done,
                "steps_done": self.steps_done, "rng_state": self.rng_state,
                "best_val": self.best_val, "history": self.history, "model": self.model.state_dict(),
                "block_opts": [self.block_opts[t].state_dict() for t in sorted(self.block_opts)],
                "shared_opt": self.shared_opt.state_dict() if self.shared_opt else None}

    def load_state(self, state: dict) -> None:
        saved = Config.from_dict(state["config"])
        diff = saved.differences(self.cfg)
        if diff:
            raise RunDirError(f"the checkpoint in {self.out} was trained with different settings "
                              f"({', '.join(diff)}); resume with the same options or use another --out")
        self.model.load_state_dict(models._legacy_keys(state["model"], self.model))
        block_states, shared_state = state["block_opts"], state["shared_opt"]
        if not block_states and self.shared_opt is None:  # before 0.2 one network's optimizer was 'shared'
            block_states, shared_state = [shared_state], None
        for t, s in zip(sorted(self.block_opts), block_states):
            self.block_opts[t].load_state_dict(s)
        if self.shared_opt is not None:
            self.shared_opt.load_state_dict(shared_state)
        for o in self.optimizers():
            match_layout(o)
        self.epoch, self.best_val, self.history = state["epoch"], state["best_val"], state["history"]
        self.passes_done = state.get("passes_done", 0)
        self.steps_done, self.rng_state = state.get("steps_done", 0), state.get("rng_state")

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return list(self.block_opts.values()) + ([self.shared_opt] if self.shared_opt else [])

    def save(self, best: bool) -> None:
        if self.folder is not None:
            self.folder.save(self.state(), self.model, self.epoch, best, self.history)

    # --- one optimisation step ----------------------------------------------------------------
    def lr_at(self, progress: float) -> float:
        """The learning rate after `progress` epochs (a float) of cfg.epochs."""
        if self.cfg.lr_schedule == "cosine":
            return self.cfg.lr * (1 + math.cos(math.pi * min(progress / max(self.cfg.epochs, 1), 1.0))) / 2
        return self.cfg.lr

    def step(self, blocks: list[int], x, y, where: str, progress: float) -> Loss | None:
        """One optimizer step of the given blocks (1-based; [] when this rank idles at this step of
        a parallel run but still takes part in averaging the shared gradients). Returns the loss
        (None when idle)."""
        opts = [self.block_opts[t] for t in blocks] + ([self.shared_opt] if self.shared_opt else [])
        for o in opts:
            for group in o.param_groups:
                group["lr"] = self.lr_at(progress)
            o.zero_grad(set_to_none=True)
        loss, bad = None, False
        if blocks:
            with torch.autocast(**self.autocast):
                loss = Loss.of(self.forward(x, y, blocks if self.model.num_blocks > 1 else None))
            bad = not bool(torch.isfinite(loss.total))

        def message() -> str:
            return (f"non-finite loss ({loss.total.item() if loss else ''}) at {where}; the last good "
                    f"checkpoint{' in ' + str(self.out) if self.out else ''} is kept. Try a lower --lr.")
        if self.sync is None:
            if bad:
                raise DivergenceError(message())
            loss.total.backward()
        else:
            # Averaging the shared gradients (and the status word) overlaps the rest of the backward
            # pass where the method says which part of the loss alone reaches them.
            split = loss is not None and loss.block_part is not None and self.shared_opt is not None
            if split:
                loss.shared_part.backward()
            elif loss is not None:
                loss.total.backward()
            shared = self.sync.start_shared(contributed=loss is not None, bad=bad)
            if split:
                loss.block_part.backward()
            pending = [self.sync.average_block(t) for t in blocks] if self.model.num_blocks > 1 else []
            for h in pending:
                self.sync.finish_block(h)
            if self.sync.finish_shared(shared):
                raise DivergenceError(message() if bad else "another worker's loss became non-finite (its message "
                                      "names the block and step); the last good checkpoint is kept")
        for o in opts:
            o.step()
        return loss

    def _batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of a global training batch as the network takes it: augmented if asked
        (the whole global batch, so a data shard's images get the crops one process would give them),
        on the run's device, in the chosen layout."""
        if self.cfg.augment:
            x = augment(x)
        if self.dist.shards > 1:
            b = len(y) // self.dist.shards
            x, y = x[self.dist.shard * b:(self.dist.shard + 1) * b], y[self.dist.shard * b:(self.dist.shard + 1) * b]
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        return (x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x), y

    # --- one epoch ----------------------------------------------------------------------------
    def passes(self) -> list[list[int] | None]:
        """The epoch's passes over the data, as the block(s) this rank trains in each (None: idle
        while other groups train). Paper order: one pass per block (per round of blocks across the
        groups); otherwise one pass training every owned block (all) or a random one (random)."""
        if self.cfg.order == "paper":
            rounds = len(owned_blocks(self.model.num_blocks, self.dist.groups, 0))
            return [[self.blocks[i]] if i < len(self.blocks) else None for i in range(rounds)]
        return [self.blocks]

    def _seed_pass(self, e: int, blocks: list[int] | None) -> torch.Generator:
        """Seed the pass's noise and return its data-order generator. Paper order: from (seed, epoch,
        block); other orders: from (seed, epoch), with noise of its own per block group. Data shards
        of a group draw the same noise in deterministic mode (each keeps its slice) and their own
        otherwise."""
        cfg, d = self.cfg, self.dist
        if cfg.order == "paper":
            s = block_seed(cfg.seed, e, blocks[0] if blocks else 0)
            order_seed = s
        else:
            order_seed = epoch_seed(cfg.seed, e)
            s = block_seed(cfg.seed, e, self.model.num_blocks + 1 + d.group) if d.groups > 1 else order_seed
        if d.shards > 1 and not cfg.deterministic:
            s = (s * 7_919 + 1 + d.shard) % (2 ** 63)
        torch.manual_seed(s)
        return torch.Generator().manual_seed(order_seed)

    def train_epoch(self, bar: tqdm | None = None) -> tuple[dict, bool]:
        """Train the passes of epoch self.epoch + 1 not yet done. Returns the epoch's mean loss parts
        and whether the epoch finished (False: the time budget ran out).

        The time budget is checked after every block pass, and for a one-network method (whose
        single pass is the whole epoch) after every step in a single process: such a stop records the
        step and the RNG state, so that a resume skips the pass's done batches and continues exactly."""
        cfg, e = self.cfg, self.epoch + 1
        self.model.train()
        n_batches = len(self.data.train) // cfg.batch_size
        sums: dict = {}
        passes = self.passes()
        step_budget = len(passes) == 1 and not self.dist.active and cfg.minutes is not None
        # Paper order under a budget: the budget left is divided among the epoch's passes left, so a
        # budget shorter than the epoch trains every block on its share instead of leaving the last
        # blocks untrained (a pass that ends early hands its leftover time on to the next ones).
        share_budget = len(passes) > 1 and cfg.minutes is not None
        sharded = noise.sharded(self.dist.shard, self.dist.shards) if cfg.deterministic else contextlib.nullcontext()
        with sharded:
            for i in range(self.passes_done, len(passes)):
                blocks = passes[i]
                deadline = self._pass_deadline(len(passes) - i) if share_budget else None
                gen = self._seed_pass(e, blocks)
                if bar is not None and blocks and self.model.num_blocks > 1 and cfg.order == "paper":
                    bar.set_postfix_str(f"block {blocks[0]}/{self.model.num_blocks}")
                data = batches(self.data.train, cfg.batch_size, gen, drop_last=True)
                first = self.steps_done if i == self.passes_done else 0
                for step in range(n_batches):
                    x, y = next(data)
                    if blocks is not None and cfg.order == "random":
                        blocks = [int(torch.randint(1, self.model.num_blocks + 1, (1,), generator=gen))]
                    if step < first:  # done before a budget stop: the same draws, no step
                        continue
                    if self.threads is not None and step % 25 == 0 and self.threads.adjust():
                        self.threads_used.add(torch.get_num_threads())
                        if bar is not None:
                            bar.set_postfix_str(f"{torch.get_num_threads()} thread(s): a core is busy elsewhere"
                                                if torch.get_num_threads() < self.threads.cores else "")
                    if step == first and self.rng_state is not None:
                        torch.set_rng_state(self.rng_state)
                        self.rng_state = None
                    where = f"epoch {e}, " + (f"block {blocks[0]}, " if blocks and len(blocks) == 1
                                              and self.model.num_blocks > 1 else "") + f"step {step}"
                    if blocks is None:  # idle: only the shared gradients' averaging
                        loss = self.step([], None, None, where, self.epoch + step / n_batches)
                    else:
                        loss = self.step(blocks, *self._batch(x, y), where, self.epoch + step / n_batches)
                    if loss is not None:
                        self._record(sums, blocks, loss)
                    for t in blocks or []:
                        self.epoch_steps[t - 1] += 1
                    if bar is not None:
                        bar.update()
                    if step_budget and step + 1 < n_batches and self._budget_spent():
                        self.steps_done, self.rng_state = step + 1, torch.get_rng_state()
                        return self._means(sums), False
                    if deadline is not None and step + 1 < n_batches and self._past(deadline, step):
                        if bar is not None:
                            bar.update(n_batches - step - 1)
                        break  # this pass's share of the budget is spent: the next block takes its turn
                self.passes_done, self.steps_done = i + 1, 0
                if not share_budget and i + 1 < len(passes) and self._budget_spent():
                    return self._means(sums), False
        if self.sync is not None:
            self.sync.gather_blocks(self.blocks, self.block_opts, match_layout)
            self.sync.check_in_sync(self.blocks)
        self.passes_done = 0
        return self._means(sums), True

    def _record(self, sums: dict, blocks: list[int], loss: Loss) -> None:
        per_block = type(self.model).per_block_metrics
        for k, v in loss.logged().items():
            v = v.detach().float().reshape(-1).cpu()
            if k in per_block:
                for t, value in zip(blocks, v.tolist()):
                    s, n = sums.setdefault(("per_block", k), ({}, {}))
                    s[t], n[t] = s.get(t, 0.0) + value, n.get(t, 0) + 1
            else:
                s, n = sums.get(k, (0.0, 0))
                sums[k] = (s + float(v.mean()), n + 1)

    def _means(self, sums: dict) -> dict:
        out = {}
        for k, (s, n) in sums.items():
            if isinstance(k, tuple):
                out[f"{k[1]}_per_block"] = [s[t] / n[t] if t in s else float("nan")
                                            for t in range(1, self.model.num_blocks + 1)]
            else:
                out[k] = s / max(n, 1)
        return out

    def _pass_deadline(self, passes_left: int) -> float:
        """When the pass starting now must end: now plus its share of the budget left."""
        now = time.perf_counter()
        return now + max(0.0, self.started + 60 * self.cfg.minutes - now) / passes_left

    def _past(self, deadline: float, step: int) -> bool:
        """Whether a pass's deadline is past, after at least one step of it. Ranks step together, so
        rank 0's clock decides for every rank, asked every BUDGET_CHECK_EVERY steps (a collective)."""
        if not self.dist.active:
            return time.perf_counter() >= deadline
        if (step + 1) % BUDGET_CHECK_EVERY:
            return False
        return bool(gather(self.dist, time.perf_counter() >= deadline)[0])

    def _budget_spent(self) -> bool:
        """Whether the time budget is spent; rank 0's clock decides for every rank."""
        if self.cfg.minutes is None:
            return False
        spent = time.perf_counter() - self.started >= 60 * self.cfg.minutes
        if self.dist.active:
            spent = bool(gather(self.dist, spent)[0])
        return spent

    # --- evaluation during training ----------------------------------------------------------------
    def validate(self, last: bool = False) -> float:
        """Validation accuracy under the paper's rule (one inference run), which chooses the best
        checkpoint. After the last epoch the final evaluation's rules are scored in the same pass (the
        image features computed once) and kept in self.val_rules: the rule for the test set is chosen
        from them, with no second pass over the validation images."""
        if not last:
            return accuracy_runs(self.model, self.data.val, runs=1, seed=self.cfg.seed)[0]
        self.val_rules = rules_accuracy(self.model, self.data.val, 1, seed=self.cfg.seed,
                                        rules=("stochastic", "no-noise"), progress=None if self.quiet else "validating")
        return self.val_rules["stochastic"]["mean"]

    def fit(self, resume: bool = False, log=print, stop=None) -> dict:
        """Train until cfg.epochs, the time budget (cfg.minutes), or until stop(history) is true after
        an epoch (history: the per-epoch entries, resumed ones included; single process)."""
        self.prepare_dir(resume)
        passes_per_epoch = len(self.passes())
        n_batches = len(self.data.train) // self.cfg.batch_size
        while self.epoch < self.cfg.epochs:
            t0 = time.perf_counter()
            budget = f", budget {self.cfg.minutes:g} min" if self.cfg.minutes else ""
            with tqdm(total=(passes_per_epoch - self.passes_done) * n_batches, leave=False, unit="step",
                      desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}{budget}", disable=self.quiet or None,
                      postfix=self._bar_postfix()) as bar:
                self.epoch_steps = [0] * self.model.num_blocks
                stats, finished = self.train_epoch(bar)
            stats["peak_memory_mb"] = gather(self.dist, device.peak_memory_mb(self.device))
            if self.threads is not None:  # the thread counts this epoch used, as other processes came and went
                stats["threads"], self.threads_used = sorted(self.threads_used), {torch.get_num_threads()}
            # each block's steps this epoch (a group's shards step alike; other groups count 0)
            stats["steps_per_block"] = [max(c) for c in zip(*gather(self.dist, self.epoch_steps))]
            train_s = time.perf_counter() - t0
            done_fraction = (self.passes_done + self.steps_done / n_batches) / passes_per_epoch
            cut = finished and self.cfg.order == "paper" and passes_per_epoch > 1 and \
                sum(stats["steps_per_block"]) < n_batches * self.model.num_blocks
            if cut:  # every pass ran, each on its share of the budget
                done_fraction = sum(stats["steps_per_block"]) / (n_batches * self.model.num_blocks)
            if finished:
                self.epoch += 1
            elif self.model.num_blocks > 1:
                stats["blocks_trained"] = self.passes_done  # a budget stop inside the epoch
            else:
                stats["steps_trained"] = self.steps_done
            stop_now = not finished or self._budget_spent()
            if self.dist.main:
                last = stop_now or self.epoch >= self.cfg.epochs
                with self.alone():
                    val = self.validate(last) if len(self.data.val) else float("nan")
                best = val > self.best_val
                self.best_val = max(val, self.best_val)
                entry = {"epoch": self.epoch - 1 + done_fraction if cut else
                         self.epoch + (0 if finished else done_fraction),
                         **stats, "val_acc": val, "train_seconds": train_s}
                if self.cfg.test_curve:  # for plots only: selection never looks at it
                    entry["test_acc"] = accuracy_runs(self.model, self.data.test, runs=1, seed=self.cfg.seed)[0]
                entry["seconds"] = time.perf_counter() - t0
                self.history.append(entry)
                self.save(best)
                if log:
                    losses = "  ".join(f"{k} {v:.4f}" for k, v in stats.items() if isinstance(v, float))
                    what = f"epoch {self.epoch}/{self.cfg.epochs}" if finished else \
                        f"time budget spent {100 * done_fraction:.0f}% into epoch {self.epoch + 1}"
                    if cut:
                        steps = stats["steps_per_block"]
                        what += (f" (time budget: each block trained on its share, {min(steps)}-{max(steps)} "
                                 f"of {n_batches} steps)")
                    rules = "".join(f", {k} {v['mean']:.2f}%" for k, v in (self.val_rules or {}).items()
                                    if k != "stochastic" and last)
                    log(f"{what}: {losses}  val acc {val:.2f}%{rules}  ({train_s:.0f}s train)")
                stop_now = stop_now or (stop is not None and stop(self.history))
            if self.dist.active:
                from .parallel import long_wait
                long_wait()  # rank 0 validated and wrote alone
                stop_now = bool(gather(self.dist, stop_now)[0])
            if stop_now:
                break
        return {"epochs": self.epoch, "best_val": self.best_val}

    def steps_per_block(self) -> list[int] | None:
        """Each block's optimizer steps over the whole run (None when a resumed history predates
        the count)."""
        counts = [h.get("steps_per_block") for h in self.history]
        if not counts or any(c is None for c in counts):
            return None
        return [sum(c) for c in zip(*counts)]

    def alone(self):
        """Rank 0 validates and evaluates while the other ranks wait: on a CPU it may then use every
        core of the machine, not its share (a context manager; a no-op in a single process)."""
        if not self.dist.active or self.device.type != "cpu":
            return contextlib.nullcontext()
        return device.threads(os.cpu_count())

    def _bar_postfix(self) -> str:
        if self.model.num_blocks == 1 or self.cfg.order != "paper":
            return ""
        return f"blocks {self.blocks[0]}-{self.blocks[-1]}" if len(self.blocks) > 1 else f"block {self.blocks[0]}"


def final_evaluation(model, data: Dataset, runs: int = 5, ensemble: int = 0, train_images: int = 0,
                     seed: int = 0, ensemble_runs: int = 1, val_rules: dict | None = None,
                     progress: bool = False) -> dict:
    """Test accuracy of a trained model under every inference rule: the paper's stochastic rule and
    no-noise over `runs` inference runs each, and with ensemble = K > 0 the K-chain ensemble over
    `ensemble_runs` runs (each of K chains). With train_images > 0 also the training accuracy (paper's
    rule, one run) on that many training images (a fixed subset; Table 1's train column).

    The same rules are also scored on the validation split (one run each; val_rules: those the last
    epoch's validation scored already), and the best of them there is named "rule_chosen_on_val":
    which rule to trust for this model is chosen without the test set."""
    rules = ("stochastic", "no-noise", "ensemble") if ensemble else ("stochastic", "no-noise")
    bar = {"progress": "evaluating: test"} if progress else {}
    # one pass over each split for all its rules: each batch's image features are computed once
    out = {"test": rules_accuracy(model, data.test, runs, ensemble, seed, rules, ensemble_runs=ensemble_runs, **bar)}
    if len(data.val):
        val = dict(val_rules or {})
        missing = tuple(r for r in rules if (f"ensemble-{ensemble}" if r == "ensemble" else r) not in val)
        if missing:
            bar = {"progress": "evaluating: validation"} if progress else {}
            val.update(rules_accuracy(model, data.val, 1, ensemble, seed, missing, ensemble_runs=1, **bar))
        out["val"] = {k: val[k] for k in out["test"]}  # in the test's order: ties go to the paper's rule
        out["rule_chosen_on_val"] = max(out["val"], key=lambda r: out["val"][r]["mean"])
    if train_images:  # one inference run: the spread that matters here is the seeds'
        out["train"] = rules_accuracy(model, subset(data.train, train_images, 0), 1, 1, seed, ("stochastic",))
        out["train_images"] = min(train_images, len(data.train))
    return out


def evaluation_estimate(model, data: Dataset, runs: int, ensemble: int, ensemble_runs: int) -> float:
    """Seconds the final evaluation will take, from timing its plan on the first 100 test images."""
    rules = ("stochastic", "no-noise", "ensemble") if ensemble else ("stochastic", "no-noise")
    n = min(100, len(data.test))
    if n == 0:
        return 0.0
    t = time.perf_counter()
    rules_accuracy(model, subset(data.test, n, 0), runs, ensemble, 0, rules, ensemble_runs=ensemble_runs)
    return (time.perf_counter() - t) * len(data.test) / n


def evaluation_warning(guess: float, train_s: float, runs: int, ensemble: int, images: int) -> str | None:
    """What to say before a final evaluation that will outlast the training (and a minute)."""
    if guess <= max(60.0, train_s):
        return None
    plan = f"{runs} run(s) of each rule" + (f" and the {ensemble}-chain ensemble" if ensemble else "")
    return (f"the final evaluation ({plan} on {images:,} test images) will take about {guess / 60:.1f} min, longer "
            f"than the training ({train_s / 60:.1f} min); --eval-runs, --ensemble and the method's --steps "
            "set its cost")


def untrained(steps_per_block: list[int] | None) -> list[int]:
    return [t for t, n in enumerate(steps_per_block or [], 1) if n == 0]


def run(cfg: Config, data: Dataset, out=None, eval_runs: int = 5, resume: bool = False, quiet: bool = False,
        dist: Dist = SINGLE, log=print, t0: float | None = None, stop=None, ensemble: int = 0,
        train_images: int = 0, ensemble_runs: int = 1, adapt_threads: bool = False):
    """Train (or finish training) a run, then evaluate the final model on the test set (see
    final_evaluation), written to result.json when there is a run folder. Returns (trainer, result);
    result is None on ranks > 0. adapt_threads: torch's CPU threads follow the idle cores
    (device.IdleCoreThreads)."""
    t0 = time.perf_counter() if t0 is None else t0
    trainer = Trainer(cfg, data, out, quiet=quiet, dist=dist, adapt_threads=adapt_threads)
    summary = trainer.fit(resume=resume, log=log if dist.main else None, stop=stop)
    if not dist.main:
        return trainer, None
    train_s = sum(h["train_seconds"] for h in trainer.history)
    steps = trainer.steps_per_block()
    if untrained(steps) and log:
        log(f"WARNING: {describe_untrained(untrained(steps), len(steps))}")
    if trainer.threads is not None:
        trainer.threads.adjust()
    with trainer.alone():
        if log and not quiet:
            warning = evaluation_warning(evaluation_estimate(trainer.model, data, eval_runs, ensemble, ensemble_runs),
                                         train_s, eval_runs, ensemble, len(data.test))
            if warning:
                log(warning)
        t_eval = time.perf_counter()
        ev = final_evaluation(trainer.model, data, eval_runs, ensemble, train_images, ensemble_runs=ensemble_runs,
                              val_rules=trainer.val_rules, progress=not quiet)
    stochastic = ev["test"]["stochastic"]
    result = {"test_acc_mean": stochastic["mean"], "test_acc_se": stochastic["se"],
              "test_acc_runs": stochastic["runs"], **ev, "epochs": summary["epochs"],
              "epochs_fraction": trainer.history[-1]["epoch"] if trainer.history else 0,
              "best_val_acc": summary["best_val"], "wall_seconds": time.perf_counter() - t0,
              "evaluation_seconds": time.perf_counter() - t_eval, "train_seconds": train_s,
              "steps_per_block": steps, "untrained_blocks": untrained(steps),
              "model": "final epoch", "precision": trainer.precision, "device": str(trainer.device),
              "workers": dist.world, "block_groups": dist.groups, "machine": describe(trainer.device),
              **provenance()}
    if trainer.folder is not None:
        trainer.folder.write_result(result)
    return trainer, result


def worker(cfg_dict: dict, out: str, options: dict) -> None:
    """The entrypoint of one process of a parallel run (parallel.launch): join the group, train,
    evaluate on rank 0. After an elastic restart it resumes from the last checkpoint on its own."""
    from . import parallel
    from .device import threads
    cfg = Config.from_dict(cfg_dict)
    with threads(options.get("threads")):
        d = parallel.init_from_env(cfg.device, models.blocks_for(cfg), cfg.block_groups)
        finished = False
        try:
            restarted = parallel.restart_count() > 0 and (Path(out) / STATE).exists()
            resume = options.get("resume", False) or restarted
            data = load_data(cfg, options.get("data_dir"), options.get("download", False))
            if d.main:
                print(describe_start(cfg, data, out, d), flush=True)
                if restarted:
                    print(f"restart {parallel.restart_count()} by the elastic agent: resuming from {Path(out) / STATE}",
                          flush=True)
            _, result = run(cfg, data, out, options.get("eval_runs", 5), resume, options.get("quiet", False), d,
                            ensemble=options.get("ensemble", 0), train_images=options.get("train_images", 0),
                            adapt_threads=options.get("threads") is None)
            if d.main:
                print(describe_result(result, cfg), flush=True)
            finished = True
        finally:
            sys.stdout.flush()
            parallel.shutdown(wait=finished)


def describe_start(cfg: Config, data: Dataset, out, d: Dist) -> str:
    layout = f"; {d.world} workers ({d.groups} block group(s) x {d.shards} data shard(s))" if d.active else ""
    return (f"data: {cfg.dataset} from {data.source}: {len(data.train)} train / {len(data.val)} val / "
            f"{len(data.test)} test; run folder {out if out is not None else '(in memory)'}{layout}")


def describe_untrained(blocks: list[int], num_blocks: int) -> str:
    return (f"{len(blocks)} of {num_blocks} blocks never trained (block(s) {', '.join(map(str, blocks))}): "
            "give the run more time (--minutes) or let the budget reach every block (--order paper)")


def describe_result(result: dict, cfg: Config | None = None) -> str:
    """The run's headline: the test accuracy under the rule chosen on validation, the paper's rule
    and the paper's own figure beside it, and where the time went."""
    from .report import PAPER_TABLE1  # a leaf of tables; report imports the trainer's neighbours
    test = result["test"]
    chosen = result.get("rule_chosen_on_val", "stochastic")
    r = test[chosen]
    n = len(r["runs"])
    lines = [f"test accuracy {r['mean']:.2f} +- {r['se']:.2f}% ({chosen} rule, chosen on validation; "
             f"final model, {n} inference run{'s' if n > 1 else ''})"]
    others = [f"{rule} {v['mean']:.2f} +- {v['se']:.2f}%" for rule, v in test.items() if rule != chosen]
    paper = PAPER_TABLE1.get((cfg.method, cfg.embedding, cfg.dataset)) if cfg is not None else None
    beside = ([f"the paper's rule (stochastic, Eq. 3): {test['stochastic']['mean']:.2f} +- "
               f"{test['stochastic']['se']:.2f}%"] if chosen != "stochastic" else [])
    beside += [o for o in others if not o.startswith("stochastic ")]
    if paper:
        beside.append(f"the paper (Table 1, its full training): {paper['test'][0]:.2f}%")
    if beside:
        lines.append("  " + "; ".join(beside))
    lines.append(f"  wall time {result['wall_seconds']:.0f} s: training {result['train_seconds']:.0f} s, "
                 f"evaluation {result['evaluation_seconds']:.0f} s")
    if result.get("untrained_blocks"):
        lines.append("  WARNING: " + describe_untrained(result["untrained_blocks"], len(result["steps_per_block"])))
    return "\n".join(lines)


__all__ = ["Trainer", "run", "final_evaluation", "load_data", "DivergenceError", "RunDirError", "mean_se",
           "LAST", "BEST", "STATE", "CONFIG", "METRICS", "RESULT"]
