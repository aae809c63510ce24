"""Checkpoints that load completely or not at all: every encoder and the base LLM come through here.

- `locate(source, revision, what, model_types)`: a local directory, or a hub id resolved to its
  snapshot directory through `huggingface_hub` (the local cache when `HF_HUB_OFFLINE=1`), with its
  config checked and its weight files found: `model.safetensors[.index.json]`, else
  `pytorch_model.bin[.index.json]`. Nothing else is ever read as weights.
- `load_complete(cls, loc, ...)`: `cls.from_pretrained` on that directory, then the loading report is
  checked. A tensor of the module that the checkpoint does not provide, a checkpoint tensor that the
  module does not use, or a shape mismatch is an error naming the keys, apart from a per-model
  allow-list of checkpoint parts that are not ours to load (MAE's decoder, the rest of a BLIP-2).
- `.bin` files are read with torch's `weights_only=True` unpickler (transformers' default, asserted
  here): tensors and containers only, never arbitrary objects. `esva convert` writes safetensors once.
- The report records the files and their sha256 (the blob name in a hub cache, which is the LFS
  sha256, else hashed), the tensor counts, and `weights_sha256`: a digest of the loaded tensors
  themselves, equal for a `.bin` checkpoint and its safetensors copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

log = logging.getLogger(__name__)

SAFE_INDEX, SAFE_ONE = "model.safetensors.index.json", "model.safetensors"
BIN_INDEX, BIN_ONE = "pytorch_model.bin.index.json", "pytorch_model.bin"
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "*.tiktoken"]
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, wrong architecture, incomplete, unsafe. Names the path or key."""


@dataclass
class Located:
    """A checkpoint found on disk: its directory, config and the weight files that will be read."""

    source: str  # as configured: a path or a hub id
    path: Path  # the local directory (a hub id's snapshot directory)
    revision: str | None
    hub: bool
    config: dict
    format: str  # "safetensors" | "bin"
    files: list[Path] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.source}@{self.revision or 'main'}" if self.hub else str(self.path)


def looks_like_hub_id(source: str) -> bool:
    """`org/name` that is not an existing path and not written as one."""
    p = Path(source)
    return not (p.is_absolute() or source.startswith((".", "~")) or p.exists()) and source.count("/") == 1


def weight_files(path: Path) -> tuple[str, list[Path]]:
    """The weight format of a directory and the files that hold its tensors (an index's shards)."""
    for fmt, index, one in (("safetensors", SAFE_INDEX, SAFE_ONE), ("bin", BIN_INDEX, BIN_ONE)):
        if (path / index).is_file():
            with (path / index).open("r", encoding="utf-8") as fh:
                shards = sorted(set(json.load(fh).get("weight_map", {}).values()))
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise CheckpointError(f"checkpoint {path}: {index} names shards that are not there: {missing}")
            return fmt, [path / s for s in shards]
        if (path / one).is_file():
            return fmt, [path / one]
    return "", []


