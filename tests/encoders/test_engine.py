"""The extraction engine and stage: bucketing, resumption, rebuilds, bad input, store round trip."""

import numpy as np
import pytest

from esva.config import HubertFeatures
from esva.encoders import load_encoder
from esva.encoders.engine import FeatureError, feature_fields, plan_batches, run_extraction
from esva.store import RaggedWriter
from esva.store import open as open_store
from pipeline.stages import extract


def test_length_bucketing_respects_the_budget():
    costs = {"a": 10, "b": 3, "c": 9, "d": 4, "e": 30}
    batches = plan_batches(costs, budget=20, max_padding=1.0)
    assert batches[0] == ["e"]  # over budget: alone
    assert batches[1] == ["a", "c"]  # 2 x 10 <= 20
    assert batches[2] == ["d", "b"]
    for b in batches:
        assert len(b) == 1 or max(costs[c] for c in b) * len(b) <= 20
    assert all(len(b) == 1 for b in plan_batches(costs, budget=100, single=True))
    # padding cap: 4 would pad 3 by 25% > 10%
    assert plan_batches(costs, budget=100, max_padding=0.1) == [["e"], ["a", "c"], ["d"], ["b"]]


@pytest.fixture(scope="module")
def hubert(tmp_path_factory):
    enc, _ = load_encoder("hubert", HubertFeatures(dtype="fp32"), tmp_path_factory.mktemp("m"))
    enc.budget = 16000 * 4
    return enc


def _audio_set(n=7, seed=0):
    rng = np.random.default_rng(seed)
    return {f"c{i}": rng.normal(0, 0.1, int(rng.integers(8000, 40000))).astype(np.float32) for i in range(n)}


def _write(path, enc, clips, load=None, policy="pad", flush_every=2):
    with RaggedWriter(path, feature_fields(enc.layers, enc.dim), {}, "fp", flush_every=flush_every) as w:
        return run_extraction(enc, {c: len(a) for c, a in clips.items()}, load or clips.__getitem__, w, policy)


def test_store_roundtrip_frame_and_utterance(hubert, tmp_path):
    clips = _audio_set()
    done, skips = _write(tmp_path / "f.zarr", hubert, clips)
    assert done == 7 and skips == []
    store = open_store(tmp_path / "f.zarr")
    for cid, audio in clips.items():
        got = store.read(cid)
        seq, utt = got["last"], got["last_utt"]
        assert seq.dtype == np.float16 and seq.shape[1] == 64 and utt.shape == (1, 64)
        alone = hubert.encode(hubert.collate([cid], [audio]))
        ref = alone["last"][0].numpy()
        assert seq.shape[0] == ref.shape[0] == store.meta(cid)["frames"]
        np.testing.assert_allclose(seq.astype(np.float32), ref, atol=5e-3, rtol=1e-2)
        np.testing.assert_allclose(utt[0], ref.mean(0), atol=1e-4, rtol=1e-3)  # padding never leaks


def test_interrupted_extraction_resumes_to_the_same_features(hubert, tmp_path):
    clips = _audio_set(seed=1)
    _write(tmp_path / "ref.zarr", hubert, clips)
    calls = {"n": 0}

    def flaky(cid):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # the user pressed Ctrl-C mid-run
        return clips[cid]

    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "f.zarr", hubert, clips, load=flaky, flush_every=1)
    partial = open_store(tmp_path / "f.zarr").ids()
    assert 0 < len(partial) < 7
    w = RaggedWriter(tmp_path / "f.zarr", feature_fields(hubert.layers, hubert.dim), {}, "fp")
    todo = {c: a for c, a in clips.items() if c not in w.done_ids()}
    with w:
        run_extraction(hubert, {c: len(a) for c, a in todo.items()}, clips.__getitem__, w, "pad")
    ref, got = open_store(tmp_path / "ref.zarr"), open_store(tmp_path / "f.zarr")
    assert sorted(got.ids()) == sorted(clips)
    for cid in clips:
        np.testing.assert_array_equal(got.read(cid)["last"], ref.read(cid)["last"])


def test_short_input_policy(hubert, tmp_path):
    clips = {"ok": np.ones(4000, np.float32) * 0.1, "tiny": np.ones(100, np.float32), "empty": np.zeros(0, np.float32)}
    done, skips = _write(tmp_path / "p.zarr", hubert, clips, policy="pad")
    assert done == 2 and [(s.clip_id, s.reason) for s in skips] == [("empty", "empty_input")]
    assert open_store(tmp_path / "p.zarr").meta("tiny")["padded_from"] == 100
    done, skips = _write(tmp_path / "s.zarr", hubert, clips, policy="skip")
    assert done == 1 and {s.reason for s in skips} == {"empty_input", "too_short_for_encoder"}


