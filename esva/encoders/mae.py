"""MAE (ViTMAEModel) per face frame: one vector per frame at the face store's frame rate.

transformers' ViTMAE shuffles patches at random even with mask_ratio=0; esva loads it with
mask_ratio=0 and passes `noise = arange(num_patches)`, so the patch order is fixed (identity) and the
features are deterministic. Paper preset: facebook/vit-mae-large (MER's MAE features come from a
ViT-MAE-large fine-tuned on faces; any local ViTMAE directory works).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import ViTMAEConfig, ViTMAEModel

from esva.encoders.base import (resolve_device, IMAGENET_MEAN, IMAGENET_STD, Batch, Located, autocast, layer_names, load_frozen,
                                save_tiny_model, select_layers, to_float_image)

NAME = "mae"
MODEL_TYPES = ("vit_mae",)
PAPER_CHECKPOINT = "facebook/vit-mae-large"
ALLOW_UNEXPECTED = (r"decoder\.",)  # ViTMAEForPreTraining's pixel decoder


def tiny_config() -> ViTMAEConfig:
    return ViTMAEConfig(image_size=64, patch_size=16, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=128, decoder_hidden_size=32, decoder_num_hidden_layers=1,
                        decoder_num_attention_heads=2, decoder_intermediate_size=64, mask_ratio=0.0)


def save_tiny(path: Path, seed: int) -> None:
    save_tiny_model(ViTMAEModel, tiny_config(), path, seed, {
        "image_processor_type": "ViTImageProcessor", "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD), "size": {"height": 64, "width": 64}})


class MaeEncoder:
    modality = "faces"
    name = NAME
    min_length = 1

    def __init__(self, loc: Located, cfg) -> None:
        self.model, self.dtype, pre, self.load_report = load_frozen(ViTMAEModel, loc, cfg, NAME, ALLOW_UNEXPECTED,
                                                                    mask_ratio=0.0)
        self.device = resolve_device(cfg.device, f"features.{self.name}.device")
        c = self.model.config
        self.mean = pre.get("image_mean", IMAGENET_MEAN)
        self.std = pre.get("image_std", IMAGENET_STD)
        self.size = c.image_size
        self.n_patches = (c.image_size // c.patch_size) ** 2
        self.dim = c.hidden_size
        self.stride = cfg.frame_stride
        self.pool = cfg.pool
        self.layers = layer_names(cfg.layers)
        self.frame_rate: float | None = None  # set from the face store (fps / frame_stride)

    def cost(self, n: int) -> int:
        """Batch cost of a clip of n face frames: the frames actually encoded."""
        return -(-int(n) // self.stride)

    def collate(self, clip_ids: list[str], items: list[np.ndarray]) -> Batch:
        clips = [np.asarray(f)[:: self.stride] for f in items]
        lengths = torch.tensor([len(f) for f in clips])
        pixels = to_float_image(np.concatenate(clips, 0), self.size, self.mean, self.std)
        return Batch(clip_ids, {"pixel_values": pixels}, lengths)

    @torch.inference_mode()
    def encode(self, batch: Batch) -> dict[str, torch.Tensor]:
        px = batch.inputs["pixel_values"].to(self.device)
        noise = torch.arange(self.n_patches, device=self.device, dtype=torch.float32).expand(len(px), -1)
        with autocast(self.device, self.dtype):
            out = self.model(px, noise=noise, output_hidden_states=True)
        hs = list(out.hidden_states)
        hs[-1] = out.last_hidden_state  # the final layer norm applied
        feats = select_layers(hs, self.layers)
        per_frame = {k: (v[:, 1:].mean(1) if self.pool == "mean" else v[:, 0]).float() for k, v in feats.items()}
        # split the concatenated frames back into clips, padded to (B, T, D)
        return {k: _unflatten(v, batch.lengths) for k, v in per_frame.items()}

    def output_lengths(self, batch: Batch) -> torch.Tensor:
        return batch.lengths.clone()


def _unflatten(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(sum(lengths), D) -> (B, max(lengths), D), zero padded."""
    out = x.new_zeros(len(lengths), int(lengths.max()), x.shape[-1])
    start = 0
    for i, n in enumerate(lengths.tolist()):
        out[i, :n] = x[start:start + n]
        start += n
    return out
