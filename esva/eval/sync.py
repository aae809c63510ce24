"""The reference row of the alignment evaluation: a plain cross-correlation, no learning.

Audio energy (RMS over one video frame's worth of samples, at the video frame times) against
mouth-region motion (mean absolute difference of the grey lower-middle part of consecutive face
crops); both z-scored over the overlap, the offset tau in [-K, K] frames with the highest
correlation (parabola-refined) is the estimate. tau > 0: the video lags the audio.
"""

from __future__ import annotations

import numpy as np


def offset_errors(truth_ms, estimate_ms, frame_ms: float) -> dict | None:
    """Mean/median absolute offset error and the shares within one and half a video frame."""
    err = np.abs(np.asarray(estimate_ms, np.float64) - np.asarray(truth_ms, np.float64))
    if not len(err):
        return None
    return {"n": int(len(err)), "mae_ms": float(err.mean()), "median_ae_ms": float(np.median(err)),
            "within_one_frame": float((err <= frame_ms).mean()),
            "within_half_frame": float((err <= frame_ms / 2).mean()), "frame_ms": frame_ms}


def audio_energy(audio: np.ndarray, sample_rate: int, fps: float, n_frames: int) -> np.ndarray:
    hop = sample_rate / fps
    out = np.zeros(n_frames, np.float64)
    for i in range(n_frames):
        a, b = int(round(i * hop)), int(round((i + 1) * hop))
        seg = audio[a:b]
        out[i] = float(np.sqrt(np.mean(seg.astype(np.float64) ** 2))) if len(seg) else 0.0
    return out


def mouth_motion(faces: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 crops -> (N,) motion of the mouth region (first frame: 0)."""
    s = faces.shape[1]
    roi = faces[:, int(0.62 * s):int(0.92 * s), int(0.3 * s):int(0.7 * s)].astype(np.float32).mean(-1)
    motion = np.zeros(len(faces))
    if len(faces) > 1:
        motion[1:] = np.abs(np.diff(roi, axis=0)).mean(axis=(1, 2))
    return motion


def xcorr_offset(a: np.ndarray, v: np.ndarray, k: int) -> float:
    """Offset (frames, sub-frame) maximising the normalised correlation of a(t) and v(t + tau)."""
    scores = np.full(2 * k + 1, -np.inf)
    for j, tau in enumerate(range(-k, k + 1)):
        t0, t1 = max(0, -tau), min(len(a), len(v) - tau)
        if t1 - t0 < 3:
            continue
        x, y = a[t0:t1], v[t0 + tau:t1 + tau]
        sx, sy = x.std(), y.std()
        if sx < 1e-12 or sy < 1e-12:
            continue
        scores[j] = float(np.mean((x - x.mean()) * (y - y.mean())) / (sx * sy))
    j = int(np.argmax(scores))
    delta = 0.0
    if 0 < j < 2 * k and np.isfinite(scores[j - 1]) and np.isfinite(scores[j + 1]):
        den = scores[j - 1] - 2 * scores[j] + scores[j + 1]
        if den < -1e-12:
            delta = float(np.clip(0.5 * (scores[j - 1] - scores[j + 1]) / den, -0.5, 0.5))
    return j - k + delta