def test_non_finite_features_name_the_clip(hubert, tmp_path, monkeypatch):
    clips = _audio_set(3, seed=2)
    real = hubert.encode

    def poisoned(batch):
        out = {k: v.clone() for k, v in real(batch).items()}
        if "c1" in batch.clip_ids:
            out["last"][batch.clip_ids.index("c1"), 0, 0] = float("nan")
        return out

    monkeypatch.setattr(hubert, "encode", poisoned)
    with pytest.raises(FeatureError, match="clip 'c1': 1 non-finite"):
        _write(tmp_path / "n.zarr", hubert, clips)


@pytest.fixture(scope="module")
def corpus_stores(tmp_path_factory, synth_corpus):
    from esva.config import CropConfig, DecodeConfig, IngestConfig, Source
    from pipeline.stages import crop, decode, ingest

    d = tmp_path_factory.mktemp("stores")
    ingest.run(IngestConfig(), (Source(name="synthetic", adapter="synthetic", root=str(synth_corpus)),),
               d / "m.parquet", None)
    decode.run(DecodeConfig(), d / "m.parquet", d / "decoded.zarr", None)
    crop.run(CropConfig(size=64), d / "decoded.zarr", d / "faces.zarr", None)
    return d


@pytest.mark.parametrize("name", ["hubert", "mae", "videomae", "eva", "text"])
def test_stage_writes_a_store_with_provenance(corpus_stores, tmp_path, name):
    from esva.config import Params

    cfg = getattr(Params().features, name)
    d = corpus_stores
    rep = extract.run(name, cfg, tmp_path / f"{name}.zarr", decoded=d / "decoded.zarr", faces=d / "faces.zarr",
                      manifest=d / "m.parquet", models_dir=tmp_path / "models", metrics_dir=tmp_path / "metrics")
    assert rep.done == 6 and rep.corpus == "synthetic"
    store = open_store(tmp_path / f"{name}.zarr")
    a = store.attrs
    assert a["encoder"] == name and a["dtype"] == "float16"
    assert a["layers"] == (["last", "cls", "patches"] if name == "eva" else ["last"])
    if name == "eva":  # Emotion-LLaMA's tokens: every patch of the one image, and its CLS
        x = store.read(store.ids()[0])
        assert x["patches"].shape == (a["fixed_lengths"]["patches"], a["dim"]) and x["cls"].shape == (1, a["dim"])
    assert {"checkpoint", "params_hash", "code_version", "frame_rate", "dim"} <= set(a)
    assert (tmp_path / "models" / name / "source.json").exists()
    x = store.read(store.ids()[0])
    assert x["last"].shape[1] == a["dim"] and np.isfinite(x["last"]).all()
    if name == "hubert":
        assert a["frame_rate"] == 50.0
    if name in ("mae", "videomae"):
        assert a["frame_rate"] == (25.0 if name == "mae" else 12.5)
    # sharded: a handful of files per field (sequence + utterance), not one per clip
    assert sum(1 for p in (tmp_path / f"{name}.zarr").rglob("*") if p.is_file()) <= 6 + 6 * len(a["layers"])


def test_stage_resumes_and_a_changed_config_rebuilds(corpus_stores, tmp_path):
    d = corpus_stores
    kw = dict(decoded=d / "decoded.zarr", models_dir=tmp_path / "models", metrics_dir=None)
    extract.run("hubert", HubertFeatures(), tmp_path / "h.zarr", **kw)
    assert extract.run("hubert", HubertFeatures(batch_budget=32000), tmp_path / "h.zarr", **kw).resumed == 6
    rep = extract.run("hubert", HubertFeatures(layers="last4sum"), tmp_path / "h.zarr", **kw)
    assert rep.resumed == 0 and rep.done == 6
    assert set(open_store(tmp_path / "h.zarr").fields) == {"last4sum", "last4sum_utt"}


def test_bad_checkpoint_fails_before_any_clip(corpus_stores, tmp_path):
    from esva.encoders.base import CheckpointError

    with pytest.raises(CheckpointError, match="checkpoint not found"):
        extract.run("hubert", HubertFeatures(checkpoint=str(tmp_path / "missing")), tmp_path / "h.zarr",
                    decoded=corpus_stores / "decoded.zarr", models_dir=tmp_path / "models", metrics_dir=None)
    assert not (tmp_path / "h.zarr").exists()


