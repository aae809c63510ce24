"""The benchmarks' metrics as pure functions (DESIGN.md section 5).

- MER2023 / MER2024 discrete: weighted F1 (the official metric: sklearn's `f1_score(average="weighted")`),
  macro F1, accuracy, per-class precision/recall/F1, the confusion matrix; valence MSE and MER2023's
  combined score `weighted F1 - 0.25 * MSE` when valence is predicted. A prediction outside the label
  set is wrong and counted in `invalid` (split into `unparseable` answers and labels `outside_label_set`,
  e.g. MERR's `doubt` on MER2023, which is scored on its six labels).
- MER2024-OV: labels lower-cased and mapped to synonym groups; per sample `accuracy = |gt & pred| / |pred|`
  and `recall = |gt & pred| / |gt|` (both 0 when pred is empty), averaged; `avg` is their mean.
- EMER (official judge: ChatGPT; these are offline proxies, named as such): `label_overlap_proxy` from
  the emotion words of the two texts (same lexicon as OV), and `clue_overlap_proxy` from the cosine
  similarity of the explanations' sentence embeddings; both on 0-10.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from esva import LABELS
from esva.eval.synonyms import Grouping, emotion_words

INVALID = "<invalid>"


class EvalError(ValueError):
    """Predictions that cannot be scored (ids that do not match, an empty split). Names what is wrong."""


def match_ids(pred_ids: Sequence[str], gold_ids: Sequence[str], what: str) -> None:
    """Predictions must cover exactly the gold ids: an error lists the missing and the extra ones."""
    p, g = list(map(str, pred_ids)), list(map(str, gold_ids))
    dup = sorted({x for x in p if p.count(x) > 1}) if len(set(p)) != len(p) else []
    missing, extra = sorted(set(g) - set(p)), sorted(set(p) - set(g))
    if missing or extra or dup:
        def show(xs):
            return f"{xs[:10]}{f' and {len(xs) - 10} more' if len(xs) > 10 else ''}"
        parts = [f"missing {len(missing)}: {show(missing)}" if missing else "",
                 f"extra {len(extra)}: {show(extra)}" if extra else "",
                 f"duplicated {len(dup)}: {show(dup)}" if dup else ""]
        raise EvalError(f"{what}: prediction ids do not match the labels ({'; '.join(x for x in parts if x)})")


def discrete_scores(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str] = LABELS,
                    valence_gold: Sequence[float] | None = None, valence_pred: Sequence[float] | None = None) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    if len(gold) == 0:
        raise EvalError("no samples to score")
    if len(gold) != len(pred):
        raise EvalError(f"{len(gold)} labels but {len(pred)} predictions")
    labels = list(labels)
    bad_gold = sorted({g for g in gold if g not in labels})
    if bad_gold:
        raise EvalError(f"gold labels outside the label set {labels}: {bad_gold}")
    yp = [p if p in labels else INVALID for p in pred]
    present = [lab for lab in labels if lab in set(gold)]
    prec, rec, f1, sup = precision_recall_fscore_support(gold, yp, labels=labels, zero_division=0)
    out = {
        "n": len(gold),
        "weighted_f1": float(f1_score(gold, yp, labels=labels, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(gold, yp, labels=present, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(gold, yp)),
        "invalid": int(sum(p == INVALID for p in yp)),  # = unparseable + outside_label_set
        "unparseable": int(sum(p is None for p in pred)),
        "outside_label_set": int(sum(p is not None and p not in labels for p in pred)),
        "chance_accuracy": 1.0 / len(labels),
        "majority_class_accuracy": max(list(gold).count(lab) for lab in present) / len(gold),
        "per_class": {lab: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                            "support": int(sup[i])} for i, lab in enumerate(labels)},
        "confusion": {"rows": "gold", "columns": labels + ["invalid"],
                      "matrix": confusion_matrix(gold, yp, labels=labels + [INVALID])[: len(labels)].tolist()},
    }
    if valence_pred is not None and valence_gold is not None:
        pairs = [(float(g), float(p)) for g, p in zip(valence_gold, valence_pred)
                 if g is not None and p is not None and np.isfinite(g) and np.isfinite(p)]
        if pairs:
            mse = float(np.mean([(g - p) ** 2 for g, p in pairs]))
            out.update(valence_mse=mse, valence_n=len(pairs), combined=out["weighted_f1"] - 0.25 * mse)
    return out


def ov_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], grouping: Grouping) -> dict:
    if len(gold) == 0:
        raise EvalError("no samples to score")
    if len(gold) != len(pred):
        raise EvalError(f"{len(gold)} label lists but {len(pred)} predictions")
    acc, rec = [], []
    for g, p in zip(gold, pred):
        gs, ps = grouping.groups(g), grouping.groups(p)
        hit = len(gs & ps)
        acc.append(hit / len(ps) if ps else 0.0)
        rec.append(hit / len(gs) if gs else 0.0)
    a, r = float(np.mean(acc)), float(np.mean(rec))
    return {"n": len(gold), "accuracy": a, "recall": r, "avg": (a + r) / 2, "grouping": grouping.name,
            "empty_predictions": int(sum(not grouping.groups(p) for p in pred))}


def label_overlap_proxy(gold_labels: Sequence[Sequence[str]], explanations: Sequence[str], grouping: Grouping) -> dict:
    """0-10: the mean of accuracy and recall (as in OV) between the annotated emotion groups and the
    emotion words found in each generated explanation. A proxy for EMER's ChatGPT-judged label overlap."""
    if len(gold_labels) == 0:
        raise EvalError("no samples to score")
    per = []
    for g, text in zip(gold_labels, explanations):
        gs, ps = grouping.groups(g), emotion_words(text, grouping)
        hit = len(gs & ps)
        per.append(5.0 * ((hit / len(ps) if ps else 0.0) + (hit / len(gs) if gs else 0.0)))
    return {"label_overlap_proxy": float(np.mean(per)), "per_sample": per}


def clue_overlap_proxy(gold: Sequence[str], generated: Sequence[str], embed) -> dict:
    """0-10: 10 x max(0, cosine) of sentence embeddings of the reference and the generated explanation.
    `embed(texts) -> (N, D)` array (the bundled all-MiniLM-L6-v2 in the pipeline). A proxy for EMER's
    ChatGPT-judged clue overlap."""
    if len(gold) == 0:
        raise EvalError("no samples to score")
    a = np.asarray(embed(list(gold)), dtype=np.float64)
    b = np.asarray(embed(list(generated)), dtype=np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b /= np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    cos = (a * b).sum(1)
    per = (10.0 * np.clip(cos, 0.0, None)).tolist()
    return {"clue_overlap_proxy": float(np.mean(per)), "per_sample": per}
