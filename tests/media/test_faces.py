import numpy as np
import pytest
import torch

from esva.config import SynthConfig
from esva.data.synthetic import mouth_track, render_frames, sample_spec
from esva.media.faces import (FA_FILES, Detection, FaceAlignmentDetector, FaceBackendError, HaarDetector, crop_frames,
                              fill_missing, landmark_transform, make_detector)


def test_haar_finds_the_face_in_at_least_95_percent_of_synthetic_frames():
    """At the demo difficulty, over all six emotions, with head motion and clutter."""
    cfg = SynthConfig()
    det = HaarDetector()
    found = total = 0
    for i, lab in enumerate(["neutral", "angry", "happy", "sad", "worried", "surprise"]):
        s = sample_spec(40 + i, lab, "train", cfg)
        env = np.abs(np.sin(np.linspace(0, 12, 16000 * 2)))
        frames = render_frames(s, mouth_track(env, 16000, 25, 20, s.offset_ms), 320, 240, np.random.default_rng(i))
        dets = det.detect(frames)
        found += sum(d is not None for d in dets)
        total += len(dets)
    assert found / total >= 0.95, found / total


def test_no_face_policy_fills_from_neighbours():
    a, b = Detection(np.array([0, 0, 10, 10], np.float32)), Detection(np.array([5, 5, 15, 15], np.float32))
    filled, missing = fill_missing([None, a, None, None, b, None])
    assert missing == 4
    assert [f.box[0] for f in filled] == [0, 0, 0, 0, 5, 5]  # before the first: next; else: last
    filled, missing = fill_missing([None, None])
    assert filled == [None, None] and missing == 2


def test_crop_shapes_and_centre_fallback():
    frames = np.random.default_rng(0).integers(0, 255, (3, 90, 120, 3), dtype=np.uint8)
    crops, boxes = crop_frames(frames, [None, None, None], 64, 0.25, 0.5)
    assert crops.shape == (3, 64, 64, 3) and boxes.shape == (3, 4)
    np.testing.assert_allclose(boxes[0], [15, 0, 105, 90])  # the centred square


def test_landmark_alignment_maps_eyes_and_mouth_to_template():
    lm = np.zeros((68, 2), np.float32)
    lm[36:42] = (40, 50)
    lm[42:48] = (80, 50)
    lm[48:68] = (60, 90)
    m = landmark_transform(lm, 100, 0.25)
    pts = np.array([[40, 50, 1], [80, 50, 1], [60, 90, 1]], np.float32) @ m.T
    np.testing.assert_allclose(pts, [[34, 40], [66, 40], [50, 74]], atol=2.5)


@pytest.fixture
def fa_weights(tmp_path, monkeypatch):
    """face_alignment's S3FD and FAN with random weights under the file names it expects."""
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(s3fd().state_dict(), ckpt / FA_FILES["s3fd"])
    torch.save(FAN(4).state_dict(), ckpt / FA_FILES["fan"])
    return ckpt


def test_face_alignment_backend_runs_offline_from_the_hub_cache(fa_weights):
    det = make_detector("auto")
    assert isinstance(det, FaceAlignmentDetector)
    frames = np.random.default_rng(0).integers(0, 255, (2, 120, 160, 3), dtype=np.uint8)
    # S3FD runs (random weights: whatever it finds is a list of scored boxes)
    found = det.fa.face_detector.detect_from_image(frames[0][..., ::-1].copy())
    assert isinstance(found, list) and all(len(b) == 5 for b in found)  # whatever random weights find
    # FAN landmarks on given boxes, then the aligned crop
    dets = det.detect(frames, boxes=[np.array([40, 20, 120, 100]), np.array([10, 10, 90, 90])])
    assert all(d is not None and d.landmarks.shape == (68, 2) for d in dets)
    filled, _ = fill_missing(dets)
    crops, _ = crop_frames(frames, filled, 64, 0.25, 0.0)
    assert crops.shape == (2, 64, 64, 3)


def test_face_alignment_without_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FaceBackendError, match=r"weights not found in .*checkpoints.*crop.backend=haar"):
        make_detector("face_alignment")
    assert isinstance(make_detector("auto"), HaarDetector)
