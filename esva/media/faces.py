"""Face detection, alignment and cropping.

Backends:
- `haar`: OpenCV 4's bundled frontal-face Haar cascade (ships in the opencv-python wheel; offline).
  Boxes are smoothed over time (sizes over a longer time constant than centres: `smooth_track`) and
  cropped square with a margin.
- `face_alignment`: S3FD boxes + FAN 68-point landmarks; crops are aligned by a similarity
  transform that puts the eye centres and the mouth centre at fixed template positions. Its
  weights must already be in the torch hub cache (`$TORCH_HOME/hub/checkpoints`): esva never
  downloads them.
- `auto`: face_alignment when its weights are present, else haar.

Sparse detection (`crop.detect_every` = k): the detector runs on every k-th frame and the last; the
frames between two keyframes with a face get the linear interpolation of the two boxes (landmarks too),
the boxes are then smoothed as before. Where a keyframe finds no face, or two keyframe boxes overlap
by IoU < 0.5, the frames between it and its neighbouring keyframes are detected one by one
(`detect_tracked`). Checked against per-frame detection in tests/media/test_tracking.py and
benchmarks/crop.py (IoU >= 0.9 on every frame of the synthetic clips).

Frames with no detection (documented policy): reuse the nearest earlier box; before the first
detection, the nearest later box; in a clip with no detection at all, a centre crop (or a skip
when `crop.skip_if_no_face`). Every such frame is counted.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

FA_FILES = {"s3fd": "s3fd-619a316812.pth", "fan": "2DFAN4-11f355bf06.pth.tar"}


class FaceBackendError(RuntimeError):
    """A face backend that cannot run here; the message says what is missing and where."""


def torch_hub_checkpoints() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def face_alignment_weights_present() -> bool:
    d = torch_hub_checkpoints()
    return all((d / f).exists() for f in FA_FILES.values())


@dataclass
class Detection:
    box: np.ndarray  # (4,) x0, y0, x1, y1 in frame pixels
    landmarks: np.ndarray | None = None  # (68, 2) when the backend gives them


class HaarDetector:
    name = "haar"

    def __init__(self) -> None:
        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise FaceBackendError(f"cannot load the Haar cascade {path} (opencv-python<5 ships it)")

    def _search(self, gray: np.ndarray, min_side: int, max_side: int | None) -> np.ndarray:
        kw = {"maxSize": (max_side, max_side)} if max_side else {}
        found = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=4, minSize=(min_side, min_side), **kw)
        return np.array([[x, y, x + w, y + h] for x, y, w, h in found], np.float32).reshape(-1, 4)

    def detect(self, frames: np.ndarray) -> list[Detection | None]:
        """Full-frame search until a face is found, then a search in a window around the last box
        (sizes 0.7x-1.4x), which is faster and keeps the same person; full search again when lost."""
        out: list[Detection | None] = []
        prev = None
        for frame in frames:
            gray = cv2.equalizeHist(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
            h, w = gray.shape
            boxes = np.zeros((0, 4), np.float32)
            if prev is not None:
                side = float(max(prev[2] - prev[0], prev[3] - prev[1]))
                x0, y0 = int(max(0, prev[0] - 0.5 * side)), int(max(0, prev[1] - 0.5 * side))
                x1, y1 = int(min(w, prev[2] + 0.5 * side)), int(min(h, prev[3] + 0.5 * side))
                boxes = self._search(gray[y0:y1, x0:x1], max(24, int(0.7 * side)), int(1.4 * side) + 1)
                boxes[:, [0, 2]] += x0
                boxes[:, [1, 3]] += y0
            if len(boxes) == 0:
                boxes = self._search(gray, max(24, min(h, w) // 8), None)
            if len(boxes) == 0:
                out.append(None)
                continue
            if prev is not None:  # keep the same face: closest to the previous box, then largest
                c = (boxes[:, :2] + boxes[:, 2:]) / 2
                pc = (prev[:2] + prev[2:]) / 2
                score = -np.linalg.norm(c - pc, axis=1) + 0.1 * (boxes[:, 2] - boxes[:, 0])
            else:
                score = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            prev = boxes[int(np.argmax(score))]
            out.append(Detection(prev.copy()))
        return out


class FaceAlignmentDetector:
    """face_alignment's S3FD + FAN, loaded from the local torch hub cache only."""

    name = "face_alignment"

    def __init__(self, device: str = "cpu") -> None:
        if not face_alignment_weights_present():
            d = torch_hub_checkpoints()
            raise FaceBackendError(
                f"face_alignment weights not found in {d} (need {sorted(FA_FILES.values())}); esva does not "
                "download them. Put them there (set TORCH_HOME to choose the folder) or use crop.backend=haar")
        import face_alignment

        self.fa = face_alignment.FaceAlignment(face_alignment.LandmarksType.TWO_D, device=device,
                                               face_detector="sfd", flip_input=False, compile=False)

    def detect(self, frames: np.ndarray, boxes: list[np.ndarray | None] | None = None) -> list[Detection | None]:
        """S3FD boxes + FAN landmarks per frame; `boxes` (one per frame) skips S3FD where given."""
        out: list[Detection | None] = []
        for i, frame in enumerate(frames):
            warnings.filterwarnings("ignore", message="No faces were detected")
            prior = None if boxes is None or boxes[i] is None else [np.asarray(boxes[i], np.float64)]
            res = self.fa.get_landmarks_from_image(frame, detected_faces=prior, return_bboxes=True)
            lms, _, found = res if isinstance(res, tuple) else (res, None, None)
            if not lms:
                out.append(None)
                continue
            if found is not None:
                areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in found]
            else:
                areas = [np.ptp(p[:, 0]) * np.ptp(p[:, 1]) for p in lms]
            k = int(np.argmax(areas))
            lm = np.asarray(lms[k], np.float32)[:, :2]
            box = np.asarray(found[k][:4], np.float32) if found is not None else np.array(
                [lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()], np.float32)
            out.append(Detection(box, lm))
        return out


