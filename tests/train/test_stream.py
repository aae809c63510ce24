"""The streaming helpers of esva/train/stream.py: the byte-bounded cache, the one-batch prefetch and
`bound_heap` (glibc's mmap threshold). No timing asserts."""

import os
import platform
import subprocess
import sys
import threading

import numpy as np
import pytest

from esva.train.stream import ByteLRU, bound_heap, prefetch_batches

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Run in a fresh interpreter each (the allocator setting is process-wide): 6 MiB blocks (above bound_heap's
# 4 MiB threshold) allocated between small ones that stay, then freed, after a 24 MiB mapped block was
# freed. glibc's dynamic threshold rises to 24 MiB on that free, so the 6 MiB blocks come from the heap and
# leave holes in it; with bound_heap they are mapped and unmapped, and the heap holds almost nothing free.
PROBE = """
import ctypes, sys
import numpy as np
from esva.train.stream import bound_heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
bounded = bound_heap() if sys.argv[1] == "bound" else None
big = np.ones(24 << 20, np.uint8)
del big
blocks, pins = [], []
for _ in range(16):
    blocks.append(np.ones(6 << 20, np.uint8))
    pins.append(ctypes.create_string_buffer(4096))
del blocks
print(bounded, libc.mallinfo2().fordblks >> 20)
"""


def _probe(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True)
    bounded, free_mib = out.stdout.split()
    return bounded, int(free_mib)


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_bound_heap_keeps_freed_blocks_out_of_the_heap():
    bounded, free_default = _probe("default")
    assert bounded == "None" and free_default >= 72  # the problem: freed 6 MiB blocks stay as holes in the heap
    bounded, free_bound = _probe("bound")
    assert bounded == "True" and free_bound <= 2


def test_bound_heap_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("", ""))
    assert bound_heap() is False


def test_byte_lru_stays_within_its_budget_and_evicts_the_oldest():
    cache = ByteLRU(3000)
    for i in range(5):
        cache.put(i, {"x": np.zeros(1000, np.uint8)})
        assert cache.used <= 3000
    assert len(cache) == 3 and cache.lookup(0) is None and cache.lookup(4) is not None
    cache.put("huge", np.zeros(4000, np.uint8))  # larger than the budget: never held
    assert cache.lookup("huge") is None and cache.used == 3000


def test_prefetch_batches_yields_in_order_and_warms_at_most_one_batch_ahead():
    batches = [[0, 1], [2, 3], [4], [5, 6]]
    warmed, lock, seen = [], threading.Lock(), []

    def warm(x):
        with lock:
            warmed.append(x)

    for b in prefetch_batches(batches, warm):
        with lock:
            ahead = [x for x in warmed if x not in seen and x not in b]
        assert set(ahead) <= set(batches[batches.index(b) + 1] if b != batches[-1] else [])
        seen += b
    assert seen == [0, 1, 2, 3, 4, 5, 6] and sorted(warmed) == seen
    assert list(prefetch_batches([], warm)) == []
