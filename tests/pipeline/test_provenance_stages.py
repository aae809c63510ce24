"""Per-clip provenance through the stages: a replaced input is recomputed alone, with its downstream, and
never served from the old store (issue 12)."""

import json
import shutil

import numpy as np
import pytest

from esva.config import CropConfig, DecodeConfig, IngestConfig, Params, Source
from esva.store import open as open_store
from pipeline.stages import crop, decode, extract, ingest


def _report(metrics, stage):
    return json.loads((metrics / f"{stage}.json").read_text())


@pytest.fixture(scope="module")
def chain(tmp_path_factory, synth_corpus):
    d = tmp_path_factory.mktemp("prov")
    raw = d / "raw"
    shutil.copytree(synth_corpus, raw)
    return d, raw


def _run(d, raw, tag, hubert=None):
    m = d / f"metrics_{tag}"
    ingest.run(IngestConfig(), (Source(name="synthetic", adapter="synthetic", root=str(raw)),), d / "m.parquet", m)
    decode.run(DecodeConfig(workers=1), d / "m.parquet", d / "decoded.zarr", m)
    crop.run(CropConfig(size=64, workers=1), d / "decoded.zarr", d / "faces.zarr", m)
    feats = Params().features
    kw = dict(decoded=d / "decoded.zarr", faces=d / "faces.zarr", models_dir=d / "models", metrics_dir=m)
    extract.run("hubert", hubert or feats.hubert, d / "hubert.zarr", **kw)
    extract.run("mae", feats.mae, d / "mae.zarr", **kw)
    return m


def test_a_replaced_video_is_recomputed_alone_with_its_downstream(chain):
    d, raw = chain
    m = _run(d, raw, "first")
    assert _report(m, "decode")["clips"] == {"reused": 0, "recomputed": 0, "new": 6, "dropped": 0}
    dec0 = open_store(d / "decoded.zarr")
    ids = dec0.ids()
    victim, donor = ids[0], ids[3]
    old = {"frames": dec0.read(victim)["frames"], "hubert": open_store(d / "hubert.zarr").read(victim)["last"],
           "mae": open_store(d / "mae.zarr").read(victim)["last"]}
    keep = {c: open_store(d / "mae.zarr").read(c)["last"] for c in ids if c != victim}

    # nothing changed: every clip reused at every stage
    m = _run(d, raw, "same")
    for stage in ("decode", "crop", "extract_hubert", "extract_mae"):
        assert _report(m, stage)["clips"] == {"reused": 6, "recomputed": 0, "new": 0, "dropped": 0}, stage

    # replace one video by another under the same name (what a user does when re-encoding a clip)
    videos = {f"synthetic.{p.stem}": p for p in raw.rglob("*.mp4")}  # clip ids are <source>.<name>
    shutil.copyfile(videos[donor], videos[victim])
    m = _run(d, raw, "replaced")
    for stage in ("decode", "crop", "extract_hubert", "extract_mae"):
        assert _report(m, stage)["clips"] == {"reused": 5, "recomputed": 1, "new": 0, "dropped": 0}, stage
    dec, mae, hub = open_store(d / "decoded.zarr"), open_store(d / "mae.zarr"), open_store(d / "hubert.zarr")
    # the victim now holds the donor's content, at every stage (decode and crop are exact per clip)
    np.testing.assert_array_equal(dec.read(victim)["frames"], dec.read(donor)["frames"])
    assert not np.array_equal(dec.read(victim)["frames"], old["frames"]) or old["frames"].shape != dec.read(victim)["frames"].shape
    np.testing.assert_array_equal(open_store(d / "faces.zarr").read(victim)["faces"],
                                  open_store(d / "faces.zarr").read(donor)["faces"])
    np.testing.assert_allclose(mae.read(victim)["last"].astype(np.float32), mae.read(donor)["last"].astype(np.float32),
                               atol=2e-2)  # another batch, the same input: equal up to fp16 rounding of batch numerics
    assert hub.read(victim)["last"].shape == hub.read(donor)["last"].shape != old["hubert"].shape or \
        not np.allclose(hub.read(victim)["last"], old["hubert"])
    for c, x in keep.items():  # the others untouched, bit for bit
        np.testing.assert_array_equal(mae.read(c)["last"], x)
    assert dec.digest(victim) != dec0.digest(victim)


def test_a_changed_encoder_recomputes_that_store_and_nothing_else(chain):
    d, raw = chain
    _run(d, raw, "base")
    before = open_store(d / "hubert.zarr").attrs["weights_digest"]
    seed = Params().features.hubert.model_copy(update={"seed": 7})  # other tiny weights
    m = _run(d, raw, "seed", hubert=seed)
    assert _report(m, "extract_hubert")["clips"] == {"reused": 0, "recomputed": 6, "new": 0, "dropped": 0}
    for stage in ("decode", "crop", "extract_mae"):
        assert _report(m, stage)["clips"]["reused"] == 6, stage
    assert open_store(d / "hubert.zarr").attrs["weights_digest"] != before  # the digest saw the new weights


def test_a_failed_clip_is_not_retried_while_its_input_is_unchanged(chain, monkeypatch):
    d, raw = chain
    _run(d, raw, "warm")
    dec = open_store(d / "decoded.zarr")
    ids = dec.ids()
    bad = next(p for p in raw.rglob("*.mp4") if f"synthetic.{p.stem}" == ids[1])
    bad.write_bytes(b"not a video")
    m = d / "m_bad"
    cfg = DecodeConfig(workers=1, max_skip_ratio=0.5)
    decode.run(cfg, d / "m.parquet", d / "decoded.zarr", m)
    rep = _report(m, "decode")
    assert rep["skipped"] == 1 and ids[1] not in open_store(d / "decoded.zarr")  # the old clip is not served
    assert rep["clips"] == {"reused": 5, "recomputed": 0, "new": 0, "dropped": 0}
    calls = []
    import pipeline.stages.decode as dmod

    real = dmod.decode_clip
    monkeypatch.setattr(dmod, "decode_clip", lambda *a, **k: calls.append(a) or real(*a, **k))
    decode.run(cfg, d / "m.parquet", d / "decoded.zarr", m)
    assert calls == [] and _report(m, "decode")["skipped"] == 1  # reported again from its record, not retried
    assert _report(m, "decode")["skipped_by_reason"] == rep["skipped_by_reason"]
