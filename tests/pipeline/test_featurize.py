"""`esva featurize` (issue 16): raw videos to the decoded, face and feature stores in one pass, with decode and
crop in worker processes beside the encoders. Its stores must be those of the stage commands, so the stages
(and `dvc repro`) find every clip done afterwards, and a rerun or a bad video must behave as in the stages."""

import json
import shutil

import numpy as np
import pytest

from esva.config import CropConfig, DecodeConfig, IngestConfig, Params, Source
from esva.store import open as open_store
from pipeline.stages import crop, decode, extract, featurize, ingest

ENCODERS = ["hubert", "mae"]


def _params(**decode_kw):
    return Params().model_copy(update={"decode": DecodeConfig(workers=1, **decode_kw),
                                       "crop": CropConfig(size=64, workers=1)})


def _stages(d, p):
    m = d / "metrics"
    decode.run(p.decode, d / "m.parquet", d / "decoded.zarr", m)
    crop.run(p.crop, d / "decoded.zarr", d / "faces.zarr", m)
    for e in ENCODERS:
        extract.run(e, getattr(p.features, e), d / "features" / f"{e}.zarr", decoded=d / "decoded.zarr",
                    faces=d / "faces.zarr", models_dir=d / "models", metrics_dir=m)
    return m


def _featurize(d, p, workers=2):
    return featurize.run(p, ENCODERS, manifest=d / "m.parquet", decoded=d / "decoded.zarr", faces=d / "faces.zarr",
                         features=d / "features", models_dir=d / "models", metrics_dir=d / "metrics", workers=workers)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, synth_corpus):
    """The same six clips through the three stage commands (a) and through featurize (b)."""
    root = tmp_path_factory.mktemp("featurize")
    dirs = {}
    for tag in ("a", "b"):
        d = root / tag
        d.mkdir()
        ingest.run(IngestConfig(), (Source(name="synthetic", adapter="synthetic", root=str(synth_corpus)),),
                   d / "m.parquet", None)
        dirs[tag] = d
    p = _params()
    _stages(dirs["a"], p)
    result = _featurize(dirs["b"], p)
    return dirs["a"], dirs["b"], p, result


def test_featurize_writes_the_stores_of_the_stages(pair):
    a, b, _, result = pair
    assert result["clips_in"] == 6 and result["clips_processed"] == 6
    for store in ("decoded.zarr", "faces.zarr"):  # decode and crop are exact per clip
        sa, sb = open_store(a / store), open_store(b / store)
        assert sorted(sa.ids()) == sorted(sb.ids()) and len(sa.ids()) == 6
        assert sa.attrs["fingerprint"] == sb.attrs["fingerprint"]
        for c in sa.ids():
            assert sa.digest(c) == sb.digest(c)
            assert sa.meta(c) == sb.meta(c)
            for f, x in sa.read(c).items():
                np.testing.assert_array_equal(sb.read(c)[f], x, err_msg=f"{store} {c} {f}")
    for e in ENCODERS:  # features: the same recipe and digests, equal values up to float rounding
        sa, sb = open_store(a / "features" / f"{e}.zarr"), open_store(b / "features" / f"{e}.zarr")
        assert sa.attrs["fingerprint"] == sb.attrs["fingerprint"]
        assert sorted(sa.ids()) == sorted(sb.ids()) and len(sa.ids()) == 6
        for c in sa.ids():
            assert sa.digest(c) == sb.digest(c)
            xa, xb = sa.read(c), sb.read(c)
            assert xa.keys() == xb.keys()
            for f in xa:
                assert xa[f].shape == xb[f].shape, (e, c, f)
                np.testing.assert_allclose(xb[f].astype(np.float32), xa[f].astype(np.float32), atol=2e-2, rtol=1e-2)
    stages = result["stages"]
    assert stages["decode"]["clips"]["new"] == 6 and stages["crop"]["clips"]["new"] == 6
    assert stages["extract_hubert"]["clips"]["new"] == 6 and stages["extract_mae"]["done"] == 6
    report = json.loads((b / "metrics" / "featurize.json").read_text())
    assert report["worker_seconds"] > 0 and report["encoder_forward_seconds"] > 0 and report["done"] == 6
    assert report["stages"]["extract_mae"]["pipeline"]["clips"] == 6


def test_the_stages_after_featurize_recompute_nothing(pair, tmp_path):
    _, b, p, _ = pair
    d = tmp_path / "b"
    shutil.copytree(b, d)
    m = _stages(d, p)
    for stage in ("decode", "crop", "extract_hubert", "extract_mae"):
        rep = json.loads((m / f"{stage}.json").read_text())
        assert rep["clips"] == {"reused": 6, "recomputed": 0, "new": 0, "dropped": 0}, stage
    again = _featurize(d, p, workers=1)  # and featurize itself: nothing to decode
    assert again["clips_processed"] == 0
    assert again["stages"]["extract_mae"]["clips"]["reused"] == 6