def hub_settings() -> tuple[bool, str]:
    """(offline, cache directory) from the environment as it is now: HF_HUB_OFFLINE, HF_HUB_CACHE, HF_HOME
    (huggingface_hub reads them once at import; a process that changes them later still gets them here)."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                                  "huggingface"), "hub")
    return offline, cache


def _hub_snapshot(repo_id: str, revision: str | None, what: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

    offline, cache = hub_settings()

    def fetch(patterns: list[str]) -> Path:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, cache_dir=cache,
                                      local_files_only=offline))

    try:
        path = fetch(HUB_PATTERNS)
        if not weight_files(path)[1] and not offline:
            path = fetch(HUB_PATTERNS + ["*.bin"])  # a repo that ships pickles only (read weights_only)
        return path
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{what} checkpoint {repo_id!r} (revision {revision or 'main'}) is not in the Hugging Face cache "
            f"{cache} and downloads are off (HF_HUB_OFFLINE=1): download it on a machine with network "
            f"(huggingface-cli download {repo_id}) or point the checkpoint at a local directory") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{what} checkpoint {repo_id!r} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{what} checkpoint {repo_id!r}: no such repository on the hub (or it is gated "
                              f"and you are not logged in)") from None
    except OSError as exc:
        raise CheckpointError(f"{what} checkpoint {repo_id!r}: {exc}") from None


def locate(source: str | Path, revision: str | None, what: str, model_types: Sequence[str] | None = None,
           need_weights: bool = True) -> Located:
    """Find a checkpoint and check it before anything is loaded; errors name the path or repo."""
    source = str(source)
    hub = looks_like_hub_id(source)
    if hub:
        path = _hub_snapshot(source, revision, what)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise CheckpointError(f"{what} checkpoint not found: {path}")
        if not path.is_dir():
            raise CheckpointError(f"{what} checkpoint must be a directory with config.json, got a file: {path}")
    shown = f"{source}@{revision or 'main'}" if hub else str(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{what} checkpoint {shown} has no config.json")
    with cfg_file.open("r", encoding="utf-8") as fh:
        cfg = json.load(fh)
    mt = cfg.get("model_type")
    if model_types is not None and mt not in model_types:
        raise CheckpointError(f"{what} checkpoint {shown} is a {mt!r} model; expected model_type in {list(model_types)}")
    fmt, files = weight_files(path)
    if need_weights and not files:
        other = sorted(p.name for p in path.iterdir() if p.suffix in (".pt", ".pth", ".ckpt", ".h5", ".msgpack"))
        hint = f" (found {other}, which esva does not read)" if other else ""
        raise CheckpointError(f"{what} checkpoint {shown} has no weights: expected {SAFE_ONE}, {SAFE_INDEX}, "
                              f"{BIN_ONE} or {BIN_INDEX}{hint}")
    return Located(source, path, revision if hub else None, hub, cfg, fmt, files)


# ----------------------------------------------------------------------------- digests

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path, compute: bool = True) -> str | None:
    """sha256 of a file. In a hub cache a weight file is a link to `blobs/<sha256>` (its LFS id), which is
    used as it is; otherwise the file is hashed once per process (keyed by path, size and mtime), or
    None when `compute` is off (a 13 GB LLM folder is not rehashed on every load)."""
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs" and _HEX64.match(real.name):
        return real.name
    if not compute:
        return None
    st = real.stat()
    key = (str(real), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with real.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def state_digest(module: torch.nn.Module) -> str:
    """sha256 over the module's state (names, dtypes, shapes and bytes, in name order): the same for
    the same tensors whatever file format they came from."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ----------------------------------------------------------------------------- complete loading

def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(re.match(p, key) for p in patterns)


def _names(keys: Iterable[str], n: int = 8) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_loading(info: dict, what: str, where: str, allow_unexpected: Sequence[str] = (),
                  allow_missing: Sequence[str] = ()) -> dict:
    """Raise CheckpointError unless every tensor of the module came from the checkpoint; returns the counts."""
    missing = [k for k in info.get("missing_keys", ()) if not _matches(k, allow_missing)]
    unexpected = [k for k in info.get("unexpected_keys", ()) if not _matches(k, allow_unexpected)]
    mismatched = list(info.get("mismatched_keys", ()))
    errors = list(info.get("error_msgs", ()))
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors of the model are not in the checkpoint: {_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} checkpoint tensors have no place in the model: {_names(unexpected)}")
    if mismatched:
        shown = [f"{m[0]} (checkpoint {tuple(m[1])}, model {tuple(m[2])})" if isinstance(m, (tuple, list)) and len(m) == 3
                 else str(m) for m in mismatched]
        problems.append(f"{len(mismatched)} tensors have other shapes: {_names(shown)}")
    if errors:
        problems.append("; ".join(str(e) for e in errors[:3]))
    if problems:
        raise CheckpointError(f"{what} checkpoint {where} does not load completely: " + "; ".join(problems)
                              + ". esva never runs with randomly initialised weights in place of missing ones")
    return {"ignored_unexpected": len(info.get("unexpected_keys", ())) - len(unexpected),
            "allowed_missing": len(info.get("missing_keys", ())) - len(missing)}


