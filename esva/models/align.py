"""Local-global audio-video alignment, eq. 4-6, 8 and 9 of the paper.

Audio (after MSFE) and video frame features are brought to one rate (`align.rate`) and projected to
a shared space (`align.dim`); each projection is centred over the clip's valid frames (so only
temporal dynamics, not a clip's constant look, can correlate) and L2-normalised per frame. For every
offset tau in [-K, K] frames (K = `align.max_shift`), with pairs (a(t), v(t + tau)) where both frames
are valid:
    D_local(tau)  = mean over windows of `align.window` frames of the mean distance ||a - v|| (eq. 4)
    C_global(tau) = mean cosine over all valid pairs, a normalised cross-correlation (eq. 5)
    L_align(tau)  = alpha * D_local(tau) - beta * C_global(tau)                           (eq. 8)
    tau*          = argmin_tau L_align(tau), refined to sub-frame by a parabola            (eq. 9)
Sign: tau > 0 means the video lags the audio (the synthetic corpus' `offset_ms` convention).
Training uses p(tau) = softmax(-L_align / temperature): the video is shifted by the expectation under
p (differentiable), and a cross-clip contrastive term (own video at its best shift against other
clips' videos) keeps the projections from collapsing to a constant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from esva.losses import alignment_objective


def to_rate(x: torch.Tensor, lengths: torch.Tensor, src: float, dst: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample (B, T, D) sequences from `src` to `dst` frames per second (linear), per clip."""
    if abs(src - dst) < 1e-9:
        return x, lengths
    new_len = torch.clamp((lengths.double() * dst / src).round().long(), min=1)
    out = x.new_zeros(x.shape[0], int(new_len.max()), x.shape[2])
    for i in range(x.shape[0]):
        n, m = int(lengths[i]), int(new_len[i])
        seq = x[i, :n].T[None]  # (1, D, n)
        out[i, :m] = F.interpolate(seq, size=m, mode="linear", align_corners=False)[0].T
    return out, new_len


def lengths_to_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


