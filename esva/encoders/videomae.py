"""VideoMAE on windows of 16 face frames: one vector per temporal token (tubelet) per window.

A window of 16 frames gives 16/tubelet_size (8) temporal slots; each slot's vector is the mean of
its spatial patch tokens, so the frame-level output runs at fps / tubelet_size. Windows start every
`window_stride` frames (16: no overlap). A clip (or its tail) shorter than a window is padded by
repeating its last frame, and the slots that cover only padding are dropped. Paper preset:
MCG-NJU/videomae-large (or a local checkpoint).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from transformers import VideoMAEConfig, VideoMAEModel

from esva.encoders.base import (resolve_device, IMAGENET_MEAN, IMAGENET_STD, Batch, Located, autocast, layer_names, load_frozen,
                                save_tiny_model, select_layers, to_float_image)

NAME = "videomae"
MODEL_TYPES = ("videomae",)
PAPER_CHECKPOINT = "MCG-NJU/videomae-large"
# VideoMAEForPreTraining's decoder and mask token; a fine-tuned model's classification head
ALLOW_UNEXPECTED = (r"decoder\.", r"encoder_to_decoder\.", r"mask_token$", r"fc_norm\.", r"classifier\.")


def tiny_config() -> VideoMAEConfig:
    return VideoMAEConfig(image_size=64, patch_size=16, num_frames=16, tubelet_size=2, hidden_size=64,
                          num_hidden_layers=4, num_attention_heads=4, intermediate_size=128, use_mean_pooling=False)


def save_tiny(path: Path, seed: int) -> None:
    save_tiny_model(VideoMAEModel, tiny_config(), path, seed, {
        "image_processor_type": "VideoMAEImageProcessor", "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD), "size": {"shortest_edge": 64}})


class VideoMaeEncoder:
    modality = "faces"
    name = NAME
    min_length = 1  # shorter clips are padded to a window by repeating the last frame

    def __init__(self, loc: Located, cfg) -> None:
        self.model, self.dtype, pre, self.load_report = load_frozen(VideoMAEModel, loc, cfg, NAME, ALLOW_UNEXPECTED)
        self.device = resolve_device(cfg.device, f"features.{self.name}.device")
        c = self.model.config
        self.mean = pre.get("image_mean", IMAGENET_MEAN)
        self.std = pre.get("image_std", IMAGENET_STD)
        self.size = c.image_size
        self.window = c.num_frames
        self.tubelet = c.tubelet_size
        self.slots = c.num_frames // c.tubelet_size
        self.stride = cfg.window_stride
        if self.stride > self.window:
            raise ValueError(f"features.videomae.window_stride ({self.stride}) must be <= the checkpoint's num_frames "
                             f"({self.window}); larger strides leave frames uncovered")
        if self.stride % self.tubelet:
            raise ValueError(f"features.videomae.window_stride ({self.stride}) must be a multiple of the "
                             f"checkpoint's tubelet_size ({self.tubelet})")
        self.dim = c.hidden_size
        self.layers = layer_names(cfg.layers)
        self.frame_rate: float | None = None  # set from the face store (fps / tubelet_size)

    def _starts(self, n: int) -> list[int]:
        return list(range(0, max(1, n - self.window + self.stride), self.stride)) if n > self.window else [0]

    def cost(self, n: int) -> int:
        """Batch cost of a clip of n face frames: its windows."""
        return len(self._starts(int(n)))

    def collate(self, clip_ids: list[str], items: list[np.ndarray]) -> Batch:
        windows, per_clip, valid = [], [], []
        for frames in items:
            frames = np.asarray(frames)
            n = len(frames)
            starts = self._starts(n)
            for s in starts:
                idx = np.minimum(np.arange(s, s + self.window), n - 1)  # repeat the last frame past the end
                windows.append(frames[idx])
            per_clip.append(len(starts))
            valid.append(math.ceil(n / self.tubelet))
        px = to_float_image(np.concatenate(windows, 0), self.size, self.mean, self.std)
        px = px.view(len(windows), self.window, *px.shape[1:])  # (W, 16, 3, S, S)
        return Batch(clip_ids, {"pixel_values": px}, torch.tensor(valid), {"windows": per_clip})

    @torch.inference_mode()
    def encode(self, batch: Batch) -> dict[str, torch.Tensor]:
        px = batch.inputs["pixel_values"].to(self.device)
        with autocast(self.device, self.dtype):
            out = self.model(px, output_hidden_states=True)
        hs = list(out.hidden_states)
        hs[-1] = out.last_hidden_state
        result = {}
        for name, v in select_layers(hs, self.layers).items():
            v = v.float().view(len(px), self.slots, -1, v.shape[-1]).mean(2)  # (W, slots, D)
            clips, w0 = [], 0
            for n_win in batch.extra["windows"]:
                seq = self._overlap_add(v[w0:w0 + n_win])
                clips.append(seq)
                w0 += n_win
            t_max = max(c.shape[0] for c in clips)
            padded = v.new_zeros(len(clips), t_max, v.shape[-1])
            for i, c in enumerate(clips):
                padded[i, : c.shape[0]] = c
            result[name] = padded
        return result

    def _overlap_add(self, wins: torch.Tensor) -> torch.Tensor:
        """(n_windows, slots, D) -> (T_slots, D): windows laid at their starts, overlaps averaged."""
        step = self.stride // self.tubelet
        total = step * (len(wins) - 1) + self.slots
        acc = wins.new_zeros(total, wins.shape[-1])
        cnt = wins.new_zeros(total, 1)
        for i, w in enumerate(wins):
            acc[i * step:i * step + self.slots] += w
            cnt[i * step:i * step + self.slots] += 1
        return acc / cnt

    def output_lengths(self, batch: Batch) -> torch.Tensor:
        return batch.lengths.clone()