def make_detector(backend: str, device: str = "cpu"):
    if backend == "haar":
        return HaarDetector()
    if backend == "face_alignment":
        return FaceAlignmentDetector(device)
    if backend == "auto":
        if face_alignment_weights_present():
            return FaceAlignmentDetector(device)
        log.info("crop.backend=auto: face_alignment weights absent from %s, using haar", torch_hub_checkpoints())
        return HaarDetector()
    raise ValueError(f"crop.backend must be auto, haar or face_alignment, got {backend!r}")


def fill_missing(dets: list[Detection | None]) -> tuple[list[Detection | None], int]:
    """The no-face policy: nearest earlier detection, else nearest later one. Returns filled, count."""
    filled: list[Detection | None] = list(dets)
    last = None
    for i, d in enumerate(dets):
        if d is not None:
            last = d
        elif last is not None:
            filled[i] = last
    nxt = None
    for i in range(len(dets) - 1, -1, -1):
        if dets[i] is not None:
            nxt = dets[i]
        elif filled[i] is None and nxt is not None:
            filled[i] = nxt
    return filled, sum(d is None for d in dets)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes (..., 4) x0, y0, x1, y1, elementwise (broadcast)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


# two keyframe boxes that overlap less than this are not one face moving smoothly (a jump, a cut, another
# person): the frames between them are detected one by one instead of interpolated
TRACK_MIN_IOU = 0.5


def keyframes(n: int, every: int) -> list[int]:
    """Every `every`-th frame index and the last one."""
    keys = list(range(0, n, max(1, every)))
    if n and keys[-1] != n - 1:
        keys.append(n - 1)
    return keys


