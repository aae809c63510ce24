"""The memory benchmark runs end to end at a tiny size; its JSON has the agreed structure. No timing asserts."""

import json

import pytest


def test_split_plan_puts_every_label_in_train_and_fills_every_split():
    from esva import LABELS

    from benchmarks.memory import _split_plan

    for n in (8, 12, 24, 101):
        plan = _split_plan(n, seed=0)
        assert len(plan) == n
        assert {lab for lab, split in plan if split == "train"} == set(LABELS)
        assert {split for _, split in plan} == {"train", "val", "test"}


def test_generated_stores_read_like_extract_outputs(tmp_path):
    from esva.store import open as open_store

    from benchmarks.memory import DIMS, RATES, generate

    info = generate(tmp_path / "N8", 8, seed=0)
    assert info["clips"] == 8 and not info["reused"]
    for name, dim in DIMS.items():
        store = open_store(tmp_path / "N8" / "features" / f"{name}.zarr")
        assert store.attrs["stage"] == f"extract_{name}" and store.attrs["dim"] == dim
        assert store.attrs["frame_rate"] == RATES[name]
        assert store.attrs["layers"] == (["last", "cls", "patches"] if name == "eva" else ["last"])
        assert store.attrs["corpus"] == "synthetic" and "checkpoint" in store.attrs["params"]
        arrays = store.read(store.ids()[0])
        assert arrays["last"].dtype.name == "float16" and arrays["last"].shape[1] == dim
        assert arrays["last_utt"].dtype.name == "float32" and arrays["last_utt"].shape == (1, dim)
    patches = open_store(tmp_path / "N8" / "features" / "eva.zarr").read("bench_000000")["patches"]
    assert patches.shape == (256, 1408)  # stage 2's EVA tokens, at the paper checkpoint's 224 px
    assert generate(tmp_path / "N8", 8, seed=0)["reused"]  # the marker matches: nothing is rewritten


def test_allocator_record_names_what_the_commands_set():
    import platform

    from benchmarks.memory import _allocator
    from esva.train.stream import HEAP_MMAP_THRESHOLD

    rec = _allocator()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert "bound_heap" in rec and str(HEAP_MMAP_THRESHOLD) in rec and HEAP_MMAP_THRESHOLD == 4 << 20
    else:
        assert rec.startswith("not glibc")


@pytest.mark.slow
def test_memory_benchmark_tiny(tmp_path):
    from benchmarks.memory import main

    out = tmp_path / "bench.json"
    res = main(["--n", "12", "--factor", "2", "--work", str(tmp_path / "work"), "--out", str(out)])
    assert json.loads(out.read_text()) == res
    assert not res["failed"]
    assert set(res["sizes"]) == {"N", "2N"} and res["sizes"]["2N"]["clips"] == 24
    for size in res["sizes"].values():
        assert size["store_bytes"]["total"] > 0 and size["audio_seconds"] > 0
        for cmd in ("train", "tune"):
            assert size[cmd]["peak_rss_mb"] > 0 and size[cmd]["seconds"] > 0
    assert set(res["meets_target"]) == {"train", "tune", "overall"}
    assert all(r > 0 for r in res["ratios"].values())
    assert res["cores"] >= 1 and res["feature_cache_mb"]["train"] > 0 and "synthetic" in res["note"]
    assert res["allocator"]
    assert not (tmp_path / "work" / "N12").exists()  # removed without --keep
