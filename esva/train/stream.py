"""Features streamed from the stores, so that training memory does not grow with the corpus.

- `StoreFeatures` is a clip's feature mapping (`clip.feats[name]`) that reads the clip's rows from the
  Zarr stores on first use (one or two ~1 MiB chunks per field) and keeps them in a `ByteLRU`, a cache
  bounded in bytes (`train.feature_cache_mb` / `tune.feature_cache_mb`). A corpus that fits stays in
  memory after the first epoch; a larger one is read again each epoch, never held whole.
- Utterance-level vectors (EVA, text: one per clip, a few KB) are read in one pass and kept.
- `prefetch_batches` loads the next batch's clips on a worker thread while the current one trains
  (a bounded prefetch of one batch).
- `bound_heap` (called by `load_features`) keeps glibc's heap from filling with freed clip arrays and
  activations, a growth with the number of batches: large blocks go back to the OS when freed.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc's malloc.h)
HEAP_MMAP_THRESHOLD = 4 << 20  # the mmap and trim thresholds, kept fixed (glibc starts at 128 KiB, then moves them)


def bound_heap(threshold: int = HEAP_MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap and trim thresholds at `threshold` bytes (glibc's own initial values): a block larger
    than that (a clip's feature array, a batch, an activation) that the heap's free space cannot hold is
    mapped when allocated and unmapped when freed, and free memory at the heap's top is given back.
    Returns whether it was set (glibc only; elsewhere a no-op). Process-wide and idempotent.

    By default glibc raises both thresholds each time a mapped block is freed (up to 32 MiB), so after the
    first batch such blocks come from the heap, where a free leaves a hole that later, differently sized
    blocks rarely fit: the heap fills with free memory and swells further the more batches run. Measured in
    `esva train` (benchmarks.memory's stores, one epoch after one warm-up epoch): at 300 clips a 1.8 GB heap
    with 0.5-0.6 GB in use, peak RSS 2.44 GB; at 3,000 clips a 2.3-3.0 GB heap with 0.9-1.2 GB in use, peak
    3.63 GB. With the thresholds fixed (mallopt(3) then never adjusts them): 1.64 GB and 2.06 GB, RSS
    following the memory in use. The price is a page fault for each page of a new mapped block (system
    time; glibc does not recycle those pages). At glibc's initial 128 KiB every activation of a demo-size
    training step (32 clips x 252 HuBERT frames x 64: 2 MiB) was mapped and unmapped: 1.8 million page
    faults and nearly half the time of a stage-1 epoch on 2 threads (1.26 s against 0.70 s at 4 MiB, and
    a peak RSS of 0.66 against 0.75 GB; `benchmarks.stage1_speed` records the allocator's cost). So
    the default is 4 MiB: a step's activations come from the heap, reused batch after batch, while larger
    blocks (a big batch, a long clip at paper size) are still mapped and given back."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols, glibc's mallopt among them
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))
        ok = bool(libc.mallopt(M_TRIM_THRESHOLD, int(threshold))) and ok
    except (OSError, AttributeError):
        return False
    log.debug("glibc mmap and trim thresholds fixed at %d bytes: %s", threshold, ok)
    return ok


class ByteLRU:
    """A least-recently-used cache bounded by the bytes of the arrays it holds. Thread-safe."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = int(budget_bytes)
        self.used = 0
        self.hits = self.misses = 0
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _size(value) -> int:
        if isinstance(value, dict):
            return sum(ByteLRU._size(v) for v in value.values())
        return int(getattr(value, "nbytes", 0))

    def lookup(self, key):
        """The cached value, or None."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
            return None

    def put(self, key, value) -> None:
        size = self._size(value)
        with self._lock:
            if key in self._items or size > self.budget:
                return
            self._items[key] = value
            self.used += size
            while self.used > self.budget:
                _, old = self._items.popitem(last=False)
                self.used -= self._size(old)

    def get(self, key, make: Callable[[], object]):
        value = self.lookup(key)
        if value is None:
            value = make()  # outside the lock: reads of different clips overlap
            self.put(key, value)
        return value

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.used = 0


class StoreFeatures(Mapping):
    """One clip's features: frame-level arrays read lazily from the stores through the shared cache,
    utterance vectors held. `length(name)` is known from the store's index without reading."""

    def __init__(self, clip_id: str, readers: dict, fields: dict[str, str], frame_level: set[str],
                 utterance: dict[str, np.ndarray], cache: ByteLRU) -> None:
        self.clip_id = clip_id
        self._readers, self._fields, self._frame = readers, fields, frame_level
        self._utt, self._cache = utterance, cache

    def _load(self) -> dict[str, np.ndarray]:
        return {n: self._readers[n].read(self.clip_id, [self._fields[n]])[self._fields[n]] for n in self._frame}

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._utt:
            return self._utt[name]
        if name not in self._frame:
            raise KeyError(name)
        return self._cache.get(self.clip_id, self._load)[name]

    def __iter__(self) -> Iterator[str]:
        return iter([*self._frame, *self._utt])

    def __len__(self) -> int:
        return len(self._frame) + len(self._utt)

    def length(self, name: str) -> int:
        if name in self._utt:
            return 1
        return int(self._readers[name].shape(self.clip_id, self._fields[name])[0])

    def warm(self) -> None:
        """Read the frame-level arrays into the cache (used by the prefetch thread)."""
        if self._frame:
            self._cache.get(self.clip_id, self._load)


def length_of(feats: Mapping, name: str) -> int:
    """Frames of one field, without reading it where the mapping knows (StoreFeatures)."""
    return feats.length(name) if isinstance(feats, StoreFeatures) else int(np.shape(feats[name])[0])


def prefetch_batches(batches: Sequence[Sequence], warm: Callable[[object], None]) -> Iterator[Sequence]:
    """Yield the batches in order while a worker thread warms the next batch's items (one batch ahead)."""
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="esva-prefetch") as pool:
        fut = pool.submit(lambda b=batches[0]: [warm(x) for x in b])
        for i, batch in enumerate(batches):
            fut.result()
            if i + 1 < len(batches):
                fut = pool.submit(lambda b=batches[i + 1]: [warm(x) for x in b])
            yield batch
