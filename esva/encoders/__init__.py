"""Frozen encoders: one file each, and a plain registry dict from name to its module's parts.

`load_encoder(name, cfg, models_dir)` resolves `features.<name>.checkpoint`:
- `tiny`: the real architecture class with a small config and seeded random weights, saved once with
  save_pretrained into `models_dir/<name>/` and always loaded back through from_pretrained;
- `minilm` (text only): the bundled, sha256-checked all-MiniLM-L6-v2;
- a local directory, or a hub id (the `paper` profile) with `revision`, resolved to its snapshot in the
  Hugging Face cache: checked (exists, config.json of the right model_type, weight files) before use.
Every checkpoint loads completely or fails (esva.checkpoints); `.bin` files are read weights_only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from esva.encoders import eva, hubert, mae, text, videomae
from esva.checkpoints import Located, locate
from esva.encoders.base import CheckpointError, checkpoint_identity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    module: Any
    encoder: Callable
    modality: str


REGISTRY: dict[str, Entry] = {
    "hubert": Entry(hubert, hubert.HubertEncoder, "audio"),
    "mae": Entry(mae, mae.MaeEncoder, "faces"),
    "videomae": Entry(videomae, videomae.VideoMaeEncoder, "faces"),
    "eva": Entry(eva, eva.EvaEncoder, "faces"),
    "text": Entry(text, text.TextEncoder, "text"),
}


def resolve_checkpoint(name: str, cfg, models_dir: Path) -> tuple[Located, dict]:
    """Where the weights come from, checked before any clip is processed. Returns (located, provenance)."""
    if name not in REGISTRY:
        raise CheckpointError(f"unknown encoder {name!r}; choose from {sorted(REGISTRY)}")
    entry = REGISTRY[name]
    ck = cfg.checkpoint
    models_dir = Path(models_dir)
    if ck == "tiny":
        path = models_dir / name
        marker = path / "esva_tiny.json"
        want = {"encoder": name, "seed": cfg.seed, "config": entry.module.tiny_config().to_dict()}
        want["config"].pop("transformers_version", None)
        have = None
        if marker.exists():
            with marker.open("r", encoding="utf-8") as fh:
                have = json.load(fh)
        if have != json.loads(json.dumps(want)):
            log.info("building the tiny %s checkpoint (random weights, seed %d) in %s", name, cfg.seed, path)
            path.mkdir(parents=True, exist_ok=True)
            for f in path.iterdir():
                if f.is_file():
                    f.unlink()
            entry.module.save_tiny(path, cfg.seed)
            with marker.open("w", encoding="utf-8") as fh:
                json.dump(want, fh, indent=1)
        loc = locate(path, None, name, entry.module.MODEL_TYPES)
        return loc, {"checkpoint": "tiny", "path": str(path), "weights": "random (tiny preset)",
                     "identity": checkpoint_identity(path)}
    if ck == "minilm":
        if name != "text":
            raise CheckpointError(f"features.{name}.checkpoint=minilm is only for the text encoder")
        path = text.minilm_dir()
        return locate(path, None, name, entry.module.MODEL_TYPES), {"checkpoint": "minilm", "path": str(path), "sha256": text.MINILM_SHA256,
                           "identity": text.MINILM_SHA256[:16]}
    loc = locate(ck, cfg.revision, name, entry.module.MODEL_TYPES)
    prov = {"checkpoint": ck, "path": str(loc.path.resolve()), "identity": checkpoint_identity(loc.path)}
    if loc.hub:
        prov.update(hub=True, revision=cfg.revision or "main", snapshot=loc.path.name)
    return loc, prov


def load_encoder(name: str, cfg, models_dir: Path):
    """Build encoder `name` from its config; errors (missing path, wrong architecture) come first."""
    loc, prov = resolve_checkpoint(name, cfg, models_dir)
    try:
        enc = REGISTRY[name].encoder(loc, cfg)
    except CheckpointError:
        raise
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the {name} checkpoint {loc.describe()!r}: {exc}") from None
    prov.update(enc.load_report)
    return enc, prov


__all__ = ["REGISTRY", "CheckpointError", "load_encoder", "resolve_checkpoint"]
