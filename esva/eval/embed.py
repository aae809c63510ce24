"""Sentence embeddings for the offline EMER clue-overlap proxy: the bundled, sha256-checked
all-MiniLM-L6-v2 (real weights), mean-pooled over real tokens as sentence-transformers does."""

from __future__ import annotations

import numpy as np
import torch

from esva.config import TextFeatures
from esva.checkpoints import locate
from esva.encoders.text import TextEncoder, minilm_dir


class SentenceEmbedder:
    def __init__(self, batch_size: int = 32, device: str = "cpu") -> None:
        self.encoder = TextEncoder(locate(minilm_dir(), None, "text"), TextFeatures(checkpoint="minilm", max_tokens=256, device=device,
                                                              dtype="fp32"))
        self.batch_size = batch_size

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            part = [t or "" for t in texts[i:i + self.batch_size]]
            batch = self.encoder.collate([str(j) for j in range(len(part))], part)
            h = self.encoder.encode(batch)["last"]  # (B, T, D)
            m = torch.arange(h.shape[1])[None] < batch.lengths[:, None]
            pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.encoder.dim), dtype=np.float32)
