"""Statistics for the tables: intervals over seeds and clips, paired tests, baselines, the degenerate flag.

Pure functions on label sequences and numbers (numpy, and scipy for the t, normal and binomial quantiles).
Weighted F1 here is the MER2023 metric, sklearn's `f1_score(average="weighted", zero_division=0)`: per
gold class c with n_c gold clips, p_c predictions and t_c correct ones, F1_c = 2 t_c / (p_c + n_c) (the
harmonic mean of precision t_c/p_c and recall t_c/n_c, 0 when t_c = 0), and the weighted F1 is
sum_c n_c F1_c / N. A prediction outside the gold classes (an invalid answer) only lowers recall.

Formulas (each has a hand-computed test in tests/eval/test_stats.py):

- mean over seeds with a 95% t-interval: mean +- t_{0.975, k-1} * sd / sqrt(k), sd with ddof=1, k seeds.
- percentile bootstrap of weighted F1 over clips: clips drawn with replacement B times; the interval is
  the 2.5th and 97.5th percentiles of the B F1s.
- paired bootstrap of the weighted-F1 difference of two prediction sets on the same clips: every replicate
  draws one resample of the clips and scores both sets on it (the pairing). With several training seeds
  (arrays seeds x clips, seed s of one set paired with seed s of the other) it is a two-way bootstrap:
  each replicate also draws k seeds with replacement, and its statistic is the mean over those seeds of
  F1(a_s) - F1(b_s) on the resampled clips, so both the test-set draw and the training seed count as
  noise. The estimate is the mean over seeds of the per-seed differences on all clips. The two-sided p is
  p = min(1, 2 min((1 + #{d* <= 0}) / (B + 1), (1 + #{d* >= 0}) / (B + 1))): the smallest level at which
  the percentile interval excludes 0 (identical predictions: every d* = 0, p = 1).
- exact McNemar on paired correctness: b = clips only A gets right, c = clips only B gets right;
  p = min(1, 2 P[X <= min(b, c)]), X ~ Binomial(b + c, 1/2) (p = 1 when b + c = 0).
- minimum detectable difference at two-sided level alpha with power 1 - beta (normal approximation):
  (z_{1-alpha/2} + z_{1-beta}) * SE; for alpha = .05 and power .8 the factor is 1.960 + 0.842 = 2.802.
  For accuracy with McNemar on n paired clips, SE = sqrt(psi / n), psi the share of clips on which exactly
  one model is right (the simplified form of Connor 1987, which drops a -delta^2 term and so errs large).
- chance weighted F1, a predictor guessing uniformly over K labels, with gold class shares q_c: in
  expectation t_c = N q_c / K, p_c = N / K, n_c = N q_c, so F1_c = 2 q_c / (1 + K q_c) (precision q_c,
  recall 1/K) and the weighted F1 is sum_c q_c * 2 q_c / (1 + K q_c); 1/K on balanced classes. This is the
  F1 of the expected counts, which the expected F1 of a finite test set approaches as N grows.
- majority-class weighted F1, always predicting the most frequent class m: F1_m = 2 q_m / (1 + q_m)
  (precision q_m, recall 1), every other class 0, so the weighted F1 is q_m * 2 q_m / (1 + q_m);
  2 / (K (K + 1)) on K balanced classes (1/21 = 0.0476 for six).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

ALPHA = 0.05
POWER = 0.8
INVALID = "<invalid>"  # a prediction that is no label (None): counted wrong, like the MER scripts do


def _z(q: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(q))


# --------------------------------------------------------------------------- intervals over seeds

def mean_ci(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean of per-seed scores with a t-interval: {"mean", "lo", "hi", "sd", "n"}; lo/hi are None for one value."""
    from scipy.stats import t

    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("no values")
    m = float(x.mean())
    if x.size < 2:
        return {"mean": m, "lo": None, "hi": None, "sd": None, "n": 1}
    sd = float(x.std(ddof=1))
    half = float(t.ppf(1 - (1 - level) / 2, x.size - 1)) * sd / np.sqrt(x.size)
    return {"mean": m, "lo": m - half, "hi": m + half, "sd": sd, "n": int(x.size)}


# --------------------------------------------------------------------------- weighted F1, vectorised

