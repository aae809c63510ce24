import numpy as np
import pandas as pd
import pytest

from esva import LABELS
from esva.config import SynthConfig
from esva.data.synthetic import (AUDIO_CUES, assign_labels, mouth_track, render_frames, sample_spec, synth_audio)


def test_labels_balanced_and_splits_stratified():
    pairs = assign_labels(240, seed=3, fractions=(0.7, 0.15, 0.15))
    df = pd.DataFrame(pairs, columns=["label", "split"])
    assert df["label"].value_counts().to_dict() == {lab: 40 for lab in LABELS}
    for lab in LABELS:
        counts = df[df.label == lab]["split"].value_counts().to_dict()
        assert counts == {"train": 28, "val": 6, "test": 6}
    assert pairs == assign_labels(240, seed=3, fractions=(0.7, 0.15, 0.15))
    assert pairs != assign_labels(240, seed=4, fractions=(0.7, 0.15, 0.15))


def test_specs_are_deterministic_in_seed_and_index():
    cfg = SynthConfig()
    a = sample_spec(5, "sad", "train", cfg)
    assert a == sample_spec(5, "sad", "train", cfg)
    assert a != sample_spec(6, "sad", "train", cfg)
    assert cfg.min_seconds <= a.duration_s <= cfg.max_seconds
    assert abs(a.offset_ms) <= cfg.max_offset_ms
    assert a.label in a.ov_labels and -5 <= a.valence <= 5


def test_audio_is_deterministic_and_in_range():
    cfg = SynthConfig()
    s = sample_spec(1, "angry", "train", cfg)
    a1, env1 = synth_audio(s, 16000, np.random.default_rng([1, 2]))
    a2, _ = synth_audio(s, 16000, np.random.default_rng([1, 2]))
    np.testing.assert_array_equal(a1, a2)
    assert a1.dtype == np.float32 and len(a1) == round(s.duration_s * 16000)
    assert np.abs(a1).max() <= 1.0 and np.isfinite(a1).all()


def _f0_track(audio: np.ndarray, sr: int = 16000) -> np.ndarray:
    """Autocorrelation pitch per 40 ms frame (voiced frames only) as an independent check."""
    out = []
    hop = int(0.04 * sr)
    for start in range(0, len(audio) - 2 * hop, hop):
        x = audio[start:start + 2 * hop].astype(np.float64)
        x = x - x.mean()
        if np.sqrt(np.mean(x ** 2)) < 0.3 * np.sqrt(np.mean(audio.astype(np.float64) ** 2)):
            continue
        ac = np.correlate(x, x, "full")[len(x) - 1:]
        lo, hi = int(sr / 500), int(sr / 70)
        lag = lo + int(np.argmax(ac[lo:hi]))
        out.append(sr / lag)
    return np.array(out)


def test_emotion_moves_measured_pitch_and_energy():
    """Clean settings (difficulty 0): surprise is higher and more varied in pitch than sad, angry louder."""
    cfg = SynthConfig(difficulty=0.0)
    stats = {}
    for lab in ("sad", "surprise", "angry"):
        f0s, rms = [], []
        for i in range(3):
            s = sample_spec(100 + i, lab, "train", cfg)
            a, _ = synth_audio(s, 16000, np.random.default_rng(i))
            f0s.append(np.median(_f0_track(a)))
            rms.append(np.sqrt(np.mean(a.astype(np.float64) ** 2)))
        stats[lab] = (np.mean(f0s), np.mean(rms))
    assert stats["surprise"][0] > 1.2 * stats["sad"][0], stats
    assert stats["angry"][1] > 1.5 * stats["sad"][1], stats


def test_cues_at_two_time_scales():
    """Worried has a fast tremor and surprise a slow final rise in the generated parameters."""
    cfg = SynthConfig(difficulty=0.0)
    assert sample_spec(1, "worried", "train", cfg).tremor_depth == pytest.approx(AUDIO_CUES["worried"]["tremor"])
    assert sample_spec(1, "surprise", "train", cfg).final_rise > 0.3
    assert sample_spec(1, "neutral", "train", cfg).tremor_depth == 0


