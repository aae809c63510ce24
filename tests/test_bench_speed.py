"""The speed benchmarks (crop, stage 1, stage-2 validation) run at tiny sizes and their two paths agree; no
wall-clock assertions here."""

import json


def test_crop_benchmark_smoke(tmp_path):
    from benchmarks.crop import main

    out = tmp_path / "bench.json"
    res = main(["--clips", "2", "--every", "3", "--out", str(out)])
    assert json.loads(out.read_text()) == res
    k3 = res["every"]["3"]
    assert res["frames"] > 0 and k3["detector_calls_per_frame"] < 0.5 and k3["seconds"] > 0
    assert k3["iou_vs_per_frame"]["min"] >= 0.9 and "per_frame_vs_itself_shifted_3px" in res


def test_stage1_benchmark_smoke(tmp_path):
    from benchmarks.stage1_speed import main

    out = tmp_path / "bench.json"
    res = main(["--clips", "16", "--epochs", "1", "--warmup", "1", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == res
    agree = res["agreement"]
    assert agree["max_relative_loss_difference"] < 1e-4 and agree["max_abs_probability_difference"] < 1e-4
    assert agree["same_argmax_share"] == 1.0 and res["legacy_seconds"] and res["current_seconds"]


def test_tune_validation_benchmark_smoke(tmp_path):
    from benchmarks.tune_validation import main

    out = tmp_path / "bench.json"
    res = main(["--tiny", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == res
    assert res["agreement"]["identical_answers_share"] == 1.0
    assert res["agreement"]["relative_loss_difference"] < 1e-5
