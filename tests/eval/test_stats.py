"""esva.eval.stats against hand-computed cases (worked out in the comments) and its defining properties."""

import numpy as np
import pytest

from esva.eval import stats


def test_weighted_f1_by_hand_and_against_sklearn():
    from sklearn.metrics import f1_score

    gold = ["a", "a", "b", "b", "c", "d"]
    pred = ["a", "b", "b", None, "c", "a"]  # None: an invalid answer, counted wrong
    # a: t=1, p=2, n=2 -> F1 2/4 = .5; b: t=1, p=2, n=2 -> .5; c: 1; d: 0 -> (2 .5 + 2 .5 + 1 + 0) / 6 = .5
    assert stats.weighted_f1(gold, pred) == pytest.approx(0.5)
    assert stats.weighted_f1(gold, pred) == pytest.approx(
        f1_score(gold, [p or "?" for p in pred], average="weighted", zero_division=0))
    rng = np.random.default_rng(1)
    g = rng.choice(list("abcdef"), 50).tolist()
    p = rng.choice(list("abcdefx"), 50).tolist()
    assert stats.weighted_f1(g, p) == pytest.approx(f1_score(g, p, labels=list("abcdef"), average="weighted",
                                                             zero_division=0))


def test_mean_ci_by_hand():
    # mean .6, sd (ddof 1) = .1, t_{.975, 2} = 4.302653 -> half width 4.302653 x .1 / sqrt(3) = .248414
    m = stats.mean_ci([0.5, 0.6, 0.7])
    assert m["mean"] == pytest.approx(0.6) and m["sd"] == pytest.approx(0.1) and m["n"] == 3
    assert m["lo"] == pytest.approx(0.6 - 0.248414, abs=1e-6) and m["hi"] == pytest.approx(0.6 + 0.248414, abs=1e-6)
    one = stats.mean_ci([0.42])
    assert one["mean"] == 0.42 and one["lo"] is None and one["hi"] is None and one["n"] == 1
    same = stats.mean_ci([0.3] * 5)
    assert same["lo"] == pytest.approx(0.3) and same["hi"] == pytest.approx(0.3)


def test_bootstrap_ci_two_clips_by_hand():
    # gold [a, b], pred [a, a]. A resample is {0,0} (p 1/4): all a, all right -> F1 1; {1,1} (1/4): gold b,
    # pred a -> 0; {0,1} (1/2): the original, a: t=1 p=2 n=1 -> 2/3, b: 0 -> (1 x 2/3) / 2 = 1/3.
    # Mean 5/12; E[x^2] = 1/4 + 1/18; var = 1/4 + 1/18 - 25/144 = 19/144 -> sd .3632; percentiles 0 and 1.
    b = stats.bootstrap_ci(["a", "b"], ["a", "a"], b=20000, seed=3)
    assert b["estimate"] == pytest.approx(1 / 3)
    assert b["se"] == pytest.approx(np.sqrt(19 / 144), abs=0.01)
    assert b["lo"] == 0.0 and b["hi"] == 1.0 and b["n"] == 2


def test_bootstrap_ci_properties():
    rng = np.random.default_rng(0)
    gold = rng.choice(list("abcd"), 80).tolist()
    pred = [g if rng.random() < 0.6 else "a" for g in gold]
    b = stats.bootstrap_ci(gold, pred, b=500, seed=1)
    assert b["lo"] <= b["estimate"] <= b["hi"]
    assert stats.bootstrap_ci(gold, pred, b=500, seed=1) == b  # seeded
    perfect = stats.bootstrap_ci(gold, gold, b=200)
    assert perfect["lo"] == perfect["hi"] == perfect["estimate"] == 1.0


