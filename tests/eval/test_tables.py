"""esva.eval.tables: row labels, paper strings verbatim, baselines, intervals, paired tests, degenerate runs."""

import numpy as np
import pytest

from esva.eval import stats, tables
from esva.eval.paper_numbers import load_paper_numbers

LABELS = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
PAPER = load_paper_numbers()


def _row(text: str, section: str, first_cell: str) -> list[str]:
    start = text.index(section)
    end = text.find("\n## ", start + 1)
    body = text[start:end if end > 0 else None]
    line = next(x for x in body.splitlines() if x.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split(" | ")]


def _multi(variant, preds_by_seed, gold, best_epoch=7):
    return {"corpus": "synthetic", "split": "test", "variant": variant, "model": "stage-1 fusion classifier",
            "labels": LABELS, "features_use": ["hubert", "mae"], "msfe": True, "align": True,
            "design": {"kind": "kfold", "folds": 2, "seeds": list(range(len(preds_by_seed))),
                       "n_predictions": len(gold) * len(preds_by_seed)},
            "runs": [{"seed": s, "fold": f, "best_epoch": best_epoch if not callable(best_epoch) else best_epoch(s, f),
                      "epochs_run": 17, "test": {}} for s in range(len(preds_by_seed)) for f in range(2)],
            "predictions": {"clip_ids": [f"c{i}" for i in range(len(gold))], "gold": gold,
                            "by_seed": {str(s): p for s, p in enumerate(preds_by_seed)}}}


@pytest.fixture(scope="module")
def multi_seed_metrics():
    rng = np.random.default_rng(0)
    gold = [LABELS[i % 6] for i in range(60)]  # balanced: chance 1/6, majority 1/21

    def noisy(acc):
        return [g if rng.random() < acc else LABELS[rng.integers(6)] for g in gold]

    full = [noisy(0.8) for _ in range(5)]
    wrong = [[LABELS[(LABELS.index(g) + 1) % 6] for g in gold] for _ in range(5)]
    abl = {"full": _multi("full", full, gold),
           "no_msfe": _multi("no_msfe", [list(p) for p in full], gold),  # the same predictions as full
           "no_align": _multi("no_align", wrong, gold),  # every clip wrong
           "baseline": _multi("baseline", [noisy(0.8) for _ in range(5)], gold,
                              best_epoch=lambda s, f: 1 if s == 2 else 9),  # one seed has a fold stuck at epoch 1
           "enc_eva": _multi("enc_eva", [["happy"] * 60 for _ in range(5)], gold)}  # collapsed
    return {"ablation": abl, "stage2": {}}, full, gold


def test_multi_seed_rows_mean_interval_and_paired_test(multi_seed_metrics):
    m, full, gold = multi_seed_metrics
    text = tables.build_report(m, PAPER)
    sec = "### Table 6, stage-1"
    f1s = [stats.weighted_f1(gold, p) for p in full]
    ci = stats.mean_ci(f1s)
    row = _row(text, sec, "full (MSFE + alignment)")
    assert row[1].startswith("stage-1 fusion classifier (`ablate@full`")
    assert row[2] == f"{np.mean(f1s):.4f}"
    assert row[3] == f"[{ci['lo']:.4f}, {ci['hi']:.4f}] over 5 seeds"
    assert row[4] == "reference"
    assert row[6:8] == ["0.1667", "0.0476"]  # chance 1/6 and majority 1/21 on six balanced classes
    same = _row(text, sec, "no MSFE")
    assert "+0.0000" in same[4] and "p=1: not distinguishable from noise" in same[4] and "60 clips x 5 seeds" in same[4]
    worse = _row(text, sec, "no alignment")
    assert "distinguishable from noise" in worse[4] and "not distinguishable" not in worse[4]
    assert worse[2] == "0.0000" and worse[5].endswith("(F1)")
    flagged = _row(text, sec, "no MSFE, no alignment")
    assert "over 5 seeds; degenerate in 1 of 5 seeds: seed 2: the best epoch is the first scored one in fold" in flagged[3]
    assert "fold" in flagged[3] and flagged[2] != "—"


def test_collapsed_and_first_epoch_runs_print_degenerate(multi_seed_metrics):
    m, _, _ = multi_seed_metrics
    text = tables.build_report(m, PAPER)
    t5 = text[text.index("## Table 5"):text.index("## Table 6")]
    eva = next(x for x in t5.splitlines() if "`ablate@enc_eva`" in x)
    assert "degenerate: every seed (5): predicts one class ('happy') for all 60 clips" in eva
    single = {"enc_videomae": {"corpus": "synthetic", "split": "test", "features_use": ["videomae"], "best_epoch": 1,
                               "test": {"weighted_f1": 0.18, "accuracy": 0.25, "n": 36}}}
    text = tables.build_report({"ablation": single}, PAPER)
    row = _row(text, "## Table 2", "VideoMAE")
    assert row[3] == "degenerate: best epoch is 1, the first scored one (validation never improved after it)"
    assert "0.18" not in " ".join(row[3:5])


