"""Local-global audio-video alignment, eq. 4-6, 8 and 9 of the paper.

Audio (after MSFE) and video frame features are brought to one rate (`align.rate`) and projected to
a shared space (`align.dim`); each projection is centred over the clip's valid frames (so only
temporal dynamics, not a clip's constant look, can correlate) and scaled by one number per clip (its RMS
frame norm), so frames keep their relative sizes. For every offset tau in [-K, K] frames
(K = `align.max_shift`), with pairs (a(t), v(t + tau)) where both frames are valid (`window_scores`):
    D_i(tau)      = mean distance ||a - v|| in window i (`align.window` frames, every `align.hop`)  (eq. 4)
    C_global(tau) = mean cosine over all valid pairs, a normalised cross-correlation                 (eq. 5)
    L_align(tau)  = alpha * D_local(tau) - beta * C_global(tau), D_local the mean of the D_i          (eq. 8)
    tau*          = argmin_tau L_align(tau), refined to sub-frame by a parabola                       (eq. 9)
and, per window, L_i(tau) = alpha * D_i(tau) - beta * C_global(tau): its soft-argmin is window i's offset,
so the clip gets a time-varying offset tau*(t) (interpolated between window centres) that shifts the video
before fusion and before stage 2. `align.controller` decides how the windows' offsets are formed
(esva/models/controllers.py: fixed weights, the paper's; or fuzzy, neural or backstepping retuning).
D is a distance between unnormalised vectors, so it is not a monotone transform of C_global.
Sign: tau > 0 means the video lags the audio (the synthetic corpus' `offset_ms` convention).
Training uses p(tau) = softmax(-L_align / temperature) for the loss (its expectation under p) and the
`fixed` per-window distributions for the shift (differentiable), and a cross-clip contrastive term (own
video at its best shift against other clips' videos) keeps the projections from collapsing to a constant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from esva.losses import alignment_objective
from esva.models.controllers import Fixed, make as make_controller

FIXED = Fixed()


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


def window_starts(t: int, window: int, hop: int) -> int:
    """The number of windows of `window` frames, `hop` apart, that cover t frames (the last may be partial)."""
    return max(1, -(-max(t - window, 0) // hop) + 1)


def window_scores(a: torch.Tensor, v: torch.Tensor, ma: torch.Tensor, mv: torch.Tensor, k: int, window: int,
                  hop: int | None = None, local: str = "distance") -> dict:
    """Eq. 4 per window and eq. 5 per clip, for every offset tau_j = j - K.

    a, v: projections centred over the clip and scaled by one number per clip (`centre_scale`), zero on invalid
    frames. With a . v from the 2K+1 needed diagonals of the frame-pair product (`band_cosines`: memory linear in
    the clip's length), and window i's pairs P_i(tau) = {(s, s + tau): s in window i, both frames valid}
    (`align.window` frames starting every `align.hop`), eq. 4's local distance D_i(tau) is (`align.local`):
        distance      the mean over P_i of ||a(s) - v(s + tau)||, on the unnormalised vectors: a frame's size
                      counts, so a loud audio frame against a still face is far apart even where their directions
                      agree (the default)
        correlation   1 - r_i(tau), r_i the correlation of the window's pairs after removing the *window's*
                      means, sum (a - a_i)(v - v_i) / sqrt(sum |a - a_i|^2 sum |v - v_i|^2) (from window sums of
                      a . v, a, v, |a|^2, |v|^2): only what co-varies inside the window
    and C_global(tau) = the mean over the clip's valid pairs of a . v / (|a| |v|) (eq. 5, normalised),
    D_local(tau) = the mean of D_i(tau) over the windows with pairs (eq. 8's local term). Neither local form is a
    monotone transform of C_global (unlike sqrt(2 - 2 cos) of unit vectors), so alpha and beta weigh different
    evidence (tests/models/test_controllers.py). Measured: on the mechanism condition (large events of unrelated
    kinds over a shared carrier, esva/eval/mechanism.py) `correlation` loses the carrier in every window with an
    event and the aligner fails (within one frame 0.13 against 1.0 for `distance`); on the demo corpus it tracks
    slightly better.
    Returns d_win (B, S, N), win_valid (B, S, N), d_local, c_global and count (B, S)."""
    hop = hop or window
    t = a.shape[1]
    vp, mp = _padded(v.to(a.dtype), mv, k, t)  # (B, T + 2K, D), (B, T + 2K)
    ms = mp.unfold(1, t, 1)  # valid video frames per offset, a view                   (B, S, T)
    dot = band_cosines(a, vp, k)  # (B, S, T): a(s) . v(s + tau_j)
    sq_a = (a * a).sum(-1)  # (B, T)
    sq_v = (vp * vp).sum(-1).unfold(1, t, 1)  # |v(s + tau_j)|^2                          (B, S, T)
    w = (ms & ma[:, None, :]).to(a.dtype)  # valid pairs                              (B, S, T)
    cos = dot / torch.sqrt((sq_a[:, None, :] * sq_v).clamp_min(1e-12))
    count = w.sum(-1)
    c_global = (cos * w).sum(-1) / count.clamp_min(1.0)
    n_win = window_starts(t, window, hop)
    padt = (n_win - 1) * hop + window - t

    def wsum(x):  # (..., T) -> (..., N): sums over each window's frames
        return F.pad(x, (0, padt)).unfold(-1, window, hop).sum(-1)

    n = wsum(w)  # (B, S, N) pairs per window
    nn_ = n.clamp_min(1.0)
    if local == "correlation":
        s_av = wsum(dot * w)
        s_aa = wsum(sq_a[:, None, :] * w)
        s_vv = wsum(sq_v * w)
        # sum over P_i of a(s) and of v(s + tau): per offset, the windows' vector sums (B, S, N, D)
        wa = F.pad(w, (0, padt)).unfold(-1, window, hop)  # (B, S, N, W) pair weights
        a_pad = F.pad(a, (0, 0, 0, padt)).unfold(1, window, hop)  # (B, N, D, W)
        sum_a = torch.einsum("bsnw,bndw->bsnd", wa, a_pad)
        v_pad = F.pad(vp.unfold(1, t, 1), (0, padt)).unfold(-1, window, hop)  # (B, S, D, N, W): v(s + tau_j)
        sum_v = torch.einsum("bsnw,bsdnw->bsnd", wa, v_pad)
        cov = s_av - (sum_a * sum_v).sum(-1) / nn_
        var_a = (s_aa - (sum_a * sum_a).sum(-1) / nn_).clamp_min(0.0)
        var_v = (s_vv - (sum_v * sum_v).sum(-1) / nn_).clamp_min(0.0)
        d_win = 1.0 - cov / torch.sqrt(var_a * var_v + 1e-8)
        has = n >= 2  # a correlation needs two pairs
    else:
        dist = torch.sqrt((sq_a[:, None, :] + sq_v - 2.0 * dot).clamp_min(1e-8))
        d_win = wsum(dist * w) / nn_
        has = n >= 1
    d_win = torch.where(has, d_win, torch.ones_like(d_win))
    hw = has.to(a.dtype)
    d_local = (d_win * hw).sum(-1) / hw.sum(-1).clamp_min(1.0)
    return {"d_win": d_win, "win_valid": has, "d_local": d_local, "c_global": c_global, "count": count}


def shift_scores(a: torch.Tensor, v: torch.Tensor, ma: torch.Tensor, mv: torch.Tensor, k: int, window: int,
                 hop: int | None = None, local: str = "distance"):
    """D_local and C_global for every offset: (B, 2K+1) each, plus the valid pair counts (`window_scores`;
    on unit vectors D is sqrt(2 - 2 cos)). Only the 2K+1 needed diagonals of the frame-pair product are
    computed, so memory grows linearly with clip length (never an L x L matrix). (The elementwise form over
    a (B, 2K+1, T, D) shifted view, indexed one offset at a time, made autograd zero-fill a whole such
    gradient per offset: most of a training step's time; tests/test_precision.py holds the naive form.)"""
    s = window_scores(a, v, ma, mv, k, window, hop, local)
    return s["d_local"], s["c_global"], s["count"]


def window_to_frames(p_win: torch.Tensor, t: int, window: int, hop: int) -> torch.Tensor:
    """Per-window distributions (B, N, S) -> per-frame ones (B, S, t): each frame takes the linear
    interpolation between the two window centres around it (the first and last centres hold outward)."""
    n = p_win.shape[1]
    centres = torch.arange(n, dtype=p_win.dtype, device=p_win.device) * hop + (window - 1) / 2.0
    frames = torch.arange(t, dtype=p_win.dtype, device=p_win.device)
    if n == 1:
        return p_win[:, 0, :, None].expand(-1, -1, t)
    pos = ((frames - centres[0]) / hop).clamp(0, n - 1)  # fractional window index of each frame
    lo = pos.floor().long().clamp(max=n - 2)
    frac = (pos - lo.to(pos.dtype))[None, None, :]
    pw = p_win.transpose(1, 2)  # (B, S, N)
    return pw[..., lo] * (1 - frac) + pw[..., lo + 1] * frac


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


def centre_scale(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Centred over the clip's valid frames, divided by the clip's RMS frame norm (one number per clip):
    frames keep their relative sizes (D_local sees them), zero on invalid frames."""
    w = m[..., None].to(x.dtype)
    mean = (x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)
    xc = (x - mean) * w
    rms = torch.sqrt((xc * xc).sum((1, 2), keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)).clamp_min(1e-6)
    return xc / rms


def centre_normalise(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    w = m[..., None].to(x.dtype)
    mean = (x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)
    return F.normalize((x - mean) * w, dim=-1)


class Aligner(nn.Module):
    def __init__(self, audio_dim: int, video_dim: int, cfg) -> None:
        super().__init__()
        self.k = cfg.max_shift
        self.window = cfg.window
        self.hop = getattr(cfg, "hop", None) or max(1, cfg.window // 2)
        self.local = getattr(cfg, "local", "distance")
        self.alpha, self.beta = cfg.alpha, cfg.beta
        self.temperature = cfg.temperature
        self.rate = cfg.rate
        self.proj_a = nn.Sequential(nn.Linear(audio_dim, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, cfg.dim))
        self.proj_v = nn.Sequential(nn.Linear(video_dim, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, cfg.dim))
        self.controller_name = getattr(cfg, "controller", "fixed")
        self.controller = make_controller(self.controller_name)

    def offsets(self) -> torch.Tensor:
        return torch.arange(-self.k, self.k + 1, dtype=torch.float32)

    def project(self, a: torch.Tensor, v: torch.Tensor, ma: torch.Tensor, mv: torch.Tensor):
        """The projections centred and scaled per clip (`centre_scale`): D_local's unnormalised vectors."""
        return centre_scale(self.proj_a(a), ma), centre_scale(self.proj_v(v), mv)

    def forward(self, a: torch.Tensor, v: torch.Tensor, ma: torch.Tensor, mv: torch.Tensor,
                controller: nn.Module | None = None) -> dict:
        """a (B, T, Da), v (B, Tv, Dv) at align.rate with masks -> the clip's scores, p(tau), tau*, soft tau
        (eq. 8-9 over the clip: the alignment loss), and the controller's per-window distributions p_win
        (B, N, S), offset track tau_track (B, N) and per-frame p_frames (B, S, T) that shift the video (eq. 4
        per window combined with eq. 5: tau*(t)). Training always uses `fixed` (differentiable, the paper's);
        in eval mode the configured controller (or `controller`) runs."""
        pa_u, pv_u = self.project(a, v, ma, mv)
        sc = window_scores(pa_u, pv_u, ma, mv, self.k, self.window, self.hop, self.local)
        d_local, c_global, count = sc["d_local"], sc["c_global"], sc["count"]
        obj = alignment_objective(d_local, c_global, self.alpha, self.beta)  # (B, S), eq. 8
        valid = count > 0
        p = torch.softmax((-obj / self.temperature).masked_fill(~valid, float("-inf")), dim=-1)
        taus = self.offsets().to(a.device)
        ctrl = controller if controller is not None else (FIXED if self.training else self.controller)
        win_valid = (sc["win_valid"] & valid[..., None]).transpose(1, 2)  # (B, N, S)
        control = ctrl(sc["d_win"].transpose(1, 2), c_global, win_valid, self.alpha, self.beta, self.temperature)
        p_win = torch.where(win_valid.any(-1, keepdim=True), control.p, p[:, None, :])  # a window with no pairs: the clip's
        return {"objective": obj, "d_local": d_local, "c_global": c_global, "p": p, "valid": valid,
                "tau_soft": (p * taus).sum(-1), "tau_star": subframe_argmin(obj.detach(), valid) - self.k,
                "pa": F.normalize(pa_u, dim=-1), "pv": F.normalize(pv_u, dim=-1), "d_win": sc["d_win"],
                "p_win": p_win, "tau_track": control.tau, "control": control.weights,
                "p_frames": window_to_frames(p_win, a.shape[1], self.window, self.hop)}

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

    @staticmethod
    def shift_video_tv(v: torch.Tensor, mv: torch.Tensor, p: torch.Tensor, k: int, t: int):
        """The video moved onto the audio's timeline by a time-varying offset: v_aligned(t) = sum_tau p_t(tau)
        v(t + tau) with p (B, 2K+1, t) per frame (`Aligner.forward`'s p_frames), normalised by the weight that
        fell on valid frames; returns (B, t, D) and the mask of frames that received any weight. One pass per
        offset over the padded video (memory linear in t), in the promoted dtype, no autocast."""
        dt = torch.promote_types(v.dtype, p.dtype)
        with torch.autocast(v.device.type, enabled=False):
            vp, mp = _padded((v * mv[..., None].to(v.dtype)).to(dt), mv.to(dt), k, t)  # (B, t + 2K, D)
            p = p.to(dt)
            num = torch.zeros(v.shape[0], t, v.shape[2], dtype=dt, device=v.device)
            den = torch.zeros(v.shape[0], t, dtype=dt, device=v.device)
            for j in range(2 * k + 1):  # offset tau_j = j - K: frame s meets v(s + tau_j) = vp[:, s + j]
                num = num + p[:, j, :, None] * vp[:, j:j + t]
                den = den + p[:, j] * mp[:, j:j + t]
        return num / den[..., None].clamp_min(1e-6), den > 1e-3
