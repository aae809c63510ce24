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


def plan_batches(costs: dict[str, int], budget: int, single: bool = False, max_padding: float = 0.1,
                 order: list[str] | None = None) -> list[list[str]]:
    """Length bucketing: clips sorted by cost (longest first), packed while the padded batch cost
    (batch size x longest item) stays within the budget and no item is padded by more than
    `max_padding` of the longest. A clip over budget gets a batch alone. `order` (the clips of a shared
    pass, `run_shared`) replaces the sort; a batch's first clip is then its padded length."""
    if order is None:
        order = sorted(costs, key=lambda c: (-costs[c], c))
    else:
        order = [c for c in order if c in costs]
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
    largest_batch_units: int = 0  # the largest batch's padded units: what the batch budget bounds, and what
                                  # sets the forward's peak memory (a small corpus may never fill a batch)

    def count(self, encoder, prep: "_Prepared") -> None:
        """One batch's clips, valid and padded units."""
        u, p = _padded(encoder, prep)
        self.batches += 1
        self.clips += len(prep.ids)
        self.units += u
        self.padded_units += p
        self.largest_batch_units = max(self.largest_batch_units, p)

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
    return _prepare_items(encoder, batch_ids, [load(cid) for cid in batch_ids])


def _prepare_items(encoder, batch_ids: list[str], loaded: list[Any]) -> _Prepared:
    items, metas = [], []
    for cid, item in zip(batch_ids, loaded):
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


def _costs(encoder, lengths: dict[str, int], short_policy: str) -> tuple[dict[str, int], list[Skip]]:
    skips: list[Skip] = []
    costs: dict[str, int] = {}
    for cid, n in lengths.items():
        if n <= 0 and encoder.modality != "text":
            skips.append(Skip(cid, "empty_input", f"no {encoder.modality} input"))
        elif n < encoder.min_length and short_policy == "skip":
            skips.append(Skip(cid, "too_short_for_encoder", f"{n} < {encoder.min_length} input units for {encoder.name}"))
        else:
            costs[cid] = encoder.cost(max(n, encoder.min_length))
    return costs, skips


def run_extraction(encoder, lengths: dict[str, int], load: Callable[[str], Any], writer, short_policy: str,
                   on_done: Callable[[int], None] | None = None, max_padding: float = 0.1, prefetch: int = 2,
                   timings: Timings | None = None) -> tuple[int, list[Skip]]:
    """Encode every clip in `lengths` (raw input length: samples, frames or characters), writing
    to `writer` (a RaggedWriter with feature_fields). Returns (clips written, skips).
    `prefetch`: batches queued between the loader, the encoder and the writer (0: one thread, in turn)."""
    costs, skips = _costs(encoder, lengths, short_policy)
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
        tm.count(encoder, prep)
    return done


class _Lanes:
    """The loader and writer threads around the calling thread's compute, the bounded queues between them, and
    how they stop: an error in any lane stops the others and is raised in the calling thread once both
    threads have stopped (so the store is never written after that); a batch the calling thread computed
    always reaches the writer unless the writer itself failed."""

    def __init__(self, prefetch: int, produce: Iterable[Any], handle: Callable[[Any], None]) -> None:
        self.stop, self.writer_dead = threading.Event(), threading.Event()
        self.errors: list[BaseException] = []
        self.loaded: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self.finished: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self.load_s = self.write_s = self.wait_s = 0.0
        self._produce, self._handle = produce, handle
        self._threads = [threading.Thread(target=self._load, name="esva-extract-load", daemon=True),
                         threading.Thread(target=self._write, name="esva-extract-write", daemon=True)]

    @staticmethod
    def _put(q: queue.Queue, item, until: threading.Event) -> bool:
        while not until.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _load(self) -> None:
        try:
            it = iter(self._produce)
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    return
                self.load_s += time.perf_counter() - t0
                if not self._put(self.loaded, item, self.stop):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            self.errors.append(e)
            self.stop.set()
        finally:
            self._put(self.loaded, _END, self.stop)

    def _write(self) -> None:
        try:
            while True:
                item = self.finished.get()  # the calling thread always ends the stream with _END
                if item is _END:
                    return
                t0 = time.perf_counter()
                self._handle(item)
                self.write_s += time.perf_counter() - t0
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            self.errors.append(e)
            self.stop.set()
        finally:
            self.writer_dead.set()

    def next(self) -> Any:
        """The next loaded item, _END when the input is exhausted, or None when another lane failed."""
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                return self.loaded.get(timeout=0.1)
            except queue.Empty:
                continue
            finally:
                self.wait_s += time.perf_counter() - t0
        return None

    def hand(self, item) -> bool:
        """A computed batch to the writer; False if the writer has failed."""
        return self._put(self.finished, item, self.writer_dead)

    def __enter__(self) -> "_Lanes":
        for th in self._threads:
            th.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()  # the loader stops
        self._put(self.finished, _END, self.writer_dead)  # the writer drains what it was handed, then stops
        self._threads[1].join()
        self._threads[0].join()
        if self.errors and exc[0] is None:
            raise self.errors[0]


