"""The stage-1 emotion classifier over MSFE audio, aligned video and optional utterance vectors.

Modalities come from `features.use`:
- hubert: frame-level -> MSFE (eq. 1) -> masked mean -> audio embedding;
- mae / videomae: frame-level video; the one named by `align.video` is aligned to the audio
  (eq. 4-9) and fused with it frame by frame before pooling; any other is pooled;
- eva, text: utterance vectors.
A fused head classifies the concatenated embeddings; an audio-only and a video-only head give
per-modality evidence (used by `esva predict`) and an auxiliary loss.

Modality reliability (`train.reliability`, `Reliability`): each frame-level stream's frames are scored by
how typical they are of the training frames (running statistics kept like batch norm's), so a missing or
corrupted span (silence, a noise burst, a black or occluded face) weighs less in the stream's pooling, in the
aligned audio-video frames and, through the clip's mean reliability, in the fused head; stage 2 pools its
audio and video tokens with the same weights (esva/models/projector.py).
"""

from __future__ import annotations

import torch
from torch import nn

from esva.models.align import Aligner, lengths_to_mask, to_rate
from esva.models.msfe import MSFE

FRAME_LEVEL = ("hubert", "mae", "videomae")
VIDEO = ("mae", "videomae", "eva")


def masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    w = m[..., None].to(x.dtype)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


def weighted_mean(x: torch.Tensor, m: torch.Tensor, r: torch.Tensor | None) -> torch.Tensor:
    """The mean of the valid frames weighted by their reliability r (B, T), times the clip's mean reliability
    (a stream whose frames are all unreliable contributes little, not a rescaled average of garbage)."""
    if r is None:
        return masked_mean(x, m)
    w = m.to(x.dtype) * r.to(x.dtype)
    mean = (x * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-6)
    rho = w.sum(1, keepdim=True) / m.to(x.dtype).sum(1, keepdim=True).clamp_min(1.0)
    return mean * rho


