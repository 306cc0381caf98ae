"""The training loop: one method's blocks, their optimizers, one optimisation step, the epochs.

Every method is trained as ``model.num_blocks`` blocks that learn independently (NoProp-DT: its T
blocks; a one-network method: one), each with its own optimizer, plus one optimizer for the
parameters all blocks share (NoProp-DT's head and a learned W_Embed). Three orders:

- ``paper``  (Alg. 1): each epoch trains block 1 over the whole training set, then block 2, ... (a
              one-network method simply trains over the data);
- ``all``:    every block on every minibatch, one pass over the data per epoch (CE + KL once, each
              block's weighted L2: each block still gets exactly the gradient of its own L_t);
- ``random``: one block drawn uniformly per minibatch (the unbiased estimator of Eq. 58).

With one pass per epoch a time budget is checked after every step and a resume continues inside the
pass. Where the rest lives: the epoch's passes, their seeds and budget shares in passes.py; the
optimizers and learning rate in optim.py; every collective of a parallel run (the distributed half
of a step: gradient averaging, the status word) in parallel.py; the run folder in runfolder.py;
model building in models.py; the final evaluation in evaluation.py; a whole run (train, evaluate,
result.json, the printed lines, a parallel worker's entry point) in runner.py.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import device, models, noise
from .config import Config
from .data import Dataset, augment, batches
from .errors import DivergenceError
from .evaluation import accuracy_runs, rules_accuracy
from .method import Loss
from .metrics import LossMeans, epoch_line
from .optim import lr_at, make_optimizer, match_layout
from .parallel import SINGLE, Collectives, Dist, check_layout, gather, owned_blocks
from .passes import TimeBudget, plan, seed_pass
from .runfolder import RunFolder, open_run, train_state


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
        self.budget = TimeBudget(cfg.minutes, dist)

    # --- optimizers and checkpoints ------------------------------------------------------------
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return list(self.block_opts.values()) + ([self.shared_opt] if self.shared_opt else [])

    def save(self, best: bool) -> None:
        if self.folder is not None:
            self.folder.save(train_state(self), self.model, self.epoch, best, self.history)

    # --- one optimisation step ----------------------------------------------------------------
    def step(self, blocks: list[int], x, y, where: str, progress: float) -> Loss | None:
        """One optimizer step of the given blocks (1-based; [] when this rank idles at this step of
        a parallel run but still takes part in averaging the shared gradients). Returns the loss
        (None when idle)."""
        opts = [self.block_opts[t] for t in blocks] + ([self.shared_opt] if self.shared_opt else [])
        for o in opts:
            for group in o.param_groups:
                group["lr"] = lr_at(self.cfg, progress)
            o.zero_grad(set_to_none=True)
        loss = None
        if blocks:
            with torch.autocast(**self.autocast):
                loss = Loss.of(self.forward(x, y, blocks if self.model.num_blocks > 1 else None))
        bad = loss is not None and not bool(torch.isfinite(loss.total))
        if self.sync is None:  # one process: the whole step is here
            if bad:
                raise DivergenceError(self._diverged(loss, where))
            loss.total.backward()
        elif self.sync.backward(loss, blocks, bad):  # averaged gradients and every rank's status
            raise DivergenceError(self._diverged(loss, where) if bad else "another worker's loss became "
                                  "non-finite (its message names the block and step); the last good checkpoint is kept")
        for o in opts:
            o.step()
        return loss

    def _diverged(self, loss: Loss, where: str) -> str:
        return (f"non-finite loss ({loss.total.item()}) at {where}; the last good "
                f"checkpoint{' in ' + str(self.out) if self.out else ''} is kept. Try a lower --lr.")

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
        return plan(self.cfg.order, self.model.num_blocks, self.dist, self.blocks)

    def train_epoch(self, bar: tqdm | None = None) -> tuple[dict, bool]:
        """Train the passes of epoch self.epoch + 1 not yet done. Returns the epoch's mean loss parts
        and whether the epoch finished (False: the time budget ran out).

        The time budget is checked after every block pass, and for a one-network method (whose
        single pass is the whole epoch) after every step in a single process: such a stop records the
        step and the RNG state, so that a resume skips the pass's done batches and continues exactly."""
        cfg, e = self.cfg, self.epoch + 1
        self.model.train()
        n_batches = len(self.data.train) // cfg.batch_size
        means = LossMeans(self.model.num_blocks, type(self.model).per_block_metrics)
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
                deadline = self.budget.pass_deadline(len(passes) - i) if share_budget else None
                gen = seed_pass(cfg, self.dist, self.model.num_blocks, e, blocks)
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
                        means.add(loss, blocks)
                    for t in blocks or []:
                        self.epoch_steps[t - 1] += 1
                    if bar is not None:
                        bar.update()
                    if step_budget and step + 1 < n_batches and self.budget.spent():
                        self.steps_done, self.rng_state = step + 1, torch.get_rng_state()
                        return means.means(), False
                    if deadline is not None and step + 1 < n_batches and self.budget.past(deadline, step):
                        if bar is not None:
                            bar.update(n_batches - step - 1)
                        break  # this pass's share of the budget is spent: the next block takes its turn
                self.passes_done, self.steps_done = i + 1, 0
                if not share_budget and i + 1 < len(passes) and self.budget.spent():
                    return means.means(), False
        if self.sync is not None:
            self.sync.gather_blocks(self.blocks, self.block_opts, match_layout)
            self.sync.check_in_sync(self.blocks)
        self.passes_done = 0
        return means.means(), True

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
        open_run(self, resume)
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
            stop_now = not finished or self.budget.spent()
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
                    log(epoch_line(stats, self.epoch, self.cfg.epochs, finished, done_fraction, cut, n_batches,
                                   val, self.val_rules if last else None, train_s))
                stop_now = stop_now or (stop is not None and stop(self.history))
            if self.dist.active:
                from .parallel import long_wait
                long_wait()  # rank 0 validated and wrote alone
                stop_now = bool(gather(self.dist, stop_now)[0])
            if stop_now:
                break
        return {"epochs": self.epoch, "best_val": self.best_val}

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
