"""Training the neural alignment controller (esva/models/controllers.py `Neural`) on cached features.

Self-supervised, so it applies to any corpus: each training clip's video features are warped by a known drift
or jump delta(t) (`warp`), and the target track is the model's own clip-level offset on the unwarped clip plus
delta at each window's centre. No offset labels are read. The aligner stays frozen; only the controller's
small network trains (`esva.models.controllers.fit_neural`: smooth-L1 tracking error).
"""

from __future__ import annotations

import numpy as np
import torch

from esva.models.align import lengths_to_mask, to_rate, window_scores
from esva.models.controllers import Neural, fit_neural
from esva.train.stage1 import Clip, _batches, _to, collate


def aligner_inputs(model, batch: dict) -> tuple[torch.Tensor, ...]:
    """The aligner's inputs for a collated batch, as FusionClassifier.forward makes them: MSFE audio and the
    aligned video stream at align.rate, with masks."""
    x, lens = batch["hubert"], batch["hubert_len"]
    m = lengths_to_mask(lens, x.shape[1])
    if model.msfe is not None:
        x = model.msfe(x, m)
    a, la = to_rate(x, lens, model.rates["hubert"], model.align_rate)
    vn = model.align_video
    v, lv = to_rate(batch[vn], batch[f"{vn}_len"], model.rates[vn], model.align_rate)
    return a, v, lengths_to_mask(la, a.shape[1]), lengths_to_mask(lv, v.shape[1])


def warp(v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """v'(u) = v(u - delta(u)) by linear interpolation (frames; delta (B, T)): a clip whose offset was tau now
    has tau + delta(u) at frame u. Frames read from outside the clip are zero."""
    b, t, _ = v.shape
    src = torch.arange(t, dtype=v.dtype, device=v.device)[None, :] - delta
    lo = src.floor()
    frac = (src - lo)[..., None]
    lo = lo.long()

    def take(idx):
        ok = ((idx >= 0) & (idx < t))[..., None].to(v.dtype)
        return v.gather(1, idx.clamp(0, t - 1)[..., None].expand(-1, -1, v.shape[2])) * ok

    return take(lo) * (1 - frac) + take(lo + 1) * frac


def _deltas(rng: np.random.Generator, n: int, t: int, k: int, base: np.ndarray) -> np.ndarray:
    """One drift (half) or jump (half) per clip, kept so that base + delta stays within +-(K - 1) frames."""
    out = np.zeros((n, t))
    u = np.arange(t)
    for i in range(n):
        size = rng.uniform(1.5, k / 2.0) * rng.choice([-1, 1])
        if i % 2 == 0:
            out[i] = np.linspace(-size / 2, size / 2, t)
        else:
            out[i] = np.where(u >= int(rng.uniform(0.3, 0.7) * t), size, 0.0)
        out[i] = np.clip(base[i] + out[i], -(k - 1), k - 1) - base[i]
    return out


@torch.no_grad()
def neural_batches(model, clips: list[Clip], use, batch_size: int, seed: int, repeats: int = 2) -> list[tuple]:
    """(D (B, N, S), C (B, S), valid (B, N, S), truth (B, N)) from warped training clips (see the module doc)."""
    model.eval()
    al = model.aligner
    device = next(model.parameters()).device
    rng = np.random.default_rng([seed, 31])
    out = []
    for _ in range(repeats):
        order = [clips[i] for i in rng.permutation(len(clips))]
        for part in _batches(order, batch_size):
            a, v, ma, mv = aligner_inputs(model, _to(collate(part, use), device))
            base = al(a, v, ma, mv)["tau_star"]
            base = base.cpu().numpy() if torch.is_tensor(base) else base
            delta = torch.as_tensor(_deltas(rng, len(part), v.shape[1], al.k, base), dtype=v.dtype, device=v.device)
            vw = warp(v, delta)
            pa, pv = al.project(a, vw, ma, mv)
            sc = window_scores(pa, pv, ma, mv, al.k, al.window, al.hop)
            n = sc["d_win"].shape[-1]
            centres = (torch.arange(n, device=v.device) * al.hop + (al.window - 1) // 2).clamp(max=v.shape[1] - 1)
            truth = torch.as_tensor(base, dtype=v.dtype, device=v.device)[:, None] + delta[:, centres]
            valid = (sc["win_valid"] & (sc["count"] > 0)[..., None]).transpose(1, 2)
            out.append((sc["d_win"].transpose(1, 2), sc["c_global"], valid, truth))
    return out


def fit_neural_controller(model, clips: list[Clip], use, batch_size: int, seed: int, steps: int, lr: float,
                          ctrl: Neural | None = None) -> tuple[Neural, list[float]]:
    """A neural controller for this model (`ctrl`, trained in place, or a new one), trained on its training
    clips (see the module doc)."""
    torch.manual_seed(seed)
    ctrl = ctrl if ctrl is not None else Neural()
    al = model.aligner
    losses = fit_neural(ctrl, neural_batches(model, clips, use, batch_size, seed), al.alpha, al.beta,
                        al.temperature, steps=steps, lr=lr, seed=seed)
    return ctrl.eval(), losses
