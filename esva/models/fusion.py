"""The stage-1 emotion classifier over MSFE audio, aligned video and optional utterance vectors.

Modalities come from `features.use`:
- hubert: frame-level -> MSFE (eq. 1) -> masked mean -> audio embedding;
- mae / videomae: frame-level video; the one named by `align.video` is aligned to the audio
  (eq. 4-9) and fused with it frame by frame before pooling; any other is pooled;
- eva, text: utterance vectors.
A fused head classifies the concatenated embeddings; an audio-only and a video-only head give
per-modality evidence (used by `esva predict`) and an auxiliary loss.
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
        self.video_head = nn.Linear(h, n_classes) if any(v in self.use for v in VIDEO) else None

    def forward(self, batch: dict) -> dict:
        out: dict = {}
        embs: dict[str, torch.Tensor] = {}
        seqs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for n in self.use:
            if n in FRAME_LEVEL:
                x, lens = batch[n], batch[f"{n}_len"]
                m = lengths_to_mask(lens, x.shape[1])
                if n == "hubert":
                    x = self.msfe(x, m)
                    out["z_audio"] = masked_mean(x, m)  # for the contrastive loss (eq. 2)
                seqs[n] = (x, lens)
                embs[n] = masked_mean(self.enc[n](x), m)
            else:
                embs[n] = self.enc[n](batch[n])
        if self.align_video:
            a, la = to_rate(*seqs["hubert"], self.rates["hubert"], self.align_rate)
            v, lv = to_rate(*seqs[self.align_video], self.rates[self.align_video], self.align_rate)
            ma, mv = lengths_to_mask(la, a.shape[1]), lengths_to_mask(lv, v.shape[1])
            al = self.aligner(a, v, ma, mv)
            al["ma"], al["mv"] = ma, mv
            out["align"] = al
            v_al, m_al = Aligner.shift_video(v, mv, al["p"], self.aligner.k, a.shape[1])
            joint = torch.cat([self.enc["hubert"](a), self.enc[self.align_video](v_al)], -1)
            embs["av"] = masked_mean(self.joint(joint), ma & m_al)
        order = list(self.use) + (["av"] if self.align_video else [])
        fused = torch.cat([self.drop(embs[n]) for n in order], -1)
        out["logits"] = self.head(fused)
        if self.audio_head is not None:
            out["audio_logits"] = self.audio_head(embs["hubert"])
        if self.video_head is not None:
            vid = [embs[n] for n in VIDEO if n in self.use]
            out["video_logits"] = self.video_head(torch.stack(vid, 0).mean(0))
        return out
