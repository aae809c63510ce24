"""Every kind of bad file ends as a recorded skip with a clear reason or is processed correctly,
while the rest of the run completes and nothing already done is lost."""


import numpy as np
import pytest

from esva.config import DecodeConfig, IngestConfig, Source
from esva.store import open as open_store
from pipeline.common import StageFailed
from pipeline.stages import decode, ingest
from tests.conftest import ffmpeg


def _tone(seconds, rate=16000, layout="mono"):
    return ["-f", "lavfi", "-i", f"sine=f=220:d={seconds}:sample_rate={rate}", "-af", f"aformat=channel_layouts={layout}"]


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    v = lambda s, size="64x48", r=25: ["-f", "lavfi", "-i", f"testsrc=s={size}:r={r}:d={s}"]  # noqa: E731
    enc = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest"]
    ffmpeg(*v(2), *_tone(2), *enc, str(root / "good.mp4"))
    ffmpeg(*v(2), *_tone(2), *enc, str(root / "name with spaces ünï.mp4"))
    (root / "zero.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n" * 50)
    full = (root / "good.mp4").read_bytes()  # moov at the end: a cut file has no index
    (root / "truncated.mp4").write_bytes(full[: len(full) // 2])
    ffmpeg(*v(2), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(root / "noaudio.mp4"))
    ffmpeg(*_tone(2), "-c:a", "aac", str(root / "audioonly.mp4"))
    ffmpeg(*v(0.3), *_tone(0.3), *enc, str(root / "short.mp4"))
    ffmpeg(*v(60, "64x48"), *_tone(60), *enc, str(root / "oneminute.mp4"))
    ffmpeg(*v(2, "318x179"), *_tone(2), "-c:v", "libx264", "-pix_fmt", "yuv444p", "-c:a", "aac", "-shortest",
           str(root / "odd.mp4"))
    ffmpeg("-display_rotation", "90", "-i", str(root / "odd.mp4"), "-c", "copy", str(root / "odd_rotated.mp4"))
    ffmpeg(*v(2, r=50), *_tone(2), "-vf", "setpts='if(lt(N,40),N*0.02/TB,(0.8+(N-40)*0.06)/TB)'",
           "-fps_mode", "vfr", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(root / "vfr.mkv"))
    ffmpeg(*v(2), "-f", "lavfi", "-i", "sine=f=220:d=2:sample_rate=48000", "-af", "aformat=channel_layouts=5.1",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(root / "multich48k.mp4"))
    return root


EXPECTED_SKIPS = {
    "zero": "empty_file", "text": "unreadable", "truncated": "unreadable", "noaudio": "no_audio_stream",
    "audioonly": "no_video_stream", "short": "too_short",
}


@pytest.fixture(scope="module")
def decoded(bad_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("dec")
    ingest.run(IngestConfig(), (Source(name="bad", adapter="folder", root=str(bad_folder)),), out / "m.parquet",
               out / "metrics")
    cfg = DecodeConfig(max_skip_ratio=0.6, workers=2)
    rep = decode.run(cfg, out / "m.parquet", out / "decoded.zarr", out / "metrics")
    return rep, open_store(out / "decoded.zarr"), out


def test_bad_files_are_skipped_with_reasons(decoded):
    rep, store, _ = decoded
    got = {s["clip_id"].removeprefix("bad."): s["reason"] for s in rep.skips}  # ids are <source>.<name>
    assert got == EXPECTED_SKIPS
    assert rep.clips_in == 13 and rep.done == 7
    for s in rep.skips:
        assert s["path"].endswith(".mp4") and s["detail"] or s["reason"] == "empty_file"


def test_good_files_are_decoded_correctly(decoded):
    _, store, _ = decoded
    ids = set(store.ids())
    assert {"bad." + n for n in ("good", "oneminute", "odd", "odd_rotated", "vfr", "multich48k")} <= ids
    good = store.read("bad.good")
    assert good["audio"].dtype == np.float32 and good["frames"].dtype == np.uint8
    assert abs(len(good["audio"]) - 32000) < 1200 and len(good["frames"]) == 50
    assert good["frames"].shape[1:] == (48, 64, 3)
    assert store.meta("bad.good")["fps"] == 25.0 and store.attrs["sample_rate"] == 16000


def test_odd_rotated_vfr_multichannel_long_and_unicode(decoded):
    _, store, _ = decoded
    assert store.read("bad.odd")["frames"].shape[1:] == (180, 318, 3)
    assert store.read("bad.odd_rotated")["frames"].shape[1:] == (318, 180, 3)  # upright after rotation
    vfr = store.meta("bad.vfr")
    assert vfr["n_frames"] == pytest.approx(25 * vfr["src_duration_s"], abs=3)
    mc = store.read("bad.multich48k")["audio"]
    assert abs(len(mc) - 32000) < 1200 and np.abs(mc).max() > 0.05  # downmixed, resampled, not silent
    assert store.meta("bad.multich48k")["src_sample_rate"] == 48000
    assert store.meta("bad.oneminute")["n_frames"] == 1500
    uni = [c for c in store.ids() if c.startswith("bad.name_with_spaces")]
    assert len(uni) == 1 and uni[0].isascii()


def test_report_file_lists_skips(decoded):
    import csv
    import json

    _, _, out = decoded
    rep = json.loads((out / "metrics" / "decode.json").read_text())
    assert rep["skipped_by_reason"] == {"empty_file": 1, "no_audio_stream": 1, "no_video_stream": 1,
                                        "too_short": 1, "unreadable": 2}
    rows = list(csv.DictReader((out / "metrics" / "skips" / "decode.csv").open()))
    assert {r["clip_id"].removeprefix("bad.") for r in rows} == set(EXPECTED_SKIPS)


def test_too_many_skips_fail_naming_files_and_keep_work(decoded, tmp_path):
    _, _, out = decoded
    cfg = DecodeConfig(max_skip_ratio=0.1)
    with pytest.raises(StageFailed, match=r"6 of 13 clips skipped.*zero\.mp4 \(empty_file\)"):
        decode.run(cfg, out / "m.parquet", tmp_path / "d.zarr", tmp_path / "metrics")
    assert len(open_store(tmp_path / "d.zarr").ids()) == 7  # finished clips are kept


def test_truncation_policy_for_long_clips(bad_folder, tmp_path):
    ingest.run(IngestConfig(max_skip_ratio=1.0), (Source(name="b", adapter="folder", root=str(bad_folder)),),
               tmp_path / "m.parquet", None)
    import pandas as pd

    df = pd.read_parquet(tmp_path / "m.parquet")
    df[df.clip_id == "b.oneminute"].to_parquet(tmp_path / "one.parquet")
    rep = decode.run(DecodeConfig(max_seconds=10.0), tmp_path / "one.parquet", tmp_path / "d.zarr", None)
    store = open_store(tmp_path / "d.zarr")
    assert rep.extra["truncated"] == 1 and store.meta("b.oneminute")["n_frames"] == 250
    assert "truncated" in store.meta("b.oneminute")["notes"][0]


def test_allow_missing_audio_when_configured(bad_folder, tmp_path):
    import pandas as pd

    ingest.run(IngestConfig(max_skip_ratio=1.0), (Source(name="b", adapter="folder", root=str(bad_folder)),),
               tmp_path / "m.parquet", None)
    df = pd.read_parquet(tmp_path / "m.parquet")
    df[df.clip_id == "b.noaudio"].to_parquet(tmp_path / "one.parquet")
    decode.run(DecodeConfig(require_audio=False), tmp_path / "one.parquet", tmp_path / "d.zarr", None)
    store = open_store(tmp_path / "d.zarr")
    assert len(store.read("b.noaudio")["audio"]) == 0 and store.meta("b.noaudio")["has_audio"] is False


def test_clips_without_any_face_are_skipped_or_centre_cropped(decoded, tmp_path):
    from esva.config import CropConfig
    from pipeline.stages import crop

    _, store, out = decoded
    rep = crop.run(CropConfig(size=32, max_skip_ratio=1.0), out / "decoded.zarr", tmp_path / "f.zarr", None)
    assert {s["reason"] for s in rep.skips} == {"no_face"} and rep.done == 0  # test patterns hold no face
    assert all("no face detected in any of" in s["detail"] for s in rep.skips)
    rep = crop.run(CropConfig(size=32, skip_if_no_face=False), out / "decoded.zarr", tmp_path / "g.zarr", None)
    assert rep.done == len(store.ids()) and rep.extra["clips_centre_cropped"] == rep.done
    faces = open_store(tmp_path / "g.zarr")
    assert faces.read("bad.odd_rotated")["faces"].shape[1:] == (32, 32, 3)
    assert faces.read("bad.good")["detected"].sum() == 0
