"""Tiny stand-ins for hub repositories, written into a Hugging Face cache in its real layout.

`$HF_HOME/hub/models--{org}--{name}/` holds `blobs/{etag}` (the sha256 for LFS files such as weights,
the git blob sha1 for small text files), `refs/{revision}` (the commit hash) and
`snapshots/{commit}/{file}` symlinked to its blob: what `huggingface_hub` leaves behind on a machine
that downloaded the repo. With `HF_HUB_OFFLINE=1`, hub ids then resolve from this cache.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".model", ".msgpack")


def _etag(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix in LFS_SUFFIXES:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def put_repo(hf_home: Path, repo_id: str, folder: Path, revision: str = "main", commit: str | None = None) -> Path:
    """Copy every file of `folder` into the cache as repo `repo_id` at `revision`; returns the snapshot dir."""
    repo = Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    commit = commit or hashlib.sha1("".join(f"{p.name}:{_etag(p)}" for p in files).encode()).hexdigest()
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for f in files:
        tag = _etag(f)
        blob = repo / "blobs" / tag
        if not blob.exists():
            blob.write_bytes(f.read_bytes())
        link = snap / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    ref = repo / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)
    return snap
