"""The reference rows of the alignment evaluation: no learning, just cross-correlation and two trivial bounds.

- `xcorr_opening` (the primary reference): audio energy against mouth *opening*, which is how the
  synthetic corpus is generated (the lips part with the voice's energy envelope, shifted by the clip's
  offset). Audio energy: RMS over one video frame's worth of samples centred on each frame's timestamp
  i / fps (a window [i, i + 1) frames would be centred half a frame late and bias every estimate by
  +half a frame). Mouth opening (`mouth_opening`): how dark the lower-middle region of the face crop is
  relative to its usual brightness: the open mouth shows a dark cavity between the lips, whose area
  grows with the opening, while skin, lips and teeth are bright. Robust z-score (median / MAD,
  winsorised at +-3) so a mis-placed crop cannot dominate the correlation.
- `xcorr_motion`: the previous reference, unchanged (energy windows [i, i + 1) frames, against mouth-region
  *motion*, the mean absolute difference of consecutive crops). Motion is roughly the magnitude of the
  opening's derivative, so its correlation peak sits off the true offset: kept as the strawman it is.
- `predict_zero` (estimate 0 ms: its error is the mean |offset|, ~max/2 for offsets uniform in
  +-max) and `oracle` (the true offset: error 0) bound the table.

`xcorr_offset`: both signals z-scored over the overlap, the offset tau in [-K, K] frames with the
highest correlation (parabola-refined) is the estimate. tau > 0: the video lags the audio.
"""

from __future__ import annotations

import numpy as np

# Mouth region of a face crop, as fractions of the crop side (rows y0:y1, columns x0:x1). Generous enough
# to hold the mouth under the synthetic head motion (about +-4 degrees of roll plus box-tracking lag).
MOUTH_BOX = (0.55, 0.85, 0.30, 0.70)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def offset_errors(truth_ms, estimate_ms, frame_ms: float) -> dict | None:
    """Mean/median absolute offset error and the shares within one and half a video frame."""
    err = np.abs(np.asarray(estimate_ms, np.float64) - np.asarray(truth_ms, np.float64))
    if not len(err):
        return None
    return {"n": int(len(err)), "mae_ms": float(err.mean()), "median_ae_ms": float(np.median(err)),
            "within_one_frame": float((err <= frame_ms).mean()),
            "within_half_frame": float((err <= frame_ms / 2).mean()), "frame_ms": frame_ms}


def audio_energy(audio: np.ndarray, sample_rate: int, fps: float, n_frames: int, centered: bool = True) -> np.ndarray:
    """(n_frames,) RMS of the audio over one frame's worth of samples per video frame: centred on the frame's
    timestamp i / fps (default), or the window [i / fps, (i + 1) / fps) with `centered=False`."""
    hop = sample_rate / fps
    lead = 0.5 if centered else 0.0
    out = np.zeros(n_frames, np.float64)
    for i in range(n_frames):
        a, b = int(round((i - lead) * hop)), int(round((i + 1 - lead) * hop))
        seg = audio[max(0, a):max(0, b)]
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


def mouth_opening(faces: np.ndarray, box: tuple[float, float, float, float] = MOUTH_BOX) -> np.ndarray:
    """(N, S, S, 3) uint8 crops -> (N,) mouth opening: the mean over the mouth region of
    clip((m - luma) / m, 0, 1) ** 2, m the clip's median luma there. A pixel as bright as the clip's typical
    skin/lip adds nothing, a black one adds 1: the measure grows with the area and darkness of the cavity
    between parted lips, and the square keeps shading and stubble from counting much."""
    if not len(faces):
        return np.zeros(0)
    s0, s1 = faces.shape[1], faces.shape[2]
    y0, y1, x0, x1 = box
    roi = faces[:, int(y0 * s0):max(int(y1 * s0), int(y0 * s0) + 1), int(x0 * s1):max(int(x1 * s1), int(x0 * s1) + 1)]
    luma = roi[..., :3].astype(np.float32) @ LUMA
    m = max(float(np.median(luma)), 1.0)
    return (np.clip((m - luma) / m, 0.0, 1.0) ** 2).mean(axis=(1, 2)).astype(np.float64)


def robust_z(x: np.ndarray, clip: float = 3.0) -> np.ndarray:
    """(x - median) / (1.4826 MAD), winsorised at +-clip (a constant signal gives zeros)."""
    x = np.asarray(x, np.float64)
    if not len(x):
        return x
    med = np.median(x)
    mad = 1.4826 * float(np.median(np.abs(x - med)))
    if mad < 1e-12:
        mad = float(x.std())
    if mad < 1e-12:
        return np.zeros_like(x)
    return np.clip((x - med) / mad, -clip, clip)


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
    if not np.isfinite(scores).any():
        return 0.0  # nothing to correlate (a silent or frozen clip): no evidence of any shift
    j = int(np.argmax(scores))
    delta = 0.0
    if 0 < j < 2 * k and np.isfinite(scores[j - 1]) and np.isfinite(scores[j + 1]):
        den = scores[j - 1] - 2 * scores[j] + scores[j + 1]
        if den < -1e-12:
            delta = float(np.clip(0.5 * (scores[j - 1] - scores[j + 1]) / den, -0.5, 0.5))
    return j - k + delta


def reference_estimates(audio: np.ndarray, sample_rate: int, fps: float, faces: np.ndarray, k: int) -> dict[str, float]:
    """One clip's offset estimates in ms, tau > 0: the video lags the audio (truth-free rows only)."""
    ms = 1000.0 / fps
    return {"predict_zero": 0.0,
            "xcorr_opening": xcorr_offset(audio_energy(audio, sample_rate, fps, len(faces)),
                                          robust_z(mouth_opening(faces)), k) * ms,
            "xcorr_motion": xcorr_offset(audio_energy(audio, sample_rate, fps, len(faces), centered=False),
                                         mouth_motion(faces), k) * ms}