def load_complete(cls, loc: Located, what: str, allow_unexpected: Sequence[str] = (),
                  allow_missing: Sequence[str] = (), key_mapping: dict[str, str] | None = None,
                  digest: bool = True, hash_files: bool = True, **kwargs):
    """`cls.from_pretrained(loc.path)` that fails unless the module is complete; returns (model, report)."""
    extra = {"key_mapping": key_mapping} if key_mapping else {}
    try:
        model, info = cls.from_pretrained(str(loc.path), use_safetensors=loc.format == "safetensors",
                                          weights_only=True, output_loading_info=True,
                                          ignore_mismatched_sizes=True, **extra, **kwargs)  # then refused below
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds; all mean "cannot load"
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "UnpicklingError" in type(exc).__name__:
            msg = (f"a .bin file holds objects other than tensors, and esva only reads them with torch's "
                   f"weights_only loader ({msg})")
        raise CheckpointError(f"cannot load the {what} checkpoint {loc.describe()} "
                              f"({', '.join(f.name for f in loc.files)}): {msg}") from None
    counts = check_loading(info, what, loc.describe(), allow_unexpected, allow_missing)
    n_expected = len(model.state_dict())
    report = {
        "format": loc.format, "files": [{"file": f.name, "bytes": f.stat().st_size, "sha256": file_sha256(f, hash_files)}
                                        for f in loc.files],
        "tensors_expected": n_expected, "tensors_loaded": n_expected - counts["allowed_missing"],
        "checkpoint_tensors_ignored": counts["ignored_unexpected"],
        "ignored_patterns": list(allow_unexpected) if counts["ignored_unexpected"] else [],
    }
    if key_mapping:
        report["key_mapping"] = dict(key_mapping)
    if digest:
        report["weights_sha256"] = state_digest(model)
    return model, report


# ----------------------------------------------------------------------------- conversion

def read_bin(path: Path) -> dict[str, torch.Tensor]:
    """A pickled state dict through torch's weights_only unpickler (tensors and containers only)."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a plain tensor state dict that torch's weights_only loader accepts "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return obj


def convert(source: str | Path, out: Path, revision: str | None = None) -> dict:
    """Write a `.bin` checkpoint (local or hub id) as safetensors into `out`, shard for shard, with its
    json/text files; every tensor is read back and compared. Returns a report."""
    import shutil

    from safetensors.torch import load_file, save_file

    loc = locate(source, revision, "convert")
    out = Path(out)
    if out.resolve() == loc.path.resolve():
        raise CheckpointError(f"convert: the output {out} must differ from the input")
    if loc.format == "safetensors":
        raise CheckpointError(f"{loc.describe()} already ships safetensors ({', '.join(f.name for f in loc.files)})")
    out.mkdir(parents=True, exist_ok=True)
    names = {}
    n = len(loc.files)
    for i, f in enumerate(loc.files, 1):
        names[f.name] = SAFE_ONE if n == 1 and f.name == BIN_ONE else f"model-{i:05d}-of-{n:05d}.safetensors"
    total, written = 0, []
    weight_map: dict[str, str] = {}
    for f in loc.files:
        state = read_bin(f)
        seen: dict[int, str] = {}
        clean = {}
        for k, t in state.items():  # safetensors stores no shared storage: a tensor shared with another is copied
            ptr = t.untyped_storage().data_ptr() if t.numel() else -1
            clean[k] = t.clone().contiguous() if (ptr in seen and ptr != -1) else t.contiguous()
            seen.setdefault(ptr, k)
        dst = out / names[f.name]
        tmp = dst.with_suffix(".tmp")
        save_file(clean, str(tmp), metadata={"format": "pt"})
        back = load_file(str(tmp))
        bad = [k for k in clean if k not in back or not torch.equal(back[k], clean[k])]
        if bad:
            tmp.unlink(missing_ok=True)
            raise CheckpointError(f"convert: {dst} does not read back equal for {_names(bad)}")
        os.replace(tmp, dst)
        total += len(clean)
        written.append(dst.name)
        weight_map.update({k: dst.name for k in clean})
    if n > 1:
        with (out / SAFE_INDEX).open("w", encoding="utf-8") as fh:
            json.dump({"metadata": {"converted_from": [f.name for f in loc.files]}, "weight_map": weight_map}, fh, indent=1)
    for f in loc.path.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt", ".model") and f.name != BIN_INDEX:
            shutil.copyfile(f, out / f.name)
    with (out / "converted_from.json").open("w", encoding="utf-8") as fh:
        json.dump({"source": loc.describe(), "files": [{"file": f.name, "sha256": file_sha256(f)} for f in loc.files],
                   "tensors": total}, fh, indent=1)
    return {"source": loc.describe(), "out": str(out), "files": written, "tensors": total}
