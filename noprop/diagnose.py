"""What the inference chain really does (``noprop diagnose``).

For NoProp-DT, the accuracy of each block t's own logits (argmax over classes) when the block is fed

  (a) ``q_sample``       z_{t-1} ~ q(z_{t-1} | y): its training input, built from the label (a
                         diagnostic only: inference never does this);
  (b) ``chain``          the chain's own z_{t-1}, run from z_0 ~ N(0, I) with the paper's noise
                         (Eq. 3), and ``chain_no_noise`` without the sqrt(c_t) eps term;
  (c) ``pure_noise``     z ~ N(0, I), whatever t;
  (d) ``zeros``          z = 0;

and the output head applied to z_t along the chain (``head_chain``, ``head_chain_no_noise``: the
last entry is the model's prediction). A block that classifies as well from pure noise or zeros as
from its input is an image classifier that ignores z; a chain whose blocks get worse along it costs
accuracy. Finally the images are shuffled against the labels: accuracy must fall to chance (1/m),
which shows the numbers come from the images alone.

For any other method: the head (``classify``) on the latent after each inference step, with and
without noise, and the shuffled check.
"""

from __future__ import annotations

import torch

from .data import Split
from .device import randn
from .evaluation import batches_of_images, default_autocast, predict
from .method import Method
from .schedule import q_sample

DT_FEEDS = ("q_sample", "chain", "chain_no_noise", "pure_noise", "zeros")


@torch.no_grad()
def chain_analysis(model: Method, split: Split, seed: int = 0, batch_size: int = 1000) -> dict:
    """Accuracies (%) per step, as described in the module docstring, plus "chance" and
    "shuffled" (the full prediction against labels shuffled across images)."""
    model.eval()
    dev = next(model.parameters()).device
    channels_last = getattr(getattr(model, "config", None), "channels_last", False)
    dtype = default_autocast(model)
    gen = torch.Generator().manual_seed(seed)
    is_dt = hasattr(model, "blocks") and hasattr(model, "u_hat") and hasattr(model, "schedule") \
        and hasattr(model.schedule, "step")
    counts: dict[str, torch.Tensor] = {}

    def add(key: str, t: int, logits: torch.Tensor, y: torch.Tensor, steps: int) -> None:
        counts.setdefault(key, torch.zeros(steps))[t - 1] += (logits.argmax(-1) == y).sum().cpu().float()

    for i, x in enumerate(batches_of_images(split.x, batch_size, channels_last, dev)):
        y = split.y[i * batch_size:(i + 1) * batch_size].to(dev)
        with torch.autocast(dev.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            for noise_on, suffix in ((True, ""), (False, "_no_noise")):
                # the same z_0 for both rules: they differ only in the eps terms
                chain_gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
                steps = list(model.chain(x, noise=noise_on, generator=chain_gen))
                for s in steps:
                    add("head_chain" + suffix, s.t, model.classify(s.z), y, len(steps))
                    if is_dt:
                        add("chain" + suffix, s.t, s.logits, y, len(steps))
            if is_dt:
                T, u = model.T, model.embed(y)
                for t in range(1, T + 1):
                    feeds = {"q_sample": q_sample(u, model.alpha_bar[t - 1], randn(u.shape, gen, dev)),
                             "pure_noise": randn(u.shape, gen, dev), "zeros": torch.zeros_like(u)}
                    for key, z in feeds.items():
                        add(key, t, model.u_hat(t, z, x)[0], y, T)
    n = len(split)
    out = {k: (100.0 * v / n).tolist() for k, v in counts.items()}
    out["chance"] = 100.0 / model.num_classes
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    shuffled = Split(split.x, split.y[perm])
    out["shuffled"] = 100.0 * (predict(model, shuffled, seed=seed) == shuffled.y).float().mean().item()
    out["kind"] = "dt" if is_dt else "chain"
    return out


def table(d: dict) -> str:
    """The analysis as a plain-text table, one row per step."""
    keys = [k for k in ("q_sample", "chain", "chain_no_noise", "pure_noise", "zeros", "head_chain",
                        "head_chain_no_noise") if k in d]
    names = {"q_sample": "(a) q(z|y)", "chain": "(b) chain", "chain_no_noise": "(b) no-noise",
             "pure_noise": "(c) N(0,I)", "zeros": "(d) zeros", "head_chain": "head chain",
             "head_chain_no_noise": "head no-noise"}
    steps = len(d[keys[0]])
    show = range(steps) if steps <= 20 else sorted({0, *range(steps // 10 - 1, steps, steps // 10)})
    lines = [f"{'t':>5} " + " ".join(f"{names[k]:>14}" for k in keys)]
    for t in show:
        lines.append(f"{t + 1:>5} " + " ".join(f"{d[k][t]:14.2f}" for k in keys))
    lines.append(f"images shuffled against labels: {d['shuffled']:.2f}% (chance {d['chance']:.2f}%)")
    return "\n".join(lines)
