"""Per-clip provenance, checksums and `esva verify` on the store itself (issue 12)."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from esva.provenance import clip_digest, code_digest, file_digest
from esva.store import FieldSpec, RaggedWriter, StoreError, verify
from esva.store import open as open_store
from esva.store.ragged import INDEX
from pipeline.cli import app

FIELDS = {"seq": FieldSpec("float32", inner=(3,), chunk_rows=4, shard_chunks=2),
          "flat": FieldSpec("uint8", inner=None, chunk_rows=16, shard_chunks=2)}


def _clip(i: int, n: int = 5) -> dict:
    rng = np.random.default_rng(i)
    return {"seq": rng.normal(size=(n, 3)).astype("float32"), "flat": rng.integers(0, 255, (2, 3)).astype("uint8")}


def _write(path: Path, digests: dict[str, str], make=_clip) -> RaggedWriter:
    with RaggedWriter(path, FIELDS, {"stage": "t"}, "recipe", flush_every=2, digests=digests) as w:
        for cid in w.todo():
            w.add(cid, make(int(cid[1:]) + (100 if digests[cid].endswith("new") else 0)), {"cid": cid})
    return w


def test_only_clips_whose_digest_changed_are_recomputed(tmp_path):
    s = tmp_path / "s.zarr"
    want = {f"c{i}": f"d{i}" for i in range(6)}
    w = _write(s, want)
    assert w.counts() == {"reused": 0, "recomputed": 0, "new": 6, "dropped": 0}
    # same digests: everything reused, nothing recomputed
    w = _write(s, want)
    assert w.counts() == {"reused": 6, "recomputed": 0, "new": 0, "dropped": 0} and w.todo() == []
    # c2's input changed, c5 left the manifest, c6 is new
    want2 = {**{k: v for k, v in want.items() if k != "c5"}, "c2": "d2-new", "c6": "d6"}
    w = RaggedWriter(s, FIELDS, {"stage": "t"}, "recipe", digests=want2)
    assert w.todo() == ["c2", "c6"] and w.stale == {"c2"} and w.removed == {"c5"}
    assert w.counts() == {"reused": 4, "recomputed": 0, "new": 0, "dropped": 1}  # nothing written yet
    w.close(complete=False)
    assert _write(s, want2).counts() == {"reused": 4, "recomputed": 1, "new": 1, "dropped": 0}
    r = open_store(s)
    assert sorted(r.ids()) == sorted(want2) and "c5" not in r
    np.testing.assert_array_equal(r.read("c2")["seq"], _clip(102)["seq"])  # the new content, not the old
    np.testing.assert_array_equal(r.read("c1")["seq"], _clip(1)["seq"])
    assert r.digest("c2") == "d2-new" and r.digest("c1") == "d1"
    assert sum(r.attrs["garbage_rows"].values()) > 0  # the old c2 and c5 rows, not referenced


def test_changed_recipe_rebuilds_and_counts_recomputed(tmp_path):
    s = tmp_path / "s.zarr"
    _write(s, {"c0": "a", "c1": "b"})
    w = RaggedWriter(s, FIELDS, {"stage": "t"}, "other-recipe", digests={"c0": "a2", "c1": "b2"})
    assert "recipe changed" in w.rebuilt_reason and w.todo() == ["c0", "c1"]
    for c in w.todo():
        w.add(c, _clip(5))
    assert w.counts() == {"reused": 0, "recomputed": 2, "new": 0, "dropped": 0}
    w.close()


def test_compaction_drops_garbage_and_keeps_every_live_clip(tmp_path):
    s = tmp_path / "s.zarr"
    big = FieldSpec("float32", inner=(3,), chunk_rows=4096, shard_chunks=4)
    fields = {"seq": big, "flat": FIELDS["flat"]}
    mk = lambda i: {"seq": np.full((40_000, 3), i, "float32"), "flat": np.full(4, i, "uint8")}  # noqa: E731
    with RaggedWriter(s, fields, {"stage": "t"}, "r", digests={"a": "1", "b": "1"}) as w:
        for c in w.todo():
            w.add(c, mk(ord(c)))
    with RaggedWriter(s, fields, {"stage": "t"}, "r", digests={"a": "2", "b": "2"}) as w:  # every clip changed
        for c in w.todo():
            w.add(c, mk(ord(c) + 1))
    r = open_store(s)
    assert r.attrs["lengths"]["seq"] == 80_000 and r.attrs["garbage_rows"] == {}  # compacted on close
    assert r.digest("a") == "2" and float(r.read("b")["seq"][0, 0]) == ord("b") + 1
    assert verify(s)["bad"] == {}


def _corrupt_one_chunk(store: Path, field: str) -> Path:
    shard = sorted(p for p in (store / field).rglob("*") if p.is_file() and p.name != "zarr.json")[0]
    b = bytearray(shard.read_bytes())
    b[len(b) // 3] ^= 0xFF
    shard.write_bytes(bytes(b))
    return shard


def test_a_corrupt_chunk_is_an_error_naming_the_clip_and_verify_lists_it(tmp_path):
    s = tmp_path / "s.zarr"
    _write(s, {f"c{i}": str(i) for i in range(6)})
    assert verify(s) == {"path": str(s), "clips": 6, "ok": 6, "bad": {}, "store": []}
    _corrupt_one_chunk(s, "seq")
    r = open_store(s)
    with pytest.raises(StoreError, match=r"clip 'c0' field 'seq'"):
        r.read("c0")
    rep = verify(s)
    assert "c0" in rep["bad"] and rep["ok"] < 6
    assert set(rep["bad"]) <= {"c0", "c1"}  # only clips with rows in the first shard (rows 0-7)
    res = CliRunner().invoke(app, ["verify", str(s)])
    assert res.exit_code == 1 and "c0:" in res.output and "FAILED" in res.output


def test_a_missing_shard_is_never_read_as_zeros(tmp_path):
    s = tmp_path / "s.zarr"
    _write(s, {f"c{i}": str(i) for i in range(6)})
    shards = sorted(p for p in (s / "seq").rglob("*") if p.is_file() and p.name != "zarr.json")
    shards[-1].unlink()  # zarr alone would fill these rows with zeros
    with pytest.raises(StoreError, match="fails its checksum"):
        open_store(s).read("c5")
    with pytest.raises(StoreError, match="fails its checksum"):
        open_store(s).read_all("seq")
    assert "c5" in verify(s)["bad"]


def test_a_truncated_store_and_a_lost_index_are_reported(tmp_path):
    s = tmp_path / "s.zarr"
    _write(s, {f"c{i}": str(i) for i in range(4)})
    meta = json.loads((s / "seq" / "zarr.json").read_text())
    meta["shape"][0] = 7  # the array now ends before the committed rows
    (s / "seq" / "zarr.json").write_text(json.dumps(meta))
    rep = verify(s)
    assert any("commits 20" in p for p in rep["store"]) and rep["bad"]
    with pytest.raises(StoreError, match="truncated"):
        open_store(s).read("c3")
    (s / INDEX).unlink()
    with pytest.raises(StoreError, match="index .* is missing"):
        open_store(s)
    res = CliRunner().invoke(app, ["verify", str(s), str(tmp_path / "nope.zarr")])
    assert res.exit_code == 1 and "store not found" in res.output


def test_an_interrupted_store_is_flagged_by_verify(tmp_path):
    s = tmp_path / "s.zarr"
    w = RaggedWriter(s, FIELDS, {"stage": "t"}, "r", digests={"a": "1", "b": "1"})
    w.add("a", _clip(0))
    w.commit()
    del w  # killed: never closed
    rep = verify(s)
    assert rep["ok"] == 1 and any("incomplete" in p for p in rep["store"])
    assert open_store(s).ids() == ["a"]


def test_a_store_of_the_old_format_is_rebuilt_not_mixed(tmp_path):
    s = tmp_path / "s.zarr"
    _write(s, {"c0": "a"})
    zj = json.loads((s / "zarr.json").read_text())
    zj["attributes"]["format"] = "esva-ragged/1"
    (s / "zarr.json").write_text(json.dumps(zj))
    with pytest.raises(StoreError, match="older store format"):
        open_store(s)
    w = RaggedWriter(s, FIELDS, {"stage": "t"}, "recipe", digests={"c0": "a"})
    assert "older store format" in w.rebuilt_reason and w.todo() == ["c0"]
    w.close()


def test_file_digest_sees_a_replaced_file_in_both_modes(tmp_path):
    f = tmp_path / "v.mp4"
    f.write_bytes(b"a" * 5000)
    full, quick = file_digest(f), file_digest(f, "quick")
    f.write_bytes(b"b" * 5000)
    assert file_digest(f) != full and file_digest(f, "quick") != quick
    with pytest.raises(ValueError, match="'fast'"):
        file_digest(f, "fast")


def test_clip_and_code_digests_are_stable_and_sensitive():
    assert clip_digest(input="x", recipe="r") == clip_digest(recipe="r", input="x") != clip_digest(input="y", recipe="r")
    assert code_digest(["esva.provenance"]) == code_digest(("esva.provenance",))
    assert code_digest(["esva.provenance"]) != code_digest(["esva.losses"])
