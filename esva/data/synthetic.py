"""The embedded synthetic corpus: talking-face clips whose emotion cues are known by construction.

Each clip is generated from a seed (params `synth.seed` and the clip index), so the corpus is a
pure function of the params. What a clip carries:

- audio (16 kHz): a source-filter voice. A harmonic glottal source follows an F0 contour and is
  shaped per harmonic by a formant envelope (a vowel per syllable) and a spectral tilt. Emotion
  moves F0 level and range, speaking rate, energy, jitter, shimmer, tremor, breathiness and tilt.
  Cues sit at two time scales: slow contours (declination, a final rise for surprise, phrase
  energy) and short-term fluctuations (jitter, shimmer, a 5-7 Hz tremor for worried). A speaker
  (base F0, vocal-tract length, tempo, loudness) and background noise at a random SNR make the
  classes overlap; `synth.difficulty` scales intensity spread, speaker spread and noise.
- video (25 fps): scikit-image's astronaut photo, warped per emotion (mouth corners, brows, eye
  opening) at a random intensity, with a mouth opening that follows the voice's energy envelope
  shifted by a known offset (positive `offset_ms`: the video lags the audio), head motion and a
  cluttered background.
- text: a transcript from a template bank (lexical cues only in some), valence on MER2023's
  [-5, 5] scale, an open-vocabulary label set, and a reasoning sentence built from the cues that
  were actually generated (not from the label).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.io import wavfile
from scipy.ndimage import gaussian_filter1d
from scipy.signal import butter, sosfilt

from esva import LABELS

# --- emotion cue tables ------------------------------------------------------------------------
# Audio: F0 factor, F0 range (octaves), syllables/s, energy (dB), jitter and shimmer (fractions),
# spectral tilt (dB/octave), breathiness, tremor depth (octaves), final F0 rise (octaves)
AUDIO_CUES: dict[str, dict[str, float]] = {
    "neutral": dict(f0=1.00, f0_range=0.10, rate=4.0, energy_db=0.0, jitter=0.004, shimmer=0.03, tilt=-12.0, breath=0.05, tremor=0.00, rise=0.0),
    "angry": dict(f0=1.12, f0_range=0.22, rate=5.0, energy_db=7.0, jitter=0.012, shimmer=0.09, tilt=-6.0, breath=0.02, tremor=0.00, rise=-0.10),
    "happy": dict(f0=1.22, f0_range=0.40, rate=4.7, energy_db=3.5, jitter=0.006, shimmer=0.04, tilt=-9.0, breath=0.04, tremor=0.00, rise=0.05),
    "sad": dict(f0=0.88, f0_range=0.05, rate=3.0, energy_db=-6.0, jitter=0.010, shimmer=0.06, tilt=-16.0, breath=0.20, tremor=0.00, rise=-0.15),
    "worried": dict(f0=1.06, f0_range=0.14, rate=4.3, energy_db=-2.5, jitter=0.018, shimmer=0.07, tilt=-13.0, breath=0.12, tremor=0.05, rise=0.05),
    "surprise": dict(f0=1.28, f0_range=0.55, rate=4.4, energy_db=4.0, jitter=0.006, shimmer=0.04, tilt=-9.5, breath=0.05, tremor=0.00, rise=0.45),
}

# Face control points on the astronaut photo (original 512x512 pixel coordinates, x, y).
POINTS = {
    "mouth_l": (204.0, 141.0), "mouth_r": (245.0, 141.0), "lip_up": (224.0, 139.0), "lip_low": (224.0, 154.0),
    "chin": (225.0, 178.0), "brow_li": (212.0, 90.0), "brow_lo": (192.0, 90.0), "brow_ri": (237.0, 91.0),
    "brow_ro": (258.0, 93.0), "lid_l": (203.0, 97.0), "lid_r": (247.0, 99.0), "cheek_l": (196.0, 128.0),
    "cheek_r": (254.0, 128.0),
}
SIGMA = {"mouth_l": 7.0, "mouth_r": 7.0, "lip_up": 6.0, "lip_low": 7.0, "chin": 12.0, "brow_li": 6.0, "brow_lo": 6.0,
         "brow_ri": 6.0, "brow_ro": 6.0, "lid_l": 4.0, "lid_r": 4.0, "cheek_l": 9.0, "cheek_r": 9.0}

# Face: displacement (dx, dy) in pixels per control point at intensity 1, plus a resting jaw drop.
FACE_CUES: dict[str, dict] = {
    "neutral": {"mouth_l": (1.0, 2.5), "mouth_r": (-1.0, 2.5), "jaw": 0.0},
    "happy": {"mouth_l": (-3.0, -4.0), "mouth_r": (3.0, -4.0), "cheek_l": (0.0, -2.5), "cheek_r": (0.0, -2.5),
              "lid_l": (0.0, 1.5), "lid_r": (0.0, 1.5), "jaw": 0.1},
    "sad": {"mouth_l": (1.0, 5.0), "mouth_r": (-1.0, 5.0), "brow_li": (0.0, -4.0), "brow_ri": (0.0, -4.0),
            "brow_lo": (0.0, 2.0), "brow_ro": (0.0, 2.0), "lid_l": (0.0, 2.0), "lid_r": (0.0, 2.0), "jaw": 0.0},
    "angry": {"brow_li": (2.5, 5.0), "brow_ri": (-2.5, 5.0), "brow_lo": (0.0, 1.0), "brow_ro": (0.0, 1.0),
              "mouth_l": (2.0, 2.0), "mouth_r": (-2.0, 2.0), "lip_low": (0.0, -2.0), "lid_l": (0.0, 2.5),
              "lid_r": (0.0, 2.5), "jaw": 0.0},
    "worried": {"brow_li": (1.5, -6.0), "brow_ri": (-1.5, -6.0), "brow_lo": (0.0, 1.0), "brow_ro": (0.0, 1.0),
                "mouth_l": (-2.0, 2.0), "mouth_r": (2.0, 2.0), "jaw": 0.05},
    "surprise": {"brow_li": (0.0, -7.0), "brow_ri": (0.0, -7.0), "brow_lo": (0.0, -6.0), "brow_ro": (0.0, -6.0),
                 "lid_l": (0.0, -3.0), "lid_r": (0.0, -3.0), "jaw": 0.45},
}

ADJECTIVE = {"neutral": "calm", "angry": "angry", "happy": "happy", "sad": "sad", "worried": "worried",
             "surprise": "surprised"}

VALENCE = {"neutral": 0.0, "angry": -3.0, "happy": 3.0, "sad": -3.0, "worried": -2.0, "surprise": 1.0}

OV_WORDS = {
    "neutral": ["calm", "relaxed", "indifferent", "composed"],
    "angry": ["annoyed", "frustrated", "irritated", "furious"],
    "happy": ["joyful", "excited", "cheerful", "pleased", "delighted"],
    "sad": ["disappointed", "upset", "gloomy", "lonely"],
    "worried": ["anxious", "nervous", "uneasy", "concerned"],
    "surprise": ["astonished", "amazed", "shocked", "curious"],
}

NEUTRAL_TEMPLATES = [
    "I went to the store after work today.", "The meeting was moved to Thursday afternoon.",
    "We should take the train instead of the bus.", "She told me the package arrived this morning.",
    "The report is on the table next to the window.", "My brother called me about the weekend.",
    "They are painting the kitchen this week.", "I think the class starts at nine.",
    "He left his keys in the car again.", "The weather will change later tonight.",
    "We talked about the plan for next month.", "The restaurant on the corner opened again.",
    "I have to finish the letter before dinner.", "The doctor said to come back on Monday.",
    "Our neighbours bought a new dog.", "The last bus leaves at eleven.",
]
CUE_TEMPLATES = {
    "neutral": ["Nothing special happened today, it was an ordinary day.", "It is fine either way, I do not mind."],
    "angry": ["This is unacceptable, I am so angry about it!", "How dare you lie to me again!",
              "I am sick of this, stop wasting my time!"],
    "happy": ["I am so happy, this is wonderful news!", "We won, I can hardly believe how great this is!",
              "What a lovely surprise party, I love it!"],
    "sad": ["I miss her so much, everything feels empty now.", "I failed again and I feel terrible.",
            "Nobody came, I am so lonely and sad."],
    "worried": ["I am afraid something bad will happen to him.", "What if they do not call back, I am so nervous.",
                "I cannot stop worrying about the results."],
    "surprise": ["Wait, what? I never expected that!", "Really? You did all of this for me?",
                 "Oh my goodness, I cannot believe my eyes!"],
}


@dataclass
class ClipSpec:
    """The ground truth of one clip: everything needed to describe and score it."""

    clip_id: str
    index: int
    label: str
    split: str
    duration_s: float
    offset_ms: float
    intensity: float
    f0_hz: float
    f0_range: float
    rate_sps: float
    energy_db: float
    jitter: float
    shimmer: float
    tilt_db_oct: float
    breath: float
    tremor_depth: float
    tremor_hz: float
    final_rise: float
    vtl_factor: float
    snr_db: float
    face_intensity: float
    jaw_rest: float
    lexical_cue: bool
    valence: float
    transcript: str
    reason: str
    ov_labels: list[str]
    condition: str = ""  # "" for the training corpus; drift | jump | noise | occlusion | missing (CONDITIONS)
    offset_track: str = ""  # JSON [[t_s, offset_ms], ...]: the offset over the video's timeline (linear between)
    corrupt_spans: str = "[]"  # JSON [[kind, start_s, end_s], ...]: audio_noise, occlusion, blur, missing_audio, missing_video


def assign_labels(n: int, seed: int, fractions: tuple[float, float, float]) -> list[tuple[str, str]]:
    """Balanced labels and a stratified train/val/test split, deterministic in (n, seed)."""
    rng = np.random.default_rng([seed, 7])
    labels = [LABELS[i % len(LABELS)] for i in range(n)]
    rng.shuffle(labels)
    out: list[tuple[str, str]] = [("", "")] * n
    for lab in LABELS:
        idx = [i for i, x in enumerate(labels) if x == lab]
        n_tr = int(round(len(idx) * fractions[0]))
        n_va = int(round(len(idx) * fractions[1]))
        for k, i in enumerate(idx):
            split = "train" if k < n_tr else "val" if k < n_tr + n_va else "test"
            out[i] = (lab, split)
    return out


def sample_spec(index: int, label: str, split: str, cfg) -> ClipSpec:
    """Draw one clip's parameters. `cfg` is a SynthConfig."""
    rng = np.random.default_rng([cfg.seed, index])
    d = cfg.difficulty
    cue, base = AUDIO_CUES[label], AUDIO_CUES["neutral"]
    intensity = float(rng.uniform(1.0 - 0.85 * d, 1.0))

    def mix(key: str) -> float:  # neutral + intensity * (emotion - neutral)
        return base[key] + intensity * (cue[key] - base[key])

    spk_f0 = float(np.exp(rng.normal(np.log(170.0), 0.12 + 0.18 * d)))
    speaker_rate = float(np.exp(rng.normal(0.0, 0.05 + 0.12 * d)))
    speaker_loud = float(rng.normal(0.0, 1.0 + 3.0 * d))
    f0 = spk_f0 * (1.0 + intensity * (cue["f0"] - 1.0))
    duration = float(rng.uniform(cfg.min_seconds, cfg.max_seconds))
    duration = round(duration * cfg.fps) / cfg.fps
    lexical = bool(rng.random() < cfg.lexical_cue_prob)
    transcript = str(rng.choice(CUE_TEMPLATES[label] if lexical else NEUTRAL_TEMPLATES))
    valence = float(np.clip(VALENCE[label] * intensity + rng.normal(0, 0.4 + 0.6 * d), -5, 5))
    n_extra = int(rng.integers(1, 3))
    ov = [label] + [str(w) for w in rng.choice(OV_WORDS[label], size=n_extra, replace=False)]
    spec = ClipSpec(
        clip_id=f"syn_{index:05d}", index=index, label=label, split=split, duration_s=duration,
        offset_ms=float(rng.uniform(-cfg.max_offset_ms, cfg.max_offset_ms)), intensity=intensity,
        f0_hz=f0, f0_range=max(0.02, mix("f0_range") * float(rng.uniform(0.8, 1.2))),
        rate_sps=mix("rate") * speaker_rate, energy_db=mix("energy_db") + speaker_loud,
        jitter=max(0.0, mix("jitter") * float(rng.uniform(0.7, 1.3))),
        shimmer=max(0.0, mix("shimmer") * float(rng.uniform(0.7, 1.3))),
        tilt_db_oct=mix("tilt") + float(rng.normal(0, 0.5 + 1.5 * d)),
        breath=max(0.0, mix("breath") + float(rng.normal(0, 0.02 * d))),
        tremor_depth=mix("tremor"), tremor_hz=float(rng.uniform(5.0, 7.0)), final_rise=mix("rise"),
        vtl_factor=float(rng.uniform(0.92, 1.12)),
        snr_db=float(rng.uniform(32.0 - 22.0 * d, 40.0 - 15.0 * d)),
        face_intensity=float(rng.uniform(1.0 - 0.85 * d, 1.0)), jaw_rest=0.0, lexical_cue=lexical,
        valence=round(valence, 3), transcript=transcript, reason="", ov_labels=ov,
    )
    spec.jaw_rest = FACE_CUES[label].get("jaw", 0.0) * spec.face_intensity
    spec.reason = describe(spec)
    return spec


