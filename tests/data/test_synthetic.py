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


# --- harder conditions (synth.conditions): extra evaluation splits with their ground truth ------------------
def test_condition_specs_keep_their_offset_track_and_corrupted_spans():
    import json

    from esva.data.synthetic import CONDITION_MIN_SECONDS, condition_spec, offset_at

    cfg = SynthConfig()
    for index in range(300, 312):
        for cond in ("drift", "jump", "noise", "occlusion", "missing"):
            s = condition_spec(index, "sad", cond, cfg)
            assert s == condition_spec(index, "sad", cond, cfg)  # deterministic in (seed, index)
            assert s.split == cond and s.condition == cond and s.duration_s >= CONDITION_MIN_SECONDS
            knots = json.loads(s.offset_track)
            offs = [o for _, o in knots]
            assert max(abs(o) for o in offs) <= cfg.max_offset_ms + 1e-6
            t = np.linspace(0, s.duration_s, 201)
            assert s.offset_ms == pytest.approx(float(np.mean(offset_at(s.offset_track, t))), abs=1e-6)
            spans = json.loads(s.corrupt_spans)
            for _, a, b in spans:
                assert 0 < a < b < s.duration_s
            if cond == "drift":
                assert len(knots) == 2 and abs(offs[1] - offs[0]) >= 0.5 * cfg.max_offset_ms - 1e-6 and not spans
            elif cond == "jump":
                assert len(knots) == 4 and offs[0] == offs[1] and offs[2] == offs[3]
                assert abs(offs[2] - offs[0]) >= 0.6 * cfg.max_offset_ms - 1e-6
                assert 0.35 * s.duration_s <= knots[1][0] <= 0.65 * s.duration_s
            else:
                assert len(set(offs)) == 1
                kinds = {k for k, _, _ in spans}
                assert {"noise": {"audio_noise"}, "occlusion": kinds & {"occlusion", "blur"} or {"x"},
                        "missing": {"missing_audio" if index % 2 == 0 else "missing_video"}}[cond] == kinds
                assert len(spans) == (1 if cond == "missing" else 2)
                assert all(a2 > b1 for (_, _, b1), (_, a2, _) in zip(spans, spans[1:]))  # sorted, not overlapping


def test_mouth_follows_a_drifting_offset():
    sr, fps = 16000, 25
    env = np.zeros(sr * 5)
    env[int(1.0 * sr):int(1.3 * sr)] = 1.0
    env[int(3.5 * sr):int(3.8 * sr)] = 1.0
    offset = np.linspace(0.0, 200.0, 125)  # per video frame: 0 ms at the start, 200 ms at 5 s
    m = mouth_track(env, sr, fps, 125, offset)
    t = np.arange(125) / fps
    for lo, hi, expect in ((0.5, 2.2, 1.15 + 0.047), (3.0, 4.5, 3.65 + 0.152)):
        sel = (t >= lo) & (t < hi)
        assert float(np.sum(t[sel] * m[sel]) / np.sum(m[sel])) == pytest.approx(expect, abs=0.03)


def test_corruptions_change_their_spans_only():
    import json

    from esva.data.synthetic import condition_spec, corrupt_audio

    cfg = SynthConfig()
    s = condition_spec(302, "angry", "missing", cfg)  # even index: missing audio
    kind, a, b = json.loads(s.corrupt_spans)[0]
    assert kind == "missing_audio"
    audio, _ = synth_audio(s, 16000, np.random.default_rng(0))
    out = corrupt_audio(audio, s, 16000, np.random.default_rng(1))
    lo, hi = int(a * 16000), int(b * 16000)
    assert np.abs(out[lo:hi]).max() < 1e-3 and np.abs(audio[lo:hi]).max() > 1e-2
    np.testing.assert_array_equal(out[:lo], audio[:lo])
    noisy = condition_spec(300, "angry", "noise", cfg)
    audio, _ = synth_audio(noisy, 16000, np.random.default_rng(0))
    out = corrupt_audio(audio, noisy, 16000, np.random.default_rng(1))
    rms = lambda x: float(np.sqrt(np.mean(x ** 2)))  # noqa: E731
    first = json.loads(noisy.corrupt_spans)[0]
    before = slice(0, int(first[1] * 16000))  # untouched (the clip may be scaled down as a whole to avoid clipping)
    for _, a, b in json.loads(noisy.corrupt_spans):
        seg = slice(int(a * 16000), int(b * 16000))
        assert rms(out[seg]) / rms(out[before]) > 1.3 * rms(audio[seg]) / rms(audio[before])
    # video: the spans' frames change (black, grey box, blur), the others are the clean rendering
    for index, cond in ((303, "missing"), (301, "occlusion")):
        sv = condition_spec(index, "happy", cond, cfg)
        n = int(round(sv.duration_s * 25))
        mouth = np.full(n, 0.3)
        clean = dataclasses_replace(sv, corrupt_spans="[]")
        f_bad = render_frames(sv, mouth, 160, 120, np.random.default_rng(5))
        f_ok = render_frames(clean, mouth, 160, 120, np.random.default_rng(5))
        inside = np.zeros(n, bool)
        for kind, a, b in json.loads(sv.corrupt_spans):
            inside[int(round(a * 25)):min(n, int(round(b * 25)))] = True
            if kind == "missing_video":
                assert not f_bad[int(round(a * 25))].any()
        assert inside.any() and all(not np.array_equal(f_bad[i], f_ok[i]) for i in np.flatnonzero(inside))
        np.testing.assert_array_equal(f_bad[~inside], f_ok[~inside])


def dataclasses_replace(spec, **kw):
    import dataclasses

    return dataclasses.replace(spec, **kw)


def test_condition_clips_follow_the_corpus_balanced_and_unknown_conditions_name_the_key():
    from esva.data.synthetic import clip_jobs

    cfg = SynthConfig(n_clips=12, conditions={"drift": 6, "missing": 3})
    jobs = clip_jobs(cfg, "/tmp/x")
    assert [j[0] for j in jobs] == list(range(21))
    assert [j[2] for j in jobs[12:]] == ["drift"] * 6 + ["missing"] * 3
    assert sorted(j[1] for j in jobs[12:18]) == sorted(LABELS)
    with pytest.raises(ValueError, match="synth.conditions: unknown condition 'fog'"):
        SynthConfig(conditions={"fog": 2})
