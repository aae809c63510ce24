"""Mechanism checks (esva/eval/mechanism.py): the constructions hold what their docstring says, small trainings
show the expected direction, and the report prints the table (esva.eval.tables.mechanism_table)."""

import json

import numpy as np
import pytest

from esva.config import ConfigError, MechanismConfig, Params, load_params, restrict
from esva.eval import mechanism as M
from esva.eval import stats
from esva.eval.tables import MECHANISM_HEADING, build_report, mechanism_table


def _pooled(frames: np.ndarray) -> np.ndarray:
    """Permutation-invariant statistics of one clip's frames (T, D): what a per-frame model pooled over time sees."""
    return np.concatenate([frames.mean(0), (frames ** 2).mean(0), (frames ** 3).mean(0), np.abs(frames).max(0)])


def _held_out_accuracy(x_train, y_train, x_test, y_test) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(x_train)
    clf = LogisticRegression(C=0.1, max_iter=3000).fit(sc.transform(x_train), y_train)
    return float(clf.score(sc.transform(x_test), y_test))


def _xy(data, split, fn):
    clips = data.split(split)
    return np.stack([fn(c) for c in clips]), np.array([c.label for c in clips])


# --------------------------------------------------------------------------- the MSFE condition's construction

def test_msfe_condition_has_the_same_frames_in_both_classes_and_differs_only_in_their_order():
    bare = M.msfe_short_time(3, {"train": 6, "val": 1, "test": 1}, seconds=1.0, dim=8, amplitude=2.0, events=5,
                             noise=0.0)
    assert bare.corpus == M.CORPUS and bare.labels == M.LABELS and bare.rates == {"hubert": 50.0}
    assert {s: len(bare.split(s)) for s in ("train", "val", "test")} == {"train": 12, "val": 2, "test": 2}
    x0 = next(c for c in bare.clips if c.label == 0).feats["hubert"]
    starts = np.flatnonzero(np.abs(x0).sum(1) > 0)
    u, w = x0[starts[0]] / 2.0, x0[starts[0] + 1] / 2.0
    assert abs(np.linalg.norm(u) - 1) < 1e-5 and abs(u @ w) < 1e-5
    for c in bare.clips:
        x = c.feats["hubert"]
        assert x.shape == (50, 8) and x.dtype == np.float32
        on_u = np.flatnonzero(np.abs(x @ u - 2.0) < 1e-5)
        on_w = np.flatnonzero(np.abs(x @ w - 2.0) < 1e-5)
        # the multiset of frames is the same in every clip of either class: 5 x Au, 5 x Aw, the rest zero
        assert len(on_u) == len(on_w) == 5 and np.abs(x).sum(1).astype(bool).sum() == 10
        # only the order differs: class 0 is u then w, class 1 w then u
        assert np.array_equal(on_w, on_u + 1) if c.label == 0 else np.array_equal(on_u, on_w + 1)
        assert np.diff(np.sort(np.r_[on_u, on_w]))[1::2].min() >= 3  # two free frames between patterns


def test_msfe_condition_pooled_statistics_are_at_chance_and_the_order_oracle_is_not():
    data = M.msfe_short_time(0, {"train": 300, "val": 1, "test": 200}, seconds=1.0, dim=8, amplitude=6.0, events=4)
    bare = M.msfe_short_time(0, {"train": 1, "val": 1, "test": 1}, seconds=1.0, dim=8, amplitude=1.0, events=4,
                             noise=0.0)  # the same seed draws the same directions
    x0 = next(c for c in bare.clips if c.label == 0).feats["hubert"]
    p = np.flatnonzero(np.abs(x0).sum(1) > 0)[0]
    u, w = x0[p], x0[p + 1]
    pooled = lambda c: _pooled(c.feats["hubert"])  # noqa: E731
    xtr, ytr = _xy(data, "train", pooled)
    xte, yte = _xy(data, "test", pooled)
    assert 0.4 <= _held_out_accuracy(xtr, ytr, xte, yte) <= 0.6
    # per-class means of the pooled features agree within noise (z-scores of the class difference)
    z = (xtr[ytr == 0].mean(0) - xtr[ytr == 1].mean(0)) / np.sqrt(
        xtr[ytr == 0].var(0) / (ytr == 0).sum() + xtr[ytr == 1].var(0) / (ytr == 1).sum())
    assert np.abs(z).max() < 4.5

    def oracle(c):  # sum_t (u.x_t)(w.x_{t+1}) - (w.x_t)(u.x_{t+1}): the order of neighbouring frames
        a, b = c.feats["hubert"] @ u, c.feats["hubert"] @ w
        return float(np.sum(a[:-1] * b[1:] - b[:-1] * a[1:]))

    o, y = _xy(data, "test", oracle)
    assert np.mean((o < 0) == (y == 1)) > 0.97


