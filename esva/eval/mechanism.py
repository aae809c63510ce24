"""Mechanism checks: synthetic conditions in which one ESVA component's effect exists by construction.

These test the implementation, not the paper. Each condition builds stage-1 features directly (in memory, as
`esva.train.stage1.FeatureData`): no video, no decoding, no frozen encoder (in the embedded profile those have
random weights anyway). A table built from them says whether the code of MSFE and of the aligner can use the
signal it was designed for; it is no evidence for the paper's claims on real data.

Notation: x_t in R^D one 50 Hz "HuBERT" frame, v_s in R^D one 25 Hz "MAE" frame, e ~ N(0, sigma^2 I) fresh noise
per frame (sigma = `noise`, 1), A = `amplitude` and C = `carrier` in units of sigma. Unit directions u, w (audio,
MSFE condition), u_1, u_2, u_3 (audio) and w_1, w_2, w_3 (video) are drawn once per condition from the data seed,
orthonormal within each set. Both conditions have two classes in equal numbers in every split; their names are
two of MER2023's labels only because the trainer scores runs on a supported label set: they mean what is
written below, no emotion.

1. `msfe_short_time` (audio only, `features.use = [hubert]`, no alignment). A clip has T = 50 * `msfe_seconds`
   frames and E = `msfe_events` two-frame patterns at random, non-overlapping starts p_1..p_E (at least two free
   frames between patterns):

       class 0:  x_{p_i} = e + A sigma u,  x_{p_i + 1} = e + A sigma w        (u, then w)
       class 1:  x_{p_i} = e + A sigma w,  x_{p_i + 1} = e + A sigma u        (w, then u)
       elsewhere x_t = e_t

   Every clip of either class holds exactly E frames e + A sigma u, E frames e + A sigma w and T - 2E plain noise
   frames: the multiset of its frames has the same distribution in both classes, so any function of single
   frames pooled over the clip (a per-frame MLP then a mean: the model without MSFE) is at chance. Only the order
   of two neighbouring frames tells the classes apart, e.g. the oracle sum_t (u.x_t)(w.x_{t+1}) - (w.x_t)(u.x_{t+1}),
   about +E A^2 sigma^2 in class 0 and -E A^2 sigma^2 in class 1: MSFE's temporal convolutions (kernels of 3
   frames and more, then a nonlinearity) can compute such a statistic. Variants: `msfe` (msfe.enabled true) and
   `no_msfe` (false). Expected: msfe above chance and above no_msfe; no_msfe no better than chance.

2. `align_cooccurrence` (`features.use = [hubert, mae]`, `align.video = mae`). A clip has S = 25 *
   `align_seconds` video frames and 2S audio frames. E = `align_events` (even) event slots start at video frames
   s_1..s_E, each L = 2 video frames long, at least K + 1 frames apart and K frames from either end (K =
   align.max_shift in 25 Hz frames). The audio kinds k_i in {1, 2} are a random order of E/2 ones and E/2 twos;
   the video kind is j_i = k_i in class 0 (A1 with V1, A2 with V2) and j_i = 3 - k_i in class 1 (A1 with V2, A2
   with V1). The video lags the audio by the clip's true offset d (video frames; |d| uniform on L + 1..K, random
   sign; offset_ms = 40 d, > 0: the video lags). With g_s ~ N(0, 1) i.i.d., set to 0 on the event frames s_i..s_i
   + L - 1:

       x_t = e_t + C sigma g_{floor(t/2)} u_3 + A sigma u_{k_i} [2 s_i <= t < 2 (s_i + L)]
       v_s = e_s + C sigma g_{s - d} w_3     + A sigma w_{j_i} [s_i + d <= s < s_i + d + L]

   The carrier g is the timing cue the aligner locks on (as speech energy and mouth movement are in real clips),
   independent of the class; it is zero on events so that no shared random value ties an audio event to its
   video event (else the pooled audio and video embeddings could compare the two kinds through it). Each
   modality alone is independent of the class (E/2 events of each kind, in a random order, at random times), so
   the audio-only and video-only paths are at chance. The class is which video kind co-occurs with which audio
   kind once the video is moved back by d: the oracle sum_t (u_1.x)(w_1.v) + (u_2.x)(w_2.v) - (u_1.x)(w_2.v) -
   (u_2.x)(w_1.v) over audio frames t and video frames t + d. Without that shift no audio event overlaps any
   video event (|d| > L and slots more than K + L apart), so a frame-wise joint path is at chance too. Variants:
   `full` (alignment on, align.max_shift as in params.yaml: the aligner must find d and shift the video back
   before the frame-wise joint fusion), `no_shift` (the same model searching the single offset 0: frame-wise
   joint fusion of the unshifted streams), `no_align` (align.enabled false: no joint path). MSFE is off in every
   variant of this condition: its receptive field (up to 15 audio frames) could otherwise let a misaligned pair
   meet without any shift. Expected: full above chance and above both others; no_shift and no_align no better than chance.

   `no_shift` sets align.max_shift = 0 on a copy of the config (`model_copy`, which does not validate): the
   config's bound (max_shift >= 1) is for users; the model computes the single offset 0 as it should (p(0) = 1,
   the soft shift is the identity).

`run_condition` trains every variant of a condition once per seed with `esva.train.stage1.train` (epochs chosen
on the condition's own validation split; `mechanism.epochs`, `.patience` and `.warmup_epochs` in place of
train.epochs, train.patience and align.warmup_epochs) and predicts its own test split; it returns, per variant,
the multi-seed layout that `esva.eval.tables` reads (labels, design, runs, predictions by seed).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from esva.train.cv import repeat_seeds
from esva.train.stage1 import Clip, FeatureData

CORPUS = "synthetic-mechanism"
HUBERT_RATE, MAE_RATE = 50.0, 25.0  # the frame rates of the features stage 1 reads (HuBERT 20 ms, MAE at 25 fps)
LABELS = ("happy", "sad")  # placeholders: class 0 and class 1 of each condition (see the module docstring)
EVENT_FRAMES = 2  # L: video frames per event of the alignment condition
NOTE = ("feature-level synthetic condition: features generated directly (no video, decoding or frozen encoders); "
        "a test of the implementation, not evidence for the paper's claims on real data")


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    msfe: bool  # msfe.enabled
    align: bool  # align.enabled
    no_shift: bool = False  # align.max_shift = 0


@dataclasses.dataclass(frozen=True)
class Condition:
    name: str
    use: tuple[str, ...]
    variants: tuple[Variant, ...]
    reference: str  # the variant with the component
    what: str
    expected: str
    expect: dict  # {"above_chance": [...], "worse_than_reference": [...], "not_above_chance": [...]}


CONDITIONS: dict[str, Condition] = {
    "msfe_short_time": Condition(
        "msfe_short_time", ("hubert",), (Variant("msfe", True, False), Variant("no_msfe", False, False)), "msfe",
        "audio only; the class is the temporal order of two-frame patterns (u then w, or w then u): every "
        "single frame, and so every pooled per-frame statistic, has the same distribution in both classes",
        "msfe above chance and above no_msfe; no_msfe no better than chance",
        {"above_chance": ["msfe"], "worse_than_reference": ["no_msfe"], "not_above_chance": ["no_msfe"]}),
    "align_cooccurrence": Condition(
        "align_cooccurrence", ("hubert", "mae"),
        (Variant("full", False, True), Variant("no_shift", False, True, no_shift=True),
         Variant("no_align", False, False)), "full",
        "audio events A1/A2 and facial events V1/V2; the class is which video kind co-occurs with which audio "
        "kind, the video lagging by a random true offset larger than an event, a shared timing carrier for the "
        "aligner; each modality alone carries no class information; MSFE off in every variant",
        "full above chance and above no_shift and no_align; no_shift and no_align no better than chance",
        {"above_chance": ["full"], "worse_than_reference": ["no_shift", "no_align"],
         "not_above_chance": ["no_shift", "no_align"]}),
}


def _unit_dirs(rng: np.random.Generator, dim: int, n: int) -> np.ndarray:
    """n orthonormal directions in R^dim, (n, dim)."""
    q, _ = np.linalg.qr(rng.standard_normal((dim, n)))
    return q.T.astype(np.float32)


def spread(rng: np.random.Generator, length: int, n: int, width: int, gap: int) -> np.ndarray:
    """n sorted starts in [0, length - width] of segments `width` long with at least `gap` free frames between
    consecutive ones, drawn uniformly over such placements' slack."""
    slack = length - (n * width + (n - 1) * gap)
    if slack < 0:
        raise ValueError(f"{n} events of {width} frames with {gap} frames between them do not fit in {length} frames")
    c = np.sort(rng.integers(0, slack + 1, size=n))
    return c + np.arange(n) * (width + gap)