def _pipelined(encoder, plan, load, writer, on_done, tm: Timings, prefetch: int) -> int:
    written = [0]

    def handle(item) -> None:
        written[0] += _write(encoder, *item, writer, on_done)

    lanes = _Lanes(prefetch, (_prepare(encoder, ids, load) for ids in plan), handle)
    try:
        with lanes:
            while True:
                prep = lanes.next()
                if prep is None or prep is _END:
                    break
                t1 = time.perf_counter()
                out, out_len = _forward(encoder, prep)
                tm.forward_s += time.perf_counter() - t1
                tm.count(encoder, prep)
                if not lanes.hand((prep, out, out_len)):
                    break
    finally:
        tm.load_s += lanes.load_s
        tm.write_s += lanes.write_s
        tm.wait_s += lanes.wait_s
    return written[0]


@dataclass
class Job:
    """One encoder of a shared pass (`run_shared`): its clips (input lengths), its store, its policy."""

    encoder: Any
    lengths: dict[str, int]
    writer: Any
    short_policy: str = "pad"
    on_done: Callable[[int], None] | None = None
    timings: Timings = field(default_factory=Timings)
    done: int = 0
    skips: list[Skip] = field(default_factory=list)


def _jobs_writer(jobs: list[Job]) -> Callable[[tuple], None]:
    """The writer lane's work in a pass of several jobs: (job index, batch, output, lengths) into that job's store."""

    def handle(item: tuple) -> None:
        k, prep, out, out_len = item
        job = jobs[k]
        t0 = time.perf_counter()
        job.done += _write(job.encoder, prep, out, out_len, job.writer, job.on_done)
        job.timings.write_s += time.perf_counter() - t0

    return handle


def run_shared(jobs: list[Job], load: Callable[[str], Any], max_padding: float = 0.1, prefetch: int = 4) -> list[Job]:
    """Several encoders of the same input (the vision encoders on the face store) in one pass over it: each
    clip is read once, in one order for all (longest first), and handed to every encoder that wants it; each
    encoder packs its own batches (its own budget) along that order, runs them as soon as their clips are in,
    and a writer thread writes every encoder's store. A clip is dropped from memory once every encoder that
    wants it has run it, so memory holds about one batch per encoder. Errors stop the pass as in
    `run_extraction`; each store keeps the batches written before. Each job's `timings.load_s` is the pass's
    shared reading time."""
    costs: list[dict[str, int]] = []
    wanted: dict[str, int] = {}  # clip -> how many encoders run it
    longest: dict[str, int] = {}
    for job in jobs:
        c, job.skips = _costs(job.encoder, job.lengths, job.short_policy)
        costs.append(c)
        for cid in c:
            wanted[cid] = wanted.get(cid, 0) + 1
            longest[cid] = max(longest.get(cid, 0), job.lengths[cid])
    order = sorted(wanted, key=lambda c: (-longest[c], c))
    plans = [plan_batches(c, getattr(job.encoder, "budget", None) or 1, single=getattr(job.encoder, "single", False),
                          max_padding=max_padding, order=order) for c, job in zip(costs, jobs)]

    handle = _jobs_writer(jobs)
    lanes = _Lanes(prefetch, ((cid, load(cid)) for cid in order), handle)
    cache: dict[str, Any] = {}
    uses = dict(wanted)
    nxt = [0] * len(jobs)  # each job's next batch
    t_start = time.perf_counter()
    try:
        with lanes:
            ended = False
            while not ended:
                got = lanes.next()
                if got is None:
                    break
                if got is _END:
                    ended = True
                else:
                    cache[got[0]] = got[1]
                for k, job in enumerate(jobs):  # run every batch whose clips are all in
                    while nxt[k] < len(plans[k]) and all(c in cache for c in plans[k][nxt[k]]):
                        ids = plans[k][nxt[k]]
                        nxt[k] += 1
                        t1 = time.perf_counter()
                        prep = _prepare_items(job.encoder, ids, [cache[c] for c in ids])
                        out, out_len = _forward(job.encoder, prep)
                        job.timings.forward_s += time.perf_counter() - t1
                        job.timings.count(job.encoder, prep)
                        for c in ids:
                            uses[c] -= 1
                            if uses[c] == 0:
                                del cache[c]
                        if not lanes.hand((k, prep, out, out_len)):
                            return jobs  # the writer failed: its error is raised on leaving `with lanes`
    finally:
        wall = time.perf_counter() - t_start
        for job in jobs:
            job.timings.wall_s += wall
            job.timings.load_s += lanes.load_s  # shared: the pass reads each clip once for all
            job.timings.wait_s += lanes.wait_s
    return jobs