def _interpolate(da: Detection, db: Detection, frac: float) -> Detection:
    box = ((1 - frac) * da.box + frac * db.box).astype(np.float32)
    lm = None
    if da.landmarks is not None and db.landmarks is not None:
        lm = ((1 - frac) * da.landmarks + frac * db.landmarks).astype(np.float32)
    return Detection(box, lm)


def detect_tracked(detector, frames: np.ndarray, every: int = 1,
                   stats: dict | None = None) -> tuple[list[Detection | None], np.ndarray]:
    """Faces in every frame from detections on every `every`-th frame and the last (keyframes); the frames
    between two keyframes that both found a face, overlapping by IoU >= TRACK_MIN_IOU, get the linear
    interpolation of their boxes (and landmarks). Between a keyframe without a face (or a jump) and its
    neighbouring keyframes every frame is detected, as with every=1. Returns the per-frame detections (None:
    no face) and a per-frame flag array: 1 found by the detector, 2 interpolated, 0 no face. every=1 is
    per-frame detection. A fallback run starts at the keyframe before it, so a detector that follows one face
    within a call (Haar's `prev`) keeps following the person it found there, as per-frame detection does.
    `stats`, when given, gets `detector_calls`: the frames the detector ran on."""
    n = len(frames)
    if stats is not None:
        stats["detector_calls"] = 0

    def run(batch):
        if stats is not None:
            stats["detector_calls"] += len(batch)
        return detector.detect(batch)

    if every <= 1 or n <= 2:
        dets = run(frames)
        return dets, np.array([d is not None for d in dets], np.uint8)
    keys = keyframes(n, every)
    dets: list[Detection | None] = [None] * n
    how = np.zeros(n, np.uint8)
    for i, d in zip(keys, run(frames[keys])):
        dets[i] = d
        how[i] = d is not None
    for a, b in zip(keys[:-1], keys[1:]):
        if b - a <= 1:
            continue
        da, db = dets[a], dets[b]
        if da is not None and db is not None and float(box_iou(da.box, db.box)) >= TRACK_MIN_IOU:
            for i in range(a + 1, b):
                dets[i] = _interpolate(da, db, (i - a) / (b - a))
                how[i] = 2
        else:  # no face at a keyframe, or a jump: per-frame detection around it, from the keyframe's face
            start = a if da is not None else a + 1
            for i, d in enumerate(run(frames[start:b]), start=start):
                if i > a:
                    dets[i] = d
                    how[i] = d is not None
    return dets, how


def smooth_boxes(boxes: np.ndarray, alpha: float) -> np.ndarray:
    """Exponential smoothing forward and backward (zero lag) of (N, D) rows (boxes, centres, sizes)."""
    if alpha <= 0 or len(boxes) < 2:
        return boxes
    fwd = boxes.copy()
    for i in range(1, len(boxes)):
        fwd[i] = alpha * fwd[i - 1] + (1 - alpha) * boxes[i]
    bwd = fwd.copy()
    for i in range(len(boxes) - 2, -1, -1):
        bwd[i] = alpha * bwd[i + 1] + (1 - alpha) * fwd[i]
    return bwd


# a face's size changes far more slowly than its position, while a detector's size estimate is its noisiest
# output (Haar: about 2.5% a frame, its scale steps); sizes are smoothed over a time constant this many times
# the position's (alpha ** (1 / SIZE_TIME_FACTOR)), which keeps sparse detection (detect_every) and per-frame
# detection within IoU 0.9 of each other on every frame (benchmarks/crop.py)
SIZE_TIME_FACTOR = 8.0


def smooth_track(boxes: np.ndarray, alpha: float) -> np.ndarray:
    """Zero-lag smoothing of (N, 4) boxes: centres with `alpha`, widths and heights with
    alpha ** (1 / SIZE_TIME_FACTOR) (a SIZE_TIME_FACTOR times longer time constant). alpha 0: none."""
    if alpha <= 0 or len(boxes) < 2:
        return boxes
    centre = smooth_boxes((boxes[:, :2] + boxes[:, 2:]) / 2, alpha)
    size = smooth_boxes(boxes[:, 2:] - boxes[:, :2], alpha ** (1.0 / SIZE_TIME_FACTOR))
    return np.concatenate([centre - size / 2, centre + size / 2], 1).astype(boxes.dtype)