# --------------------------------------------------------------------------- the alignment condition's construction

def test_alignment_condition_pairs_kinds_by_class_only_after_the_true_shift():
    k_max, amp = 8, 2.0
    bare = M.align_cooccurrence(1, {"train": 8, "val": 1, "test": 1}, k_max, seconds=4.0, dim=8, amplitude=amp,
                                events=6, carrier=0.0, noise=0.0)
    assert bare.rates == {"hubert": 50.0, "mae": 25.0} and bare.dims == {"hubert": 8, "mae": 8}
    dirs = {}
    for c in bare.clips:
        a = c.feats["hubert"].reshape(-1, 2, 8).mean(1)  # to 25 Hz as `to_rate` pools it
        v = c.feats["mae"]
        assert a.shape == v.shape == (100, 8)
        d = c.offset_ms / 40.0
        assert d == int(d) and M.EVENT_FRAMES < abs(d) <= k_max  # video lags by d > 0, leads by d < 0
        d = int(d)
        ta, tv = np.flatnonzero(np.abs(a).sum(1) > 0), np.flatnonzero(np.abs(v).sum(1) > 0)
        assert len(ta) == len(tv) == 12 and not set(ta) & set(tv)  # unshifted, no audio event meets a video event
        assert np.array_equal(tv, ta + d)  # shifted back by the true offset, every one does
        assert ta.min() >= k_max and ta.max() < 100 - k_max
        for t in ta:
            dirs.setdefault("a", []).append(a[t] / amp)
            dirs.setdefault("v", []).append(v[t + d] / amp)
    # two orthonormal kinds per modality, half of each in every clip; class 0 pairs kind i with kind i
    ua = np.unique(np.round(np.array(dirs["a"]), 4), axis=0)
    wv = np.unique(np.round(np.array(dirs["v"]), 4), axis=0)
    assert len(ua) == len(wv) == 2 and abs(ua[0] @ ua[1]) < 1e-3
    pairing = {0: set(), 1: set()}
    for c in bare.clips:
        a = c.feats["hubert"].reshape(-1, 2, 8).mean(1) / amp
        v = c.feats["mae"] / amp
        d = int(c.offset_ms / 40.0)
        ta = np.flatnonzero(np.abs(a).sum(1) > 0)
        ka = np.argmax(np.abs(a[ta] @ ua.T), 1)
        kv = np.argmax(np.abs(v[ta + d] @ wv.T), 1)
        assert np.bincount(ka, minlength=2).tolist() == [6, 6] and np.bincount(kv, minlength=2).tolist() == [6, 6]
        same = ka == kv
        assert same.all() or (~same).all()  # one of the two bijections, the same for every event of a clip
        pairing[c.label].add(bool(same[0]))
    assert len(pairing[0]) == len(pairing[1]) == 1 and pairing[0] != pairing[1]  # and it is the class


