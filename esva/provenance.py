"""Per-clip provenance: the digest of exactly what made a clip's record in a store.

A clip's digest is a hash over its parts, each named, so that the store can say *why* a clip was
recomputed:

- `input`: the bytes it was made from. For decode, the video file's content (`file_digest`); for crop
  and extract, the upstream clip's own digest (so a change anywhere upstream reaches every stage below);
  for the text encoder, the transcript.
- `params`: the stage's output-relevant params (never workers, devices or batch sizes).
- `code`: a hash of the source of the modules that compute the clip's arrays (`code_digest`).
- `weights`: the loaded weights' digest (extract only).

A store reuses a clip only when the digest it recorded equals the one the current run wants
(`esva.store.RaggedWriter`); any other clip is recomputed, and its downstream follows because their
`input` part is this digest.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

# files at most this large are hashed whole in `input_hash: full` mode; `quick` hashes size, mtime and the
# first and last QUICK_SPAN bytes (for corpora of many large files, where a full hash costs a read of all of it)
QUICK_SPAN = 1 << 20
_CHUNK = 1 << 22


def file_digest(path: str | Path, mode: str = "full") -> str:
    """The identity of a file's content.

    - `full`: sha256 of every byte (the default: a file replaced by another of the same name is always seen);
    - `quick`: sha256 of (size, mtime in ns, first 1 MiB, last 1 MiB). It sees a replaced or re-encoded file
      (its size, mtime or ends differ) but not an in-place edit of the middle that keeps size and mtime.
    """
    p = Path(path)
    h = hashlib.sha256()
    if mode == "full":
        with p.open("rb") as fh:
            while block := fh.read(_CHUNK):
                h.update(block)
        return "sha256:" + h.hexdigest()
    if mode != "quick":
        raise ValueError(f"input hash mode must be 'full' or 'quick', got {mode!r}")
    st = p.stat()
    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    with p.open("rb") as fh:
        h.update(fh.read(QUICK_SPAN))
        if st.st_size > QUICK_SPAN:
            fh.seek(max(QUICK_SPAN, st.st_size - QUICK_SPAN))
            h.update(fh.read(QUICK_SPAN))
    return "quick:" + h.hexdigest()


def text_digest(text: Any) -> str:
    return "text:" + hashlib.sha256(("" if text is None else str(text)).encode("utf-8")).hexdigest()


_CODE_CACHE: dict[tuple[str, ...], str] = {}


def module_file(name: str) -> Path:
    """The source file of an importable module (imported if it is not yet)."""
    mod = importlib.import_module(name)
    f = getattr(mod, "__file__", None)
    if not f:
        raise ValueError(f"module {name!r} has no source file")
    return Path(f)


def code_digest(modules: Iterable[str]) -> str:
    """A hash of the source text of `modules` (names, sorted): the producing code's version."""
    key = tuple(sorted(set(modules)))
    if key not in _CODE_CACHE:
        h = hashlib.sha256()
        for name in key:
            h.update(name.encode() + b"\0")
            h.update(module_file(name).read_bytes())
            h.update(b"\0")
        _CODE_CACHE[key] = h.hexdigest()[:16]
    return _CODE_CACHE[key]


def clip_digest(**parts: Any) -> str:
    """The digest of a clip's named parts (input, params, code, weights, ...)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader (or a crash) sees the old file or the new one, never half
    of one: a temporary file in the same folder, flushed to disk, then renamed over the target."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")
