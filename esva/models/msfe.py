"""MSFE, eq. 1 of the paper: F' = F + W_out( sum_i w_i * phi_i(W_in F) ).

phi_i are parallel temporal 1-D convolutions with different receptive fields over frame-level
HuBERT features; w = softmax(learned logits) weighs the scales; a residual path keeps the input.
Kernel sizes come from `msfe.kernels`, or from `msfe.scales` as 3, 7, 15, 31, ... frames (60 ms to
620 ms at 50 Hz), optionally dilated. Padded frames are zeroed before every convolution, so a clip's
output does not depend on how much padding its batch added. `msfe.enabled: false` is the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kernel_sizes(scales: int, kernels: tuple[int, ...] | None) -> tuple[int, ...]:
    if kernels:
        bad = [k for k in kernels if k < 1 or k % 2 == 0]
        if bad:
            raise ValueError(f"msfe.kernels must be odd and >= 1, got {list(kernels)}")
        return tuple(kernels)
    if scales < 1:
        raise ValueError(f"msfe.scales must be >= 1, got {scales}")
    return tuple(2 ** (i + 2) - 1 for i in range(scales))


def receptive_field(cfg) -> int:
    """Frames one output sees at the largest scale (kernel x dilation)."""
    ks = kernel_sizes(cfg.scales, cfg.kernels)
    return (max(ks) - 1) * cfg.dilation + 1


class MSFE(nn.Module):
    def __init__(self, dim: int, cfg) -> None:
        super().__init__()
        self.enabled = cfg.enabled
        self.kernels = kernel_sizes(cfg.scales, cfg.kernels)
        if not self.enabled:
            return
        h = cfg.hidden
        self.inp = nn.Linear(dim, h)
        self.branches = nn.ModuleList(
            nn.Conv1d(h, h, k, padding=(k - 1) // 2 * cfg.dilation, dilation=cfg.dilation) for k in self.kernels)
        self.pad, self.dilation = (max(self.kernels) - 1) // 2 * cfg.dilation, cfg.dilation
        self.scale_logits = nn.Parameter(torch.zeros(len(self.kernels)))  # w = softmax(logits), eq. 1
        self.act = nn.GELU()
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(h, dim)
        nn.init.zeros_(self.out.weight)  # starts as the identity, learns a residual
        nn.init.zeros_(self.out.bias)

    @property
    def scale_weights(self) -> torch.Tensor:
        return torch.softmax(self.scale_logits, 0) if self.enabled else torch.ones(0)

    def fused_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """sum_i w_i * phi_i as one convolution: each branch's kernel centred in the widest one's length and
        weighted by w_i, the biases alike. Convolution is linear in its kernel, so this is eq. 1 exactly
        (same padding and dilation), at the cost of the widest branch alone instead of all of them; a
        test checks it against the branches run one by one (`branchwise`)."""
        w = self.scale_weights
        kmax = max(self.kernels)
        weight = sum(w[i] * F.pad(b.weight, ((kmax - k) // 2, (kmax - k) // 2))
                     for i, (b, k) in enumerate(zip(self.branches, self.kernels)))
        bias = sum(w[i] * b.bias for i, b in enumerate(self.branches))
        return weight, bias

    def branchwise(self, h: torch.Tensor) -> torch.Tensor:
        """eq. 1 as written, one convolution per scale (the reference for `fused_kernel`)."""
        w = self.scale_weights
        return sum(w[i] * branch(h) for i, branch in enumerate(self.branches))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), mask (B, T) bool of valid frames -> (B, T, D)."""
        if not self.enabled:
            return x
        m = mask[..., None].to(x.dtype)
        h = (self.inp(x) * m).transpose(1, 2)  # (B, H, T), padding zeroed
        mixed = F.conv1d(h, *self.fused_kernel(), padding=self.pad, dilation=self.dilation)  # eq. 1
        y = self.out(self.drop(self.act(mixed.transpose(1, 2))))
        return (x + y) * m