def _splits(per_split: dict[str, int], rng: np.random.Generator) -> list[tuple[str, int]]:
    """(split, class) for every clip: per_split[split] clips of each class, in a shuffled order per split."""
    out = []
    for split, n in per_split.items():
        labels = np.repeat(np.arange(len(LABELS)), n)
        out += [(split, int(y)) for y in rng.permutation(labels)]
    return out


def msfe_short_time(seed: int, per_split: dict[str, int], seconds: float = 2.0, dim: int = 32,
                    amplitude: float = 6.0, events: int = 8, noise: float = 1.0) -> FeatureData:
    """The MSFE condition (module docstring, 1): hubert frames only. `per_split`: clips of each class per split,
    e.g. {"train": 48, "val": 16, "test": 32}. `noise=0` gives the bare construction (tests)."""
    rng = np.random.default_rng([seed, 1])
    t = int(round(seconds * HUBERT_RATE))
    u, w = _unit_dirs(rng, dim, 2)
    a = np.float32(amplitude * (noise if noise > 0 else 1.0))
    clips = []
    for i, (split, y) in enumerate(_splits(per_split, rng)):
        x = (noise * rng.standard_normal((t, dim))).astype(np.float32)
        first, second = (u, w) if y == 0 else (w, u)
        for p in spread(rng, t, events, 2, 2):
            x[p] += a * first
            x[p + 1] += a * second
        clips.append(Clip(f"msfe-{split}-{i:05d}", y, split, None, {"hubert": x}, LABELS[y]))
    return FeatureData(clips, {"hubert": dim}, {"hubert": HUBERT_RATE}, CORPUS, labels=LABELS)


