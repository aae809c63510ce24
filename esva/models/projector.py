"""Stage-2 modality tokens in one of two layouts (`tune.layout`), projected into the LLM's embedding space.

`emotion_llama`: Emotion-LLaMA's layout, as its code (minigpt_v2.py, first_face.py) builds it:
- `<VideoHere>`: the EVA patch tokens (ViT-g at 448 px: 1024 patches, through MiniGPT-v2's ln_vision), four
  consecutive tokens in raster order concatenated (1024 x 1408 -> 256 x 5632), then `llama_proj`
  (Linear 5632 -> hidden);
- `<FeatureHere>`: four utterance tokens in this order: MAE (`feats_llama_proj1`), VideoMAE
  (`feats_llama_proj2`), HuBERT (`feats_llama_proj3`), each the mean over the clip's valid frames, and the
  EVA CLS token (`cls_tk_llama_proj`). Every projection is a plain Linear with bias, named as in
  Emotion-LLaMA's checkpoints, so `tune.init_from` maps its keys one to one.

`esva`: the same, with the MSFE output in place of raw HuBERT (pooled to `tune.audio_tokens` tokens, each
through `feats_llama_proj3`; 1 token is Emotion-LLaMA's count) and the aligned video stream added after the
patch tokens in `<VideoHere>` (`align.video` frames shifted by stage 1's estimated offset onto the audio's time
axis, pooled to `tune.video_tokens` tokens, through `video_proj`).

Pooling is a masked mean over equal segments of each clip's valid frames, so padding never enters a token.
"""

from __future__ import annotations

import torch
from torch import nn

from esva.models.align import Aligner, lengths_to_mask, to_rate
from esva.models.fusion import weighted_mean

LAYOUTS = ("esva", "emotion_llama")
NEEDS = ("hubert", "mae", "videomae", "eva")  # the feature stores stage 2 reads
EXTRA = {"eva_patches": ("eva", "patches"), "eva_cls": ("eva", "cls_utt")}  # and these fields of the EVA store
PATCH_GROUP = 4  # Emotion-LLaMA concatenates 4 consecutive patch tokens into one LLM token