def test_alignment_carrier_is_shared_but_zero_on_events():
    bare = M.align_cooccurrence(2, {"train": 3, "val": 1, "test": 1}, 6, seconds=3.0, dim=8, amplitude=1.0, events=4,
                                carrier=1.0, noise=0.0)
    ev = M.align_cooccurrence(2, {"train": 3, "val": 1, "test": 1}, 6, seconds=3.0, dim=8, amplitude=1.0, events=4,
                              carrier=0.0, noise=0.0)
    for c, e in zip(bare.clips, ev.clips):
        a = c.feats["hubert"].reshape(-1, 2, 8).mean(1)
        v = c.feats["mae"]
        ca, cv = a - e.feats["hubert"].reshape(-1, 2, 8).mean(1), v - e.feats["mae"]  # the carrier alone
        ta = np.flatnonzero(np.abs(e.feats["hubert"].reshape(-1, 2, 8).mean(1)).sum(1) > 0)
        d = int(c.offset_ms / 40.0)
        assert np.abs(ca[ta]).max() < 1e-6 and np.abs(cv[ta + d]).max() < 1e-6  # nothing ties an event to the carrier
        t = np.arange(max(0, -d), min(75, 75 - d))
        na, nv = np.linalg.norm(ca[t], axis=1), np.linalg.norm(cv[t + d], axis=1)
        assert np.allclose(na, nv, atol=1e-5) and na.max() > 0.5  # the same g, the video d frames later


def test_alignment_condition_is_at_chance_for_each_modality_and_unshifted_joint_but_not_for_the_aligned_oracle():
    data = M.align_cooccurrence(0, {"train": 300, "val": 1, "test": 200}, 8, seconds=4.0, dim=8, amplitude=6.0,
                                events=6, carrier=2.0)
    bare = M.align_cooccurrence(0, {"train": 1, "val": 1, "test": 1}, 8, seconds=4.0, dim=8, amplitude=1.0,
                                events=6, carrier=0.0, noise=0.0)
    c0 = next(c for c in bare.clips if c.label == 0)
    a0, v0, d0 = c0.feats["hubert"].reshape(-1, 2, 8).mean(1), c0.feats["mae"], int(c0.offset_ms / 40)
    ta = np.flatnonzero(np.abs(a0).sum(1) > 0)[::2]
    ua = np.unique(np.round(a0[ta], 5), axis=0)
    wv = np.array([v0[t + d0] for t in ta])
    wv = np.array([wv[np.argmax(np.abs(a0[ta] @ ua[i]))] for i in range(2)])  # class 0: video kind i goes with audio kind i

    def audio(c):
        return c.feats["hubert"].reshape(-1, 2, c.feats["hubert"].shape[1]).mean(1)

    def pooled(c):  # each modality pooled, and the products of their pooled statistics
        pa, pv = _pooled(audio(c)), _pooled(c.feats["mae"])
        return np.concatenate([pa, pv, np.outer(pa[:16], pv[:16]).ravel()])

    def joint(c, d=0):  # frame-wise joint statistics after shifting the video back by d (0: no shift)
        a, v = audio(c), c.feats["mae"]
        t = np.arange(max(0, -d), min(len(v), len(v) - d))
        return np.einsum("td,te->de", a[t] @ ua.T, v[t + d] @ wv.T).ravel() / len(v)

    for fn in (pooled, joint):
        xtr, ytr = _xy(data, "train", fn)
        xte, yte = _xy(data, "test", fn)
        assert 0.4 <= _held_out_accuracy(xtr, ytr, xte, yte) <= 0.6, fn.__name__
    o, y = _xy(data, "test", lambda c: joint(c, int(round(c.offset_ms / 40))) @ np.array([1, -1, -1, 1]))
    assert np.mean((o > 0) == (y == 0)) > 0.97  # matched kinds co-occur in class 0