def test_paired_bootstrap_two_clips_by_hand():
    # gold [a, b]; A = [a, b] (F1 1 on any resample); B = [a, a] (F1 1, 0 or 1/3 as above), so the
    # difference d* is 0 (p 1/4), 1 (1/4) or 2/3 (1/2); the estimate is 1 - 1/3 = 2/3.
    # #{d* <= 0} ~ B/4, #{d* >= 0} = B -> p = 2 (1 + B/4) / (B + 1) ~ .5; sd as above, sqrt(19/144).
    t = stats.paired_bootstrap(["a", "b"], ["a", "b"], ["a", "a"], b=20000, seed=5)
    assert t["diff"] == pytest.approx(2 / 3)
    assert t["p"] == pytest.approx(0.5, abs=0.02) and not t["distinguishable"]
    assert t["se"] == pytest.approx(np.sqrt(19 / 144), abs=0.01)
    assert t["lo"] == 0.0 and t["hi"] == 1.0
    assert t["mdd"] == pytest.approx(2.801585 * t["se"], rel=1e-5)


def test_paired_bootstrap_identical_and_clear_cut():
    rng = np.random.default_rng(2)
    gold = rng.choice(list("abc"), 40).tolist()
    pred = rng.choice(list("abc"), 40).tolist()
    same = stats.paired_bootstrap(gold, pred, pred, b=300)
    assert same["diff"] == 0 and same["p"] == 1.0 and same["lo"] == same["hi"] == 0 and not same["distinguishable"]
    # every clip right vs every clip wrong: every d* = 1, so p = 2 (1 + 0) / (B + 1)
    wrong = [{"a": "b", "b": "c", "c": "a"}[g] for g in gold]
    clear = stats.paired_bootstrap(gold, gold, wrong, b=999)
    assert clear["diff"] == 1.0 and clear["p"] == pytest.approx(2 / 1000) and clear["distinguishable"]
    assert clear["lo"] == clear["hi"] == 1.0


def test_paired_bootstrap_over_seeds():
    rng = np.random.default_rng(4)
    gold = rng.choice(list("abc"), 30).tolist()
    a = rng.choice(list("abc"), 30).tolist()
    b = rng.choice(list("abc"), 30).tolist()
    one = stats.paired_bootstrap(gold, a, b, b=400, seed=9)
    twice = stats.paired_bootstrap(gold, [a, a], [b, b], b=400, seed=9)  # the same seed twice: the same answer
    assert twice["diff"] == pytest.approx(one["diff"]) and twice["p"] == one["p"] and twice["lo"] == one["lo"]
    assert twice["seeds"] == 2 and one["seeds"] == 1
    # the estimate is the mean over seeds of the per-seed differences
    mixed = stats.paired_bootstrap(gold, [a, gold], [b, b], b=400, seed=9)
    per_seed = [stats.weighted_f1(gold, a) - stats.weighted_f1(gold, b), 1.0 - stats.weighted_f1(gold, b)]
    assert mixed["diff"] == pytest.approx(np.mean(per_seed))
    assert mixed["lo"] <= mixed["diff"] <= mixed["hi"]
    with pytest.raises(ValueError):
        stats.paired_bootstrap(gold, [a, a], [b], b=10)


def test_mcnemar_exact_by_hand():
    # b = 10, c = 2: p = 2 P[X <= 2], X ~ Bin(12, 1/2) = 2 (1 + 12 + 66) / 4096 = 158 / 4096
    ca = [True] * 10 + [False] * 2 + [True] * 5 + [False] * 3
    cb = [False] * 10 + [True] * 2 + [True] * 5 + [False] * 3
    r = stats.mcnemar_exact(ca, cb)
    assert (r["b"], r["c"]) == (10, 2) and r["p"] == pytest.approx(158 / 4096)
    # b = 0, c = 5: 2 x (1/2)^5 = .0625; b = c: p = 1; no discordant pair: p = 1
    assert stats.mcnemar_exact([False] * 5, [True] * 5)["p"] == pytest.approx(0.0625)
    assert stats.mcnemar_exact([True, False, True, False], [False, True, False, True])["p"] == 1.0
    assert stats.mcnemar_exact([True, False], [True, False]) == {"b": 0, "c": 0, "p": 1.0}
    from scipy.stats import binomtest

    assert r["p"] == pytest.approx(binomtest(10, 12, 0.5).pvalue)