# template positions (fractions of the crop) for the aligned crop: eyes and mouth centre
TEMPLATE = np.array([[0.34, 0.40], [0.66, 0.40], [0.50, 0.74]], np.float32)


def box_transform(box: np.ndarray, size: int, margin: float) -> np.ndarray:
    """2x3 affine mapping a square around the box (expanded by margin) onto a size x size crop."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    s = size / side
    return np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]], np.float32)


def landmark_transform(lm: np.ndarray, size: int, margin: float) -> np.ndarray:
    """Similarity transform putting eye centres and mouth centre of 68 landmarks on the template."""
    src = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[48:68].mean(0)]).astype(np.float32)
    tpl = (TEMPLATE - 0.5) / (1 + 2 * margin) * (1 + 2 * 0.25) + 0.5  # margin 0.25 is the template's own
    m, _ = cv2.estimateAffinePartial2D(src, tpl * size)
    return m.astype(np.float32) if m is not None else None


def crop_frames(frames: np.ndarray, dets: list[Detection | None], size: int, margin: float,
                smooth: float) -> tuple[np.ndarray, np.ndarray]:
    """Crops (N, size, size, 3) and the boxes used (N, 4). Frames without a detection must have been
    filled (fill_missing); a None left means the centre-crop fallback."""
    n, h, w = frames.shape[:3]
    centre = np.array([(w - min(w, h)) / 2, (h - min(w, h)) / 2, (w + min(w, h)) / 2, (h + min(w, h)) / 2], np.float32)
    boxes = np.stack([d.box if d is not None else centre for d in dets]) if n else np.zeros((0, 4), np.float32)
    boxes = smooth_track(boxes.astype(np.float32), smooth)
    crops = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        d = dets[i]
        m = None
        if d is not None and d.landmarks is not None:
            m = landmark_transform(d.landmarks, size, margin)
        if m is None:
            m = box_transform(boxes[i], size, 0.0 if d is None else margin)
        crops[i] = cv2.warpAffine(frames[i], m, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    return crops, boxes


class NoFace(Exception):
    """A clip without a usable face: `reason` is its skip reason (no_frames, no_face, few_faces)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def crop_clip(detector, frames: np.ndarray, cfg, fps) -> tuple:
    """One decoded clip's frames -> (crops, boxes, detected, meta) under `cfg` (the `crop` params: detect_every,
    skip_if_no_face, min_face_ratio, size, margin, smooth); NoFace when it has no usable face."""
    if len(frames) == 0:
        raise NoFace("no_frames", "the decoded clip has no frames")
    # detector on every crop.detect_every-th frame, boxes interpolated between (esva.media.faces.detect_tracked)
    calls: dict = {}
    dets, how = detect_tracked(detector, frames, cfg.detect_every, calls)
    n_det = sum(d is not None for d in dets)
    ratio = n_det / len(frames)
    if n_det == 0 and cfg.skip_if_no_face:
        raise NoFace("no_face", f"no face detected in any of {len(frames)} frames")
    if ratio < cfg.min_face_ratio:
        raise NoFace("few_faces", f"face in {ratio:.1%} of frames < crop.min_face_ratio={cfg.min_face_ratio}")
    filled, n_missing = fill_missing(dets)
    crops, boxes = crop_frames(frames, filled, cfg.size, cfg.margin, cfg.smooth)
    detected = np.array([d is not None for d in dets], np.uint8)  # a face: found, or between two found
    return crops, boxes, detected, {"n_frames": len(frames), "detected": n_det, "filled": n_missing,
                                    "detector_runs": calls["detector_calls"], "interpolated": int((how == 2).sum()),
                                    "centre_crop": n_det == 0, "fps": fps}
