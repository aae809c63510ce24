"""The media benchmarks (crop, decode, memory_media) run at a tiny size; their JSON has the common report's
keys (benchmarks/report.py) and figures that agree with each other. No timing asserts: the verdicts are
whatever this machine measured."""

from __future__ import annotations

import json
import statistics

import pytest

COMMON = ("benchmark", "command", "environment", "target", "meets_target")


def common_keys(res: dict, name: str) -> None:
    assert all(k in res for k in COMMON), [k for k in COMMON if k not in res]
    assert res["benchmark"] == name and res["command"].startswith(f"python -m benchmarks.{name}")
    assert res["environment"]["cores"] >= 1 and res["environment"]["device"] == "cpu"
    assert isinstance(res["target"], str) and res["target"]
    mt = res["meets_target"]
    assert isinstance(mt, bool) or (isinstance(mt, dict) and isinstance(mt["overall"], bool)
                                    and all(isinstance(v, bool) for v in mt.values()))


def test_crop_benchmark_tiny(tmp_path):
    from benchmarks.crop import IOU_TARGET, SPEEDUP_TARGET, main

    out = tmp_path / "crop.json"
    res = main(["--clips", "2", "--every", "3", "5", "--no-self-check", "--out", str(out)])
    assert json.loads(out.read_text()) == res
    common_keys(res, "crop")
    assert res["corpus"] == "synthetic" and res["default_k"] == 5
    assert set(res["meets_target"]) == {"3", "5", "overall"} and res["meets_target"]["overall"] == res["meets_target"]["5"]
    n = res["frames"]
    ref = res["per_frame"]
    assert n > 0 and ref["seconds"] > 0 and ref["frames_per_second"] == pytest.approx(n / ref["seconds"], rel=0.01)
    for k, r in res["every"].items():
        assert r["seconds"] > 0 and r["frames_per_second"] == pytest.approx(n / r["seconds"], rel=0.01)
        assert r["speedup"] == pytest.approx(r["frames_per_second"] / ref["frames_per_second"], rel=0.02)
        assert 0 < r["iou_vs_per_frame"]["mean"] <= 1
        assert res["meets_target"][k] == (r["speedup"] >= SPEEDUP_TARGET and r["iou_vs_per_frame"]["mean"] >= IOU_TARGET)


def test_crop_benchmark_overall_is_false_without_the_default_k(tmp_path):
    from benchmarks.crop import main

    res = main(["--clips", "1", "--every", "3", "--no-self-check", "--out", str(tmp_path / "c.json")])
    assert res["meets_target"]["overall"] is False and "meets_target_note" in res


def test_decode_benchmark_tiny(tmp_path):
    from benchmarks.decode import main

    out = tmp_path / "decode.json"
    res = main(["--clips", "3", "--workers", "2", "--repeats", "2", "--set", "synth.min_seconds=1.0",
                "--set", "synth.max_seconds=1.5", "--out", str(out)])
    assert json.loads(out.read_text()) == res
    common_keys(res, "decode")
    assert isinstance(res["meets_target"], bool)
    assert res["corpus"] == "synthetic" and "synthetic" in res["note"]
    assert res["clips"] == 3 and res["workers"] == 2 and res["cores"] >= 1 and res["repeats"] == 2
    assert res["outputs_identical"] is True and "failed_clips" not in res
    assert res["media_seconds"] > 0 and res["frames"] > 0 and res["audio_samples"] > 0
    for path in ("parallel", "sequential"):
        r = res[path]
        assert r["seconds"] > 0 and len(r["seconds_runs"]) == 2
        assert r["clips_per_second"] == pytest.approx(3 / r["seconds"], rel=0.01)
        assert r["rtf"] == pytest.approx(res["media_seconds"] / r["seconds"], rel=0.01)
    seq, par = res["sequential"]["seconds"], res["parallel"]["seconds"]
    assert res["ratio"] == pytest.approx(seq / par, rel=0.01)
    assert res["ratio"] == pytest.approx(res["parallel"]["clips_per_second"] / res["sequential"]["clips_per_second"],
                                         rel=0.01)
    seq_cores = res["sequential_cores_busy_median"]
    assert seq_cores == pytest.approx(statistics.median(res["sequential"]["own_cores_busy_runs"]), abs=0.01)
    assert res["target_ratio"] == pytest.approx(0.9 * max(1.0, min(2, res["cores"]) / max(seq_cores, 1.0)), rel=1e-3)
    assert res["linear_target_ratio"] == pytest.approx(0.9 * min(2, res["cores"]))
    assert res["meets_target"] == (res["ratio"] >= res["target_ratio"])  # the outputs are identical (above)


