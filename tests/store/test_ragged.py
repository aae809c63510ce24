import numpy as np
import pytest

from esva.store import FieldSpec, RaggedWriter, StoreError
from esva.store import open as open_store

FIELDS = {
    "seq": FieldSpec("float32", inner=(3,), chunk_rows=8, shard_chunks=2),
    "flat": FieldSpec("uint8", inner=None, chunk_rows=64, shard_chunks=2),
}


def _clips(n, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        t = int(rng.integers(0, 20))
        out[f"clip {i}"] = {
            "seq": rng.normal(size=(t, 3)).astype("float32"),
            "flat": rng.integers(0, 255, size=(int(rng.integers(1, 5)), 3, 2)).astype("uint8"),
        }
    return out


def test_roundtrip_of_ragged_clips_and_meta(tmp_path):
    clips = _clips(9)
    with RaggedWriter(tmp_path / "s.zarr", FIELDS, {"stage": "t"}, "fp", flush_every=4) as w:
        for cid, arrays in clips.items():
            w.add(cid, arrays, {"n": len(arrays["seq"])})
    r = open_store(tmp_path / "s.zarr")
    assert r.ids() == list(clips)
    assert r.attrs["stage"] == "t" and r.attrs["complete"] is True
    for cid, arrays in clips.items():
        got = r.read(cid)
        for k in arrays:
            np.testing.assert_array_equal(got[k], arrays[k])
        assert r.meta(cid) == {"n": len(arrays["seq"])}
    allseq = r.read_all("seq")
    for cid in clips:
        np.testing.assert_array_equal(allseq[cid], clips[cid]["seq"])


def test_few_files_for_many_clips(tmp_path):
    fields = {"seq": FieldSpec("float32", inner=(3,), chunk_rows=256, shard_chunks=8),
              "flat": FieldSpec("uint8", inner=None, chunk_rows=4096, shard_chunks=8)}
    with RaggedWriter(tmp_path / "s.zarr", fields, {}, "fp") as w:
        for cid, arrays in _clips(200).items():
            w.add(cid, arrays)
    n_files = sum(1 for p in (tmp_path / "s.zarr").rglob("*") if p.is_file())
    assert n_files < 40, n_files


def test_interrupted_writer_keeps_committed_clips_and_resumes(tmp_path):
    clips = _clips(10, seed=1)
    ids = list(clips)
    with pytest.raises(RuntimeError, match="boom"):
        with RaggedWriter(tmp_path / "s.zarr", FIELDS, {}, "fp", flush_every=3) as w:
            for cid in ids[:7]:
                w.add(cid, clips[cid])
            raise RuntimeError("boom")
    r = open_store(tmp_path / "s.zarr")
    assert r.ids() == ids[:7] and r.attrs["complete"] is False
    # resume: the same fingerprint keeps what is done, the rest is appended
    with RaggedWriter(tmp_path / "s.zarr", FIELDS, {}, "fp", flush_every=3) as w:
        assert w.resumed and w.done_ids() == set(ids[:7])
        for cid in ids[7:]:
            w.add(cid, clips[cid])
    r = open_store(tmp_path / "s.zarr")
    assert r.ids() == ids and r.attrs["complete"] is True
    for cid in ids:
        np.testing.assert_array_equal(r.read(cid)["seq"], clips[cid]["seq"])


def test_uncommitted_bytes_are_overwritten_not_mixed(tmp_path):
    """A crash after data but before the index leaves orphan bytes; the resumed writer overwrites them."""
    clips = _clips(6, seed=2)
    ids = list(clips)
    w = RaggedWriter(tmp_path / "s.zarr", FIELDS, {}, "fp", flush_every=100)
    for cid in ids[:3]:
        w.add(cid, clips[cid])
    w.commit()
    w.add(ids[3], clips[ids[3]])
    # simulate a crash between data write and index write: write the data, skip the index
    for name in FIELDS:
        arr = w.arrays[name]
        arr.resize((w.rows[name], *arr.shape[1:]))
        arr[w.base[name]:w.rows[name]] = np.concatenate(w.pending[name])
    del w
    w = RaggedWriter(tmp_path / "s.zarr", FIELDS, {}, "fp")
    assert w.done_ids() == set(ids[:3])
    for cid in ids[4:]:
        w.add(cid, clips[cid])
    w.close()
    r = open_store(tmp_path / "s.zarr")
    assert r.ids() == ids[:3] + ids[4:]
    for cid in r.ids():
        np.testing.assert_array_equal(r.read(cid)["flat"], clips[cid]["flat"])


def test_changed_fingerprint_rebuilds(tmp_path):
    clips = _clips(3)
    with RaggedWriter(tmp_path / "s.zarr", FIELDS, {}, "fp1") as w:
        for cid, a in clips.items():
            w.add(cid, a)
    w = RaggedWriter(tmp_path / "s.zarr", FIELDS, {}, "fp2")
    assert not w.resumed and "changed" in w.rebuilt_reason and w.done_ids() == set()
    w.close()
    assert open_store(tmp_path / "s.zarr").ids() == []


def test_errors_name_the_store_and_clip(tmp_path):
    with pytest.raises(StoreError, match="store not found"):
        open_store(tmp_path / "missing.zarr")
    w = RaggedWriter(tmp_path / "s.zarr", FIELDS, {}, "fp")
    w.add("a", _clips(1)["clip 0"])
    with pytest.raises(StoreError, match="'a' is already"):
        w.add("a", _clips(1)["clip 0"])
    with pytest.raises(StoreError, match="inner shape"):
        w.add("b", {"seq": np.zeros((2, 4), "float32"), "flat": np.zeros(3, "uint8")})
    w.close()
    with pytest.raises(KeyError, match="'zz' is not in the store"):
        open_store(tmp_path / "s.zarr").read("zz")


def test_never_overwrites_what_is_not_its_own_store(tmp_path):
    user = tmp_path / "mydata"
    user.mkdir()
    (user / "important.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not an esva store; refusing"):
        RaggedWriter(user, FIELDS, {}, "fp")
    assert (user / "important.txt").read_text() == "keep me"
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(StoreError, match="refusing"):
        RaggedWriter(tmp_path / "file.zarr", FIELDS, {}, "fp")
    RaggedWriter(tmp_path / "a.zarr", FIELDS, {"stage": "decode"}, "fp").close()
    with pytest.raises(StoreError, match="output of stage 'decode', not 'crop'"):
        RaggedWriter(tmp_path / "a.zarr", FIELDS, {"stage": "crop"}, "fp2")


def test_a_rejected_clip_leaves_no_orphan_rows(tmp_path):
    w = RaggedWriter(tmp_path / "s.zarr", FIELDS, {}, "fp")
    with pytest.raises(StoreError, match="inner shape"):
        w.add("bad", {"seq": np.zeros((4, 3), "float32"), "flat": np.zeros(3, "uint8")} | {"seq": np.zeros((4, 5), "float32")})
    assert w.rows == {"seq": 0, "flat": 0}
    w.add("ok", {"seq": np.ones((2, 3), "float32"), "flat": np.ones(3, "uint8")})
    w.close()
    r = open_store(tmp_path / "s.zarr")
    np.testing.assert_array_equal(r.read("ok")["seq"], np.ones((2, 3)))
    assert r.attrs["lengths"] == {"seq": 2, "flat": 3}