def test_generators_reject_what_cannot_be_built():
    with pytest.raises(ValueError, match="even number"):
        M.align_cooccurrence(0, {"train": 2, "val": 1, "test": 1}, 8, events=5)
    with pytest.raises(ValueError, match="must be at least 3"):
        M.align_cooccurrence(0, {"train": 2, "val": 1, "test": 1}, 2)
    with pytest.raises(ValueError, match="do not fit"):
        M.msfe_short_time(0, {"train": 2, "val": 1, "test": 1}, seconds=0.2, events=8)
    with pytest.raises(ConfigError, match="align_events must be even"):
        load_params(None, ["mechanism.align_events=5"])
    assert Params().mechanism == MechanismConfig() and MechanismConfig().seeds == 5


# --------------------------------------------------------------------------- small trainings

def _small(**kw) -> MechanismConfig:
    base = dict(seeds=2, train_per_class=32, val_per_class=12, test_per_class=16, epochs=25, patience=15,
                warmup_epochs=5)
    return MechanismConfig(**{**base, **kw})


def _accuracy(variant: dict) -> list[float]:
    gold = variant["predictions"]["gold"]
    return [float(np.mean([g == p for g, p in zip(gold, pred)])) for pred in variant["predictions"]["by_seed"].values()]


@pytest.mark.slow  # several seeded stage-1 trainings (3 min on 2 cores): the slow tier, which CI runs
def test_msfe_captures_the_order_of_neighbouring_frames_and_the_model_without_it_cannot():
    p = Params()
    cfg = _small()
    data = M.generate("msfe_short_time", cfg, p.align)
    tr = p.train.model_copy(update={"batch_size": 16})
    res = M.run_condition("msfe_short_time", data, cfg, p.msfe, p.contrast, p.align, tr, [0, 1])
    msfe, none = _accuracy(res["variants"]["msfe"]), _accuracy(res["variants"]["no_msfe"])
    assert min(msfe) > 0.8 and max(none) < 0.75 and np.mean(msfe) > np.mean(none) + 0.25, (msfe, none)
    assert res["reference"] == "msfe" and res["clips"] == {"train": 64, "val": 24, "test": 32}
    v = res["variants"]["msfe"]
    assert v["design"]["seeds"] == [0, 1] and len(v["runs"]) == 2 and v["corpus"] == M.CORPUS
    assert v["msfe"] is True and res["variants"]["no_msfe"]["msfe"] is False


@pytest.mark.slow  # 25 seeded stage-1 trainings (7 min on 2 cores): the slow tier, which CI runs
def test_alignment_captures_cooccurrence_only_when_it_shifts_the_video_back():
    p = Params()
    cfg = _small(seeds=1)
    data = M.generate("align_cooccurrence", cfg, p.align)
    tr = p.train.model_copy(update={"batch_size": 16})
    res = M.run_condition("align_cooccurrence", data, cfg, p.msfe, p.contrast, p.align, tr, [0])
    acc = {v: _accuracy(x)[0] for v, x in res["variants"].items()}
    assert acc["full"] > 0.85 and acc["no_shift"] < 0.75 and acc["no_align"] < 0.75, acc
    full, no_shift = res["variants"]["full"], res["variants"]["no_shift"]
    assert full["runs"][0]["alignment"]["within_one_frame"] > 0.8  # the aligner found the true offsets
    assert no_shift["max_shift"] == 0 and full["max_shift"] == p.align.max_shift
    assert res["variants"]["no_align"]["runs"][0]["alignment"] is None
    assert full["runs"][0]["first_scored_epoch"] == cfg.warmup_epochs + 1


def test_the_stage_writes_mechanism_json_that_the_report_reads(tmp_path):
    from pipeline.stages import mechanism as stage
    from pipeline.stages.report import load_metrics

    p = load_params(None, ["mechanism.seeds=1", "mechanism.train_per_class=4", "mechanism.val_per_class=2",
                           "mechanism.test_per_class=2", "mechanism.epochs=1", "mechanism.warmup_epochs=1",
                           "mechanism.msfe_seconds=1.0", "mechanism.align_seconds=2.0", "mechanism.align_events=2",
                           "train.batch_size=4"])
    out = tmp_path / "metrics" / "mechanism.json"
    stage.run(restrict(p, stage.PARAMS, "mechanism"), out)
    d = json.loads(out.read_text())
    assert d["corpus"] == M.CORPUS and set(d["conditions"]) == set(M.CONDITIONS)
    assert set(d["conditions"]["align_cooccurrence"]["variants"]) == {"full", "no_shift", "no_align"}
    m = load_metrics(out.parent)
    assert m["mechanism"] == d
    text = "\n".join(mechanism_table(m))
    assert "### `msfe_short_time`" in text and "### `align_cooccurrence`" in text and "1 seed: no interval" in text


