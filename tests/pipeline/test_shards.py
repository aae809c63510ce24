"""`esva extract` in shards: in-process shards + merge, two processes under torchrun (gloo, CPU), and the
errors a merge gives for a missing or stale shard. A sharded store must equal the single-process one."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from esva.config import Params
from esva.store import StoreError
from esva.store import open as open_store
from pipeline.stages import extract

ROOT = Path(__file__).resolve().parents[2]


def test_shards_partition_the_clips_evenly():
    lengths = {f"c{i}": 1000 + 37 * ((i * 7) % 11) for i in range(23)}
    parts = [extract.shard_of(lengths, i, 4) for i in range(4)]
    ids = [c for p in parts for c in p]
    assert sorted(ids) == sorted(lengths) and len(ids) == len(set(ids))  # every clip once
    work = [sum(p.values()) for p in parts]
    assert max(work) - min(work) <= max(lengths.values())  # dealt longest first: within one clip of each other
    assert extract.shard_of(lengths, 1, 4) == parts[1]  # stable
    assert extract.parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "x/2", "1", "-1/3"):
        with pytest.raises(ValueError, match="shard"):
            extract.parse_shard(bad)


def _assert_same_store(a_path, b_path, atol):
    a, b = open_store(a_path), open_store(b_path)
    assert sorted(a.ids()) == sorted(b.ids()) and len(a) > 0
    for key in ("encoder", "layers", "dim", "frame_rate", "compute_dtype", "params_hash", "fingerprint", "code_digest"):
        assert a.attrs[key] == b.attrs[key], key
    for cid in a.ids():
        assert a.digest(cid) == b.digest(cid)
        assert a.meta(cid) == b.meta(cid)
        x, y = a.read(cid), b.read(cid)
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].shape == y[k].shape and x[k].dtype == y[k].dtype
            np.testing.assert_allclose(x[k].astype(np.float32), y[k].astype(np.float32), atol=atol, rtol=0)


def test_in_process_shards_merge_to_the_single_process_store(synth_decoded, tmp_path):
    cfg = Params().features.hubert
    d = synth_decoded
    where = dict(decoded=d / "decoded.zarr", manifest=d / "m.parquet")
    extract.run("hubert", cfg, tmp_path / "one.zarr", models_dir=tmp_path / "models", metrics_dir=None, **where)
    out = tmp_path / "sharded.zarr"
    src = open_store(d / "decoded.zarr")
    lengths = {c: int(src.meta(c)["n_samples"]) for c in src.ids()}
    for i in range(3):
        rep = extract.run("hubert", cfg, out, models_dir=tmp_path / "models", metrics_dir=None, shard=(i, 3), **where)
        assert rep.done == len(extract.shard_of(lengths, i, 3)) == 2
        # where the time went, and why there is no GPU figure here
        pipe = rep.extra["pipeline"]
        assert pipe["clips"] == 2 and pipe["forward_s"] > 0 and 0 < pipe["forward_share_of_wall"] <= 1
        assert pipe["units"] == sum(extract.shard_of(lengths, i, 3).values())
        assert rep.extra["gpu_utilisation"] == {"mean_percent": None, "samples": 0, "reason": "the encoder runs on the CPU"}
        assert sorted(open_store(extract.shard_path(out, i, 3)).ids()) == sorted(extract.shard_of(lengths, i, 3))
        assert extract.shard_path(out, i, 3).with_suffix(".report.json").exists()
    assert not out.exists()  # shards write beside the output, never into it
    rep = extract.merge("hubert", cfg, out, 3, metrics_dir=tmp_path / "metrics", **where)
    assert rep.done == 6 and rep.extra["shards"] == 3 and (tmp_path / "metrics" / "extract_hubert.json").exists()
    assert not extract.shard_path(out, 0, 3).parent.exists()  # merged: the shard stores are gone
    # a sharded rerun takes what the merged store already holds (same digests) instead of recomputing it
    again = extract.run("hubert", cfg, out, models_dir=tmp_path / "models", metrics_dir=None, shard=(1, 3), **where)
    assert again.resumed == 2 and again.extra["pipeline"]["clips"] == 0
    # different batches (a shard packs its own clips), so equal up to the float16 storage's rounding
    _assert_same_store(tmp_path / "one.zarr", out, atol=2e-2)


def test_merge_names_a_missing_or_stale_shard(synth_decoded, tmp_path):
    cfg = Params().features.hubert
    d = synth_decoded
    where = dict(decoded=d / "decoded.zarr", manifest=d / "m.parquet")
    out = tmp_path / "f.zarr"
    extract.run("hubert", cfg, out, models_dir=tmp_path / "models", metrics_dir=None, shard=(0, 2), **where)
    with pytest.raises(StoreError, match=r"shard 1/2 of hubert is missing: .*1-of-2\.zarr .*--shard 1/2"):
        extract.merge("hubert", cfg, out, 2, metrics_dir=None, **where)
    extract.run("hubert", cfg, out, models_dir=tmp_path / "models", metrics_dir=None, shard=(1, 2), **where)
    # a shard made with another recipe (here: other layers) is named, not mixed in
    other = type(cfg).model_validate({**cfg.model_dump(), "layers": [1, 2]})
    shutil.rmtree(extract.shard_path(out, 1, 2))
    extract.run("hubert", other, out, models_dir=tmp_path / "models", metrics_dir=None, shard=(1, 2), **where)
    with pytest.raises(StoreError, match=r"shard 1/2 of hubert was made with another recipe"):
        extract.merge("hubert", cfg, out, 2, metrics_dir=None, **where)
    assert not out.exists()


@pytest.mark.timeout(600)
def test_two_processes_under_torchrun_equal_one(synth_decoded, tmp_path):
    """`compute.launcher: multi-gpu` with 2 processes: esva extract starts itself under torchrun (gloo on this
    CPU), each rank extracts its shard, rank 0 merges; the store equals the single-process one."""
    d = synth_decoded
    esva = Path(sys.executable).parent / "esva"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = [str(esva), "extract", "hubert", "--decoded", str(d / "decoded.zarr"), "--manifest", str(d / "m.parquet"),
              "--models", str(tmp_path / "models")]
    one = subprocess.run([*common, "--out", str(tmp_path / "one.zarr"), "--metrics", str(tmp_path / "m1")],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([*common, "--out", str(tmp_path / "two.zarr"), "--metrics", str(tmp_path / "m2"),
                          "--set", "compute.launcher=multi-gpu", "--set", "compute.processes=2"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "torch.distributed.run" in two.stderr and "--nproc-per-node=2" in two.stderr
    _assert_same_store(tmp_path / "one.zarr", tmp_path / "two.zarr", atol=2e-2)
    import json

    rep = json.loads((tmp_path / "m2" / "extract_hubert.json").read_text())
    assert rep["shards"] == 2 and rep["done"] == 6 and len(rep["shard_seconds"]) == 2