def test_pipelined_engine_equals_the_sequential_loop(hubert, tmp_path):
    """The loader/encoder/writer pipeline writes the same batches, bit for bit, as the loop in one thread."""
    from esva.encoders.engine import Timings

    clips = _audio_set(9, seed=5)
    stores = {}
    for prefetch in (0, 1, 3):
        tm = Timings()
        path = tmp_path / f"p{prefetch}.zarr"
        with RaggedWriter(path, feature_fields(hubert.layers, hubert.dim), {}, "fp", flush_every=2) as w:
            done, _ = run_extraction(hubert, {c: len(a) for c, a in clips.items()}, clips.__getitem__, w, "pad",
                                     prefetch=prefetch, timings=tm)
        assert done == 9 and tm.clips == 9 and tm.batches >= 3
        assert tm.forward_s > 0 and tm.load_s > 0 and tm.write_s > 0 and tm.wall_s > 0
        assert tm.units == sum(len(a) for a in clips.values()) <= tm.padded_units
        # the largest padded batch: at least the mean batch, and (several batches) less than all of them
        assert tm.padded_units / tm.batches <= tm.largest_batch_units < tm.padded_units
        stores[prefetch] = open_store(path)
    for cid in clips:
        ref = stores[0].read(cid)
        for prefetch in (1, 3):
            got = stores[prefetch].read(cid)
            assert got.keys() == ref.keys()
            for k in ref:
                np.testing.assert_array_equal(got[k], ref[k])
            assert stores[prefetch].meta(cid) == stores[0].meta(cid)


def test_pipelined_engine_stops_every_stage_on_a_writer_error(hubert, tmp_path, monkeypatch):
    """A non-finite feature found by the writer thread stops the loader and the encoder, is raised in the
    calling thread, and the batches written before it stay committed."""
    import threading

    clips = _audio_set(8, seed=6)
    real = hubert.encode
    seen = []

    def poisoned(batch):
        seen.append(list(batch.clip_ids))
        out = {k: v.clone() for k, v in real(batch).items()}
        if len(seen) == 2:
            out["last"][0, 0, 0] = float("nan")
        return out

    monkeypatch.setattr(hubert, "encode", poisoned)
    with pytest.raises(FeatureError) as err:
        with RaggedWriter(tmp_path / "e.zarr", feature_fields(hubert.layers, hubert.dim), {}, "fp") as w:
            run_extraction(hubert, {c: len(a) for c, a in clips.items()}, clips.__getitem__, w, "pad", prefetch=2)
    assert repr(seen[1][0]) in str(err.value) and "NaN" in str(err.value)
    assert not [t for t in threading.enumerate() if t.name.startswith("esva-extract")]
    kept = set(open_store(tmp_path / "e.zarr").ids())
    assert set(seen[0]) <= kept and seen[1][0] not in kept


def test_vision_encoders_share_one_pass_over_the_faces(corpus_stores, tmp_path, monkeypatch):
    """`esva extract mae videomae eva`: each clip's faces are read once for the three encoders, and each store
    equals the one its own run writes (same clips, digests and meta; features up to float rounding)."""
    from esva.config import Params
    from esva.store.ragged import RaggedReader

    d, names = corpus_stores, ["mae", "videomae", "eva"]
    cfgs = {n: getattr(Params().features, n) for n in names}
    for n in names:
        extract.run(n, cfgs[n], tmp_path / "own" / f"{n}.zarr", faces=d / "faces.zarr", models_dir=tmp_path / "models",
                    metrics_dir=None)
    reads = []
    real = RaggedReader.read

    def counted(self, clip_id, fields=None):
        if fields is not None and "faces" in fields:
            reads.append(clip_id)
        return real(self, clip_id, fields)

    monkeypatch.setattr(RaggedReader, "read", counted)
    reps = extract.run_shared(names, cfgs, {n: tmp_path / "shared" / f"{n}.zarr" for n in names}, faces=d / "faces.zarr",
                              models_dir=tmp_path / "models", metrics_dir=tmp_path / "metrics")
    monkeypatch.setattr(RaggedReader, "read", real)
    assert sorted(reads) == sorted(open_store(d / "faces.zarr").ids())  # once each, for all three
    assert [r.done for r in reps] == [6, 6, 6]
    for n in names:
        assert (tmp_path / "metrics" / f"extract_{n}.json").exists()
        own, shared = open_store(tmp_path / "own" / f"{n}.zarr"), open_store(tmp_path / "shared" / f"{n}.zarr")
        assert sorted(own.ids()) == sorted(shared.ids()) and own.attrs["fingerprint"] == shared.attrs["fingerprint"]
        for cid in own.ids():
            assert own.digest(cid) == shared.digest(cid) and own.meta(cid) == shared.meta(cid)
            x, y = own.read(cid), shared.read(cid)
            for k in x:
                np.testing.assert_allclose(x[k].astype(np.float32), y[k].astype(np.float32), atol=2e-2, rtol=0)


def test_extract_command_takes_several_encoders(corpus_stores, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipeline.cli import app

    d = corpus_stores
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["extract", "mae", "eva", "--faces", str(d / "faces.zarr"), "--models",
                                   str(tmp_path / "models"), "--metrics", str(tmp_path / "metrics")])
    assert res.exit_code == 0, res.output
    for n in ("mae", "eva"):
        assert len(open_store(tmp_path / "data" / "features" / f"{n}.zarr")) == 6
    res = CliRunner().invoke(app, ["extract", "mae", "eva", "--out", "x.zarr"])
    assert res.exit_code == 2 and "take one encoder" in res.output