# --------------------------------------------------------------------------- the table

def _variant(gold, by_seed, **kw):
    return {"corpus": M.CORPUS, "split": "test", "labels": ["happy", "sad"], "features_use": ["hubert"],
            "model": "stage-1 fusion classifier", "design": {"kind": "seeds", "seeds": [int(s) for s in by_seed]},
            "runs": [{"seed": int(s), "best_epoch": 5, "first_scored_epoch": 1} for s in by_seed],
            "predictions": {"clip_ids": [f"c{i}" for i in range(len(gold))], "gold": gold, "by_seed": by_seed}, **kw}


def test_mechanism_table_prints_each_variant_with_interval_chance_paired_test_and_verdict():
    gold = ["happy"] * 10 + ["sad"] * 10
    good = {"0": list(gold), "1": ["sad"] + gold[1:], "2": ["sad", "sad"] + gold[2:]}
    flat = {s: ["happy"] * 20 for s in ("0", "1", "2")}
    cond = {"what": "the order of two frames", "expected": "msfe above chance and above no_msfe", "reference": "msfe",
            "expect": {"above_chance": ["msfe"], "worse_than_reference": ["no_msfe"], "not_above_chance": ["no_msfe"]},
            "clips": {"train": 4, "val": 2, "test": 20},
            "variants": {"msfe": _variant(gold, good, msfe=True), "no_msfe": _variant(gold, flat, msfe=False)}}
    lines = mechanism_table({"mechanism": {"corpus": M.CORPUS, "conditions": {"msfe_short_time": cond}}})
    text = "\n".join(lines)
    assert lines[0] == MECHANISM_HEADING and "tests of the implementation, not evidence for the paper" in lines[0]
    assert "not evidence for the paper's claims on real data" in text
    f1s = [stats.weighted_f1(gold, good[s]) for s in good]
    m = stats.mean_ci(f1s)
    row = next(line for line in lines if line.startswith("| msfe |"))
    assert f"{m['mean']:.4f}" in row and f"[{m['lo']:.4f}, {m['hi']:.4f}] over 3 seeds" in row
    assert "| above chance | 0.5000 | 0.3333 | reference |" in row and "(hubert, MSFE, no alignment)" in row
    flat_row = next(line for line in lines if line.startswith("| no_msfe |"))
    # a collapsed variant keeps its number, with the flag beside it
    assert "| 0.3333 |" in flat_row and "degenerate: every seed (3): predicts one class ('happy')" in flat_row
    assert "below chance" in flat_row and "distinguishable from noise (20 clips x 3 seeds)" in flat_row
    assert "Verdict: **captured**" in text
    assert "- yes: no_msfe no better than chance (construction check): below chance" in text
    # the component's variant at chance: not captured
    cond["variants"]["msfe"] = _variant(gold, {s: ["happy"] * 20 for s in ("0", "1", "2")}, msfe=True)
    assert "Verdict: **not captured**" in "\n".join(mechanism_table({"mechanism": {"conditions": {"x": cond}}}))


def test_mechanism_table_says_not_run_and_the_report_includes_it():
    assert mechanism_table({}) == [MECHANISM_HEADING, "", "not run (`esva mechanism` writes metrics/mechanism.json).", ""]
    from esva.eval.paper_numbers import load_paper_numbers

    report = build_report({}, load_paper_numbers())
    assert MECHANISM_HEADING in report
    assert report.index("## Mechanism checks") < report.index("## About the paper's numbers")
