"""Stage-2 modality tokens: stage-1 streams pooled to a fixed number of tokens and projected into
the LLM's embedding space.

Slots of the template (Emotion-LLaMA's layout, DESIGN.md section 4):
- `<VideoHere>`: `tune.video_tokens` tokens from the aligned video sequence (the `align.video`
  frames shifted by stage 1's estimated offset onto the audio's time axis), then one EVA token;
- `<FeatureHere>`: `tune.audio_tokens` tokens from the MSFE output, then one MAE and one VideoMAE token
  (their utterance means).
Each stream has its own projection: a LayerNorm (feature scales differ by encoder) and a Linear into
the LLM's hidden size. Pooling is a masked mean over equal segments of each clip's valid frames,
so padding never enters a token.
"""

from __future__ import annotations

import torch
from torch import nn

from esva.models.align import Aligner, lengths_to_mask, to_rate
from esva.models.fusion import masked_mean

STREAMS = ("audio", "video", "eva", "mae", "videomae")
NEEDS = ("hubert", "mae", "videomae", "eva")  # the feature stores stage 2 reads


def pool_tokens(x: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """(B, T, D), valid mask (B, T) -> (B, n, D): token j is the mean over the valid frames of rank
    [floor(j L/n), max(ceil((j+1) L/n), floor(j L/n) + 1)) among a clip's L valid frames, wherever
    they sit (the aligned video's valid frames may start late)."""
    lens = mask.sum(1).clamp_min(1).to(x.dtype)[:, None]  # (B, 1)
    j = torch.arange(n, device=x.device, dtype=x.dtype)[None]  # (1, n)
    start = torch.floor(j * lens / n)
    end = torch.maximum(torch.ceil((j + 1) * lens / n), start + 1)
    rank = (mask.long().cumsum(1) - 1).to(x.dtype)[:, None, :]  # (B, 1, T): index among valid frames
    w = ((rank >= start[..., None]) & (rank < end[..., None]) & mask[:, None, :]).to(x.dtype)  # (B, n, T)
    return (w @ x) / w.sum(-1, keepdim=True).clamp_min(1.0)


def stage1_streams(model, batch: dict, rates: dict[str, float], n_audio: int, n_video: int,
                   video: str = "mae") -> dict[str, torch.Tensor]:
    """The stage-1 outputs stage 2 reads, pooled: audio (B, n_audio, D_hubert) from MSFE, video
    (B, n_video, D_video) from the aligned sequence, and the MAE/VideoMAE/EVA utterance vectors.
    Also returns the estimated offset `tau_frames` (B,) when stage 1 has an aligner."""
    x, lens = batch["hubert"], batch["hubert_len"]
    m = lengths_to_mask(lens, x.shape[1])
    a_seq = model.msfe(x, m) if model.msfe is not None else x  # (B, T, D_hubert)
    out = {"audio": pool_tokens(a_seq, m, n_audio)}
    vname = model.align_video or video
    v, lv = to_rate(batch[vname], batch[f"{vname}_len"], rates[vname], model.align_rate)
    mv = lengths_to_mask(lv, v.shape[1])
    if model.aligner is not None:
        a, la = to_rate(a_seq, lens, rates["hubert"], model.align_rate)
        ma = lengths_to_mask(la, a.shape[1])
        al = model.aligner(a, v, ma, mv)
        v_al, m_al = Aligner.shift_video(v, mv, al["p"], model.aligner.k, a.shape[1])  # on the audio's axis
        out["video"] = pool_tokens(v_al, ma & m_al, n_video)
        out["tau_frames"] = al["tau_star"]
    else:
        out["video"] = pool_tokens(v, mv, n_video)
    for n in ("mae", "videomae"):
        out[n] = masked_mean(batch[n], lengths_to_mask(batch[f"{n}_len"], batch[n].shape[1]))
    out["eva"] = batch["eva"]
    return out


class Projector(nn.Module):
    """Per-stream LayerNorm + Linear into the LLM's hidden size; returns the two slots' tokens."""

    def __init__(self, dims: dict[str, int], hidden_size: int) -> None:
        super().__init__()
        missing = [s for s in STREAMS if s not in dims]
        if missing:
            raise ValueError(f"projector dims lack streams {missing}")
        self.dims = {s: int(dims[s]) for s in STREAMS}
        self.hidden_size = int(hidden_size)
        self.proj = nn.ModuleDict({s: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden_size))
                                   for s, d in self.dims.items()})

    def forward(self, s: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        video = torch.cat([self.proj["video"](s["video"]), self.proj["eva"](s["eva"])[:, None]], 1)  # (B, Nv+1, H)
        feature = torch.cat([self.proj["audio"](s["audio"]), self.proj["mae"](s["mae"])[:, None],
                             self.proj["videomae"](s["videomae"])[:, None]], 1)  # (B, Na+2, H)
        return video, feature