def run_streamed(jobs: list[Job], stream: Iterable[tuple[str, dict[str, Any]]], hold: int = 4,
                 max_padding: float = 0.1, prefetch: int = 2) -> list[Job]:
    """Encoders fed by a stream of clips whose lengths are not known in advance (`esva featurize`: clips
    come out of the decode and crop workers one by one). `stream` yields (clip_id, {modality: input}); a
    job takes the clips of its `lengths` that carry its modality. Each encoder keeps arriving clips in a
    pool and, once the pool holds `hold` batch budgets, packs it as `plan_batches` does (longest first,
    within the budget and the padding bound) and runs every batch but the last, whose short clips wait for
    the next ones; the end of the stream runs the rest. So memory holds about `hold` + 1 budgets of input
    per encoder, and batches are as full as in `run_extraction` except at the pool's edges (equal
    features up to float rounding). The stream is read on the loader thread, the stores are written on
    the writer thread, the forwards run here; errors stop the pass as in `run_extraction`."""
    pools: list[dict[str, Any]] = [{} for _ in jobs]
    costs: list[dict[str, int]] = [{} for _ in jobs]

    handle = _jobs_writer(jobs)
    def run_pool(k: int, lanes: _Lanes, final: bool) -> bool:
        job = jobs[k]
        plan = plan_batches(costs[k], getattr(job.encoder, "budget", None) or 1,
                            single=getattr(job.encoder, "single", False), max_padding=max_padding)
        for ids in plan if final else plan[:-1]:
            t1 = time.perf_counter()
            prep = _prepare_items(job.encoder, ids, [pools[k].pop(c) for c in ids])
            for c in ids:
                del costs[k][c]
            out, out_len = _forward(job.encoder, prep)
            job.timings.forward_s += time.perf_counter() - t1
            job.timings.count(job.encoder, prep)
            if not lanes.hand((k, prep, out, out_len)):
                return False  # the writer failed: its error is raised on leaving `with lanes`
        return True

    lanes = _Lanes(prefetch, stream, handle)
    t_start = time.perf_counter()
    try:
        with lanes:
            while True:
                got = lanes.next()
                if got is None:
                    break
                if got is _END:
                    for k in range(len(jobs)):
                        if not run_pool(k, lanes, final=True):
                            break
                    break
                cid, item = got
                for k, job in enumerate(jobs):
                    x = item.get(job.encoder.modality)
                    if cid not in job.lengths or x is None:
                        continue
                    c, skips = _costs(job.encoder, {cid: len(x)}, job.short_policy)
                    job.skips += skips
                    if c:
                        pools[k][cid] = x
                        costs[k].update(c)
                    budget = getattr(job.encoder, "budget", None) or 1
                    if sum(costs[k].values()) >= hold * budget and not run_pool(k, lanes, final=False):
                        return jobs
    finally:
        wall = time.perf_counter() - t_start
        for job in jobs:
            job.timings.wall_s += wall
            job.timings.load_s += lanes.load_s  # shared: the stream's own time (waiting on its workers included)
            job.timings.wait_s += lanes.wait_s
    return jobs
