"""Alignment controllers (`align.controller`, section 4.4 and Table 7 of the paper): from the per-window
local distances of eq. 4 and the clip's global correlation of eq. 5 to a time-varying offset tau*(t).

Every controller reads, for a batch of clips with N windows and S = 2K + 1 offsets tau_j = j - K:
    D (B, N, S)  the local distance of each window at each offset (eq. 4, `esva.models.align.window_scores`)
    C (B, S)     the global correlation of the clip at each offset (eq. 5)
    valid (B, N, S)  offsets with pairs in that window
and returns `Control`: one distribution p_i(tau) per window (the video is shifted by it), the offset track
tau_i = sum_j p_i(tau_j) tau_j in frames, and the weights it used per window.

The signals the adaptive ones watch, per window i (all in [0, 1]; `signals`):
    u_i  uncertainty: the normalised entropy of the soft-argmin of L_i = alpha D_i - beta C at temperature T,
         H / log S (high only where the curve is flat at the scale of T; on the demo's windows it is near 0 for
         clean and noisy windows alike, so persistence, d_i, carries the rules: see the note in Fuzzy)
    g_i  disagreement: |local soft-argmin of alpha D_i - global argmax of C| / K, window i against the clip
    d_i  change: |local soft-argmin_i - local soft-argmin_{i-1}| / K: a real offset persists from window to
         window, a noisy estimate jumps

- `fixed` (the paper's baseline): L_i(tau) = alpha D_i(tau) - beta C(tau), p_i = softmax(-L_i / T) (eq. 8-9
  per window), with alpha, beta, T from params.
- `fuzzy`: a zero-order Sugeno system scales alpha, beta and T per window from (u_i, g_i, d_i); rules below.
- `neural`: a small network maps (u_i, g_i, d_i) to log-multipliers of alpha, beta and T; trained on cached
  features by `fit_neural` (self-supervised: known drifts applied to the video, no labels).
- `backstepping`: feedback tracking of tau(t) with a state (offset, drift rate) and a dynamic gain, window by
  window, with a stability guard; the measurement is the local estimate, weighted by its confidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CONTROLLERS = ("fixed", "fuzzy", "neural", "backstepping")


@dataclass
class Control:
    p: torch.Tensor  # (B, N, S) per-window distribution over offsets
    tau: torch.Tensor  # (B, N) offset track, frames
    weights: dict[str, torch.Tensor]  # (B, N) each: alpha, beta, temperature (or gain) used per window


def _offsets(s: int, like: torch.Tensor) -> torch.Tensor:
    k = (s - 1) // 2
    return torch.arange(-k, k + 1, dtype=like.dtype, device=like.device)


def soft(obj: torch.Tensor, valid: torch.Tensor, temperature) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(-obj / T) over the valid offsets (a row with none falls back to uniform) and its mean."""
    temperature = temperature if not torch.is_tensor(temperature) else temperature[..., None]
    logits = (-obj / temperature).masked_fill(~valid, float("-inf"))
    none = ~valid.any(-1, keepdim=True)
    logits = torch.where(none, torch.zeros_like(logits), logits)
    p = torch.softmax(logits, -1)
    return p, (p * _offsets(obj.shape[-1], obj)).sum(-1)


