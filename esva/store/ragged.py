"""Zarr v3 stores of ragged per-clip arrays.

Layout of one store (a directory):

    <store>/zarr.json          group attrs: provenance, field specs, the clip index, committed lengths
    <store>/<field>/...        one array per field, all clips concatenated along axis 0, sharded

A field is either *rows* (fixed inner shape, e.g. face crops (ΣN, 224, 224, 3) or features (ΣT, D))
or *flat* (inner shape differs per clip, e.g. decoded frames: stored as a flat byte run plus the
clip's shape). A clip's slice of a field is contiguous, so reading one clip touches one or a few
chunks.

Completion marker: a clip is complete once it is in the index, and the index is written only after
the clip's data has been written (`commit`). An interrupted writer therefore leaves at most some
uncommitted bytes past the committed length, which the next writer overwrites. A store whose
fingerprint (config hash + input identity) differs from the requested one is rebuilt, never mixed.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import zarr
from zarr.codecs import BloscCodec

log = logging.getLogger(__name__)

FORMAT = "esva-ragged/1"


@dataclass(frozen=True)
class FieldSpec:
    """One ragged array. inner=None means flat (per-clip shape recorded in the index)."""

    dtype: str
    inner: tuple[int, ...] | None = None
    chunk_rows: int = 1 << 20
    shard_chunks: int = 16

    def to_json(self) -> dict:
        return {"dtype": self.dtype, "inner": list(self.inner) if self.inner is not None else None,
                "chunk_rows": self.chunk_rows, "shard_chunks": self.shard_chunks}

    @classmethod
    def from_json(cls, d: dict) -> "FieldSpec":
        inner = tuple(d["inner"]) if d.get("inner") is not None else None
        return cls(dtype=d["dtype"], inner=inner, chunk_rows=int(d["chunk_rows"]), shard_chunks=int(d["shard_chunks"]))

    @property
    def shard_rows(self) -> int:
        return self.chunk_rows * self.shard_chunks


class StoreError(RuntimeError):
    """A store that is missing, of another kind, or inconsistent. The message names the path."""


def _compressor(dtype: str) -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle" if np.dtype(dtype).itemsize > 1 else "bitshuffle")


class RaggedWriter:
    """Append clips to a store; resumes a store with the same fingerprint, rebuilds otherwise."""

    def __init__(self, path: str | Path, fields: dict[str, FieldSpec], attrs: dict[str, Any], fingerprint: str,
                 flush_every: int = 16, flush_bytes: int = 256 << 20) -> None:
        self.path = Path(path)
        self.fields = dict(fields)
        self.flush_every = flush_every
        self.flush_bytes = flush_bytes
        self.resumed = False
        self.rebuilt_reason: str | None = None
        group = self._open_existing(fingerprint, attrs.get("stage"))
        if group is None:
            group = self._create(fields, attrs, fingerprint)
        else:  # resumed: record this run's provenance (settings outside the fingerprint, code version)
            group.attrs.update({k: v for k, v in attrs.items() if k not in ("index", "order", "lengths", "fields")})
        self.group = group
        a = dict(group.attrs)
        self.index: dict[str, dict] = dict(a.get("index", {}))
        self.order: list[str] = list(a.get("order", []))
        self.lengths: dict[str, int] = {k: int(v) for k, v in a.get("lengths", {}).items()}
        self.arrays = {name: group[name] for name in self.fields}
        # pending data per field, starting at a shard boundary (base) so every write is shard-aligned
        self.base: dict[str, int] = {}
        self.pending: dict[str, list[np.ndarray]] = {}
        self.rows: dict[str, int] = {}
        for name, spec in self.fields.items():
            length = self.lengths.get(name, 0)
            base = (length // spec.shard_rows) * spec.shard_rows
            self.base[name] = base
            self.rows[name] = length
            self.pending[name] = [np.asarray(self.arrays[name][base:length])] if length > base else []
        self._staged: list[tuple[str, dict]] = []
        self._uncommitted = 0
        self._uncommitted_bytes = 0

    # -- setup -----------------------------------------------------------------------------------
    def _open_existing(self, fingerprint: str, stage: str | None) -> zarr.Group | None:
        if not self.path.exists():
            return None
        if self.path.is_file() or (self.path.is_dir() and any(self.path.iterdir()) and not (self.path / "zarr.json").exists()):
            raise StoreError(f"{self.path} exists and is not an esva store; refusing to overwrite it (choose another --out)")
        if self.path.is_dir() and not any(self.path.iterdir()):
            return None
        try:
            group = zarr.open_group(str(self.path), mode="r+")
            a = dict(group.attrs)
        except Exception as exc:  # a damaged esva store (e.g. a crash while writing zarr.json): rebuild
            self.rebuilt_reason = f"unreadable store ({exc.__class__.__name__}: {exc})"
            log.warning("%s: %s, rebuilding", self.path, self.rebuilt_reason)
            return None
        if a.get("format") != FORMAT:
            raise StoreError(f"{self.path} is a zarr group but not an esva store (format={a.get('format')!r}); "
                             "refusing to overwrite it")
        if stage and a.get("stage") and a.get("stage") != stage:
            raise StoreError(f"{self.path} holds the output of stage {a.get('stage')!r}, not {stage!r}; "
                             "refusing to overwrite it (choose another --out)")
        if a.get("fingerprint") != fingerprint:
            self.rebuilt_reason = f"config or inputs changed (fingerprint {a.get('fingerprint')} -> {fingerprint})"
        elif {k: FieldSpec.from_json(v) for k, v in a.get("fields", {}).items()} != self.fields:
            self.rebuilt_reason = "field layout changed"
        if self.rebuilt_reason:
            log.warning("%s: %s, rebuilding", self.path, self.rebuilt_reason)
            return None
        self.resumed = True
        log.info("%s: resuming, %d clips already complete", self.path, len(a.get("index", {})))
        return group

    def _create(self, fields: dict[str, FieldSpec], attrs: dict[str, Any], fingerprint: str) -> zarr.Group:
        if self.path.exists():
            shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(str(self.path), mode="w")
        for name, spec in fields.items():
            inner = spec.inner or ()
            group.create_array(
                name,
                shape=(0, *inner),
                chunks=(spec.chunk_rows, *inner),
                shards=(spec.shard_rows, *inner),
                dtype=spec.dtype,
                compressors=_compressor(spec.dtype),
                fill_value=0,
            )
        group.attrs.update({
            **attrs,
            "format": FORMAT,
            "fingerprint": fingerprint,
            "fields": {k: v.to_json() for k, v in fields.items()},
            "index": {},
            "order": [],
            "lengths": {k: 0 for k in fields},
            "complete": False,
        })
        return group

    # -- writing ---------------------------------------------------------------------------------
    def done_ids(self) -> set[str]:
        return set(self.index)

    def add(self, clip_id: str, arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> None:
        if clip_id in self.index or any(c == clip_id for c, _ in self._staged):
            raise StoreError(f"{self.path}: clip {clip_id!r} is already in the store")
        missing = set(self.fields) - set(arrays)
        extra = set(arrays) - set(self.fields)
        if missing or extra:
            raise StoreError(f"{self.path}: clip {clip_id!r} fields mismatch, missing {sorted(missing)}, extra {sorted(extra)}")
        entry: dict[str, Any] = {"fields": {}, "meta": meta or {}}
        prepared = {}
        for name, spec in self.fields.items():  # validate every field before changing any state
            arr = np.asarray(arrays[name])
            if arr.dtype != np.dtype(spec.dtype):
                arr = arr.astype(spec.dtype)
            if spec.inner is not None and tuple(arr.shape[1:]) != spec.inner:
                raise StoreError(f"{self.path}: clip {clip_id!r} field {name!r} has inner shape "
                                 f"{tuple(arr.shape[1:])}, store expects {spec.inner}")
            flat = np.ascontiguousarray(arr).reshape(-1) if spec.inner is None else np.ascontiguousarray(arr)
            prepared[name] = (list(arr.shape), flat)
        for name, (shape, flat) in prepared.items():
            start = self.rows[name]
            stop = start + flat.shape[0]
            self.pending[name].append(flat)
            self.rows[name] = stop
            entry["fields"][name] = [start, stop, shape]
            self._uncommitted_bytes += flat.nbytes
        self._staged.append((clip_id, entry))
        self._uncommitted += 1
        if self._uncommitted >= self.flush_every or self._uncommitted_bytes >= self.flush_bytes:
            self.commit()

    def commit(self) -> None:
        """Write pending data, then the index: after this returns, staged clips are complete."""
        if not self._staged:
            return
        for name, spec in self.fields.items():
            arr = self.arrays[name]
            end = self.rows[name]
            if arr.shape[0] != end:
                arr.resize((end, *arr.shape[1:]))
            if self.pending[name]:
                block = np.concatenate(self.pending[name], axis=0)
                base = self.base[name]
                arr[base:end] = block
                new_base = (end // spec.shard_rows) * spec.shard_rows
                tail = block[new_base - base:]
                self.pending[name] = [tail] if len(tail) else []
                self.base[name] = new_base
        for clip_id, entry in self._staged:
            self.index[clip_id] = entry
            self.order.append(clip_id)
        self.lengths = dict(self.rows)
        self.group.attrs.update({"index": self.index, "order": self.order, "lengths": self.lengths})
        self._staged.clear()
        self._uncommitted = 0
        self._uncommitted_bytes = 0

    def update_attrs(self, **attrs: Any) -> None:
        self.group.attrs.update(attrs)

    def close(self, complete: bool = True, **attrs: Any) -> None:
        self.commit()
        self.group.attrs.update({**attrs, "complete": complete})

    def __enter__(self) -> "RaggedWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # on error keep what was finished: commit staged clips, mark the store incomplete
        try:
            self.close(complete=exc_type is None)
        except Exception:  # pragma: no cover - never hide the original error
            if exc_type is None:
                raise
            log.exception("%s: could not commit after an error", self.path)


class RaggedReader:
    """Read side of a store: `ids()`, `read(clip_id)`, `meta(clip_id)`, `read_all(field)`, `attrs`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"store not found: {self.path}")
        try:
            self.group = zarr.open_group(str(self.path), mode="r")
        except Exception as exc:
            raise StoreError(f"{self.path}: not a readable zarr store ({exc})") from None
        self.attrs: dict[str, Any] = dict(self.group.attrs)
        if self.attrs.get("format") != FORMAT:
            raise StoreError(f"{self.path}: not an esva store (format={self.attrs.get('format')!r})")
        self.fields = {k: FieldSpec.from_json(v) for k, v in self.attrs["fields"].items()}
        self._index: dict[str, dict] = self.attrs.get("index", {})
        self._order: list[str] = self.attrs.get("order", [])
        self._arrays = {name: self.group[name] for name in self.fields}

    def ids(self) -> list[str]:
        """Completed clips, in the order they were written."""
        return list(self._order)

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self._index

    def __len__(self) -> int:
        return len(self._order)

    def meta(self, clip_id: str) -> dict[str, Any]:
        return dict(self._entry(clip_id)["meta"])

    def _entry(self, clip_id: str) -> dict:
        try:
            return self._index[clip_id]
        except KeyError:
            raise KeyError(f"{self.path}: clip {clip_id!r} is not in the store") from None

    def shape(self, clip_id: str, field: str) -> tuple[int, ...]:
        """A clip's array shape for one field, from the index (no read)."""
        return tuple(self._entry(clip_id)["fields"][field][2])

    def read(self, clip_id: str, fields: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        entry = self._entry(clip_id)
        out = {}
        for name in fields or self.fields:
            start, stop, shape = entry["fields"][name]
            out[name] = np.asarray(self._arrays[name][start:stop]).reshape(shape)
        return out

    def read_all(self, field: str) -> dict[str, np.ndarray]:
        """Every clip's array of one field, read in one pass over the concatenated array."""
        spec = self.fields[field]
        data = np.asarray(self._arrays[field][:])
        out = {}
        for cid in self._order:
            start, stop, shape = self._index[cid]["fields"][field]
            out[cid] = data[start:stop].reshape(shape) if spec.inner is None else data[start:stop]
        return out


def open(path: str | Path) -> RaggedReader:  # noqa: A001 - mirrors zarr.open / the DESIGN API
    return RaggedReader(path)