def _codes(gold: Sequence, *preds: Sequence) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Integer codes: gold classes first (0..G-1), then any other predicted value; None -> INVALID."""
    norm = lambda xs: [INVALID if v is None else str(v) for v in xs]  # noqa: E731
    g = norm(gold)
    classes = sorted(set(g))
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for p in preds:
        p = norm(p)
        if len(p) != len(g):
            raise ValueError(f"{len(g)} gold labels but {len(p)} predictions")
        out.append(np.array([index.get(v, len(classes)) for v in p], dtype=np.int64))  # non-gold: one "other" code
    return np.array([index[v] for v in g], dtype=np.int64), out, len(classes)


def _f1_under_weights(W: np.ndarray, gold: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Weighted F1 for each row of clip weights W (B x n): a resample is a weight (its count) per clip."""
    G = np.eye(k + 1)[gold][:, :k]  # n x k
    P = np.eye(k + 1)[pred][:, :k]  # predictions of a non-gold class never enter a gold class's counts
    T = G * (gold == pred)[:, None]
    ng, npred, tp = W @ G, W @ P, W @ T
    denom = ng + npred
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp, dtype=float), where=denom > 0)
    total = W.sum(axis=1)
    return (f1 * ng).sum(axis=1) / np.where(total > 0, total, 1)


def weighted_f1(gold: Sequence, pred: Sequence) -> float:
    """sklearn's weighted F1 (zero_division=0); None or a non-gold value in `pred` counts as wrong."""
    g, (p,), k = _codes(gold, pred)
    if g.size == 0:
        raise ValueError("no clips")
    return float(_f1_under_weights(np.ones((1, g.size)), g, p, k)[0])


def _resample_weights(rng: np.random.Generator, n: int, b: int) -> np.ndarray:
    return rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(float)