def align_cooccurrence(seed: int, per_split: dict[str, int], max_shift: int, seconds: float = 4.0, dim: int = 32,
                       amplitude: float = 6.0, events: int = 6, carrier: float = 2.0, noise: float = 1.0) -> FeatureData:
    """The alignment condition (module docstring, 2): hubert (50 Hz) and mae (25 Hz) frames with a true offset
    of L + 1 <= |d| <= `max_shift` video frames (the aligner's K at 25 Hz) recorded as offset_ms, events of
    `amplitude` and a shared timing carrier of `carrier` (in noise standard deviations)."""
    if events % 2:
        raise ValueError(f"the alignment condition needs an even number of events per clip, got {events}")
    if max_shift < EVENT_FRAMES + 1:
        raise ValueError(f"offsets must exceed an event ({EVENT_FRAMES} frames): align.max_shift={max_shift} "
                         f"(video frames) leaves none; it must be at least {EVENT_FRAMES + 1}")
    rng = np.random.default_rng([seed, 2])
    s_len = int(round(seconds * MAE_RATE))
    k_max = max_shift
    ua, wv = _unit_dirs(rng, dim, 3), _unit_dirs(rng, dim, 3)  # rows 0, 1: the event kinds; row 2: the carrier
    scale = noise if noise > 0 else 1.0
    a, c = np.float32(amplitude * scale), np.float32(carrier * scale)
    r = int(round(HUBERT_RATE / MAE_RATE))
    clips = []
    for i, (split, y) in enumerate(_splits(per_split, rng)):
        x = (noise * rng.standard_normal((r * s_len, dim))).astype(np.float32)
        v = (noise * rng.standard_normal((s_len, dim))).astype(np.float32)
        d = int(rng.integers(EVENT_FRAMES + 1, k_max + 1)) * (1 if rng.random() < 0.5 else -1)
        starts = k_max + spread(rng, s_len - 2 * k_max, events, EVENT_FRAMES, k_max + 1)
        kinds = rng.permutation(np.repeat([0, 1], events // 2))
        g = rng.standard_normal(s_len + 2 * k_max).astype(np.float32)  # g[K + s]: the carrier at audio frame s
        for s in starts:
            g[k_max + s: k_max + s + EVENT_FRAMES] = 0.0  # no carrier on an event (see the module docstring)
        x += c * np.repeat(g[k_max: k_max + s_len], r)[:, None] * ua[2]
        v += c * g[k_max - d: k_max - d + s_len][:, None] * wv[2]
        for s, k in zip(starts, kinds):
            j = k if y == 0 else 1 - k
            x[r * s: r * (s + EVENT_FRAMES)] += a * ua[k]
            v[s + d: s + d + EVENT_FRAMES] += a * wv[j]
        clips.append(Clip(f"align-{split}-{i:05d}", y, split, d * 1000.0 / MAE_RATE, {"hubert": x, "mae": v},
                          LABELS[y]))
    return FeatureData(clips, {"hubert": dim, "mae": dim}, {"hubert": HUBERT_RATE, "mae": MAE_RATE}, CORPUS,
                       labels=LABELS)


def generate(name: str, cfg, align_cfg) -> FeatureData:
    """A condition's data from the `mechanism` params section (`cfg`) and align.max_shift (in align.rate frames,
    converted to 25 Hz video frames)."""
    per = {"train": cfg.train_per_class, "val": cfg.val_per_class, "test": cfg.test_per_class}
    if name == "msfe_short_time":
        return msfe_short_time(cfg.seed, per, cfg.msfe_seconds, cfg.dim, cfg.amplitude, cfg.msfe_events)
    if name == "align_cooccurrence":
        k = int(np.floor(align_cfg.max_shift * MAE_RATE / align_cfg.rate + 1e-9))
        return align_cooccurrence(cfg.seed, per, k, cfg.align_seconds, cfg.dim, cfg.amplitude, cfg.align_events,
                                  cfg.carrier)
    raise ValueError(f"unknown mechanism condition {name!r}; choose from {list(CONDITIONS)}")


def _configs(v: Variant, msfe_cfg, align_cfg, train_cfg, cfg, seed: int):
    """The variant's msfe, align and train configs (copies: `model_copy` does not validate, which no_shift's
    max_shift = 0 needs; every other value comes from validated sections)."""
    msfe = msfe_cfg.model_copy(update={"enabled": v.msfe})
    align = align_cfg.model_copy(update={"enabled": v.align, "video": "mae", "warmup_epochs": cfg.warmup_epochs,
                                         **({"max_shift": 0} if v.no_shift else {})})
    tr = train_cfg.model_copy(update={"seed": int(seed), "epochs": cfg.epochs, "patience": cfg.patience,
                                      "checkpoint_every": 0})
    return msfe, align, tr


def run_condition(name: str, data: FeatureData, cfg, msfe_cfg, contrast_cfg, align_cfg, train_cfg,
                  seeds: list[int], on_run: Callable[[dict], None] | None = None) -> dict:
    """Every variant of condition `name` trained once per seed on `data` (train/val splits) and scored on its
    test split: {"condition", "what", "expected", "expect", "reference", "clips", "variants": {variant:
    multi-seed layout (esva.eval.tables)}}. `cfg`: the `mechanism` section (epochs, patience, warm-up)."""
    cond = CONDITIONS[name]
    variants = {}
    for v in cond.variants:
        msfe, align, tr = _configs(v, msfe_cfg, align_cfg, train_cfg, cfg, seeds[0])

        def each(rec: dict, v: Variant = v) -> None:
            if on_run:
                on_run({"condition": name, "variant": v.name, **rec})

        res = repeat_seeds(data, cond.use, msfe, contrast_cfg, align, tr, seeds, on_run=each)
        res["design"].update({"epochs": cfg.epochs, "patience": cfg.patience,
                              "warmup_epochs": cfg.warmup_epochs if v.align else 0})
        variants[v.name] = {
            "corpus": CORPUS, "split": "test", "labels": list(data.labels), "features_use": list(cond.use),
            "msfe": v.msfe, "align": v.align, "max_shift": (0 if v.no_shift else align_cfg.max_shift) if v.align else None,
            "model": "stage-1 fusion classifier", **res}
    return {"condition": name, "what": cond.what, "expected": cond.expected, "expect": cond.expect,
            "reference": cond.reference, "note": NOTE,
            "clips": {s: len(data.split(s)) for s in ("train", "val", "test")}, "variants": variants}


def run_all(cfg, msfe_cfg, contrast_cfg, align_cfg, train_cfg,
            on_run: Callable[[dict], None] | None = None) -> dict:
    """Both conditions (metrics/mechanism.json): training seeds train.seed, +1, ... (`mechanism.seeds` of them);
    the data come from `mechanism.seed`."""
    seeds = [train_cfg.seed + i for i in range(cfg.seeds)]
    out = {"corpus": CORPUS, "kind": "mechanism checks", "note": NOTE,
           "construction": {k: getattr(cfg, k) for k in type(cfg).model_fields},
           "rates": {"hubert": HUBERT_RATE, "mae": MAE_RATE}, "conditions": {}}
    for name in CONDITIONS:
        data = generate(name, cfg, align_cfg)
        out["conditions"][name] = run_condition(name, data, cfg, msfe_cfg, contrast_cfg, align_cfg, train_cfg,
                                                seeds, on_run)
    return out