def test_single_run_files_fall_back_and_say_so():
    mer = {"corpus": "synthetic", "split": "synthetic:test", "n": 36, "weighted_f1": 0.6, "accuracy": 0.61,
           "macro_f1": 0.6, "invalid": 0, "per_class": {c: {"support": 6} for c in LABELS},
           "confusion": {"rows": "gold", "columns": LABELS + ["invalid"],
                         "matrix": [[6 if i == j else 0 for j in range(7)] for i in range(6)]}}
    abl = {"enc_hubert": {"corpus": "synthetic", "split": "test", "features_use": ["hubert"], "best_epoch": 20,
                          "test": {"weighted_f1": 0.2339, "accuracy": 0.25, "n": 36}},
           "enc_eva": {"corpus": "synthetic", "split": "test", "features_use": ["eva"], "best_epoch": 3,
                       "test": {"weighted_f1": 1 / 21, "accuracy": 1 / 6, "n": 36}}}
    text = tables.build_report({"mer2023": mer, "tune": {"layout": "esva"}, "ablation": abl}, PAPER)
    hub = _row(text, "## Table 2", "HuBERT")
    assert hub[1] == "stage-1 fusion classifier (`ablate@enc_hubert`: hubert)"
    assert hub[3:7] == ["0.2339", "1 seed: no interval", "0.1667", "0.0476"]
    assert hub[7] == "synthetic, split test" and hub[8] == "0.8511"
    assert "for stage-1 rows, the per-class supports of metrics/mer2023.json" in text  # where the stage-1 baselines' gold counts come from
    eva = next(x for x in text.splitlines() if "`ablate@enc_eva`" in x)
    assert "degenerate: F1 0.0476 and accuracy 0.1667 are exactly those of always predicting one class" in eva
    esva = _row(text, "## Table 2", "ESVA")
    assert esva[1] == "stage-2 LLM, `esva` layout (`tune` + `evaluate`, the main run)"
    assert esva[4].startswith("1 seed: no interval (test clips, bootstrap: [1.0000, 1.0000])")  # all 36 right


def test_labels_paper_strings_and_definitions():
    s2 = {v: {"mer2023": {"corpus": "synthetic", "split": "test", "n": 36, "weighted_f1": f, "accuracy": f},
              "tune": {"layout": "emotion_llama" if v == "baseline" else "esva", "epochs": 6, "best_epoch": 4}}
          for v, f in {"full": 0.61, "no_msfe": 0.55, "no_align": 0.58, "baseline": 0.5}.items()}
    text = tables.build_report({"stage2": s2, "mer2024_ov": {"corpus": "synthetic", "split": "test", "accuracy": 0.3,
                                                            "recall": 0.4, "avg": 0.35, "grouping": "g"}},
                               PAPER, empty_ov={"accuracy": 0.0, "recall": 0.0, "avg": 0.0})
    assert "not results on MER2023" in text  # the synthetic banner
    t6 = "## Table 6"
    assert _row(text, t6, "ESVA")[-2:] == ["0.8956", "-0"]
    assert _row(text, t6, "ESVA w/o MSFE")[-2:] == ["0.8943", "-0.14%"]  # as printed, not -0.15%
    base = _row(text, t6, "Emotion-LLaMA (Baseline)")
    assert base[1].startswith("stage-2 LLM, `emotion_llama` layout, stage 1 `full`")
    assert base[8] == "-18.03%" and base[4] == "no per-clip predictions stored: no paired test"
    assert "1 seed: no interval" in base[3]
    assert _row(text, "## Table 2", "Emotion-LLaMA")[1] == "stage-2 LLM, `emotion_llama` layout (`tune_ablation@baseline`)"
    empty = _row(text, "## Table 4", "Empty")
    assert empty[1].startswith("by definition of the metric") and "computed" not in " ".join(empty)
    assert empty[-3:] == ["0", "0", "0"]
    fuzzy, plain = _row(text, "## Table 7", "ESVA Fuzzy Control"), _row(text, "## Table 7", "ESVA (baseline)")
    assert fuzzy[7] == "0.9076" and plain[7] == ""  # the paper's blank stays blank
    assert fuzzy[2] == "not run" and fuzzy[3] == "not run"  # no evaluate_controller metrics in this run
    assert "36 test clips" in text and "0.26" in text and "0.33" in text  # the single-seed detectability note