def test_mouth_follows_audio_envelope_shifted_by_the_offset():
    sr, fps = 16000, 25
    env = np.zeros(sr * 3)
    env[int(1.0 * sr):int(1.3 * sr)] = 1.0  # one syllable from 1.0 s to 1.3 s
    for offset in (-120.0, 0.0, 160.0):
        m = mouth_track(env, sr, fps, 75, offset)
        centre = np.sum(np.arange(75) / fps * m) / np.sum(m)
        assert centre == pytest.approx(1.15 + offset / 1000, abs=0.03)


def test_reason_describes_generated_cues():
    cfg = SynthConfig(difficulty=0.0)
    s = sample_spec(2, "surprise", "train", cfg)
    assert "rises sharply" in s.reason and "eyebrows are raised" in s.reason
    sad = sample_spec(2, "sad", "train", cfg)
    assert "slowly" in sad.reason and "pulled down" in sad.reason


def test_frames_show_the_expression_and_the_mouth():
    from esva.media.faces import HaarDetector

    cfg = SynthConfig(difficulty=0.2)
    s = sample_spec(3, "happy", "train", cfg)
    mouth = np.linspace(0, 1, 10)
    frames = render_frames(s, mouth, 320, 240, np.random.default_rng(0))
    assert frames.shape == (10, 240, 320, 3) and frames.dtype == np.uint8
    dets = HaarDetector().detect(frames)
    assert sum(d is not None for d in dets) >= 9
    box = dets[-1].box
    x0, y0, x1, y1 = box.astype(int)
    lower = lambda f: f[y0 + (y1 - y0) * 2 // 3: y1, x0:x1].astype(float).mean()  # noqa: E731
    assert lower(frames[-1]) < lower(frames[0]) - 2  # the open mouth (dark cavity) darkens the lower face


def test_generated_corpus_files(synth_corpus, tiny_synth_cfg):
    from esva.media.ffmpeg import probe

    labels = pd.read_csv(synth_corpus / "labels.csv")
    gt = pd.read_csv(synth_corpus / "ground_truth.csv")
    assert sorted(labels["discrete"]) == sorted(LABELS)
    assert list(labels["name"]) == list(gt["clip_id"])
    assert {"offset_ms", "f0_hz", "snr_db", "jitter", "face_intensity"} <= set(gt.columns)
    assert labels["openset"].str.startswith("[").all()
    p = probe(synth_corpus / "videos" / "syn_00000.mp4")
    assert p.video.fps == 25 and p.audio.sample_rate == 16000
    assert (p.video.width, p.video.height) == (tiny_synth_cfg.width, tiny_synth_cfg.height)
    assert tiny_synth_cfg.min_seconds - 0.1 <= p.duration <= tiny_synth_cfg.max_seconds + 0.1
    text = open(synth_corpus / "videos" / "syn_00000.mp4", "rb").read(4096)
    assert b"avc1" in text or b"avc" in text


def test_same_seed_gives_byte_identical_videos(tmp_path):
    import hashlib

    from esva.data.synthetic import generate_clip

    cfg = SynthConfig(width=160, height=128, min_seconds=1.0, max_seconds=1.2)
    digests = []
    rows = []
    for d in ("a", "b"):
        rows.append(generate_clip(3, "sad", "train", cfg, str(tmp_path / d)))
        digests.append(hashlib.sha256((tmp_path / d / "videos" / "syn_00003.mp4").read_bytes()).hexdigest())
    assert digests[0] == digests[1] and rows[0] == rows[1]
    other = generate_clip(3, "sad", "train", cfg.model_copy(update={"seed": 1}), str(tmp_path / "c"))
    assert other["offset_ms"] != rows[0]["offset_ms"]