def entropy01(p: torch.Tensor) -> torch.Tensor:
    """H(p) / log S in [0, 1]."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1) / math.log(p.shape[-1])


def signals(d: torch.Tensor, c: torch.Tensor, valid: torch.Tensor, alpha: float, beta: float, temperature: float,
            prev_local: torch.Tensor | None, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """((u_i, g_i, d_i) (B, 3), window i's local estimate (B,)); `prev_local`: window i-1's local estimate."""
    k = (d.shape[-1] - 1) // 2
    _, tau_loc = soft(alpha * d[:, i], valid[:, i], temperature)
    glob = (c.masked_fill(~valid.any(1), float("-inf"))).argmax(-1).to(d.dtype) - k
    p_fix, _ = soft(alpha * d[:, i] - beta * c, valid[:, i], temperature)
    u = entropy01(p_fix)
    g = (tau_loc - glob).abs() / k
    dd = torch.zeros_like(u) if prev_local is None else (tau_loc - prev_local).abs() / k
    return torch.stack([u, g.clamp(max=1.0), dd.clamp(max=1.0)], -1), tau_loc


class Fixed(nn.Module):
    """tau_i from L_i(tau) = alpha D_i(tau) - beta C(tau), p_i = softmax(-L_i / T): eq. 8-9 in each window."""

    def forward(self, d, c, valid, alpha, beta, temperature) -> Control:
        obj = alpha * d - beta * c[:, None, :]
        p, tau = soft(obj, valid, temperature)
        full = torch.ones_like(tau)
        return Control(p, tau, {"alpha": full * alpha, "beta": full * beta, "temperature": full * temperature})


class _Retuned(nn.Module):
    """Window by window: signals -> multipliers (m_alpha, m_beta, m_T) -> p_i with the retuned weights."""

    def multipliers(self, s: torch.Tensor) -> torch.Tensor:  # (B, 3) -> (B, 3), positive
        raise NotImplementedError

    def forward(self, d, c, valid, alpha, beta, temperature) -> Control:
        ps, taus, ws = [], [], []
        prev = None
        for i in range(d.shape[1]):
            sig, prev = signals(d, c, valid, alpha, beta, temperature, prev, i)
            m = self.multipliers(sig)
            a_i, b_i, t_i = alpha * m[:, 0], beta * m[:, 1], temperature * m[:, 2]
            p, tau = soft(a_i[:, None] * d[:, i] - b_i[:, None] * c, valid[:, i], t_i)
            ps.append(p)
            taus.append(tau)
            ws.append(torch.stack([a_i, b_i, t_i], -1))
            prev = prev.detach()
        w = torch.stack(ws, 1)
        return Control(torch.stack(ps, 1), torch.stack(taus, 1),
                       {"alpha": w[..., 0], "beta": w[..., 1], "temperature": w[..., 2]})


def _low(x: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """Membership of 'low': 1 below a, 0 above b, linear between ('high' is 1 - low)."""
    return ((b - x) / (b - a)).clamp(0.0, 1.0)


class Fuzzy(_Retuned):
    """Zero-order Sugeno rules on (u, g, d), product t-norm, weighted mean of the rule outputs:

        R1  u low and d low  and g low      -> (m_alpha, m_beta, m_T) = (1, 1, 1)      steady: the baseline
        R2  u low and d low  and g high     -> (1, 0.2, 1)     a local offset away from the clip's that persists
                                                                from the last window: a drift or a jump; drop beta
        R3  u low and d high                -> (0.25, 4, 2)    the local estimate jumps between windows: noise,
                                                                occlusion, a missing modality; lean on the global
                                                                term and flatten p
        R4  u high                          -> (0.5, 2, 1.5)   a flat curve: mostly global
    with low(u) = 1 below 0.35 and 0 above 0.7, low(g) = 1 below 0.1 and 0 above 0.3, low(d) = 1 below 0.1
    and 0 above 0.3 (fractions of log S and of K). m = sum_r w_r m_r / sum_r w_r, w_r the rule's firing.
    Persistence (d) separates a real change from noise: a window's soft-argmin is peaked (u low) for noise too,
    since the minimum of 2K+1 noisy distances is as sharp as a real one (measured on the demo's windows)."""

    OUT = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.2, 1.0], [0.25, 4.0, 2.0], [0.5, 2.0, 1.5]])

    def multipliers(self, s):
        u_lo, g_lo, d_lo = _low(s[:, 0], 0.35, 0.7), _low(s[:, 1], 0.1, 0.3), _low(s[:, 2], 0.1, 0.3)
        fire = torch.stack([u_lo * d_lo * g_lo, u_lo * d_lo * (1 - g_lo), u_lo * (1 - d_lo), 1 - u_lo], -1)
        out = self.OUT.to(s.dtype).to(s.device)
        return (fire @ out) / fire.sum(-1, keepdim=True).clamp_min(1e-6)