def pool_tokens(x: torch.Tensor, mask: torch.Tensor, n: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, D), valid mask (B, T) -> (B, n, D): token j is the mean over the valid frames of rank
    [floor(j L/n), max(ceil((j+1) L/n), floor(j L/n) + 1)) among a clip's L valid frames, wherever
    they sit (the aligned video's valid frames may start late). With `weights` (B, T), the frames' reliability:
    the weighted mean, times the token's mean weight (an unreliable stretch gives a small token)."""
    lens = mask.sum(1).clamp_min(1).to(x.dtype)[:, None]  # (B, 1)
    j = torch.arange(n, device=x.device, dtype=x.dtype)[None]  # (1, n)
    start = torch.floor(j * lens / n)
    end = torch.maximum(torch.ceil((j + 1) * lens / n), start + 1)
    rank = (mask.long().cumsum(1) - 1).to(x.dtype)[:, None, :]  # (B, 1, T): index among valid frames
    w = ((rank >= start[..., None]) & (rank < end[..., None]) & mask[:, None, :]).to(x.dtype)  # (B, n, T)
    if weights is None:
        return (w @ x) / w.sum(-1, keepdim=True).clamp_min(1.0)
    wr = w * weights.to(x.dtype)[:, None, :]
    return (wr @ x) / wr.sum(-1, keepdim=True).clamp_min(1e-6) * (wr.sum(-1, keepdim=True) / w.sum(-1, keepdim=True).clamp_min(1.0))


def stage1_streams(model, batch: dict, rates: dict[str, float], n_audio: int, n_video: int,
                   video: str = "mae") -> dict[str, torch.Tensor]:
    """What the projector reads, per clip: audio (B, n_audio, D_hubert) pooled from MSFE (raw HuBERT without
    it), video (B, n_video, D_video) pooled from the aligned sequence, the utterance means of HuBERT, MAE and
    VideoMAE, the EVA patch tokens (B, P, D_eva) and CLS (B, D_eva). A count of 0 skips that stream (and MSFE
    and the aligner when neither is asked for: Emotion-LLaMA's layout reads only the utterance means)."""
    out: dict[str, torch.Tensor] = {}
    rel = getattr(model, "reliability", None)  # train.reliability: the frames' typicality (esva/models/fusion.py)

    def r_of(n: str) -> torch.Tensor | None:
        if rel is None or n not in rel:
            return None
        return rel[n](batch[n], lengths_to_mask(batch[f"{n}_len"], batch[n].shape[1]))

    if n_audio or n_video:
        x, lens = batch["hubert"], batch["hubert_len"]
        m = lengths_to_mask(lens, x.shape[1])
        a_seq = model.msfe(x, m) if model.msfe is not None else x  # (B, T, D_hubert)
        if n_audio:
            out["audio"] = pool_tokens(a_seq, m, n_audio, r_of("hubert"))
    if n_video:
        vname = model.align_video or video
        v, lv = to_rate(batch[vname], batch[f"{vname}_len"], rates[vname], model.align_rate)
        mv = lengths_to_mask(lv, v.shape[1])
        if model.aligner is not None:
            a, la = to_rate(a_seq, lens, rates["hubert"], model.align_rate)
            ma = lengths_to_mask(la, a.shape[1])
            al = model.aligner(a, v, ma, mv)
            v_al, m_al = Aligner.shift_video_tv(v, mv, al["p_frames"], model.aligner.k, a.shape[1])  # on the audio's axis
            r_v = r_of(vname)
            if r_v is not None:  # the video's reliability, at align.rate, moved with it
                r_v = to_rate(r_v[..., None], batch[f"{vname}_len"], rates[vname], model.align_rate)[0]
                r_v = Aligner.shift_video_tv(r_v, mv, al["p_frames"], model.aligner.k, a.shape[1])[0][..., 0]
            out["video"] = pool_tokens(v_al, ma & m_al, n_video, r_v)
        else:
            r_v = r_of(vname)
            if r_v is not None:
                r_v = to_rate(r_v[..., None], batch[f"{vname}_len"], rates[vname], model.align_rate)[0][..., 0]
            out["video"] = pool_tokens(v, mv, n_video, r_v)
    for n in ("hubert", "mae", "videomae"):
        out[n] = weighted_mean(batch[n], lengths_to_mask(batch[f"{n}_len"], batch[n].shape[1]), r_of(n))
    out["eva_patches"], out["eva_cls"] = batch["eva_patches"], batch["eva_cls"]
    return out


class Projector(nn.Module):
    """The projections of a layout; `forward` returns the two slots' tokens (B, n_video, H), (B, n_feature, H)."""

    def __init__(self, layout: str, dims: dict[str, int], hidden_size: int, audio_tokens: int = 1,
                 video_tokens: int = 0) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"tune.layout must be one of {list(LAYOUTS)}, got {layout!r}")
        need = ["eva", "eva_patches", "mae", "videomae", "hubert"] + (["video"] if layout == "esva" else [])
        missing = [s for s in need if s not in dims]
        if missing:
            raise ValueError(f"projector dims lack {missing}")
        if dims["eva_patches"] % PATCH_GROUP:
            raise ValueError(f"the EVA store holds {dims['eva_patches']} patch tokens, not a multiple of {PATCH_GROUP}")
        self.layout = layout
        self.dims = {s: int(dims[s]) for s in need}
        self.hidden_size = int(hidden_size)
        self.audio_tokens = int(audio_tokens) if layout == "esva" else 1
        self.video_tokens = int(video_tokens) if layout == "esva" else 0
        self.patch_tokens = self.dims["eva_patches"] // PATCH_GROUP
        h = self.hidden_size
        self.llama_proj = nn.Linear(PATCH_GROUP * self.dims["eva"], h)
        self.feats_llama_proj1 = nn.Linear(self.dims["mae"], h)
        self.feats_llama_proj2 = nn.Linear(self.dims["videomae"], h)
        self.feats_llama_proj3 = nn.Linear(self.dims["hubert"], h)
        self.cls_tk_llama_proj = nn.Linear(self.dims["eva"], h)
        self.video_proj = nn.Linear(self.dims["video"], h) if layout == "esva" else None

    @property
    def pooled_tokens(self) -> tuple[int, int]:
        """(audio, video) token counts stage1_streams pools for this layout; 0: not read."""
        return (self.audio_tokens, self.video_tokens) if self.layout == "esva" else (0, 0)

    @property
    def n_video(self) -> int:
        return self.patch_tokens + self.video_tokens

    @property
    def n_feature(self) -> int:
        return 3 + self.audio_tokens

    def config(self) -> dict:
        return {"layout": self.layout, "dims": self.dims, "hidden_size": self.hidden_size,
                "audio_tokens": self.audio_tokens, "video_tokens": self.video_tokens}

    def forward(self, s: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        patches = s["eva_patches"]  # (B, P, D)
        b, p, d = patches.shape
        if p != self.dims["eva_patches"]:
            raise ValueError(f"{p} EVA patch tokens where the projector was built for {self.dims['eva_patches']}")
        video = self.llama_proj(patches.reshape(b, p // PATCH_GROUP, PATCH_GROUP * d))  # 4 consecutive tokens
        if self.video_proj is not None:
            video = torch.cat([video, self.video_proj(s["video"])], 1)
        audio = s["audio"] if self.layout == "esva" else s["hubert"][:, None]  # MSFE tokens, or the HuBERT mean
        feature = torch.cat([self.feats_llama_proj1(s["mae"])[:, None], self.feats_llama_proj2(s["videomae"])[:, None],
                             self.feats_llama_proj3(audio), self.cls_tk_llama_proj(s["eva_cls"])[:, None]], 1)
        return video, feature
