"""Zarr v3 stores of ragged per-clip arrays.

Layout of one store (a directory):

    <store>/zarr.json          group attrs, written once when the store is created: how it is made
                               (stage, params, encoder, precision, ...), the field specs, the recipe fingerprint
    <store>/<field>/...        one array per field, all clips concatenated along axis 0, sharded; every
                               chunk and every shard index carries a crc32c checksum (zarr's Crc32cCodec)
    <store>/esva-index.json    the clip index: per clip its rows in each field with a crc32 of those bytes,
                               its meta and its provenance digest; committed lengths; the run's attrs;
                               replaced atomically (write, fsync, rename), so it is always whole

A field is either *rows* (fixed inner shape, e.g. face crops (ΣN, 224, 224, 3) or features (ΣT, D))
or *flat* (inner shape differs per clip, e.g. decoded frames: stored as a flat byte run plus the
clip's shape). A clip's slice of a field is contiguous, so reading one clip touches one or a few chunks.

- **Completion marker**: a clip is complete once it is in the index, and the index is written only after
  the clip's data (`commit`). An interrupted writer leaves at most uncommitted bytes past the committed
  length, which the next writer overwrites.
- **Provenance**: a writer is given the digest each clip should have (`esva.provenance`). A clip in the
  store is reused only when its recorded digest equals that; any other is dropped from the index and
  recomputed (its old rows become garbage, compacted away when they outgrow the live data). A store
  whose recipe fingerprint or field layout differs is rebuilt, never mixed.
- **Integrity**: every read checks the crc32 of the clip's bytes against the index, so a corrupt chunk, a
  missing shard (which zarr would read as zeros) or a truncated array raises a `StoreError` naming the
  clip; `verify()` checks a whole store.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from esva.provenance import atomic_write_json

log = logging.getLogger(__name__)

FORMAT = "esva-ragged/2"
INDEX = "esva-index.json"
# what the media stages (decode, crop) buffer before a commit: a commit holds its block about twice (the
# concatenation, then zarr's encoding), so a smaller buffer keeps their peak memory flat in the corpus size
MEDIA_FLUSH_BYTES = 64 << 20
STATE_KEYS = ("index", "order", "lengths", "complete", "garbage_rows", "recompute")


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


def _codecs(dtype: str) -> tuple:
    """zstd through Blosc, then a crc32c per chunk: a flipped bit is an error on read, not a value."""
    return (BloscCodec(cname="zstd", clevel=3, shuffle="shuffle" if np.dtype(dtype).itemsize > 1 else "bitshuffle"),
            Crc32cCodec())


def crc32(arr: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(arr).reshape(-1).view(np.uint8)) & 0xFFFFFFFF


def _read_state(path: Path) -> dict:
    f = path / INDEX
    if not f.exists():
        return {}
    with f.open("r", encoding="utf-8") as fh:
        return json.load(fh)


class RaggedWriter:
    """Append clips to a store.

    `digests` maps each clip the run wants to the provenance digest it must have (`esva.provenance`).
    With it, a clip already in the store is reused only when its digest matches (`reused`); a stored
    clip with another digest, or one the run no longer wants, is dropped from the index (`stale`,
    `removed`), and the caller computes `todo()`. Without it (tools and tests), every stored clip is
    reused. `fingerprint` is the store-wide recipe: when it (or the field layout, or the store format)
    differs, the store is rebuilt from scratch.
    """

    def __init__(self, path: str | Path, fields: dict[str, FieldSpec], attrs: dict[str, Any], fingerprint: str,
                 flush_every: int = 16, flush_bytes: int = 256 << 20, digests: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.fields = dict(fields)
        self.flush_every = flush_every
        self.flush_bytes = flush_bytes
        self.resumed = False
        self.rebuilt_reason: str | None = None
        self.wanted = dict(digests) if digests is not None else None
        self.previous: set[str] = set()  # clips the store held before this run (rebuilt or not)
        group, state = self._open_existing(fingerprint, attrs.get("stage"))
        if group is None:
            group = self._create(fields, attrs, fingerprint)
            state = self._empty_state()
        self.group = group
        self.state = state
        self.state["complete"] = False
        self.state["run"] = {k: v for k, v in attrs.items()}  # this run's provenance (latest run)
        self.index: dict[str, dict] = dict(state.get("index", {}))
        self.order: list[str] = list(state.get("order", []))
        self.lengths: dict[str, int] = {k: int(v) for k, v in state.get("lengths", {}).items()}
        self.garbage: dict[str, int] = {k: int(v) for k, v in state.get("garbage_rows", {}).items()}
        self.stale: set[str] = set()
        self.removed: set[str] = set()
        if self.wanted is not None:
            for cid in list(self.order):
                want = self.wanted.get(cid)
                if want is not None and self.index[cid].get("digest") == want:
                    continue
                (self.stale if want is not None else self.removed).add(cid)
                self._drop(cid)
        self.reused: set[str] = set(self.index)
        # clips dropped for a changed digest and not yet written again (kept across an interrupted run, so
        # the run that finishes them still counts them as recomputed, not new)
        self.recompute: set[str] = (set(state.get("recompute", [])) | self.stale) - self.reused
        self.previous |= self.recompute
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
        if self.stale or self.removed:
            log.info("%s: %d clips changed (recomputed), %d no longer wanted (dropped)", self.path,
                     len(self.stale), len(self.removed))
            self._write_state()

    # -- setup -----------------------------------------------------------------------------------
    @staticmethod
    def _empty_state() -> dict:
        return {"index": {}, "order": [], "lengths": {}, "garbage_rows": {}, "complete": False}

    def _rebuild(self, reason: str) -> tuple[None, dict]:
        self.rebuilt_reason = reason
        log.warning("%s: %s, rebuilding", self.path, reason)
        return None, {}

    def _open_existing(self, fingerprint: str, stage: str | None) -> tuple[zarr.Group | None, dict]:
        if not self.path.exists():
            return None, {}
        if self.path.is_file() or (self.path.is_dir() and any(self.path.iterdir()) and not (self.path / "zarr.json").exists()):
            raise StoreError(f"{self.path} exists and is not an esva store; refusing to overwrite it (choose another --out)")
        if self.path.is_dir() and not any(self.path.iterdir()):
            return None, {}
        try:
            group = zarr.open_group(str(self.path), mode="r+")
            a = dict(group.attrs)
        except Exception as exc:  # a damaged esva store (e.g. a crash while creating it): rebuild
            return self._rebuild(f"unreadable store ({exc.__class__.__name__}: {exc})")
        fmt = str(a.get("format") or "")
        if not fmt.startswith("esva-ragged/"):
            raise StoreError(f"{self.path} is a zarr group but not an esva store (format={a.get('format')!r}); "
                             "refusing to overwrite it")
        if stage and a.get("stage") and a.get("stage") != stage:
            raise StoreError(f"{self.path} holds the output of stage {a.get('stage')!r}, not {stage!r}; "
                             "refusing to overwrite it (choose another --out)")
        if fmt != FORMAT:
            return self._rebuild(f"written in the older store format {fmt!r} (now {FORMAT!r}: per-clip provenance "
                                 "and checksums)")
        try:
            state = _read_state(self.path)
        except (OSError, ValueError) as exc:
            return self._rebuild(f"unreadable index {INDEX} ({exc.__class__.__name__}: {exc})")
        self.previous = set(state.get("index", {}))
        if a.get("fingerprint") != fingerprint:
            return self._rebuild(f"recipe changed (fingerprint {a.get('fingerprint')} -> {fingerprint})")
        if {k: FieldSpec.from_json(v) for k, v in a.get("fields", {}).items()} != self.fields:
            return self._rebuild("field layout changed")
        if not state:
            state = self._empty_state()
        self.resumed = True
        log.info("%s: %d clips in the store", self.path, len(state.get("index", {})))
        return group, state

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
                compressors=_codecs(spec.dtype),
                fill_value=0,
            )
        # the index goes first: a crash before zarr.json is complete leaves an unreadable store, rebuilt
        atomic_write_json(self.path / INDEX, self._empty_state(), indent=None)
        group.attrs.update({
            **attrs,
            "format": FORMAT,
            "fingerprint": fingerprint,
            "fields": {k: v.to_json() for k, v in fields.items()},
        })
        return group

    def _drop(self, cid: str) -> None:
        entry = self.index.pop(cid)
        self.order.remove(cid)
        for name, (start, stop, *_rest) in entry["fields"].items():
            self.garbage[name] = self.garbage.get(name, 0) + int(stop) - int(start)

    # -- what to do ------------------------------------------------------------------------------
    def done_ids(self) -> set[str]:
        return set(self.index)

    def todo(self) -> list[str]:
        """Wanted clips that are not (validly) in the store, in the order they were given."""
        if self.wanted is None:
            return []
        return [c for c in self.wanted if c not in self.index]

    def counts(self) -> dict[str, int]:
        """Clips now in the store: reused (digest matched), recomputed (in the store before with another
        digest, written again), new (written for the first time); and dropped (no longer wanted). A wanted
        clip in none of these failed in this run (the stage's skips)."""
        wanted = set(self.wanted or ())
        now = set(self.index) | {c for c, _ in self._staged}
        written = now - self.reused
        return {"reused": len(self.reused & wanted) if self.wanted is not None else len(self.reused),
                "recomputed": len(written & self.previous),
                "new": len(written - self.previous),
                "dropped": len(self.removed | (self.previous - self.reused - wanted))}

    def known_skip(self, clip_id: str) -> dict | None:
        """A skip recorded for this clip by an earlier run with the same digest (not retried)."""
        rec = self.state.get("skip_records", {}).get(clip_id)
        if rec and self.wanted is not None and rec.get("digest") == self.wanted.get(clip_id):
            return rec
        return None

    # -- writing ---------------------------------------------------------------------------------
    def add(self, clip_id: str, arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None,
            defer: bool = False, digest: str | None = None) -> None:
        """Stage one clip; committed with the next `commit()` (automatic every `flush_every` clips or
        `flush_bytes`, unless `defer`, when the caller commits at a point of its choosing)."""
        if clip_id in self.index or any(c == clip_id for c, _ in self._staged):
            raise StoreError(f"{self.path}: clip {clip_id!r} is already in the store")
        missing = set(self.fields) - set(arrays)
        extra = set(arrays) - set(self.fields)
        if missing or extra:
            raise StoreError(f"{self.path}: clip {clip_id!r} fields mismatch, missing {sorted(missing)}, extra {sorted(extra)}")
        entry: dict[str, Any] = {"fields": {}, "meta": meta or {}}
        if self.wanted is not None:
            if clip_id not in self.wanted:
                raise StoreError(f"{self.path}: clip {clip_id!r} has no provenance digest in this run")
            entry["digest"] = self.wanted[clip_id]
        elif digest is not None:  # a copy of a clip keeps the digest it was made with (compaction)
            entry["digest"] = digest
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
            entry["fields"][name] = [start, stop, shape, crc32(flat)]
            self._uncommitted_bytes += flat.nbytes
        self._staged.append((clip_id, entry))
        self._uncommitted += 1
        if not defer:
            self.maybe_commit()

    def maybe_commit(self) -> None:
        if self._uncommitted >= self.flush_every or self._uncommitted_bytes >= self.flush_bytes:
            self.commit()

    def record_skips(self, skips: dict[str, dict]) -> None:
        """Skips of this run, {clip_id: {reason, detail}}, kept with each clip's digest so that a rerun
        reports them again without retrying an unchanged input."""
        recs = {}
        for cid, s in skips.items():
            rec = dict(s)
            if self.wanted is not None and cid in self.wanted:
                rec["digest"] = self.wanted[cid]
            recs[cid] = rec
        self.state["skip_records"] = recs
        self.state["skipped"] = {cid: s.get("reason") for cid, s in skips.items()}

    def commit(self) -> None:
        """Write pending data, then the index: after this returns, staged clips are complete."""
        if self._staged:
            for name, spec in self.fields.items():
                arr = self.arrays[name]
                end = self.rows[name]
                if arr.shape[0] != end:
                    arr.resize((end, *arr.shape[1:]))
                if self.pending[name]:
                    block = np.concatenate(self.pending[name], axis=0)
                    base = self.base[name]
                    arr[base:end] = block
                    # the next commit starts at the last chunk boundary: zarr then rewrites only the chunks it
                    # touches (the shard's other chunks are copied as encoded), and the tail held in memory is
                    # under one chunk, where a shard-aligned tail held (and re-encoded) up to a whole shard
                    new_base = (end // spec.chunk_rows) * spec.chunk_rows
                    # a copy: a view would keep the whole concatenated block alive until the next commit
                    tail = block[new_base - base:].copy()
                    self.pending[name] = [tail] if len(tail) else []
                    self.base[name] = new_base
            for clip_id, entry in self._staged:
                self.index[clip_id] = entry
                self.order.append(clip_id)
            self.lengths = dict(self.rows)
            self._staged.clear()
            self._uncommitted = 0
            self._uncommitted_bytes = 0
        self._write_state()

    def _write_state(self) -> None:
        self.state.update({"index": self.index, "order": self.order, "lengths": self.lengths,
                           "garbage_rows": self.garbage,
                           "recompute": sorted(c for c in self.recompute if c not in self.index)})
        atomic_write_json(self.path / INDEX, self.state, indent=None)

    def update_attrs(self, **attrs: Any) -> None:
        """Attrs of this run (e.g. `skipped`), kept in the index file, which readers merge into `attrs`."""
        self.state.update(attrs)
        self._write_state()

    def close(self, complete: bool = True, **attrs: Any) -> None:
        self.state.update(attrs)
        self.state["complete"] = complete
        self.commit()
        if complete and self._should_compact():
            self.compact()

    def _should_compact(self) -> bool:
        live = {n: self.lengths.get(n, 0) - self.garbage.get(n, 0) for n in self.fields}
        return any(self.garbage.get(n, 0) >= max(live[n], 1 << 16) for n in self.fields)

    def compact(self) -> None:
        """Rewrite the store without its garbage rows (clips recomputed or dropped), into a sibling folder
        that then replaces this one; the data of every live clip is copied as it is."""
        tmp = self.path.with_name(self.path.name + ".compact")
        if tmp.exists():
            shutil.rmtree(tmp)
        reader = RaggedReader(self.path)
        attrs = {k: v for k, v in dict(self.group.attrs).items() if k not in ("format", "fingerprint", "fields")}
        new = RaggedWriter(tmp, self.fields, attrs, self.group.attrs["fingerprint"], flush_every=self.flush_every,
                           flush_bytes=self.flush_bytes)
        for cid in self.order:
            new.add(cid, reader.read(cid), self.index[cid]["meta"], digest=self.index[cid].get("digest"))
        extra = {k: v for k, v in self.state.items() if k not in STATE_KEYS}
        new.close(complete=bool(self.state.get("complete")), **extra)
        old = self.path.with_name(self.path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        self.path.rename(old)
        tmp.rename(self.path)
        shutil.rmtree(old)
        log.info("%s: compacted (dropped %s garbage rows)", self.path, self.garbage)
        self.garbage = {}
        self.group = zarr.open_group(str(self.path), mode="r+")
        self.arrays = {name: self.group[name] for name in self.fields}
        self.state = _read_state(self.path)
        self.index, self.order = self.state["index"], self.state["order"]

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
    """Read side of a store: `ids()`, `read(clip_id)`, `meta(clip_id)`, `digest(clip_id)`, `read_all(field)`,
    `attrs`. Every read checks the clip's bytes against the crc32 in the index."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"store not found: {self.path}")
        try:
            self.group = zarr.open_group(str(self.path), mode="r")
            group_attrs = dict(self.group.attrs)
        except Exception as exc:
            raise StoreError(f"{self.path}: not a readable zarr store ({exc})") from None
        fmt = group_attrs.get("format")
        if fmt != FORMAT:
            if str(fmt or "").startswith("esva-ragged/"):
                raise StoreError(f"{self.path}: written in the older store format {fmt!r} (now {FORMAT!r}); "
                                 "rerun the stage that makes it (e.g. `dvc repro`) to rebuild it")
            raise StoreError(f"{self.path}: not an esva store (format={fmt!r})")
        try:
            state = _read_state(self.path)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.path}: its index {INDEX} is unreadable ({exc.__class__.__name__}: {exc})") from None
        if not state:
            raise StoreError(f"{self.path}: its index {INDEX} is missing (truncated store); rerun the stage")
        run = state.get("run", {})
        # how the store was made (zarr.json), what its latest run recorded, and the index's state
        self.attrs: dict[str, Any] = {**group_attrs, **{k: v for k, v in run.items() if k not in ("format", "fingerprint", "fields")},
                                      **{k: v for k, v in state.items() if k != "run"}}
        self.fields = {k: FieldSpec.from_json(v) for k, v in group_attrs["fields"].items()}
        self._index: dict[str, dict] = state.get("index", {})
        self._order: list[str] = state.get("order", [])
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

    def digest(self, clip_id: str) -> str | None:
        """The clip's provenance digest (what made it), or None for a store written without one."""
        return self._entry(clip_id).get("digest")

    def _entry(self, clip_id: str) -> dict:
        try:
            return self._index[clip_id]
        except KeyError:
            raise KeyError(f"{self.path}: clip {clip_id!r} is not in the store") from None

    def shape(self, clip_id: str, field: str) -> tuple[int, ...]:
        """A clip's array shape for one field, from the index (no read)."""
        return tuple(self._entry(clip_id)["fields"][field][2])

    def _checked(self, clip_id: str, name: str, data: np.ndarray, rec: list) -> np.ndarray:
        start, stop, shape = rec[0], rec[1], rec[2]
        if data.shape[0] != stop - start:
            raise StoreError(f"{self.path}: clip {clip_id!r} field {name!r} is truncated "
                             f"({data.shape[0]} of {stop - start} rows); run `esva verify {self.path}`")
        if len(rec) > 3 and crc32(data) != rec[3]:
            raise StoreError(f"{self.path}: clip {clip_id!r} field {name!r} fails its checksum (corrupt or missing "
                             f"chunk); run `esva verify {self.path}`, then rerun the stage")
        return data.reshape(shape)

    def _slice(self, clip_id: str, name: str, start: int, stop: int) -> np.ndarray:
        try:
            return np.asarray(self._arrays[name][start:stop])
        except Exception as exc:  # zarr's checksum error, a damaged shard, ...
            raise StoreError(f"{self.path}: clip {clip_id!r} field {name!r} cannot be read "
                             f"({exc.__class__.__name__}: {exc}); run `esva verify {self.path}`") from None

    def read(self, clip_id: str, fields: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        entry = self._entry(clip_id)
        out = {}
        for name in fields or self.fields:
            rec = entry["fields"][name]
            out[name] = self._checked(clip_id, name, self._slice(clip_id, name, rec[0], rec[1]), rec)
        return out

    def read_all(self, field: str) -> dict[str, np.ndarray]:
        """Every clip's array of one field, read in one pass over the concatenated array."""
        spec = self.fields[field]
        try:
            data = np.asarray(self._arrays[field][:])
        except Exception:  # name the clip: fall back to clip-by-clip reads
            return {cid: self.read(cid, [field])[field] for cid in self._order}
        out = {}
        for cid in self._order:
            rec = self._index[cid]["fields"][field]
            arr = self._checked(cid, field, data[rec[0]:rec[1]], rec)
            out[cid] = arr if spec.inner is None else data[rec[0]:rec[1]]
        return out


def verify(path: str | Path) -> dict[str, Any]:
    """Check a whole store: its index against its arrays (ranges, lengths), every clip's bytes against
    its checksum (which also runs zarr's crc32c on every chunk read), and every clip's provenance
    digest. Returns {"path", "clips", "ok", "bad": {clip_id: [problems]}, "store": [store-level problems]}."""
    path = Path(path)
    problems: list[str] = []
    bad: dict[str, list[str]] = {}
    try:
        r = RaggedReader(path)
    except StoreError as exc:
        return {"path": str(path), "clips": 0, "ok": 0, "bad": {}, "store": [str(exc)]}
    lengths = r.attrs.get("lengths", {})
    for name, arr in r._arrays.items():
        if int(arr.shape[0]) < int(lengths.get(name, 0)):
            problems.append(f"field {name!r} holds {arr.shape[0]} rows, the index commits {lengths.get(name)}")
    if set(r._order) != set(r._index) or len(r._order) != len(r._index):
        problems.append("the index's clip order and its entries disagree")
    if not r.attrs.get("complete", False):
        problems.append("the store is marked incomplete (its last run was interrupted or failed)")
    for cid in r.ids():
        entry = r._index.get(cid, {})
        errs = []
        if not entry.get("digest") and r.attrs.get("stage"):
            errs.append("no provenance digest")
        for name in r.fields:
            rec = entry.get("fields", {}).get(name)
            if rec is None:
                errs.append(f"field {name!r} missing from the index")
                continue
            if rec[1] > int(lengths.get(name, 0)) or rec[0] > rec[1]:
                errs.append(f"field {name!r} rows {rec[0]}:{rec[1]} lie outside the committed {lengths.get(name, 0)}")
                continue
            try:
                r.read(cid, [name])
            except StoreError as exc:
                errs.append(str(exc).split(": ", 1)[-1])
        if errs:
            bad[cid] = errs
    return {"path": str(path), "clips": len(r), "ok": len(r) - len(bad), "bad": bad, "store": problems}


def open(path: str | Path) -> RaggedReader:  # noqa: A001 - mirrors zarr.open / the DESIGN API
    return RaggedReader(path)