class Reliability(nn.Module):
    """Per-frame reliability of one frame-level stream, r(t) in (0, 1]: how typical the frame is of training frames.

    Running statistics (updated in training mode, momentum 0.05, over valid frames, like batch norm's): the mean mu
    and variance s^2 of each feature dimension, and the mean m and standard deviation sd of each frame's atypicality
        a(t) = mean over dimensions of (x(t) - mu)^2 / s^2.
    Then r(t) = exp(-relu(|z(t)| - 2)^2 / 2) with z(t) = (a(t) - m) / sd: frames within two standard deviations of
    the training frames' atypicality count fully, rarer ones less and less (a frame 4 sd out weighs 0.14). Two-sided:
    a collapsed frame (a black face, digital silence) sits too close to the mean to be a real one."""

    def __init__(self, dim: int, momentum: float = 0.05) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mu", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("a_mean", torch.ones(()))
        self.register_buffer("a_sd", torch.ones(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def _atypical(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - self.mu) ** 2 / self.var.clamp_min(1e-6)).mean(-1)

    @torch.no_grad()
    def update(self, x: torch.Tensor, m: torch.Tensor) -> None:
        frames = x[m].float()
        if frames.shape[0] < 2:
            return
        mom = 1.0 if int(self.seen) == 0 else self.momentum
        self.mu.lerp_(frames.mean(0), mom)
        self.var.lerp_(frames.var(0, unbiased=False), mom)
        a = self._atypical(frames)
        self.a_mean.lerp_(a.mean(), mom)
        self.a_sd.lerp_(a.std().clamp_min(1e-3), mom)
        self.seen += 1

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.update(x, m)
        z = (self._atypical(x) - self.a_mean) / self.a_sd.clamp_min(1e-3)
        return torch.exp(-torch.relu(z.abs() - 2.0) ** 2 / 2.0) * m.to(torch.float32)


class FusionClassifier(nn.Module):
    def __init__(self, dims: dict[str, int], rates: dict[str, float], use: tuple[str, ...], n_classes: int,
                 msfe_cfg, align_cfg, train_cfg) -> None:
        super().__init__()
        self.use = tuple(use)
        self.rates = dict(rates)
        h = train_cfg.hidden
        self.has_audio = "hubert" in self.use
        self.align_video = align_cfg.video if (align_cfg.enabled and self.has_audio and align_cfg.video in self.use) else None
        self.align_rate = align_cfg.rate
        self.msfe = MSFE(dims["hubert"], msfe_cfg) if self.has_audio else None
        self.aligner = Aligner(dims["hubert"], dims[self.align_video], align_cfg) if self.align_video else None
        self.enc = nn.ModuleDict({n: nn.Sequential(nn.LayerNorm(dims[n]), nn.Linear(dims[n], h), nn.GELU())
                                  for n in self.use})
        if self.align_video:
            self.joint = nn.Sequential(nn.Linear(2 * h, h), nn.GELU())
        n_emb = len(self.use) + (1 if self.align_video else 0)
        self.drop = nn.Dropout(train_cfg.dropout)
        self.head = nn.Sequential(nn.Linear(n_emb * h, h), nn.GELU(), nn.Dropout(train_cfg.dropout), nn.Linear(h, n_classes))
        self.audio_head = nn.Linear(h, n_classes) if self.has_audio else None
        self.reliability = nn.ModuleDict({n: Reliability(dims[n]) for n in self.use if n in FRAME_LEVEL}) \
            if getattr(train_cfg, "reliability", False) else None
        self.video_head = nn.Linear(h, n_classes) if any(v in self.use for v in VIDEO) else None

    def forward(self, batch: dict) -> dict:
        out: dict = {}
        embs: dict[str, torch.Tensor] = {}
        seqs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        rel: dict[str, torch.Tensor] = {}
        for n in self.use:
            if n in FRAME_LEVEL:
                x, lens = batch[n], batch[f"{n}_len"]
                m = lengths_to_mask(lens, x.shape[1])
                if self.reliability is not None:
                    rel[n] = self.reliability[n](x, m)  # from the raw frames (B, T)
                if n == "hubert":
                    x = self.msfe(x, m)
                    out["z_audio"] = masked_mean(x, m)  # for the contrastive loss (eq. 2)
                seqs[n] = (x, lens)
                embs[n] = weighted_mean(self.enc[n](x), m, rel.get(n))
            else:
                embs[n] = self.enc[n](batch[n])
        if self.align_video:
            a, la = to_rate(*seqs["hubert"], self.rates["hubert"], self.align_rate)
            v, lv = to_rate(*seqs[self.align_video], self.rates[self.align_video], self.align_rate)
            ma, mv = lengths_to_mask(la, a.shape[1]), lengths_to_mask(lv, v.shape[1])
            al = self.aligner(a, v, ma, mv)
            al["ma"], al["mv"] = ma, mv
            out["align"] = al
            v_al, m_al = Aligner.shift_video_tv(v, mv, al["p_frames"], self.aligner.k, a.shape[1])
            joint = torch.cat([self.enc["hubert"](a), self.enc[self.align_video](v_al)], -1)
            r_av = None
            if rel:  # a joint frame is as reliable as its less reliable side (the video's moved with it)
                r_a = to_rate(rel["hubert"][..., None], batch["hubert_len"], self.rates["hubert"], self.align_rate)[0][..., 0]
                r_v = to_rate(rel[self.align_video][..., None], batch[f"{self.align_video}_len"],
                              self.rates[self.align_video], self.align_rate)[0]
                r_v = Aligner.shift_video_tv(r_v, mv, al["p_frames"], self.aligner.k, a.shape[1])[0][..., 0]
                r_av = torch.minimum(r_a[:, : a.shape[1]], r_v)
            embs["av"] = weighted_mean(self.joint(joint), ma & m_al, r_av)
        if rel:
            out["reliability"] = {n: (r.sum(1) / batch[f"{n}_len"].clamp_min(1)).detach() for n, r in rel.items()}
            out["frame_reliability"] = rel
        order = list(self.use) + (["av"] if self.align_video else [])
        fused = torch.cat([self.drop(embs[n]) for n in order], -1)
        out["logits"] = self.head(fused)
        if self.audio_head is not None:
            out["audio_logits"] = self.audio_head(embs["hubert"])
        if self.video_head is not None:
            vid = [embs[n] for n in VIDEO if n in self.use]
            out["video_logits"] = self.video_head(torch.stack(vid, 0).mean(0))
        return out