def test_minimum_detectable_difference_by_hand():
    # z_.975 + z_.8 = 1.959964 + 0.841621 = 2.801585
    assert stats.min_detectable_difference(0.1) == pytest.approx(0.2801585, rel=1e-6)
    # McNemar, n = 100, psi = .25: 2.801585 x sqrt(.25 / 100) = 2.801585 x .05
    assert stats.mcnemar_mdd(100, 0.25) == pytest.approx(0.14007925, rel=1e-6)
    # the demo's 36 clips: .26 at psi .3, .33 at psi .5
    assert round(stats.mcnemar_mdd(36, 0.3), 2) == 0.26 and round(stats.mcnemar_mdd(36, 0.5), 2) == 0.33


def test_chance_and_majority_by_hand():
    # shares (.5, .25, .25), K = 3: F1_c = 2 q / (1 + 3 q) = .4, 2/7, 2/7 -> .5 x .4 + 2 x .25 x 2/7 = 12/35
    assert stats.chance_weighted_f1({"a": 2, "b": 1, "c": 1}) == pytest.approx(12 / 35)
    # two gold classes of a 4-label set, half each: precision .5, recall 1/4 -> F1 2 (.5)(.25) / .75 = 1/3
    assert stats.chance_weighted_f1([1, 1], n_labels=4) == pytest.approx(1 / 3)
    assert stats.chance_weighted_f1([6] * 6) == pytest.approx(1 / 6)
    # majority 'a' (share .5): precision .5, recall 1 -> F1 2/3, weight .5 -> 1/3; checked on the labels too
    assert stats.majority_weighted_f1({"a": 2, "b": 1, "c": 1}) == pytest.approx(1 / 3)
    assert stats.weighted_f1(["a", "a", "b", "c"], ["a"] * 4) == pytest.approx(1 / 3)
    # six balanced classes: (1/6)(2/6)/(7/6) = 1/21, the F1 the issue saw for enc_eva (0.047619...)
    assert stats.majority_weighted_f1([6] * 6) == pytest.approx(0.047619047619047616)


def test_chance_matches_a_uniform_guesser_on_many_clips():
    rng = np.random.default_rng(7)
    gold = rng.choice(list("abc"), 60000, p=[0.6, 0.3, 0.1]).tolist()
    guess = rng.choice(list("abcd"), 60000).tolist()  # K = 4 labels, one never in gold
    counts = {c: gold.count(c) for c in "abc"}
    assert stats.weighted_f1(gold, guess) == pytest.approx(stats.chance_weighted_f1(counts, n_labels=4), abs=0.005)


def test_degenerate_flag():
    assert stats.degenerate(["happy"] * 5) == "predicts one class ('happy') for all 5 clips"
    assert stats.degenerate(["happy", "sad"], best_epoch=1) == \
        "best epoch is 1, the first scored one (validation never improved after it)"
    # with the aligner's 20 warm-up epochs, the first scored epoch is 21
    assert stats.degenerate(["happy", "sad"], best_epoch=21, first_epoch=21).startswith("best epoch is 21, the first")
    assert stats.degenerate(["happy", "sad"], best_epoch=1, first_epoch=21) is None
    both = stats.degenerate([None] * 3, best_epoch=1)
    assert "one class ('<invalid>')" in both and "best epoch is 1" in both
    assert stats.degenerate(["happy", "sad"], best_epoch=2) is None
    assert stats.degenerate(None, None) is None
    # no predictions stored: F1 and accuracy both equal to a constant predictor's on the gold counts
    six = {c: 6 for c in ["neutral", "angry", "happy", "sad", "worried", "surprise"]}
    why = stats.degenerate(None, 11, weighted_f1=0.047619047619047616, accuracy=1 / 6, gold_counts=six)
    assert why and "always predicting one class" in why
    assert stats.degenerate(None, 11, weighted_f1=0.2339, accuracy=0.25, gold_counts=six) is None
    assert stats.degenerate(None, 11, weighted_f1=0.047619047619047616, accuracy=1 / 6) is None  # no counts


def test_pairs_from_confusion():
    gold, pred = stats.pairs_from_confusion([[1, 2, 0], [0, 1, 1]], ["a", "b", "invalid"])
    assert gold == ["a", "a", "a", "b", "b"] and pred == ["a", "b", "b", "b", "invalid"]