def test_a_bad_video_is_a_recorded_skip_and_a_lost_store_is_rebuilt(tmp_path, synth_corpus):
    raw = tmp_path / "raw"
    shutil.copytree(synth_corpus, raw)
    videos = sorted(raw.rglob("*.mp4"))
    videos[0].write_bytes(b"not a video at all")
    ingest.run(IngestConfig(), (Source(name="synthetic", adapter="synthetic", root=str(raw)),), tmp_path / "m.parquet",
               None)
    p = _params(max_skip_ratio=0.5)
    first = _featurize(tmp_path, p)
    dec = first["stages"]["decode"]
    assert dec["skipped"] == 1 and dec["done"] == 5
    bad = f"synthetic.{videos[0].stem}"
    assert bad not in open_store(tmp_path / "features" / "hubert.zarr").ids()
    assert first["stages"]["extract_hubert"]["done"] == 5 and first["stages"]["extract_mae"]["done"] == 5
    # the feature store of one encoder is lost: the rerun decodes its clips again and rebuilds it alone,
    # and the bad video is reported again from its record, not retried
    shutil.rmtree(tmp_path / "features" / "mae.zarr")
    second = _featurize(tmp_path, p, workers=1)
    assert second["clips_processed"] == 5
    assert second["stages"]["decode"]["skipped"] == 1 and second["stages"]["decode"]["clips"]["reused"] == 5
    assert second["stages"]["extract_hubert"]["clips"]["reused"] == 5
    assert second["stages"]["extract_mae"]["clips"]["new"] == 5


def test_the_skip_ratio_stops_the_run_after_the_stores_are_written(tmp_path, synth_corpus):
    raw = tmp_path / "raw"
    shutil.copytree(synth_corpus, raw)
    videos = sorted(raw.rglob("*.mp4"))
    for v in videos[:2]:
        v.write_bytes(b"")
    ingest.run(IngestConfig(), (Source(name="synthetic", adapter="synthetic", root=str(raw)),), tmp_path / "m.parquet",
               None)
    from pipeline.common import StageFailed

    with pytest.raises(StageFailed, match="decode: 2 of 6 clips skipped"):
        _featurize(tmp_path, _params(), workers=1)
    assert len(open_store(tmp_path / "features" / "hubert.zarr").ids()) == 4
    assert json.loads((tmp_path / "metrics" / "featurize.json").read_text())["stages"]["decode"]["skipped"] == 2


def test_featurize_names_a_wrong_encoder():
    with pytest.raises(ValueError, match="text"):
        featurize.run(Params(), ["text"])


def _against_fp32_stages(pair, tmp_path, device: str, dtype: str) -> dict:
    """featurize with the encoders on `device` in `dtype` against the fp32 CPU stages: the media stores exact (the
    workers decode and crop on the CPU), the features within bf16's reach of their fp32 values."""
    a, _, p, _ = pair
    d = tmp_path / device
    d.mkdir()
    shutil.copy(a / "m.parquet", d / "m.parquet")
    feats = p.features.model_copy(update={e: getattr(p.features, e).model_copy(update={"device": device, "dtype": dtype})
                                          for e in ENCODERS})
    res = _featurize(d, p.model_copy(update={"features": feats}))
    for e in ENCODERS:
        sa, sb = open_store(a / "features" / f"{e}.zarr"), open_store(d / "features" / f"{e}.zarr")
        assert sorted(sa.ids()) == sorted(sb.ids()) and len(sa.ids()) == 6
        for c in sa.ids():
            x, y = (s.read(c)["last"].astype(np.float32) for s in (sa, sb))
            assert x.shape == y.shape, (e, c)
            cos = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1) + 1e-8)
            assert cos.min() >= 0.99, (e, c, float(cos.min()))
    fa, fb = open_store(a / "faces.zarr"), open_store(d / "faces.zarr")
    for c in fa.ids():
        np.testing.assert_array_equal(fb.read(c)["faces"], fa.read(c)["faces"])
    return res


def test_featurize_in_bf16_matches_the_fp32_stages(pair, tmp_path):
    res = _against_fp32_stages(pair, tmp_path, "cpu", "bf16")  # forced: the bf16 path runs on every machine
    for e in ENCODERS:
        assert res["stages"][f"extract_{e}"]["compute_dtype"] == "bfloat16"


@pytest.mark.gpu
def test_featurize_on_a_cuda_device_matches_the_cpu_stages(pair, tmp_path):
    """The encoders on `cuda` (auto precision: bf16 on a recent GPU) while the workers decode on the CPU."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    res = _against_fp32_stages(pair, tmp_path, "cuda", "auto")
    assert res["stages"]["extract_hubert"]["precision"]["device"].startswith("cuda")
    assert res["gpu_utilisation"]["samples"] > 0 or "reason" in res["gpu_utilisation"]


def test_a_dead_worker_stops_the_run_without_recording_a_skip(tmp_path, synth_corpus, monkeypatch):
    """A worker process that dies (killed, out of memory) is not the video's fault: no skip is recorded that a
    rerun would trust; the run stops naming the video, and the rerun finishes every clip."""
    from concurrent.futures.process import BrokenProcessPool

    from esva.media.worker import WorkerFailed

    ingest.run(IngestConfig(), (Source(name="synthetic", adapter="synthetic", root=str(synth_corpus)),),
               tmp_path / "m.parquet", None)

    def dies_at_the_third(fn, items, workers, executor=None):
        for i, item in enumerate(items):
            yield item, (BrokenProcessPool("a child process terminated abruptly") if i == 2 else fn(item))

    monkeypatch.setattr(featurize, "ordered_map", dies_at_the_third)
    with pytest.raises(WorkerFailed, match=r"worker process decoding .*\.mp4 failed \(BrokenProcessPool"):
        _featurize(tmp_path, _params(), workers=1)
    monkeypatch.undo()
    dec = open_store(tmp_path / "decoded.zarr")
    assert not dec.attrs.get("skip_records") and len(dec.ids()) == 2
    again = _featurize(tmp_path, _params(), workers=1)
    assert again["stages"]["decode"]["skipped"] == 0 and again["done"] == 6
    assert again["stages"]["decode"]["clips"] == {"reused": 2, "recomputed": 0, "new": 4, "dropped": 0}