class Neural(_Retuned):
    """m = exp(clamp(MLP(u, g, d), -3, 3)) (a 3-16-3 network, tanh); the last layer starts at zero, so an
    untrained network is `fixed`. `fit_neural` trains it."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 3))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def multipliers(self, s):
        return torch.exp(self.net(s).clamp(-3.0, 3.0))


class Backstepping(nn.Module):
    """Feedback tracking of tau(t), window by window. The measurement y_i is window i's soft-argmin of
    alpha D_i - beta (1 - h_i) C, h_i = low(d_i) (1 where the local estimate persists from the last window: the
    global term is dropped there, kept where the local estimate jumps), with confidence q_i = (1 - u_i)(1 - d_i)
    (`signals`). The state is the offset x and its drift
    per window r, started at x_0 = q_0 y_0 + (1 - q_0) x_clip (x_clip: the clip's soft-argmin of alpha D_local -
    beta C; q_0 = (1 - u_0)(1 - |y_0 - x_clip| / K)) and r = 0. Backstepping on the chain x' = r, r' = v:

        z1 = y_i - (x + r)                      the tracking error after the predicted step
        virtual rate  r* = r + c1 z1            (step 1: drives z1 to 0)
        z2 = r* - r = c1 z1,  r <- r + c2 z2    (step 2: drives the rate error to 0)
        x <- x + r + k_i q_i z1                 (the innovation enters with the dynamic gain k_i = c1)

    i.e. x_{i+1} = x_i + r_i + k_i q_i z1, r_{i+1} = r_i + c2 k_i q_i z1 with c2 = k_i / (2 (2 - k_i)) (half the
    critically damped value: overdamped), and r halved whenever z1 changes sign (an overshoot). The dynamic gain grows while the error persists with one sign (a real change to follow) and shrinks
    otherwise: k_{i+1} = clip(k_i + gamma |z1| / K, k_min, k_max) when sign(z1) = sign(z1 of the last window) and
    |z1| > 0.5 frame, else clip(k_i (1 - rho), k_min, k_max) and r_{i+1} is scaled by (1 - rho) too (a leaky rate).
    Stability guard: the error dynamics' matrix [[1 - k, 1], [-c2 k, 1]] has its eigenvalues inside the unit
    circle for 0 < k < 1 with c2 <= k / (2 - k) (Jury: k > 0, c2 k > 0, 2k + c2 k < 4), so k_max < 1; the rate is
    clipped to +-K/8 frames per window, the offset to [-K, K], and two sign changes of z1 in a row halve k
    (an oscillation is damped rather than fed). p_i is a narrow bump (sigma 0.5 frame) at x_i."""

    def __init__(self, k0: float = 0.3, k_min: float = 0.05, k_max: float = 0.8, gamma: float = 1.0,
                 rho: float = 0.2, sigma: float = 0.5) -> None:
        super().__init__()
        assert 0 < k_min <= k0 <= k_max < 1, "stability needs 0 < k_min <= k0 <= k_max < 1"
        self.k0, self.k_min, self.k_max, self.gamma, self.rho, self.sigma = k0, k_min, k_max, gamma, rho, sigma

    def forward(self, d, c, valid, alpha, beta, temperature) -> Control:
        b, n, s = d.shape
        k_shift = (s - 1) // 2
        taus_grid = _offsets(s, d)
        any_valid = valid.any(1)
        d_all = (d * valid).sum(1) / valid.sum(1).clamp_min(1)
        _, x_clip = soft(alpha * d_all - beta * c, any_valid, temperature)
        x = r = k = z_prev = flips = None
        prev_local = None
        ps, xs, ks = [], [], []
        for i in range(n):
            sig, prev_local = signals(d, c, valid, alpha, beta, temperature, prev_local, i)
            persist = _low(sig[:, 2], 0.1, 0.3)  # 1: the local estimate held from the last window
            _, y = soft(alpha * d[:, i] - (beta * (1.0 - persist))[:, None] * c, valid[:, i], temperature)
            q = (1.0 - sig[:, 0]) * (1.0 - sig[:, 2])
            if x is None:  # the first window: no persistence to judge yet; trusted as far as it agrees with the clip
                q0 = (1.0 - sig[:, 0]) * (1.0 - (y - x_clip).abs() / k_shift).clamp(0.0, 1.0)
                x, r = (q0 * y + (1 - q0) * x_clip).detach(), torch.zeros_like(x_clip)
                k = torch.full_like(x_clip, self.k0)
                z_prev, flips = torch.zeros_like(x_clip), torch.zeros_like(x_clip)
            has = valid[:, i].any(-1).to(d.dtype)
            z1 = (y - (x + r)) * has
            c2 = 0.5 * k / (2.0 - k)  # half the critically damped rate gain: overdamped, no overshoot to feed
            x = (x + r + k * q * z1).clamp(-k_shift, k_shift)
            r = (r + c2 * k * q * z1).clamp(-k_shift / 8.0, k_shift / 8.0)
            flip = (torch.sign(z1) * torch.sign(z_prev) < 0) & (z1.abs() > 0.25)
            flips = torch.where(flip, flips + 1, torch.zeros_like(flips))
            r = torch.where(flip, r / 2, r)  # an overshoot: the rate estimate was too large
            same = (torch.sign(z1) == torch.sign(z_prev)) & (z1.abs() > 0.5)
            k = torch.where(same, k + self.gamma * z1.abs() / k_shift, k * (1 - self.rho)).clamp(self.k_min, self.k_max)
            r = torch.where(same, r, r * (1 - self.rho))  # a leaky rate: no persistent error, no drift to keep
            k = torch.where(flips >= 2, (k / 2).clamp_min(self.k_min), k)
            z_prev = z1
            ps.append(torch.softmax(-((taus_grid[None] - x[:, None]) ** 2) / (2 * self.sigma ** 2), -1))
            xs.append(x)
            ks.append(k)
        full = torch.ones(b, n, dtype=d.dtype, device=d.device)
        return Control(torch.stack(ps, 1), torch.stack(xs, 1),
                       {"alpha": full * alpha, "beta": full * beta, "gain": torch.stack(ks, 1)})


def make(name: str) -> nn.Module:
    if name not in CONTROLLERS:
        raise ValueError(f"align.controller must be one of {list(CONTROLLERS)}, got {name!r}")
    return {"fixed": Fixed, "fuzzy": Fuzzy, "neural": Neural, "backstepping": Backstepping}[name]()


def tracking_error(tau: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error per clip between offset tracks (B, N), over the windows in `mask`."""
    m = torch.ones_like(tau, dtype=torch.bool) if mask is None else mask
    return ((tau - truth).abs() * m).sum(-1) / m.sum(-1).clamp_min(1)