CONDITIONS = ("drift", "jump", "noise", "occlusion", "missing")  # `synth.conditions`: extra evaluation splits
CONDITION_MIN_SECONDS = 3.5  # long enough for several eq. 4 windows on either side of a change


def _spans(rng: np.random.Generator, duration: float, n: int, lo: float, hi: float) -> list[tuple[float, float]]:
    """n non-overlapping spans of lo..hi seconds inside [0.2, duration - 0.2], sorted."""
    out: list[tuple[float, float]] = []
    for _ in range(50 * n):
        if len(out) == n:
            break
        length = float(rng.uniform(lo, hi))
        start = float(rng.uniform(0.2, max(0.2, duration - 0.2 - length)))
        if all(start > e + 0.2 or start + length < s0 - 0.2 for s0, e in out):
            out.append((start, start + length))
    return sorted(out)


def condition_spec(index: int, label: str, condition: str, cfg) -> ClipSpec:
    """A clip of a harder evaluation condition: the training corpus' spec (same cues), at least
    CONDITION_MIN_SECONDS long, with its offset track and corrupted spans drawn from its own stream.
    - drift: the offset moves linearly from o0 to o1 (|o1 - o0| >= 0.5 max_offset_ms) over the clip;
    - jump: o0 until a time in 35-65% of the clip, then o1 (|o1 - o0| >= 0.6 max_offset_ms);
    - noise: two bursts of loud white noise (twice the clip's RMS) of 0.4-0.8 s in the audio;
    - occlusion: two spans of 0.5-1.0 s where the lower face is covered (occlusion) or the frame blurred (blur);
    - missing: one span of 25-40% of the clip where the audio is silent (missing_audio, even indices) or the
      video black (missing_video, odd indices).
    offset_ms is the track's mean over the clip (the per-clip figure)."""
    if condition not in CONDITIONS:
        raise ValueError(f"synth.conditions: unknown condition {condition!r}; choose from {list(CONDITIONS)}")
    spec = sample_spec(index, label, condition, cfg)
    rng = np.random.default_rng([cfg.seed, index, 2])
    lo, hi = cfg.min_seconds, max(cfg.max_seconds, CONDITION_MIN_SECONDS)
    u = (spec.duration_s - cfg.min_seconds) / (cfg.max_seconds - cfg.min_seconds) if cfg.max_seconds > lo else 1.0
    dur = round(max(CONDITION_MIN_SECONDS + u * (hi - CONDITION_MIN_SECONDS), CONDITION_MIN_SECONDS) * cfg.fps) / cfg.fps
    m = cfg.max_offset_ms
    o0 = float(rng.uniform(-m, m))
    knots: list[list[float]]
    spans: list[list] = []
    if condition in ("drift", "jump"):
        least = (0.5 if condition == "drift" else 0.6) * m
        room_up, room_down = m - o0, o0 + m
        up = room_up >= least and (room_down < least or rng.random() < 0.5)
        o1 = o0 + (1 if up else -1) * float(rng.uniform(least, room_up if up else room_down))
        if condition == "drift":
            knots = [[0.0, o0], [dur, o1]]
        else:
            tj = float(rng.uniform(0.35, 0.65)) * dur
            knots = [[0.0, o0], [tj, o0], [tj + 1e-3, o1], [dur, o1]]
    else:
        knots = [[0.0, o0], [dur, o0]]
        if condition == "noise":
            spans = [["audio_noise", a, b] for a, b in _spans(rng, dur, 2, 0.4, 0.8)]
        elif condition == "occlusion":
            spans = [[str(rng.choice(["occlusion", "blur"])), a, b] for a, b in _spans(rng, dur, 2, 0.5, 1.0)]
        else:
            a, b = _spans(rng, dur, 1, 0.25 * dur, 0.4 * dur)[0]
            spans = [["missing_audio" if index % 2 == 0 else "missing_video", a, b]]
    knots = [[round(a, 4), round(b, 3)] for a, b in knots]
    t = np.linspace(0.0, dur, 201)
    spec.duration_s = dur
    spec.offset_ms = float(np.mean(np.interp(t, [k[0] for k in knots], [k[1] for k in knots])))
    spec.condition = condition
    spec.offset_track = json.dumps(knots)
    spec.corrupt_spans = json.dumps([[k, round(a, 4), round(b, 4)] for k, a, b in spans])
    return spec


