"""esva adaptive's pieces: warping known drifts, ground truth per window, the summaries' statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from esva.eval.adaptive import in_spans, sign_changes, summarise, window_truth
from esva.models.controllers import CONTROLLERS
from esva.train.controllers import _deltas, warp


def test_warp_moves_the_video_by_a_known_time_varying_offset():
    v = torch.randn(1, 40, 3)
    out = warp(v, torch.full((1, 40), 2.0))  # v'(u) = v(u - 2)
    torch.testing.assert_close(out[0, 2:], v[0, :-2])
    assert not out[0, :2].any()  # read from before the clip: zero
    half = warp(v, torch.full((1, 40), 0.5))
    torch.testing.assert_close(half[0, 1:], 0.5 * (v[0, 1:] + v[0, :-1]))
    d = _deltas(np.random.default_rng(0), 6, 50, 8, base=np.array([6.5, -6.0, 0.0, 0.0, 3.0, -3.0]))
    assert d.shape == (6, 50) and (np.abs(np.array([6.5, -6.0, 0, 0, 3, -3])[:, None] + d) <= 7 + 1e-9).all()
    assert np.ptp(d[2]) > 1.0 and len(np.unique(np.round(d[3], 6))) == 2  # a drift, then a jump


def test_ground_truth_at_window_centres_and_corrupted_windows():
    track = json.dumps([[0.0, -100.0], [2.0, 100.0]])
    gt = window_truth(track, 5, window=8, hop=4, rate=25.0)  # centres at 3.5, 7.5, ... frames = 0.14, 0.30, ... s
    np.testing.assert_allclose(gt, -100.0 + 100.0 * (np.arange(5) * 4 + 3.5) / 25.0)
    spans = json.dumps([["audio_noise", 0.25, 0.5]])
    assert in_spans(spans, 5, 8, 4, 25.0).tolist() == [False, True, True, False, False]
    assert sign_changes(np.array([30.0, -30.0, 5.0, -50.0, 40.0]), dead_ms=20.0) == 2  # +, -, (within), -, +


def _rec(maes, preds, f1=0.5):
    return {"clips": [{"clip_id": f"c{i}", "mae_ms": m, "mae_in_spans_ms": None, "mae_outside_spans_ms": m,
                       "clip_tau_mae_ms": 50.0, "zero_mae_ms": 90.0, "oscillations": 0, "windows": 10}
                      for i, m in enumerate(maes)],
            "predictions": preds, "f1": {"weighted_f1": f1}}


def test_summaries_say_whether_a_controller_beats_fixed_beyond_seed_noise():
    class C:
        def __init__(self, i):
            self.clip_id = f"c{i}"

    gold = {"drift": ["sad", "happy", "sad", "angry"]}
    clips = {"drift": [C(i) for i in range(4)]}
    rng = np.random.default_rng(0)
    runs = {}
    for s in (0, 1, 2):
        base = 60 + rng.normal(0, 2, 4)
        runs[s] = {c: {"drift": _rec(base - (25 if c == "fuzzy" else 0) + (1 if c == "neural" else 0),
                                     gold["drift"] if c != "backstepping" else ["sad"] * 4)} for c in CONTROLLERS}
    track, robust = summarise(runs, gold, [0, 1, 2], clips, b=200)
    assert set(track["drift"]) == set(CONTROLLERS) | {"references"}
    refs = track["drift"]["references"]
    assert refs["clip_tau_star"]["tracking_mae_ms"]["mean"] == 50.0 and refs["predict_zero"]["tracking_mae_ms"] == 90.0
    fz = track["drift"]["fuzzy"]["vs_fixed"]
    assert fz["beyond_seed_noise"] and fz["error_reduction_ms"]["mean"] == pytest.approx(25.0)
    assert not track["drift"]["neural"]["vs_fixed"]["beyond_seed_noise"]
    assert track["drift"]["fixed"]["tracking_mae_ms"]["n"] == 3 and "vs_fixed" not in track["drift"]["fixed"]
    bs = robust["drift"]["backstepping"]
    assert bs["paired_vs_fixed"]["diff"] < 0 and bs["predictions"]["by_seed"]["1"] == ["sad"] * 4
    # a split without known offsets (a real corpus): tracking skipped with the reason, F1 still scored
    for s in runs:
        for c in CONTROLLERS:
            runs[s][c]["drift"]["clips"] = []
    track, robust = summarise(runs, gold, [0, 1, 2], clips, b=200)
    assert "no ground-truth offset track" in track["drift"]["skipped"]
    assert robust["drift"]["fixed"]["weighted_f1"]["mean"] == pytest.approx(0.5)