def bootstrap_ci(gold: Sequence, pred: Sequence, *, b: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap of weighted F1 over clips: {"estimate", "lo", "hi", "se", "b", "n"}."""
    g, (p,), k = _codes(gold, pred)
    rng = np.random.default_rng(seed)
    f = _f1_under_weights(_resample_weights(rng, g.size, b), g, p, k)
    lo, hi = np.quantile(f, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"estimate": weighted_f1(gold, pred), "lo": float(lo), "hi": float(hi), "se": float(f.std(ddof=1)),
            "b": b, "n": int(g.size)}


def _two_sided_p(d: np.ndarray) -> float:
    b = d.size
    return float(min(1.0, 2 * min((1 + np.sum(d <= 0)) / (b + 1), (1 + np.sum(d >= 0)) / (b + 1))))


def paired_bootstrap(gold: Sequence, pred_a, pred_b, *, b: int = 2000, seed: int = 0, level: float = 0.95,
                     alpha: float = ALPHA) -> dict:
    """Weighted F1 of `pred_a` minus that of `pred_b` on the same clips, with a paired bootstrap.

    `pred_a`, `pred_b`: one prediction per clip, or one such list per training seed (seeds x clips, row s
    of a paired with row s of b). Returns {"diff", "lo", "hi", "p", "se", "mdd", "distinguishable", "b",
    "n", "seeds"}; `mdd` is the minimum detectable difference (alpha, power .8) for this SE.
    """
    A = np.asarray(pred_a, dtype=object)
    Bp = np.asarray(pred_b, dtype=object)
    if A.ndim == 1:
        A, Bp = A[None, :], Bp[None, :]
    if A.shape != Bp.shape or A.ndim != 2:
        raise ValueError(f"prediction sets of different shapes: {A.shape} and {Bp.shape}")
    s, n = A.shape
    rng = np.random.default_rng(seed)
    W = _resample_weights(rng, n, b)
    D = np.empty((b, s))
    point = np.empty(s)
    for i in range(s):
        g, (pa, pb), k = _codes(gold, list(A[i]), list(Bp[i]))
        ones = np.ones((1, n))
        point[i] = _f1_under_weights(ones, g, pa, k)[0] - _f1_under_weights(ones, g, pb, k)[0]
        D[:, i] = _f1_under_weights(W, g, pa, k) - _f1_under_weights(W, g, pb, k)
    if s > 1:
        pick = rng.integers(0, s, size=(b, s))
        d = np.take_along_axis(D, pick, axis=1).mean(axis=1)
    else:
        d = D[:, 0]
    lo, hi = np.quantile(d, [(1 - level) / 2, 1 - (1 - level) / 2])
    p = _two_sided_p(d)
    se = float(d.std(ddof=1))
    return {"diff": float(point.mean()), "lo": float(lo), "hi": float(hi), "p": p, "se": se,
            "mdd": min_detectable_difference(se, alpha=alpha), "distinguishable": bool(p < alpha),
            "b": b, "n": int(n), "seeds": int(s)}


# --------------------------------------------------------------------------- McNemar and power

def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
    """Exact two-sided McNemar test on paired correctness: {"b", "c", "p"}."""
    from scipy.stats import binom

    a = np.asarray(correct_a, dtype=bool)
    c_ = np.asarray(correct_b, dtype=bool)
    if a.shape != c_.shape:
        raise ValueError("the two correctness vectors differ in length")
    b, c = int(np.sum(a & ~c_)), int(np.sum(~a & c_))
    p = 1.0 if b + c == 0 else float(min(1.0, 2 * binom.cdf(min(b, c), b + c, 0.5)))
    return {"b": b, "c": c, "p": p}


def min_detectable_difference(se: float, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """(z_{1-alpha/2} + z_{power}) * se: the smallest true difference found with this power (normal approx.)."""
    return (_z(1 - alpha / 2) + _z(power)) * float(se)


def mcnemar_mdd(n: int, discordant: float, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable accuracy difference for n paired clips of which a share `discordant` (psi) has
    exactly one model right: (z_{1-alpha/2} + z_{power}) * sqrt(psi / n)."""
    if n <= 0:
        raise ValueError("n must be positive")
    return min_detectable_difference(np.sqrt(discordant / n), alpha=alpha, power=power)


# --------------------------------------------------------------------------- baselines

def _shares(gold_counts: Mapping[str, int] | Sequence[int]) -> np.ndarray:
    c = np.asarray(list(gold_counts.values()) if isinstance(gold_counts, Mapping) else list(gold_counts), dtype=float)
    if c.sum() <= 0:
        raise ValueError("no gold clips")
    return c / c.sum()


def chance_weighted_f1(gold_counts: Mapping[str, int] | Sequence[int], n_labels: int | None = None) -> float:
    """Weighted F1 of uniform guessing over `n_labels` labels (default: the classes in gold_counts)."""
    q = _shares(gold_counts)
    k = len(q) if n_labels is None else int(n_labels)
    if k < len(q[q > 0]):
        raise ValueError("fewer labels than gold classes")
    return float(np.sum(q * 2 * q / (1 + k * q)))


def majority_weighted_f1(gold_counts: Mapping[str, int] | Sequence[int]) -> float:
    """Weighted F1 of always predicting the most frequent gold class."""
    qm = float(_shares(gold_counts).max())
    return qm * 2 * qm / (1 + qm)


def constant_predictor_scores(gold_counts: Mapping[str, int]) -> dict[str, tuple[float, float]]:
    """For each class c, (weighted F1, accuracy) of always predicting c: (q_c 2 q_c / (1 + q_c), q_c)."""
    q = _shares(gold_counts)
    return {c: (float(x * 2 * x / (1 + x)), float(x)) for c, x in zip(gold_counts, q)}


# --------------------------------------------------------------------------- the degenerate flag

def degenerate(pred_labels: Sequence | None = None, best_epoch: int | None = None, *,
               weighted_f1: float | None = None, accuracy: float | None = None,
               gold_counts: Mapping[str, int] | None = None, tol: float = 1e-9, first_epoch: int = 1) -> str | None:
    """Why a run is not a result, or None. A run is degenerate when its predictions collapse to one class,
    or when its best epoch is its first scored one, `first_epoch` (the validation score never improved: the
    model that was kept is the one after one epoch; stage 1 scores no epoch of the aligner's warm-up, so its
    first is `align.warmup_epochs + 1` with alignment on). Without stored predictions, a weighted F1 and accuracy that both equal a
    constant predictor's (given the gold counts) count as a collapse."""
    reasons = []
    if pred_labels is not None:
        seen = Counter(INVALID if p is None else p for p in pred_labels)
        if len(seen) == 1:
            (only, n), = seen.items()
            reasons.append(f"predicts one class ('{only}') for all {n} clips")
    elif weighted_f1 is not None and accuracy is not None and gold_counts:
        hits = [c for c, (f, a) in constant_predictor_scores(gold_counts).items()
                if abs(f - weighted_f1) <= tol and abs(a - accuracy) <= tol]
        if hits:
            reasons.append(f"F1 {weighted_f1:.4f} and accuracy {accuracy:.4f} are exactly those of always predicting "
                           f"one class ({hits[0]!r}" + (" or another" if len(hits) > 1 else "") + ")")
    if best_epoch is not None and int(best_epoch) == int(first_epoch):
        reasons.append(f"best epoch is {int(best_epoch)}, the first scored one (validation never improved after it)")
    return "; ".join(reasons) or None


def pairs_from_confusion(matrix: Sequence[Sequence[int]], columns: Sequence[str], rows: Sequence[str] | None = None
                         ) -> tuple[list[str], list[str]]:
    """(gold, pred) label lists rebuilt from a confusion matrix (rows gold, columns predicted); clip order is
    lost, so they serve unpaired statistics only."""
    rows = list(columns[: len(matrix)]) if rows is None else list(rows)
    gold, pred = [], []
    for gi, r in enumerate(matrix):
        for pj, count in enumerate(r):
            gold += [rows[gi]] * int(count)
            pred += [columns[pj]] * int(count)
    return gold, pred