def _shifted(v: torch.Tensor, mv: torch.Tensor, k: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """v (B, Tv, D) -> (B, 2K+1, T, D) with [:, j, s] = v[:, s + tau_j], tau_j = j - K; masks alike."""
    b, tv, d = v.shape
    pad = k + max(0, t - tv)
    vp = F.pad(v, (0, 0, k, pad))
    mp = F.pad(mv, (k, pad))
    idx = torch.arange(t, device=v.device)[None, :] + torch.arange(2 * k + 1, device=v.device)[:, None]  # (S, T)
    return vp[:, idx], mp[:, idx]


def shift_scores(a: torch.Tensor, v: torch.Tensor, ma: torch.Tensor, mv: torch.Tensor, k: int, window: int):
    """D_local and C_global for every offset: (B, 2K+1) each, plus the valid pair counts."""
    t = a.shape[1]
    vs, ms = _shifted(v, mv, k, t)  # (B, S, T, D), (B, S, T)
    pair = ma[:, None, :] & ms  # (B, S, T)
    w = pair.to(a.dtype)
    dist = (a[:, None] - vs).norm(dim=-1)  # (B, S, T)
    cos = (a[:, None] * vs).sum(-1)
    count = w.sum(-1)
    c_global = (cos * w).sum(-1) / count.clamp_min(1.0)
    # windows of `window` frames over t: mean distance per window, then mean over windows with pairs
    n_win = (t + window - 1) // window
    padt = n_win * window - t
    dw = F.pad(dist * w, (0, padt)).view(*dist.shape[:2], n_win, window).sum(-1)
    cw = F.pad(w, (0, padt)).view(*w.shape[:2], n_win, window).sum(-1)
    has = (cw > 0).to(a.dtype)
    d_local = ((dw / cw.clamp_min(1.0)) * has).sum(-1) / has.sum(-1).clamp_min(1.0)
    return d_local, c_global, count


def subframe_argmin(obj: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """argmin over offsets (invalid ones excluded), refined by a parabola through the neighbours."""
    big = obj.masked_fill(~valid, float("inf"))
    j = big.argmin(-1)
    s = obj.shape[-1]
    tau = j.to(obj.dtype)
    inner = (j > 0) & (j < s - 1)
    jl, jr = (j - 1).clamp(0, s - 1), (j + 1).clamp(0, s - 1)
    y0, y1, y2 = big.gather(-1, jl[:, None])[:, 0], big.gather(-1, j[:, None])[:, 0], big.gather(-1, jr[:, None])[:, 0]
    denom = y0 - 2 * y1 + y2
    ok = inner & torch.isfinite(y0) & torch.isfinite(y2) & (denom > 1e-12)
    delta = torch.where(ok, 0.5 * (y0 - y2) / denom.clamp_min(1e-12), torch.zeros_like(tau))
    return tau + delta.clamp(-0.5, 0.5)


def centre_normalise(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    w = m[..., None].to(x.dtype)
    mean = (x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)
    return F.normalize((x - mean) * w, dim=-1)


class Aligner(nn.Module):
    def __init__(self, audio_dim: int, video_dim: int, cfg) -> None:
        super().__init__()
        self.k = cfg.max_shift
        self.window = cfg.window
        self.alpha, self.beta = cfg.alpha, cfg.beta
        self.temperature = cfg.temperature
        self.rate = cfg.rate
        self.proj_a = nn.Sequential(nn.Linear(audio_dim, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, cfg.dim))
        self.proj_v = nn.Sequential(nn.Linear(video_dim, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, cfg.dim))

    def offsets(self) -> torch.Tensor:
        return torch.arange(-self.k, self.k + 1, dtype=torch.float32)

    def project(self, a: torch.Tensor, v: torch.Tensor, ma: torch.Tensor, mv: torch.Tensor):
        return centre_normalise(self.proj_a(a), ma), centre_normalise(self.proj_v(v), mv)

    def forward(self, a: torch.Tensor, v: torch.Tensor, ma: torch.Tensor, mv: torch.Tensor) -> dict:
        """a (B, T, Da), v (B, Tv, Dv) at align.rate with masks -> scores, p(tau), tau*, soft tau."""
        pa, pv = self.project(a, v, ma, mv)
        d_local, c_global, count = shift_scores(pa, pv, ma, mv, self.k, self.window)
        obj = alignment_objective(d_local, c_global, self.alpha, self.beta)  # (B, S), eq. 8
        valid = count > 0
        p = torch.softmax((-obj / self.temperature).masked_fill(~valid, float("-inf")), dim=-1)
        taus = self.offsets().to(a.device)
        return {"objective": obj, "d_local": d_local, "c_global": c_global, "p": p, "valid": valid,
                "tau_soft": (p * taus).sum(-1), "tau_star": subframe_argmin(obj.detach(), valid) - self.k,
                "pa": pa, "pv": pv}

    def expected_objective(self, out: dict) -> torch.Tensor:
        """L_align at the soft-argmin: sum_tau p(tau) L_align(tau), averaged over the batch."""
        return (out["p"] * out["objective"].masked_fill(~out["valid"], 0.0)).sum(-1).mean()

    def cross_clip_contrastive(self, out: dict, ma: torch.Tensor, mv: torch.Tensor, tau: float) -> torch.Tensor:
        """InfoNCE over clips: audio i against video j, each pair scored at its best offset (soft max
        over offsets of the mean cosine); the diagonal (own video) is the positive."""
        pa, pv = out["pa"], out["pv"]
        b, t, _ = pa.shape
        vs, ms = _shifted(pv, mv, self.k, t)  # (B, S, T, D)
        scores = []
        for j in range(vs.shape[1]):
            w = ma[:, None, :].to(pa.dtype) * ms[None, :, j, :].to(pa.dtype)  # (B, B, T)
            c = torch.einsum("itd,jtd->ijt", pa, vs[:, j]) * w
            scores.append(c.sum(-1) / w.sum(-1).clamp_min(1.0))
        s = torch.stack(scores, -1)  # (B, B, S)
        best = self.temperature * torch.logsumexp(s / self.temperature, dim=-1)
        logits = best / tau
        target = torch.arange(b, device=pa.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

    @staticmethod
    def shift_video(v: torch.Tensor, mv: torch.Tensor, p: torch.Tensor, k: int, t: int):
        """The video moved onto the audio's timeline: v_aligned(t) = sum_tau p(tau) v(t + tau)."""
        vs, ms = _shifted(v, mv, k, t)
        out = (p[:, :, None, None] * vs * ms[..., None].to(v.dtype)).sum(1)
        wt = (p[:, :, None] * ms.to(v.dtype)).sum(1)
        return out / wt.clamp_min(1e-6)[..., None], wt > 1e-3