def offset_at(track: str, t: np.ndarray) -> np.ndarray:
    """The offset (ms) at times t (s) of an offset_track JSON."""
    knots = json.loads(track)
    return np.interp(t, [k[0] for k in knots], [k[1] for k in knots])


def describe(s: ClipSpec) -> str:
    """A reasoning sentence from the generated cue values (compared to the neutral baseline)."""
    b = AUDIO_CUES["neutral"]
    pitch = "high-pitched" if s.f0_hz > 195 else "low-pitched" if s.f0_hz < 150 else "moderately pitched"
    melody = ("with wide pitch variation" if s.f0_range > 0.25 else "with a flat intonation" if s.f0_range < 0.08
              else "with some pitch movement")
    pace = "fast" if s.rate_sps > 4.6 else "slowly" if s.rate_sps < 3.5 else "at a moderate pace"
    loud = "loud" if s.energy_db > 3 else "soft" if s.energy_db < -3 else "of normal loudness"
    extra = []
    if s.tremor_depth > 0.02:
        extra.append("the voice trembles")
    if s.jitter > 2 * b["jitter"] + 0.002:
        extra.append("the voice is rough and unsteady")
    if s.breath > 0.1:
        extra.append("the voice is breathy")
    if s.final_rise > 0.2:
        extra.append("the pitch rises sharply at the end")
    elif s.final_rise < -0.08:
        extra.append("the pitch falls at the end")
    audio = f"The speaker talks {pace} in a {pitch} voice {melody}; the voice is {loud}"
    audio += (", " + ", ".join(extra) if extra else "") + "."
    f = FACE_CUES[s.label]
    k = s.face_intensity
    face = []
    corner = f.get("mouth_l", (0.0, 0.0))[1] * k
    if corner < -1.5:
        face.append("the mouth corners are raised")
    elif corner > 1.5:
        face.append("the mouth corners are pulled down")
    brow_in = f.get("brow_li", (0.0, 0.0))[1] * k
    brow_out = f.get("brow_lo", (0.0, 0.0))[1] * k
    if brow_in < -2 and brow_out < -2:
        face.append("the eyebrows are raised")
    elif brow_in < -2:
        face.append("the inner eyebrows are raised")
    elif brow_in > 2:
        face.append("the eyebrows are lowered and drawn together")
    lid = f.get("lid_l", (0.0, 0.0))[1] * k
    if lid < -1.5:
        face.append("the eyes are wide open")
    elif lid > 1.5:
        face.append("the eyes are narrowed")
    if s.jaw_rest > 0.2:
        face.append("the jaw drops")
    video = ("In the video, " + ", ".join(face) + ".") if face else "The face shows little expression."
    words = (f"The words themselves suggest the person is {ADJECTIVE[s.label]}." if s.lexical_cue and s.label != "neutral"
             else "The words carry no clear emotion.")
    return f"{audio} {video} {words}"


