"""The paper's losses: supervised contrastive (eq. 2), alignment (eq. 8), and the total (eq. 7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supervised_contrastive(z: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 2 with every same-label sample a positive and all others negatives (SupCon form).

    z (B, D) pooled MSFE embeddings, labels (B,). For anchor i with positives P(i):
        l_i = -1/|P(i)| sum_{p in P(i)} log( exp(s_ip / tau) / sum_{a != i} exp(s_ia / tau) ),
    s = cosine similarity. Anchors whose class has a single member in the batch have no positive
    and are left out; a batch with no positive pair gives 0 (with a graph, so backward works)."""
    if tau <= 0:
        raise ValueError(f"contrast.tau must be > 0, got {tau}")
    z = F.normalize(z, dim=-1)
    sim = z @ z.T / tau
    n = len(z)
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not has.any():
        return z.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~pos, 0.0).sum(1)[has] / n_pos[has])
    return per_anchor.mean()


def alignment_objective(d_local: torch.Tensor, c_global: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Eq. 8 per offset: L_align(tau) = alpha * D_local(tau) - beta * C_global(tau); tau* = argmin (eq. 9)."""
    return alpha * d_local - beta * c_global


def total_loss(l_align: torch.Tensor, l_emo: torch.Tensor, l_contrast: torch.Tensor, lam: float, gamma: float) -> torch.Tensor:
    """Eq. 7 (plus the contrastive term of eq. 2): L = L_align + lambda * L_emo + gamma * L_contrast."""
    return l_align + lam * l_emo + gamma * l_contrast
