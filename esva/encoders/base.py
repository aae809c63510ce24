"""The encoder contract, shared by every frozen encoder (after s3prl's upstream experts).

An encoder has `name`, `dim`, `frame_rate` (frames per second of its frame-level output, None for
tokens), `layers` (the feature names it returns) and `encode(batch) -> {layer: (B, T, D)}` plus
`output_lengths(batch) -> (B,)`. It runs frozen, under `eval()` and `torch.inference_mode()`.

Checkpoints load through `from_pretrained` only: safetensors (never pickles), and
`trust_remote_code` off unless the config turns it on. A checkpoint that is missing or of another
architecture is an error before any clip is processed.
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

from esva.precision import autocast, cpu_supports_bf16, resolve_device, resolve_dtype  # noqa: F401

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, wrong architecture, unsafe format. Names the path."""


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


def check_local_checkpoint(path: Path, model_types: Sequence[str], what: str) -> dict:
    """A local checkpoint directory must exist, hold config.json of an expected model_type, and
    safetensors weights. Returns the config dict."""
    if not path.exists():
        raise CheckpointError(f"{what} checkpoint not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"{what} checkpoint must be a directory with config.json, got a file: {path}")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(f"{what} checkpoint {path} has no config.json")
    with cfg_file.open("r", encoding="utf-8") as fh:
        cfg = json.load(fh)
    mt = cfg.get("model_type")
    if mt not in model_types:
        raise CheckpointError(f"{what} checkpoint {path} is a {mt!r} model; expected model_type in {list(model_types)}")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
        hint = f" (found {pickles}: convert them to safetensors; esva does not load pickles)" if pickles else ""
        raise CheckpointError(f"{what} checkpoint {path} has no *.safetensors weights{hint}")
    return cfg


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
    for f in sorted(p.glob("*.json")) + sorted(p.glob("*.safetensors")):
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


def load_frozen(cls, source: str | Path, cfg, revision: str | None, **kwargs):
    """from_pretrained (safetensors only), frozen, on cfg.device; returns (model, compute dtype,
    the checkpoint's preprocessor config when it is a local directory)."""
    model = freeze(cls.from_pretrained(str(source), revision=revision, use_safetensors=True,
                                       trust_remote_code=cfg.trust_remote_code, **kwargs))
    device = resolve_device(cfg.device, "features.*.device")
    model.to(device)
    pre = preprocessor(Path(str(source))) if Path(str(source)).is_dir() else {}
    return model, resolve_dtype(cfg.dtype, device), pre