# --- audio ---------------------------------------------------------------------------------------
VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]],
                  dtype=np.float64)
BANDWIDTHS = np.array([90.0, 110.0, 160.0])


def _syllables(rng: np.random.Generator, duration: float, rate: float) -> list[tuple[float, float, float]]:
    """(onset, length, stress) per syllable, with a lead-in, a trailing silence and phrase pauses."""
    t = float(rng.uniform(0.12, 0.3))
    end = duration - float(rng.uniform(0.15, 0.3))
    out = []
    since_pause = 0
    while t < end - 0.08:
        length = float(rng.uniform(0.7, 1.3)) / rate
        length = min(length, end - t)
        stress = float(rng.uniform(0.55, 1.0))
        out.append((t, length, stress))
        t += length * float(rng.uniform(1.0, 1.15))
        since_pause += 1
        if since_pause >= int(rng.integers(4, 8)) and t < end - 0.6:
            t += float(rng.uniform(0.15, 0.35))
            since_pause = 0
    return out


def _lowpass_noise(rng: np.random.Generator, n: int, sr: int, cutoff: float) -> np.ndarray:
    sos = butter(2, min(cutoff / (sr / 2), 0.99), output="sos")
    x = sosfilt(sos, rng.standard_normal(n))
    return x / (np.std(x) + 1e-12)