def oscillations(tau: torch.Tensor, truth: torch.Tensor, dead: float = 0.25) -> torch.Tensor:
    """Sign changes of the tracking error per clip (B,), ignoring errors within +-dead frames."""
    e = tau - truth
    sgn = torch.where(e.abs() > dead, torch.sign(e), torch.zeros_like(e))
    out = torch.zeros(e.shape[0], dtype=torch.long)
    for b in range(e.shape[0]):
        nz = sgn[b][sgn[b] != 0]
        out[b] = int((nz[1:] != nz[:-1]).sum()) if nz.numel() > 1 else 0
    return out


def fit_neural(ctrl: Neural, batches, alpha: float, beta: float, temperature: float, steps: int = 200,
               lr: float = 0.01, seed: int = 0) -> list[float]:
    """Train the neural controller on (d, c, valid, truth) batches (an iterable that can be cycled): the loss
    is the smooth-L1 tracking error of its offset track against `truth` (B, N) in frames. Returns the losses."""
    torch.manual_seed(seed)
    data = list(batches)
    opt = torch.optim.Adam(ctrl.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        d, c, valid, truth = data[step % len(data)]
        out = ctrl(d, c, valid, alpha, beta, temperature)
        loss = F.smooth_l1_loss(out.tau, truth)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses
