"""HuBERT on 16 kHz audio: frame-level features at 50 Hz.

Paper preset: TencentGameMate/chinese-hubert-large (what Emotion-LLaMA and the MER baselines use;
facebook/hubert-large-ll60k is the English alternative). The tiny preset is the same HubertModel
class with a small config (layer-norm feature extractor and stable layer norm, as in the large
models), random weights, saved with save_pretrained and loaded back with from_pretrained.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from transformers import HubertConfig, HubertModel

from esva.encoders.base import (Batch, Located, autocast, layer_names, load_frozen, resolve_device, save_tiny_model,
                                select_layers)

NAME = "hubert"
MODEL_TYPES = ("hubert",)
PAPER_CHECKPOINT = "TencentGameMate/chinese-hubert-large"
SAMPLE_RATE = 16000
# checkpoint parts that are not the encoder: the time-mask embedding (esva never masks), a CTC head,
# fairseq pretraining heads
ALLOW_UNEXPECTED = (r"masked_spec_embed$", r"lm_head\.", r"label_embs_concat$", r"final_proj\.")


def tiny_config() -> HubertConfig:
    return HubertConfig(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        conv_dim=(32, 32, 32, 32, 32, 32, 32), conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        feat_extract_norm="layer", do_stable_layer_norm=True, num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, conv_bias=True, mask_time_prob=0.0,
    )


def save_tiny(path: Path, seed: int) -> None:
    save_tiny_model(HubertModel, tiny_config(), path, seed, {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "sampling_rate": SAMPLE_RATE, "do_normalize": True,
        "return_attention_mask": True, "feature_size": 1, "padding_value": 0.0})


class HubertEncoder:
    modality = "audio"
    name = NAME

    def __init__(self, loc: Located, cfg) -> None:
        self.model, self.dtype, pre, self.load_report = load_frozen(HubertModel, loc, cfg, NAME, ALLOW_UNEXPECTED,
                                                                    mask_time_prob=0.0)
        self.device = resolve_device(cfg.device, f"features.{self.name}.device")
        c = self.model.config
        self.do_normalize = bool(pre.get("do_normalize", True))
        # group-norm feature extractors (hubert-base) mix padding into valid frames: one clip a batch
        self.single = c.feat_extract_norm != "layer"
        self.dim = c.hidden_size
        self.frame_rate = SAMPLE_RATE / math.prod(c.conv_stride)
        self.layers = layer_names(cfg.layers)
        self.n_layers = c.num_hidden_layers
        # the shortest input giving one output frame: the conv stack's receptive field
        rf = 1
        for k, s in zip(reversed(c.conv_kernel), reversed(c.conv_stride)):
            rf = (rf - 1) * s + k
        self.min_length = rf

    def cost(self, n: int) -> int:
        """Padded batch cost of a clip of n samples."""
        return int(n)

    def collate(self, clip_ids: list[str], items: list[np.ndarray]) -> Batch:
        lengths = torch.tensor([len(a) for a in items])
        x = torch.zeros(len(items), int(lengths.max()))
        for i, a in enumerate(items):
            t = torch.as_tensor(np.asarray(a, np.float32))
            if self.do_normalize:  # over the valid samples only, as Wav2Vec2FeatureExtractor does per clip
                t = (t - t.mean()) / torch.sqrt(t.var(unbiased=False) + 1e-7)
            x[i, : len(t)] = t
        mask = (torch.arange(x.shape[1])[None, :] < lengths[:, None]).long()
        return Batch(clip_ids, {"input_values": x, "attention_mask": mask}, lengths)

    @torch.inference_mode()
    def encode(self, batch: Batch) -> dict[str, torch.Tensor]:
        x = batch.inputs["input_values"].to(self.device)
        mask = batch.inputs["attention_mask"].to(self.device)
        with autocast(self.device, self.dtype):
            out = self.model(x, attention_mask=mask, output_hidden_states=True)
        hs = list(out.hidden_states)
        hs[-1] = out.last_hidden_state
        return {k: v.float() for k, v in select_layers(hs, self.layers).items()}

    def output_lengths(self, batch: Batch) -> torch.Tensor:
        return self.model._get_feat_extract_output_lengths(batch.lengths).long()
