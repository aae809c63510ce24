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
    ratio = src / dst
    if abs(ratio - round(ratio)) < 1e-9 and round(ratio) >= 2:  # integer decimation: mean of each r frames
        r = int(round(ratio))
        t = x.shape[1] // r
        new_len = torch.clamp(lengths // r, min=1)
        return x[:, : t * r].reshape(x.shape[0], t, r, x.shape[2]).mean(2), new_len
    new_len = torch.clamp((lengths.double() * dst / src).round().long(), min=1)
    out = x.new_zeros(x.shape[0], int(new_len.max()), x.shape[2])
    for i in range(x.shape[0]):
        n, m = int(lengths[i]), int(new_len[i])
        seq = x[i, :n].T[None]  # (1, D, n)
        out[i, :m] = F.interpolate(seq, size=m, mode="linear", align_corners=False)[0].T
    return out, new_len


def lengths_to_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


def _padded(v: torch.Tensor, mv: torch.Tensor, k: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """v (B, Tv, D) -> (B, T + 2K, D) with [:, K + s] = v[:, s] (zeros outside); the mask alike."""
    pad = k + max(0, t - v.shape[1])
    return F.pad(v, (0, 0, k, pad))[:, : t + 2 * k], F.pad(mv, (k, pad))[:, : t + 2 * k]


def _shifted(v: torch.Tensor, mv: torch.Tensor, k: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """v (B, Tv, D) -> (B, 2K+1, T, D) with [:, j, s] = v[:, s + tau_j], tau_j = j - K; masks alike."""
    vp, mp = _padded(v, mv, k, t)  # (B, T + 2K, D)
    # unfold: windows of length T starting at 0..2K -> (B, S, D, T) views, no gather
    vs = vp.unfold(1, t, 1).permute(0, 1, 3, 2)
    ms = mp.unfold(1, t, 1)
    return vs, ms


BAND_BLOCK = 32  # audio frames per block product in `band_cosines`


def band_cosines(a: torch.Tensor, vp: torch.Tensor, k: int, block: int = BAND_BLOCK) -> torch.Tensor:
    """cos[b, j, s] = a[b, s] . vp[b, s + j] for j = 0..2K (vp: v padded by K frames in front, `_padded`):
    the 2K+1 diagonals of the frame-pair product a @ vp^T, from block products of `block` audio frames
    against the block + 2K video frames they meet, (B, block, block + 2K) each: memory linear in the clip's
    length (never an L x L matrix), computed in a's dtype (no autocast: as the elementwise form)."""
    b, t, _ = a.shape
    s = 2 * k + 1
    parts = []
    with torch.autocast(a.device.type, enabled=False):
        for c in range(0, t, block):
            w = min(block, t - c)
            g = torch.bmm(a[:, c:c + w], vp[:, c:c + w + 2 * k].transpose(1, 2))  # (B, w, w + 2K), contiguous
            # row i of the block holds its 2K+1 needed columns at i..i+2K: a strided view, no gather
            parts.append(g.as_strided((b, w, s), (g.stride(0), g.stride(1) + 1, 1), g.storage_offset()))
    return torch.cat(parts, 1).transpose(1, 2)  # (B, S, T)


def shift_scores(a: torch.Tensor, v: torch.Tensor, ma: torch.Tensor, mv: torch.Tensor, k: int, window: int):
    """D_local and C_global for every offset: (B, 2K+1) each, plus the valid pair counts.

    a and v are unit vectors on valid frames (centre_normalise), so ||a - v|| = sqrt(2 - 2 cos). Only the
    2K+1 needed diagonals of the frame-pair cosine matrix are computed (`band_cosines`: block products),
    so memory grows linearly with clip length (never an L x L matrix). (The elementwise form over a
    (B, 2K+1, T, D) shifted view, indexed one offset at a time, made autograd zero-fill a whole such
    gradient per offset: most of a training step's time; tests/test_precision.py holds the naive form.)"""
    t = a.shape[1]
    vp, mp = _padded(v.to(a.dtype), mv, k, t)  # (B, T + 2K, D), (B, T + 2K)
    ms = mp.unfold(1, t, 1)  # valid video frames per offset, a view                   (B, S, T)
    cos = band_cosines(a, vp, k)  # (B, S, T): a(s) . v(s + tau_j)
    w = (ms & ma[:, None, :]).to(a.dtype)  # valid pairs                              (B, S, T)
    dist = torch.sqrt((2.0 - 2.0 * cos).clamp_min(1e-8))
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
        pa, pv = out["pa"], out["pv"]  # zero on invalid frames (centre_normalise)
        b, t, _ = pa.shape
        vs, ms = _shifted(pv, mv, self.k, t)  # (B, S, T, D)
        n_s = vs.shape[1]
        fa, wa = pa.reshape(b, -1), ma.to(pa.dtype)
        # all offsets in one product each: sum_t <a_i(t), v_k(t + tau_j)> and the valid pairs, (B, B, S)
        num = (fa @ vs.reshape(b * n_s, -1).T).view(b, b, n_s)
        cnt = (wa @ ms.reshape(b * n_s, -1).to(pa.dtype).T).view(b, b, n_s)
        s = num / cnt.clamp_min(1.0)  # (B, B, S)
        best = self.temperature * torch.logsumexp(s / self.temperature, dim=-1)
        logits = best / tau
        target = torch.arange(b, device=pa.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

    @staticmethod
    def shift_video(v: torch.Tensor, mv: torch.Tensor, p: torch.Tensor, k: int, t: int):
        """The video moved onto the audio's timeline: v_aligned(t) = sum_tau p(tau) v(t + tau), normalised by
        the weight that fell on valid frames; returns (B, t, D) and the mask of frames that received any
        weight. Computed as a depthwise 1-D correlation of the padded video with each clip's own p as the
        kernel (memory linear in t, no (B, 2K+1, t, D) intermediate), in the promoted dtype, no autocast."""
        dt = torch.promote_types(v.dtype, p.dtype)  # bf16 features or autocast never meet an fp32 p
        b, _, d = v.shape
        with torch.autocast(v.device.type, enabled=False):
            vp, mp = _padded((v * mv[..., None].to(v.dtype)).to(dt), mv.to(dt), k, t)  # (B, t + 2K, D), (B, t + 2K)
            p = p.to(dt)
            # conv1d is a correlation: out[t] = sum_j w[j] x[t + j], with x[t + j] = v(t + tau_j)
            num = F.conv1d(vp.transpose(1, 2).reshape(1, b * d, t + 2 * k), p.repeat_interleave(d, 0)[:, None],
                           groups=b * d).view(b, d, t).transpose(1, 2)  # sum_tau p(tau) v(t + tau)  (B, t, D)
            den = F.conv1d(mp[None], p[:, None], groups=b)[0]  # weight that landed on valid frames  (B, t)
        out = num / den[..., None].clamp_min(1e-6)
        return out, den > 1e-3