def synth_audio(s: ClipSpec, sr: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Returns (audio float32 in [-1, 1], clean voicing energy envelope per sample)."""
    n = int(round(s.duration_s * sr))
    t = np.arange(n) / sr
    syl = _syllables(rng, s.duration_s, s.rate_sps)
    env = np.zeros(n)
    accent = np.zeros(n)
    ctrl_vowel = np.zeros((n, 3))
    ctrl_w = np.zeros(n)
    for onset, length, stress in syl:
        a, b = int(onset * sr), min(n, int((onset + length) * sr))
        if b - a < 8:
            continue
        u = np.linspace(0, 1, b - a)
        shape = np.sin(np.pi * u) ** 0.8 * (1 - 0.3 * u)  # attack-decay of one syllable
        env[a:b] += stress * shape
        accent[a:b] += (stress - 0.75) * shape
        vowel = VOWELS[int(rng.integers(0, len(VOWELS)))] * s.vtl_factor ** -1
        ctrl_vowel[a:b] += vowel[None, :] * shape[:, None]
        ctrl_w[a:b] += shape
    # formants between syllables: hold the last vowel (weighted average where they overlap)
    held = ctrl_vowel / np.maximum(ctrl_w[:, None], 1e-6)
    valid = ctrl_w > 1e-3
    if valid.any():
        idx = np.where(valid, np.arange(n), 0)
        np.maximum.accumulate(idx, out=idx)
        held = held[idx]
        first = np.argmax(valid)
        held[:first] = held[first]
    else:
        held[:] = VOWELS[0]
    formants = gaussian_filter1d(held, sigma=0.015 * sr, axis=0)
    # F0 contour: declination + syllable accents + final rise (slow) + tremor + jitter (fast)
    u = t / s.duration_s
    slow = -0.5 * (u - 0.5) + 4.0 * accent
    slow = slow + s.final_rise / max(s.f0_range, 1e-3) * np.clip((u - 0.7) / 0.3, 0, 1) ** 2
    log2_f0 = np.log2(s.f0_hz) + s.f0_range * slow
    log2_f0 += s.tremor_depth * np.sin(2 * np.pi * s.tremor_hz * t + rng.uniform(0, 2 * np.pi))
    log2_f0 += s.jitter * 1.44 * _lowpass_noise(rng, n, sr, cutoff=float(s.f0_hz) * 0.5)
    f0 = np.clip(2.0 ** log2_f0, 60.0, 600.0)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    n_harm = int(min(60, 5000.0 / f0.min()))
    source = np.zeros(n)
    tilt_exp = s.tilt_db_oct / 6.02
    f_bin = 5000.0
    for k in range(1, n_harm + 1):
        fk = k * f0
        gain = np.zeros(n)
        for j in range(3):
            gain += 1.0 / (1.0 + ((fk - formants[:, j]) / BANDWIDTHS[j]) ** 2) * (1.0 / (j + 1))
        amp = (k ** tilt_exp) * (0.15 + gain) * (fk < f_bin)
        source += amp * np.sin(k * phase)
    shimmer = 1.0 + s.shimmer * _lowpass_noise(rng, n, sr, cutoff=float(s.f0_hz) * 0.5)
    voiced = source * shimmer * env
    voiced /= np.sqrt(np.mean(voiced ** 2)) + 1e-12
    # breath (aspiration noise under voicing) and consonant bursts at syllable onsets
    sos_hi = butter(2, [1500 / (sr / 2), 6000 / (sr / 2)], btype="band", output="sos")
    breath = sosfilt(sos_hi, rng.standard_normal(n)) * env
    breath /= np.sqrt(np.mean(breath ** 2)) + 1e-12
    bursts = np.zeros(n)
    for onset, _, stress in syl:
        if rng.random() < 0.6:
            a = int(max(0.0, onset - 0.04) * sr)
            b = min(n, a + int(rng.uniform(0.03, 0.07) * sr))
            bursts[a:b] = np.hanning(b - a) * stress
    bursts = sosfilt(sos_hi, rng.standard_normal(n)) * bursts
    voice = voiced + s.breath * 2.0 * breath + 0.35 * bursts
    level = 10 ** ((s.energy_db - 20.0) / 20.0)
    voice *= level / (np.sqrt(np.mean(voice ** 2)) + 1e-12)
    # background: pink-ish noise at the clip's SNR, relative to the voiced part's power
    active = env > 0.2 * env.max()
    p_sig = np.mean(voice[active] ** 2) if active.any() else np.mean(voice ** 2)
    noise = np.cumsum(rng.standard_normal(n)) * 0.02 + rng.standard_normal(n)
    noise = noise - gaussian_filter1d(noise, sigma=sr * 0.05)
    noise *= np.sqrt(p_sig / (10 ** (s.snr_db / 10.0)) / (np.mean(noise ** 2) + 1e-12))
    audio = voice + noise
    peak = np.abs(audio).max()
    if peak > 0.98:
        audio *= 0.98 / peak
    return audio.astype(np.float32), env


# --- video ---------------------------------------------------------------------------------------
SPRITE_BOX = (140, 20, 310, 225)  # x0, y0, x1, y1 of the face sprite in the astronaut photo


@functools.lru_cache(maxsize=1)
def _astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[..., :3])


@functools.lru_cache(maxsize=8)
def _texture(name: str) -> np.ndarray:
    from skimage import data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


BACKGROUNDS = ("brick", "grass", "gravel", "coffee", "rocket", "hubble_deep_field", "colorwheel")


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    name = str(rng.choice(BACKGROUNDS))
    tex = _texture(name)
    th, tw = tex.shape[:2]
    scale = max(w / tw, h / th) * float(rng.uniform(1.0, 1.6))
    tex = cv2.resize(tex, (int(tw * scale) + 1, int(th * scale) + 1), interpolation=cv2.INTER_AREA)
    y0 = int(rng.integers(0, tex.shape[0] - h + 1))
    x0 = int(rng.integers(0, tex.shape[1] - w + 1))
    bg = tex[y0:y0 + h, x0:x0 + w].astype(np.float32)
    tint = rng.uniform(0.6, 1.2, size=3)
    bg = bg * tint[None, None, :]
    for _ in range(int(rng.integers(8, 20))):  # clutter: boxes, discs and lines
        color = tuple(float(c) for c in rng.uniform(0, 255, size=3))
        kind = rng.integers(0, 3)
        if kind == 0:
            p = rng.integers(0, [w, h]); q = p + rng.integers(8, 80, size=2)
            cv2.rectangle(bg, tuple(int(x) for x in p), tuple(int(x) for x in q), color, -1)
        elif kind == 1:
            c = rng.integers(0, [w, h]); r = int(rng.integers(4, 30))
            cv2.circle(bg, tuple(int(x) for x in c), r, color, -1)
        else:
            p = rng.integers(0, [w, h]); q = rng.integers(0, [w, h])
            cv2.line(bg, tuple(int(x) for x in p), tuple(int(x) for x in q), color, int(rng.integers(1, 5)))
    return np.clip(bg, 0, 255)


def _displacement(shape: tuple[int, int], moves: dict[str, tuple[float, float]], scale: float = 1.0) -> np.ndarray:
    """Smooth displacement field (H, W, 2) from control-point moves (sprite coordinates)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    field = np.zeros((h, w, 2), np.float32)
    x0, y0 = SPRITE_BOX[:2]
    for name, (dx, dy) in moves.items():
        if name not in POINTS or (dx == 0 and dy == 0):
            continue
        px, py = POINTS[name][0] - x0, POINTS[name][1] - y0
        sig = SIGMA[name]
        g = np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * sig * sig))
        field[..., 0] += dx * scale * g
        field[..., 1] += dy * scale * g
    return field