def test_decode_digest_sees_every_byte_and_the_shape():
    import numpy as np

    from benchmarks.decode import digest

    audio = np.zeros(16, np.float32)
    frames = np.zeros((2, 4, 4, 3), np.uint8)
    d = digest(audio, frames)
    assert d == digest(audio.copy(), frames.copy())
    changed = frames.copy()
    changed[1, 3, 3, 2] = 1
    assert digest(audio, changed) != d
    assert digest(audio, frames.reshape(4, 2, 4, 3)) != d


def test_memory_media_verdicts():
    from benchmarks.memory_media import RATIO_TARGET, verdicts

    def size(**peaks):
        return {"commands": {k: ({"peak_rss_mb": v} if v is not None else {"failed": True}) for k, v in peaks.items()}}

    ratios, peaks, meets = verdicts(size(decode=1000.0, crop=800.0, extract_hubert=500.0),
                                    size(decode=1000.0 * RATIO_TARGET, crop=1200.0, extract_hubert=None),
                                    ["decode", "crop", "extract_hubert"])
    assert ratios == {"decode": pytest.approx(RATIO_TARGET), "crop": 1.5, "extract_hubert": None}
    assert peaks["crop"] == {"N": 800.0, "factor_N": 1200.0}
    assert meets == {"decode": True, "crop": False, "extract_hubert": False, "overall": False}
    _, _, meets = verdicts(size(decode=1000.0), size(decode=900.0), ["decode"])
    assert meets == {"decode": True, "overall": True}


def test_memory_media_refuses_too_small_sizes(tmp_path):
    from benchmarks.memory_media import main

    with pytest.raises(SystemExit, match="at least 6"):
        main(["--n", "3", "--out", str(tmp_path / "m.json")])
    with pytest.raises(SystemExit, match="--encoders"):
        main(["--encoders", "wav2vec", "--out", str(tmp_path / "m.json")])


@pytest.mark.slow
def test_memory_media_benchmark_tiny(tmp_path):
    """N=6 and 2N=12 through the real commands (~2-3 min on 2 cores)."""
    from benchmarks.memory_media import main

    out = tmp_path / "mm.json"
    res = main(["--n", "6", "--encoders", "hubert", "mae", "--work", str(tmp_path / "work"), "--out", str(out)])
    assert json.loads(out.read_text()) == res
    common_keys(res, "memory_media")
    assert not res["failed"] and res["corpus"] == "synthetic"
    names = ["decode", "crop", "extract_hubert", "extract_mae", "featurize"]  # featurize: the same encoders, one pass
    assert set(res["meets_target"]) == {*names, "overall"}
    assert res["sizes"]["N"]["clips"] == 6 and res["sizes"]["2N"]["clips"] == 12
    for name in names:
        a, b = (res["sizes"][s]["commands"][name] for s in ("N", "2N"))
        assert a["peak_rss_mb"] > 0 and b["peak_rss_mb"] > 0 and a["seconds"] > 0
        assert res["ratios"][name] == pytest.approx(b["peak_rss_mb"] / a["peak_rss_mb"], rel=0.01)
        assert a["stage_report"]["done"] == 6 and b["stage_report"]["done"] == 12
    assert res["meets_target"]["overall"] == all(res["meets_target"][n] for n in names)
    assert not (tmp_path / "work" / "N6").exists()  # removed without --keep
