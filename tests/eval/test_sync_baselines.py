"""The alignment table's reference rows (esva/eval/sync.py, `esva sync-baseline`): predict-zero, the oracle,
the mouth-opening cross-correlation (the primary reference) and the old motion cross-correlation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from esva.eval.sync import (audio_energy, mouth_opening, offset_errors, reference_estimates, robust_z,
                            xcorr_offset)

FPS, SR = 25.0, 16000


def test_predict_zero_error_is_the_mean_absolute_offset():
    truth = [-150.0, -20.0, 0.0, 35.0, 180.0]
    res = offset_errors(truth, np.zeros(len(truth)), 40.0)
    assert res["mae_ms"] == pytest.approx((150 + 20 + 0 + 35 + 180) / 5)
    assert res["median_ae_ms"] == pytest.approx(35.0)
    assert res["within_one_frame"] == pytest.approx(3 / 5)  # |0|, |-20|, |35| <= 40
    assert res["within_half_frame"] == pytest.approx(2 / 5)  # |0|, |-20| <= 20
    # offsets uniform in +-200 ms: predicting zero errs by ~100 ms (the strawman's 103 ms is no better)
    rng = np.random.default_rng(0)
    u = rng.uniform(-200, 200, 20000)
    assert offset_errors(u, np.zeros_like(u), 40.0)["mae_ms"] == pytest.approx(100.0, abs=2.0)


def test_oracle_error_is_zero():
    truth = [-150.0, 12.5, 180.0]
    res = offset_errors(truth, truth, 40.0)
    assert res["mae_ms"] == 0.0 and res["within_half_frame"] == 1.0 and res["n"] == 3
    assert offset_errors([], [], 40.0) is None


def _envelope(n_frames: int, seed: int) -> np.ndarray:
    """Syllable-like bumps in [0, 1] at the video frame rate."""
    rng = np.random.default_rng(seed)
    x = np.zeros(n_frames)
    x[rng.choice(n_frames, size=n_frames // 6, replace=False)] = rng.uniform(0.5, 1.0, n_frames // 6)
    x = gaussian_filter1d(x, 1.2)
    return x / x.max()


def _pair(shift: int, n: int = 90, seed: int = 1, size: int = 224):
    """Audio whose per-frame energy follows an envelope, and face crops whose dark mouth band is
    `env(t - shift)` high: the video lags the audio by `shift` frames."""
    env = _envelope(n + 40, seed)
    a_env, v_env = env[20:20 + n], env[20 - shift:20 - shift + n]
    rng = np.random.default_rng(seed + 100)
    hop = int(SR / FPS)
    per_sample = np.repeat(0.02 + a_env, hop)
    # frame i's audio sits around its timestamp i / fps: shift the samples half a frame earlier
    per_sample = np.concatenate([per_sample[hop // 2:], np.full(hop // 2, per_sample[-1])])
    audio = (rng.standard_normal(len(per_sample)) * per_sample).astype(np.float32)
    crops = np.full((n, size, size, 3), 185, np.uint8)  # skin
    crops += rng.integers(0, 12, size=crops.shape, dtype=np.uint8)  # texture
    cy, half_w = int(0.68 * size), int(0.12 * size)
    for i, o in enumerate(v_env):
        h = int(round(o * 0.09 * size))  # up to ~20 px of open mouth at 224
        if h:
            crops[i, cy - h // 2:cy + (h + 1) // 2, size // 2 - half_w:size // 2 + half_w] = (70, 25, 30)
    return audio, crops


@pytest.mark.parametrize("shift", [-5, -2, 0, 3, 6])
def test_opening_xcorr_recovers_a_known_shift(shift):
    audio, crops = _pair(shift)
    tau = xcorr_offset(audio_energy(audio, SR, FPS, len(crops)), robust_z(mouth_opening(crops)), 8)
    assert tau == pytest.approx(shift, abs=0.25)
    est = reference_estimates(audio, SR, FPS, crops, 8)
    assert est["predict_zero"] == 0.0 and est["xcorr_opening"] == pytest.approx(shift * 40.0, abs=10.0)


def test_opening_measure_is_monotone_and_robust_to_a_bad_crop():
    audio, crops = _pair(4, seed=3)
    env_heights = [(c[..., 0] == 70).sum() for c in crops]  # cavity pixels per frame
    opening = mouth_opening(crops)
    assert np.corrcoef(env_heights, opening)[0, 1] > 0.99
    bad = crops.copy()
    bad[0] = 10  # a mis-placed first crop (the detector's first box on the background)
    z = robust_z(mouth_opening(bad))
    assert z.max() <= 3.0 and z.min() >= -3.0
    assert xcorr_offset(audio_energy(audio, SR, FPS, len(crops)), z, 8) == pytest.approx(4, abs=0.25)


def test_energy_windows_are_centred_on_the_frame_timestamps():
    hop = int(SR / FPS)
    audio = np.zeros(10 * hop, np.float32)
    audio[2 * hop:3 * hop] = 1.0  # one frame's worth of sound in [2, 3) frames
    centred, left = audio_energy(audio, SR, FPS, 10), audio_energy(audio, SR, FPS, 10, centered=False)
    assert left[2] == pytest.approx(1.0) and left[1] == 0.0 and left[3] == 0.0
    assert centred[2] == pytest.approx(np.sqrt(0.5)) and centred[3] == pytest.approx(np.sqrt(0.5))
    assert xcorr_offset(np.zeros(20), np.arange(20.0), 3) == 0.0  # nothing to correlate: no shift


@pytest.fixture(scope="module")
def stores(tmp_path_factory, synth_decoded):
    """The session's six synthetic clips (decoded once, tests/conftest.py) cropped here (one per label,
    |offset| <= 200 ms): a folder with m.parquet, decoded.zarr and faces.zarr."""
    from esva.config import CropConfig
    from pipeline.stages import crop

    d = tmp_path_factory.mktemp("sync")
    for name in ("m.parquet", "decoded.zarr"):
        (d / name).symlink_to(synth_decoded / name)
    crop.run(CropConfig(workers=1), d / "decoded.zarr", d / "faces.zarr", None)
    return d


def test_stage_rows_on_real_synthetic_clips(stores):
    from pipeline.stages import sync

    d = stores
    res = sync.run(8, d / "decoded.zarr", d / "faces.zarr", d / "m.parquet", d / "alignment_reference.json")
    assert json.loads((d / "alignment_reference.json").read_text())["rows_all"] == res["rows_all"]
    rows = res["rows_all"]
    assert set(rows) == {"predict_zero", "oracle", "xcorr_opening", "xcorr_motion"}
    assert all(r["n"] == 6 for r in rows.values())
    assert rows["oracle"]["mae_ms"] == 0.0
    zero, opening = rows["predict_zero"]["mae_ms"], rows["xcorr_opening"]["mae_ms"]
    assert zero > 60.0  # the six clips' offsets are far from zero on average
    assert opening < zero / 3 and rows["xcorr_opening"]["within_one_frame"] >= 5 / 6
    assert res["all"] == rows["xcorr_opening"]  # the primary reference is the opening row
    # every clip is a training clip here: the test split is empty, and says so
    assert res["test"] is None and res["rows"]["predict_zero"] is None
