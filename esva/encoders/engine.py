"""The extraction engine: length-bucketed batches under a budget, frozen forward passes, checks,
and a resumable Zarr feature store (commits on batch boundaries).

Per clip and configured layer it stores the frame-level sequence (T x D, float16) and the utterance
mean (1 x D, float32) computed over the valid frames only, so padding never leaks into either.

Short input (documented policy, `features.<enc>.short_policy`): a clip shorter than the encoder's
minimum (HuBERT: its conv receptive field, 400 samples) is padded to the minimum (audio with zeros,
frames by repeating the last one) and the clip's meta records `padded_from`; with `skip` it is
skipped with reason `too_short_for_encoder`. An empty input (no audio, no frames) is always
skipped (`empty_input`). A NaN or Inf in a feature stops the run with an error naming the clip;
the clips finished before it stay in the store.

The pipeline (`prefetch` > 0, the default): three stages overlap through bounded queues of `prefetch`
batches each, so the encoder never waits on the store.
- a loader thread reads and collates the next batches (store reads, decompression, normalisation);
- the calling thread runs the encoder forward (and, on a GPU, the copy back);
- a writer thread checks, converts and writes each finished batch and commits on its boundary.
The batches, their order and the commit points are those of the sequential loop (`prefetch=0`), so both
give bit-identical stores (tests/encoders/test_engine.py). An error in any stage stops the other two and
is raised in the calling thread after they have stopped, so the store is never written from two threads
and the batches written before the error stay committed. `Timings` records each stage's busy seconds.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch

from esva.encoders.base import masked_mean
from esva.store import FieldSpec

log = logging.getLogger(__name__)


class FeatureError(RuntimeError):
    """A non-finite feature: names the clip and the layer."""


@dataclass
class Skip:
    clip_id: str
    reason: str
    detail: str


def feature_fields(layers: Iterable[str], dim: int) -> dict[str, FieldSpec]:
    rows = max(256, (1 << 20) // (2 * dim))  # ~1 MiB float16 chunks, 64 chunks a shard
    fields = {}
    for name in layers:
        fields[name] = FieldSpec("float16", inner=(dim,), chunk_rows=rows, shard_chunks=64)
        fields[f"{name}_utt"] = FieldSpec("float32", inner=(dim,), chunk_rows=1024, shard_chunks=16)
    return fields


def plan_batches(costs: dict[str, int], budget: int, single: bool = False, max_padding: float = 0.1) -> list[list[str]]:
    """Length bucketing: clips sorted by cost (longest first), packed while the padded batch cost
    (batch size x longest item) stays within the budget and no item is padded by more than
    `max_padding` of the longest. A clip over budget gets a batch alone."""
    order = sorted(costs, key=lambda c: (-costs[c], c))
    batches: list[list[str]] = []
    cur: list[str] = []
    for cid in order:
        if cur:
            longest = costs[cur[0]]
            full = longest * (len(cur) + 1) > budget
            ragged = costs[cid] < (1.0 - max_padding) * longest
            if single or full or ragged:
                batches.append(cur)
                cur = []
        cur.append(cid)
    if cur:
        batches.append(cur)
    return batches


def _pad_to(item: Any, modality: str, n: int) -> Any:
    if modality == "audio":
        return np.pad(np.asarray(item, np.float32), (0, n - len(item)))
    idx = np.minimum(np.arange(n), len(item) - 1)
    return np.asarray(item)[idx]


@dataclass
class Timings:
    """Busy seconds of each pipeline stage and the wall time of a run (what benchmarks/extract.py profiles)."""

    load_s: float = 0.0      # reading and collating (loader thread)
    forward_s: float = 0.0   # encoder forward and the copy of its output to the host (calling thread)
    write_s: float = 0.0     # checks, float16 conversion, store writes and commits (writer thread)
    wait_s: float = 0.0      # the calling thread waiting for the loader (input-bound when large)
    wall_s: float = 0.0
    batches: int = 0
    clips: int = 0
    units: int = 0           # valid input units (samples, frames, characters)
    padded_units: int = 0    # input units including the padding of each batch

    def as_dict(self) -> dict[str, float]:
        d = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}
        d["padding_share"] = round(1.0 - self.units / self.padded_units, 4) if self.padded_units else 0.0
        # the share of the run the encoder was computing: what keeps an accelerator busy (1.0 = never waits)
        d["forward_share_of_wall"] = round(self.forward_s / self.wall_s, 4) if self.wall_s else 0.0
        return d


_END = object()


@dataclass
class _Prepared:
    ids: list[str]
    batch: Any
    metas: list[dict] = field(default_factory=list)


def _prepare(encoder, batch_ids: list[str], load: Callable[[str], Any]) -> _Prepared:
    items, metas = [], []
    for cid in batch_ids:
        item = load(cid)
        meta: dict[str, Any] = {}
        n = len(item) if encoder.modality != "text" else len(item or "")
        if encoder.modality != "text" and n < encoder.min_length:
            meta["padded_from"] = int(n)
            log.warning("%s: %s input of %d units padded to the minimum %d", cid, encoder.name, n, encoder.min_length)
            item = _pad_to(item, encoder.modality, encoder.min_length)
        items.append(item)
        metas.append(meta)
    batch = encoder.collate(batch_ids, items)
    if str(getattr(encoder, "device", "cpu")).startswith("cuda") and isinstance(batch.inputs, dict):
        # page-locked host memory: the copy to the device runs at full bus speed while the loader goes on
        batch.inputs = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.inputs.items()}
    return _Prepared(batch_ids, batch, metas)


def _forward(encoder, prep: _Prepared) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    out = {k: v.float().cpu() for k, v in encoder.encode(prep.batch).items()}  # features leave the device here
    return out, encoder.output_lengths(prep.batch).cpu()


def _write(encoder, prep: _Prepared, out: dict[str, torch.Tensor], out_len: torch.Tensor, writer,
           on_done: Callable[[int], None] | None) -> int:
    fixed = getattr(encoder, "fixed_lengths", {})  # fields of their own length (EVA's patch tokens)
    lens = {name: torch.full_like(out_len, fixed[name]) if name in fixed else out_len for name in out}
    utt = {name: masked_mean(x, lens[name]) for name, x in out.items()}
    for i, cid in enumerate(prep.ids):
        t = int(out_len[i])
        arrays = {}
        for name, x in out.items():
            seq = x[i, :int(lens[name][i])]
            if not torch.isfinite(seq).all():
                bad = int((~torch.isfinite(seq)).sum())
                raise FeatureError(f"clip {cid!r}: {bad} non-finite values (NaN/Inf) in {encoder.name} layer {name!r}")
            seq16 = seq.to(torch.float16)
            if not torch.isfinite(seq16).all():
                raise FeatureError(f"clip {cid!r}: {encoder.name} layer {name!r} overflows float16 "
                                   f"(max |x| = {float(seq.abs().max()):.3g})")
            arrays[name] = seq16.numpy()
            arrays[f"{name}_utt"] = utt[name][i:i + 1].numpy().astype(np.float32)
        meta = {**prep.metas[i], "frames": t}
        if "frame_index" in prep.batch.extra:
            meta["frame_index"] = int(prep.batch.extra["frame_index"][i])
        writer.add(cid, arrays, meta, defer=True)
        if on_done:
            on_done(1)
    # commits fall on batch boundaries: after a crash the store holds whole batches of the plan, so the
    # resumed run packs the rest into the same batches as an uninterrupted one (bit-identical features)
    writer.maybe_commit()
    return len(prep.ids)


def _padded(encoder, prep: _Prepared) -> tuple[int, int]:
    """(valid, padded) input units of a batch. Audio batches pad every clip to the longest; the vision
    encoders stack frames (MAE), windows (VideoMAE) or one image (EVA) without padding between clips, and
    text is padded in tokens, not the characters counted here: for those both numbers are the valid units."""
    lengths = prep.batch.lengths
    valid = int(lengths.sum())
    if encoder.modality != "audio" or not len(lengths):
        return valid, valid
    return valid, int(lengths.max()) * len(lengths)


def run_extraction(encoder, lengths: dict[str, int], load: Callable[[str], Any], writer, short_policy: str,
                   on_done: Callable[[int], None] | None = None, max_padding: float = 0.1, prefetch: int = 2,
                   timings: Timings | None = None) -> tuple[int, list[Skip]]:
    """Encode every clip in `lengths` (raw input length: samples, frames or characters), writing
    to `writer` (a RaggedWriter with feature_fields). Returns (clips written, skips).
    `prefetch`: batches queued between the loader, the encoder and the writer (0: one thread, in turn)."""
    skips: list[Skip] = []
    costs: dict[str, int] = {}
    for cid, n in lengths.items():
        if n <= 0 and encoder.modality != "text":
            skips.append(Skip(cid, "empty_input", f"no {encoder.modality} input"))
        elif n < encoder.min_length and short_policy == "skip":
            skips.append(Skip(cid, "too_short_for_encoder", f"{n} < {encoder.min_length} input units for {encoder.name}"))
        else:
            costs[cid] = encoder.cost(max(n, encoder.min_length))
    budget = getattr(encoder, "budget", None) or 1
    plan = plan_batches(costs, budget, single=getattr(encoder, "single", False), max_padding=max_padding)
    tm = timings if timings is not None else Timings()
    t_start = time.perf_counter()
    try:
        if prefetch <= 0:
            done = _sequential(encoder, plan, load, writer, on_done, tm)
        else:
            done = _pipelined(encoder, plan, load, writer, on_done, tm, prefetch)
    finally:
        tm.wall_s += time.perf_counter() - t_start
    return done, skips


def _sequential(encoder, plan, load, writer, on_done, tm: Timings) -> int:
    done = 0
    for batch_ids in plan:
        t0 = time.perf_counter()
        prep = _prepare(encoder, batch_ids, load)
        t1 = time.perf_counter()
        out, out_len = _forward(encoder, prep)
        t2 = time.perf_counter()
        done += _write(encoder, prep, out, out_len, writer, on_done)
        t3 = time.perf_counter()
        tm.load_s += t1 - t0
        tm.forward_s += t2 - t1
        tm.write_s += t3 - t2
        tm.batches += 1
        tm.clips += len(batch_ids)
        u, p = _padded(encoder, prep)
        tm.units += u
        tm.padded_units += p
    return done


def _pipelined(encoder, plan, load, writer, on_done, tm: Timings, prefetch: int) -> int:
    stop = threading.Event()
    errors: list[BaseException] = []
    loaded: queue.Queue = queue.Queue(maxsize=prefetch)
    finished: queue.Queue = queue.Queue(maxsize=prefetch)
    written = [0]

    writer_dead = threading.Event()

    def put(q: queue.Queue, item, until: threading.Event) -> bool:
        while not until.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def loader() -> None:
        try:
            for batch_ids in plan:
                if stop.is_set():
                    return
                t0 = time.perf_counter()
                prep = _prepare(encoder, batch_ids, load)
                tm.load_s += time.perf_counter() - t0
                if not put(loaded, prep, stop):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            errors.append(e)
            stop.set()
        finally:
            put(loaded, _END, stop)

    def write() -> None:
        try:
            while True:
                item = finished.get()  # the calling thread always ends the stream with _END
                if item is _END:
                    return
                t0 = time.perf_counter()
                written[0] += _write(encoder, *item, writer, on_done)
                tm.write_s += time.perf_counter() - t0
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            errors.append(e)
            stop.set()
        finally:
            writer_dead.set()

    threads = [threading.Thread(target=loader, name="esva-extract-load", daemon=True),
               threading.Thread(target=write, name="esva-extract-write", daemon=True)]
    for th in threads:
        th.start()
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                prep = loaded.get(timeout=0.1)
            except queue.Empty:
                tm.wait_s += time.perf_counter() - t0
                continue
            tm.wait_s += time.perf_counter() - t0
            if prep is _END:
                break
            t1 = time.perf_counter()
            out, out_len = _forward(encoder, prep)
            tm.forward_s += time.perf_counter() - t1
            tm.batches += 1
            tm.clips += len(prep.ids)
            u, p = _padded(encoder, prep)
            tm.units += u
            tm.padded_units += p
            # a computed batch goes to the writer even when another stage has failed meanwhile: nothing computed is lost
            if not put(finished, (prep, out, out_len), writer_dead):
                break
    finally:
        stop.set()  # the loader stops
        put(finished, _END, writer_dead)  # the writer drains what it was handed, then stops
        threads[1].join()  # so the store is never written after we return or raise
        threads[0].join()
    if errors:
        raise errors[0]
    return written[0]
