"""The encoder contract, shared by every frozen encoder (after s3prl's upstream experts).

An encoder has `name`, `dim`, `frame_rate` (frames per second of its frame-level output, None for
tokens), `layers` (the feature names it returns) and `encode(batch) -> {layer: (B, T, D)}` plus
`output_lengths(batch) -> (B,)`. It runs frozen, under `eval()` and `torch.inference_mode()`.

Checkpoints load through `esva.checkpoints` only: a local directory or a hub id (its cached snapshot),
safetensors or `.bin` read with torch's weights_only loader, and `trust_remote_code` off unless the
config turns it on. A checkpoint that is missing, of another architecture, or that does not provide
every tensor of the module is an error before any clip is processed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from esva.checkpoints import CheckpointError, Located, load_complete, locate  # noqa: F401
from esva.precision import autocast, cpu_supports_bf16, resolve_device, resolve_dtype  # noqa: F401

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """Padded inputs for one forward pass. `lengths` count valid input units per item."""

    clip_ids: list[str]
    inputs: Any
    lengths: torch.Tensor  # (B,)
    extra: dict[str, Any] = field(default_factory=dict)


class Encoder(Protocol):
    name: str
    dim: int
    frame_rate: float | None
    layers: tuple[str, ...]
    modality: str  # "audio" | "faces" | "text"
    min_length: int  # minimum input units (samples, frames, tokens)

    def cost(self, n: int) -> int: ...

    def collate(self, clip_ids: list[str], items: list[Any]) -> Batch: ...

    def encode(self, batch: Batch) -> dict[str, torch.Tensor]: ...

    def output_lengths(self, batch: Batch) -> torch.Tensor: ...


# --- layers ---------------------------------------------------------------------------------------
def layer_names(spec: str | Sequence[int]) -> tuple[str, ...]:
    """`last`, `last4sum` (the sum of the last four layers, as MER2024's baselines use), or a list
    of hidden-state indices (0 = embeddings)."""
    if isinstance(spec, str):
        if spec not in ("last", "last4sum"):
            raise ValueError(f"layers must be 'last', 'last4sum' or a list of ints, got {spec!r}")
        return (spec,)
    return tuple(f"L{int(i)}" for i in spec)


def select_layers(hidden_states: Sequence[torch.Tensor], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Pick named features out of a model's hidden_states tuple (embeddings first)."""
    out = {}
    n = len(hidden_states)
    for name in names:
        if name == "last":
            out[name] = hidden_states[-1]
        elif name == "last4sum":
            out[name] = torch.stack(list(hidden_states[-4:]), 0).sum(0)
        else:
            i = int(name[1:])
            if not -n <= i < n:
                raise ValueError(f"layer {i} does not exist: the model has hidden states 0..{n - 1}")
            out[name] = hidden_states[i]
    return out


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, D) and (B,) -> (B, D): the mean over the valid frames only (padding never leaks)."""
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    mask = (t < lengths.to(x.device)[:, None])[..., None]
    total = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(1)
    return total / mask.sum(1).clamp_min(1).to(x.dtype)


# --- dtype / autocast: esva.precision (re-exported here for the encoders) --------------------------


# --- checkpoints ----------------------------------------------------------------------------------
def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def preprocessor(path: Path) -> dict:
    f = path / "preprocessor_config.json"
    if f.exists():
        with f.open("r", encoding="utf-8") as fh:
            return json.load(fh)
    return {}


def checkpoint_identity(path: Path | str, revision: str | None = None) -> str:
    """What the store's fingerprint records about the weights: a hash of config + weight files' sizes
    and heads (cheap, changes whenever the weights change), or the hub id and revision."""
    p = Path(path)
    if not p.is_dir():
        return f"hub:{path}@{revision or 'main'}"
    h = hashlib.sha256()
    for f in sorted(p.glob("*.json")) + sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
        if f.name == "source.json":  # esva's own provenance note, not part of the weights
            continue
        h.update(f.name.encode())
        h.update(str(f.stat().st_size).encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 16))
    return h.hexdigest()[:16]


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def to_float_image(frames: np.ndarray | torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, size, size) float, resized (antialiased) and normalised with the
    model's own mean/std (no torchvision)."""
    x = torch.as_tensor(np.asarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean, dtype=x.dtype)[None, :, None, None]
    s = torch.tensor(std, dtype=x.dtype)[None, :, None, None]
    return (x - m) / s


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def save_tiny_model(cls, config, path: Path, seed: int, preprocessor_config: dict | None = None) -> None:
    """Build `cls(config)` with seeded random weights and save it the way a hub checkpoint is laid out."""
    torch.manual_seed(seed)
    cls(config).save_pretrained(path, safe_serialization=True)
    if preprocessor_config is not None:
        with (path / "preprocessor_config.json").open("w", encoding="utf-8") as fh:
            json.dump(preprocessor_config, fh)


def load_frozen(cls, loc: Located, cfg, what: str, allow_unexpected: Sequence[str] = (),
                key_mapping: dict[str, str] | None = None, **kwargs):
    """The module from a located checkpoint, complete or an error (esva.checkpoints), frozen, on cfg.device.
    Returns (model, compute dtype, preprocessor config, load report)."""
    model, report = load_complete(cls, loc, what, allow_unexpected=allow_unexpected, key_mapping=key_mapping,
                                  trust_remote_code=cfg.trust_remote_code, **kwargs)
    model = freeze(model)
    device = resolve_device(cfg.device, "features.*.device")
    model.to(device)
    dtype = resolve_dtype(cfg.dtype, device)
    cast_matmul_weights(model, dtype)
    return model, dtype, preprocessor(loc.path), report


def cast_matmul_weights(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Under bf16 (or fp16) autocast, store the weights of the layers autocast runs in that dtype (Linear and
    plain Conv) in it once. Autocast casts a frozen fp32 weight again at every call (its cast cache holds only
    weights that require grad), which measured 48% of HuBERT-large's bf16 forward on a CPU (aten::copy_,
    metrics/bench_extract_profile.txt). The cast is autocast's own (round to nearest): HuBERT's, MAE's and VideoMAE's
    features are the same bits, EVA's within 2e-6 (BLIP-2 builds its qkv bias in fp32 at each call;
    tests/encoders/test_encoders.py). Norms, embeddings and weight-normed convs stay fp32, as autocast runs
    them. Returns the number of layers cast."""
    if dtype == torch.float32:
        return 0
    n = 0
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    for mod in model.modules():
        if not isinstance(mod, kinds) or hasattr(mod, "parametrizations") or hasattr(mod, "weight_g"):
            continue
        for name in ("weight", "bias"):
            p = getattr(mod, name, None)
            if isinstance(p, torch.nn.Parameter) and p.dtype == torch.float32:
                setattr(mod, name, torch.nn.Parameter(p.data.to(dtype), requires_grad=False))
        n += 1
    return n