def _warp(img: np.ndarray, field: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(img, xx - field[..., 0], yy - field[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def render_frames(s: ClipSpec, mouth: np.ndarray, width: int, height: int, rng: np.random.Generator,
                  fps: int = 25) -> np.ndarray:
    """(N, H, W, 3) uint8 frames; `mouth` is the per-frame opening in [0, 1] (already shifted). The video spans
    of `s.corrupt_spans` are applied: occlusion (a grey box over the lower face), blur, missing_video (black)."""
    x0, y0, x1, y1 = SPRITE_BOX
    sprite = _astronaut()[y0:y1, x0:x1].astype(np.float32)
    sh, sw = sprite.shape[:2]
    moves = {k: (float(v[0]), float(v[1])) for k, v in FACE_CUES[s.label].items() if k != "jaw"}
    leak = 0.8 * (1.0 - s.face_intensity)  # random expression noise, larger when the emotion is weak
    for name in ("mouth_l", "mouth_r", "brow_li", "brow_ri", "lid_l", "lid_r"):
        dx, dy = moves.get(name, (0.0, 0.0))
        moves[name] = (dx + float(rng.normal(0, leak)), dy + float(rng.normal(0, 1.5 * leak)))
    expr = _displacement((sh, sw), moves, scale=s.face_intensity)
    jaw = _displacement((sh, sw), {"lip_low": (0.0, 1.0), "chin": (0.0, 0.7)})
    base = sprite
    mask = np.zeros((sh, sw), np.float32)
    cv2.ellipse(mask, (sw // 2, sh // 2 + 2), (sw // 2 - 8, sh // 2 - 4), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 5)
    bg = _background(rng, width, height)
    scale = float(height * 0.78 / sh * rng.uniform(0.85, 1.0))
    cx = width / 2 + float(rng.uniform(-0.12, 0.12)) * width
    cy = height / 2 + float(rng.uniform(-0.05, 0.05)) * height
    n = len(mouth)
    tt = np.arange(n) / 25.0
    ph = rng.uniform(0, 2 * np.pi, size=3)
    fr = rng.uniform(0.15, 0.5, size=3)
    rot = 4.0 * np.sin(2 * np.pi * fr[0] * tt + ph[0]) + gaussian_filter1d(rng.normal(0, 1.5, n), 2)
    dxs = 0.03 * width * np.sin(2 * np.pi * fr[1] * tt + ph[1])
    dys = 0.02 * height * np.sin(2 * np.pi * fr[2] * tt + ph[2])
    mx = (POINTS["lip_up"][0] - x0 + POINTS["lip_low"][0] - x0) / 2
    my = (POINTS["lip_up"][1] - y0 + POINTS["lip_low"][1] - y0) / 2
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        o = float(np.clip(mouth[i] + s.jaw_rest, 0, 1.2))
        img = _warp(base, expr + jaw * (9.0 * o))
        if o > 0.02:  # the open mouth: a dark cavity between the lips
            cav = img.copy()
            cv2.ellipse(cav, (int(mx), int(my + 4.5 * o)), (int(9 + 5 * o), max(1, int(6.0 * o))), 0, 0, 360,
                        (70.0, 25.0, 30.0), -1)
            img = 0.15 * img + 0.85 * cav if o > 0.3 else img * (1 - 2.5 * o * 0.34) + cav * (2.5 * o * 0.34)
        m = cv2.getRotationMatrix2D((sw / 2, sh / 2), float(rot[i]), scale)
        m[0, 2] += cx + dxs[i] - sw / 2
        m[1, 2] += cy + dys[i] - sh / 2
        face = cv2.warpAffine(img, m, (width, height), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(mask, m, (width, height), flags=cv2.INTER_LINEAR)[..., None]
        frame = bg * (1 - alpha) + face * alpha
        frame += rng.normal(0, 2.0, size=(height, width, 1))
        frames[i] = np.clip(frame, 0, 255).astype(np.uint8)
    for kind, a, b in json.loads(s.corrupt_spans or "[]"):
        lo, hi = int(round(a * fps)), min(n, int(round(b * fps)))
        for i in range(lo, hi):
            if kind == "missing_video":
                frames[i] = 0
            elif kind == "blur":
                frames[i] = cv2.GaussianBlur(frames[i], (0, 0), 7)
            elif kind == "occlusion":  # the lower half of the face: the mouth never shows
                fx0, fx1 = int(cx + dxs[i] - 0.4 * sw * scale), int(cx + dxs[i] + 0.4 * sw * scale)
                fy0, fy1 = int(cy + dys[i] + 0.05 * sh * scale), int(cy + dys[i] + 0.5 * sh * scale)
                frames[i, max(0, fy0):max(0, fy1), max(0, fx0):max(0, fx1)] = 128
    return frames


def mouth_track(env: np.ndarray, sr: int, fps: int, n_frames: int, offset_ms: float | np.ndarray) -> np.ndarray:
    """Mouth opening per video frame: the smoothed voicing envelope at time t - offset (one offset, or one
    per frame: the offset track on the video's timeline)."""
    smooth = gaussian_filter1d(env, sigma=0.02 * sr)
    peak = smooth.max() if smooth.max() > 0 else 1.0
    t = np.arange(n_frames) / fps - np.asarray(offset_ms) / 1000.0
    val = np.interp(t * sr, np.arange(len(smooth)), smooth / peak, left=0.0, right=0.0)
    return np.clip(val, 0, 1) ** 0.7


# --- one clip, end to end ------------------------------------------------------------------------
def encode_mp4(path: Path, frames: np.ndarray, audio: np.ndarray, fps: int, sr: int, crf: int) -> None:
    """H.264 + AAC mp4 via ffmpeg-python (no shell); written to a temp name, then renamed."""
    import ffmpeg

    from esva.media.ffmpeg import ffmpeg_binary

    n, h, w, _ = frames.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".part.mp4")
    with tempfile.TemporaryDirectory() as td:
        wav = os.path.join(td, "a.wav")
        wavfile.write(wav, sr, (np.clip(audio, -1, 1) * 32767).astype(np.int16))
        vin = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", framerate=fps)
        ain = ffmpeg.input(wav)
        out = ffmpeg.output(vin, ain, str(tmp), vcodec="libx264", pix_fmt="yuv420p", crf=crf, preset="veryfast",
                            acodec="aac", audio_bitrate="96k", ar=sr, ac=1, movflags="+faststart",
                            **{"x264-params": "threads=1", "fflags": "+bitexact", "map_metadata": -1})
        args = out.global_args("-hide_banner", "-nostdin", "-loglevel", "error", "-y").compile(cmd=ffmpeg_binary())
        args.remove("-nostdin")  # stdin carries the frames
        proc = subprocess.run(args, input=frames.tobytes(), capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg failed writing {path}: {proc.stderr.decode(errors='replace')[-500:]}")
    os.replace(tmp, path)


def generate_clip(index: int, label: str, split: str, cfg, out_dir: str) -> dict:
    """Generate one clip into out_dir/videos; returns its ground-truth row."""
    spec = condition_spec(index, label, split, cfg) if split in CONDITIONS else sample_spec(index, label, split, cfg)
    rng = np.random.default_rng([cfg.seed, index, 1])
    audio, env = synth_audio(spec, cfg.sample_rate, rng)
    n_frames = int(round(spec.duration_s * cfg.fps))
    offset = offset_at(spec.offset_track, np.arange(n_frames) / cfg.fps) if spec.offset_track else spec.offset_ms
    mouth = mouth_track(env, cfg.sample_rate, cfg.fps, n_frames, offset)
    frames = render_frames(spec, mouth, cfg.width, cfg.height, rng, cfg.fps)
    audio = corrupt_audio(audio, spec, cfg.sample_rate, np.random.default_rng([cfg.seed, index, 3]))
    encode_mp4(Path(out_dir) / "videos" / f"{spec.clip_id}.mp4", frames, audio, cfg.fps, cfg.sample_rate, cfg.crf)
    row = asdict(spec)
    row["ov_labels"] = json.dumps(spec.ov_labels)
    return row


def corrupt_audio(audio: np.ndarray, s: ClipSpec, sr: int, rng: np.random.Generator) -> np.ndarray:
    """The audio spans of `s.corrupt_spans`: audio_noise (white noise at twice the clip's RMS, -6 dB SNR),
    missing_audio (silence with a -80 dB floor). A clip that would clip is scaled down as a whole."""
    spans = json.loads(s.corrupt_spans or "[]")
    if not spans:
        return audio
    out = audio.astype(np.float64).copy()
    rms = float(np.sqrt(np.mean(out ** 2))) + 1e-9
    for kind, a, b in spans:
        lo, hi = int(a * sr), min(len(out), int(b * sr))
        if kind == "audio_noise":
            out[lo:hi] += rng.standard_normal(hi - lo) * 2.0 * rms
        elif kind == "missing_audio":
            out[lo:hi] = rng.standard_normal(hi - lo) * 1e-4
    peak = np.abs(out).max()
    if peak > 0.98:
        out *= 0.98 / peak
    return out.astype(np.float32)


def _worker(args) -> dict:
    index, label, split, cfg_json, out_dir = args
    from esva.config import SynthConfig

    cv2.setNumThreads(1)
    return generate_clip(index, label, split, SynthConfig.model_validate_json(cfg_json), out_dir)


def clip_jobs(cfg, out_dir: str) -> list[tuple]:
    """The training corpus' clips (indices 0..n_clips-1), then each condition's (`synth.conditions`, in
    CONDITIONS order, labels dealt round-robin so each condition is balanced), indices after them."""
    fr = (cfg.split.train, cfg.split.val, cfg.split.test)
    cfg_json = cfg.model_dump_json()
    jobs = [(i, lab, sp, cfg_json, out_dir) for i, (lab, sp) in enumerate(assign_labels(cfg.n_clips, cfg.seed, fr))]
    index = cfg.n_clips
    for cond in CONDITIONS:
        for k in range(cfg.conditions.get(cond, 0)):
            jobs.append((index, LABELS[k % len(LABELS)], cond, cfg_json, out_dir))
            index += 1
    return jobs


def ov_to_mer2024(labels: list[str]) -> str:
    """MER2024-OV writes the open set as a Python-list string."""
    return "[" + ", ".join(f"'{w}'" for w in labels) + "]"


def gt_columns() -> list[str]:
    return list(ClipSpec.__dataclass_fields__)


__all__ = ["CONDITIONS", "condition_spec", "offset_at", "corrupt_audio", "AUDIO_CUES", "FACE_CUES", "ClipSpec", "assign_labels", "clip_jobs", "generate_clip", "describe",
           "sample_spec", "synth_audio", "render_frames", "mouth_track", "ov_to_mer2024"]
