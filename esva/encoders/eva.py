"""EVA ViT-g (the vision tower of BLIP-2, `Blip2VisionModel`) on one face frame per clip.

Emotion-LLaMA encodes the peak frame with EVA; esva picks `features.eva.frame`: first, middle, or
peak (the frame farthest, in mean absolute pixel difference, from the clip's median face, as an
offline stand-in for the AU-intensity peak). Output: the post-layernorm CLS vector (T = 1). Paper
preset: Salesforce/blip2-opt-2.7b's vision tower. A hub id or a local directory holding either a
vision-only checkpoint (model_type blip_2_vision_model) or a full BLIP-2 checkpoint (model_type blip-2,
whose `vision_model.*` tensors are mapped onto the tower) both work, and both load every tower tensor
or fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import Blip2VisionConfig, Blip2VisionModel

from esva.encoders.base import (Batch, Located, autocast, layer_names, load_frozen, resolve_device, save_tiny_model,
                                select_layers, to_float_image)

NAME = "eva"
MODEL_TYPES = ("blip_2_vision_model", "blip-2")
PAPER_CHECKPOINT = "Salesforce/blip2-opt-2.7b"
TOKEN_FIELDS = ("cls", "patches")  # features.eva.tokens: Emotion-LLaMA's visual tokens
LN_VISION_EPS = 1e-5  # torch.nn.LayerNorm's default, as MiniGPT-v2 builds ln_vision
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def tiny_config() -> Blip2VisionConfig:
    return Blip2VisionConfig(image_size=56, patch_size=14, hidden_size=64, num_hidden_layers=4,
                             num_attention_heads=4, intermediate_size=128)


def save_tiny(path: Path, seed: int) -> None:
    save_tiny_model(Blip2VisionModel, tiny_config(), path, seed, {
        "image_processor_type": "BlipImageProcessor", "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD), "size": {"height": 56, "width": 56}})


# A full BLIP-2 checkpoint (model_type blip-2) holds the vision tower under `vision_model.`; the Q-Former,
# the language model and the projections around it are not ours to load.
BLIP2_KEY_MAPPING = {r"^vision_model\.": ""}
BLIP2_OTHER_PARTS = (r"qformer\.", r"language_model\.", r"query_tokens$", r"language_projection\.",
                     r"vision_projection\.", r"text_projection\.", r"itm_head\.")


def load_tower(loc: Located, cfg):
    """The vision tower, exactly: from a vision-only checkpoint as it is, from a full BLIP-2 checkpoint
    (hub id or folder, sharded or not) through the `vision_model.` key mapping. Both fail unless every
    tower tensor comes from the checkpoint."""
    if loc.config.get("model_type") == "blip-2":
        return load_frozen(Blip2VisionModel, loc, cfg, NAME, BLIP2_OTHER_PARTS, key_mapping=BLIP2_KEY_MAPPING)
    return load_frozen(Blip2VisionModel, loc, cfg, NAME)


def pick_frame(frames: np.ndarray, how: str) -> int:
    n = len(frames)
    if how == "first" or n == 1:
        return 0
    if how == "middle":
        return n // 2
    small = frames[:, ::8, ::8].astype(np.float32).mean(-1)  # cheap grey thumbnails
    med = np.median(small, axis=0)
    return int(np.argmax(np.abs(small - med).mean(axis=(1, 2))))


class EvaEncoder:
    modality = "faces"
    name = NAME
    min_length = 1
    frame_rate = None  # one vector per clip

    def __init__(self, loc: Located, cfg) -> None:
        self.device = resolve_device(cfg.device, f"features.{self.name}.device")
        self.model, self.dtype, pre, self.load_report = load_tower(loc, cfg)
        c = self.model.config
        self.mean = pre.get("image_mean", CLIP_MEAN)
        self.std = pre.get("image_std", CLIP_STD)
        self.size = cfg.image_size or c.image_size
        self.interpolate = self.size != c.image_size
        self.dim = c.hidden_size
        self.how = cfg.frame
        self.layers = layer_names(cfg.layers)
        self.n_patches = (self.size // c.patch_size) ** 2
        if getattr(cfg, "tokens", False):
            clash = [n for n in TOKEN_FIELDS if n in self.layers]
            if clash:
                raise ValueError(f"features.eva.layers names {clash}, which features.eva.tokens stores")
            self.layers = self.layers + TOKEN_FIELDS
        # fields whose length is not the clip's output length (one image): the patch tokens
        self.fixed_lengths = {"patches": self.n_patches} if "patches" in self.layers else {}

    def cost(self, n: int) -> int:
        return 1

    def collate(self, clip_ids: list[str], items: list[np.ndarray]) -> Batch:
        idx = [pick_frame(np.asarray(f), self.how) for f in items]
        px = to_float_image(np.stack([np.asarray(f)[i] for f, i in zip(items, idx)]), self.size, self.mean, self.std)
        return Batch(clip_ids, {"pixel_values": px}, torch.ones(len(items), dtype=torch.long), {"frame_index": idx})

    @torch.inference_mode()
    def encode(self, batch: Batch) -> dict[str, torch.Tensor]:
        px = batch.inputs["pixel_values"].to(self.device)
        with autocast(self.device, self.dtype):
            out = self.model(px, output_hidden_states=True, interpolate_pos_encoding=self.interpolate)
        hs = [h[:, :1] for h in out.hidden_states]
        hs[-1] = out.pooler_output[:, None]  # post-layernorm CLS
        res = {k: v.float() for k, v in select_layers(hs, [n for n in self.layers if n not in TOKEN_FIELDS]).items()}
        if "patches" in self.layers:
            # Emotion-LLaMA (MiniGPT-v2): ln_vision(visual_encoder(image)), a LayerNorm created fresh and frozen,
            # so without affine, on the last layer's output (HF's hidden_states[-1], before BLIP-2's post_layernorm)
            x = out.hidden_states[-1].float()
            x = torch.nn.functional.layer_norm(x, x.shape[-1:], eps=LN_VISION_EPS)
            res["cls"], res["patches"] = x[:, :1], x[:, 1:]
        return res

    def output_lengths(self, batch: Batch) -> torch.Tensor:
        return batch.lengths.clone()