def test_table7_fills_the_papers_layout_and_the_tracking_rows_with_their_controllers():
    ctl = {c: {"mer2023": {"corpus": "synthetic", "split": "synthetic:test", "weighted_f1": f},
               "emer": {"corpus": "synthetic", "label_overlap_proxy": 6.5},
               "mer2024_ov": {"corpus": "synthetic", "avg": 0.3}}
           for c, f in {"fixed": 0.41, "fuzzy": 0.42, "neural": 0.40, "backstepping": 0.39}.items()}
    ci = lambda m, lo, hi: {"mean": m, "lo": lo, "hi": hi, "sd": 1.0, "n": 3}  # noqa: E731
    track = {"drift": {"fixed": {"tracking_mae_ms": ci(60.0, 55.0, 65.0), "clips": 12, "windows": 300,
                                 "oscillations_per_clip": 0.5, "in_spans_mae_ms": None},
                       "fuzzy": {"tracking_mae_ms": ci(40.0, 35.0, 45.0), "clips": 12, "windows": 300,
                                 "oscillations_per_clip": 0.4, "in_spans_mae_ms": None,
                                 "vs_fixed": {"error_reduction_ms": ci(20.0, 15.0, 25.0), "beyond_seed_noise": True}}}}
    f1 = {"drift": {"fixed": {"weighted_f1": ci(0.5, 0.4, 0.6)},
                    "fuzzy": {"weighted_f1": ci(0.52, 0.41, 0.63),
                              "paired_vs_fixed": {"diff": 0.02, "lo": -0.05, "hi": 0.09, "p": 0.5,
                                                  "distinguishable": False, "n": 12, "seeds": 3}}}}
    text = tables.build_report({"controllers": ctl, "adaptive": {"corpus": "synthetic", "tracking": track, "seeds": [0, 1, 2],
                                                                 "window": 8, "hop": 4, "rate": 25.0, "model": "stage-1"},
                                "robustness": {"corpus": "synthetic", "f1": f1}}, PAPER)
    fuzzy, aac = _row(text, "## Table 7", "ESVA Fuzzy Control"), _row(text, "## Table 7", "ESVA backstepping (AAC)")
    assert fuzzy[1] == "`fuzzy`" and "evaluate_controller@fuzzy" in fuzzy[2] and fuzzy[3] == "0.4200"
    assert fuzzy[4] == "6.50 (proxy)" and fuzzy[5] == "30.00" and fuzzy[6].startswith("synthetic") and fuzzy[7] == "0.9076"
    assert aac[1] == "`backstepping`" and aac[3] == "0.3900"
    row = next(x for x in text.splitlines() if x.startswith("| drift (12 clips, 300 windows) | `fuzzy`"))
    assert "40.0 [35.0, 45.0]" in row and "+20.0 [+15.0, +25.0] ms: beyond seed noise" in row
    assert "not distinguishable from noise" in row and "0.5200 [0.4100, 0.6300]" in row
    assert "Synthetic conditions" in text


def test_alignment_rows_labelled():
    off = lambda mae: {"n": 36, "mae_ms": mae, "median_ae_ms": mae / 2, "within_one_frame": 0.5}  # noqa: E731
    m = {"alignment": {"corpus": "synthetic", "split": "test", "learned": off(30.0)},
         "alignment_reference": {"corpus": "synthetic", "rows": {"predict_zero": off(120.0), "oracle": off(0.0),
                                                                 "xcorr_opening": off(60.0)}}}
    text = tables.build_report(m, PAPER)
    sec = text[text.index("## Audio-video offset estimation"):]
    order = [x.split(" | ")[0].strip("| ") for x in sec.splitlines() if x.startswith("| ") and "---" not in x][1:]
    assert order == ["predict zero offset", "cross-correlation, audio energy vs mouth opening",
                     "learned alignment (eq. 4-9)", "oracle (the true offset)"]
    assert "120.0" in sec and "ceiling" in sec


def test_stage2_rows_with_per_clip_predictions_get_a_paired_test_against_full():
    """evaluate stores each clip's parsed answer in mer2023.json (`predictions`, key "run": one tuning), so
    Table 6's stage-2 rows are paired with the full model's run on the same clips; a run whose best epoch is
    its first is degenerate."""
    gold = [LABELS[i % 6] for i in range(36)]

    def mer(pred):
        return {"corpus": "synthetic", "split": "synthetic:test", "n": 36,
                "predictions": {"clip_ids": [f"c{i}" for i in range(36)], "gold": gold, "by_seed": {"run": pred}}}

    right = list(gold)
    half = [g if i % 2 else stats.INVALID for i, g in enumerate(gold)]  # half unparseable: wrong
    s2 = {"full": {"mer2023": mer(right), "tune": {"layout": "esva", "best_epoch": 6}},
          "no_msfe": {"mer2023": mer(half), "tune": {"layout": "esva", "best_epoch": 5}},
          "no_align": {"mer2023": mer(right), "tune": {"layout": "esva", "best_epoch": 1}}}
    text = tables.build_report({"stage2": s2, "ablation": {}}, PAPER)
    full = _row(text, "## Table 6", "ESVA")
    assert full[2] == "1.0000" and full[3].startswith("1 seed") and full[4] == "reference"
    nomsfe = _row(text, "## Table 6", "ESVA w/o MSFE")
    expect = stats.paired_bootstrap(gold, [half], [right], b=tables.BOOTSTRAP_B, seed=tables.BOOTSTRAP_SEED)
    assert nomsfe[2] == f"{stats.weighted_f1(gold, half):.4f}"
    assert f"{expect['diff']:+.4f}" in nomsfe[4] and "no per-clip predictions" not in nomsfe[4]
    noalign = _row(text, "## Table 6", "ESVA w/o Audio & Video alignment")
    assert "degenerate" in " ".join(noalign) and "best epoch is the first" in " ".join(noalign)
