"""The ablation rows' statistics: training seeds on the manifest's split (`repeat_seeds`, the default), or
repeated, stratified k-fold cross-validation of the stage-1 classifier (`cross_validate`, ablate.folds >= 2).

`repeat_seeds` trains the variant once per seed on the run's own train/val split and predicts the same test
clips each time: every seed's predictions on the shared clips give the interval over seeds and the paired
test against the full model (esva.eval.stats, esva.eval.tables), at seeds trainings per variant.

One held-out test fold of 36 clips cannot tell variants apart (one clip moves F1 by 2.8 points), so each
ablation variant is trained `seeds x folds` times on the run's *training* clips (roles `train` and `val`;
evaluation clips are never touched) and every clip is predicted once per seed, by the fold that held it
out. Within a fold, the epoch is chosen on a stratified validation share of the remaining clips, never on
the held-out fold.

- Folds are stratified by label and drawn per seed (`fold_ids`): clips sorted by id, each label's clips
  shuffled with `[seed, label index]` and dealt round-robin, so a fold has every label whose count allows.
- The validation share of a fold's training part is drawn the same way (`val_fraction`, at least one clip
  of each label that has two or more).
- `cross_validate` returns every run's record and, per seed, one predicted label per clip: what
  esva.eval.stats needs for intervals over seeds and paired tests between variants on the same clips.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from esva.train.stage1 import FeatureData, TrainError, alignment_scores, predict, scores, train


def fold_ids(labels: list[int], clip_ids: list[str], folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each clip: stratified by label, seeded, independent of input order."""
    if folds < 2:
        raise TrainError(f"cross-validation needs at least 2 folds, got {folds}")
    out = np.full(len(labels), -1, dtype=np.int64)
    for lab in sorted(set(labels)):
        idx = sorted((i for i, y in enumerate(labels) if y == lab), key=lambda i: clip_ids[i])
        order = np.random.default_rng([seed, int(lab) + 1]).permutation(len(idx))
        start = int(np.random.default_rng([seed, 10_000 + int(lab)]).integers(folds))  # rotate the remainders
        for r, j in enumerate(order):
            out[idx[j]] = (start + r) % folds
    return out


def carve_val(labels: list[int], clip_ids: list[str], fraction: float, seed: int) -> np.ndarray:
    """A boolean mask: the stratified validation share of these clips."""
    mask = np.zeros(len(labels), bool)
    for lab in sorted(set(labels)):
        idx = sorted((i for i, y in enumerate(labels) if y == lab), key=lambda i: clip_ids[i])
        n = int(round(len(idx) * fraction))
        n = max(1, min(n, len(idx) - 1)) if len(idx) >= 2 else 0
        for j in np.random.default_rng([seed, 20_000 + int(lab)]).permutation(len(idx))[:n]:
            mask[idx[j]] = True
    return mask


def views(data: FeatureData, folds: int, seed: int, val_fraction: float):
    """(fold, FeatureData) per fold: the pool (train and val clips with a label in the vocabulary) with
    splits reassigned: the fold's clips `test`, a validation share of the rest `val`, the others `train`."""
    pool = [c for c in data.clips if c.split in ("train", "val") and c.label >= 0]
    if not pool:
        raise TrainError("cross-validation: no labelled training or validation clips")
    labels, ids = [c.label for c in pool], [c.clip_id for c in pool]
    counts = np.bincount(labels, minlength=len(data.labels))
    thin = [data.labels[i] for i, n in enumerate(counts) if 0 < n < folds]
    if thin:
        raise TrainError(f"cross-validation with {folds} folds needs at least {folds} clips of each label; "
                         f"{thin} have fewer (lower ablate.folds)")
    fid = fold_ids(labels, ids, folds, seed)
    for k in range(folds):
        rest = [i for i in range(len(pool)) if fid[i] != k]
        val = carve_val([labels[i] for i in rest], [ids[i] for i in rest], val_fraction, seed * 1000 + k)
        split = {ids[i]: "test" for i in range(len(pool)) if fid[i] == k}
        split.update({ids[i]: ("val" if v else "train") for i, v in zip(rest, val)})
        clips = [dataclasses.replace(c, split=split[c.clip_id]) for c in pool]
        yield k, dataclasses.replace(data, clips=clips)


def _record(res, align_cfg, seed: int, view: FeatureData, test, out, labels, fold: int | None = None,
            seconds: float | None = None) -> dict:
    has_aligner = res.model.aligner is not None
    first = (align_cfg.warmup_epochs if has_aligner else 0) + 1  # no warm-up epoch is scored
    rec = {"seed": int(seed), "best_epoch": res.best_epoch, "first_scored_epoch": first,
           "epochs_run": len(res.history), "stopped_early": res.stopped_early, "n_train": len(view.split("train")),
           "n_val": len(view.split("val")), "test": scores(test, out, labels),
           "alignment": alignment_scores(test, out, align_cfg.rate, fps=align_cfg.rate) if has_aligner else None}
    if seconds is not None:
        rec["seconds"] = round(seconds, 2)
    return rec if fold is None else {"seed": int(seed), "fold": fold, **{k: v for k, v in rec.items() if k != "seed"}}


def repeat_seeds(data: FeatureData, use, msfe_cfg, contrast_cfg, align_cfg, train_cfg, seeds: list[int],
                 first=None, on_run: Callable[[dict], None] | None = None) -> dict:
    """One training per seed on `data`'s own train/val split, each predicting its test clips (labelled
    ones only). `first`: the TrainResult already trained with seeds[0] (the stage's saved model), reused.
    Returns the runs and, per seed, one predicted label per test clip (sorted by clip id)."""
    test = sorted((c for c in data.split("test") if c.label != -1), key=lambda c: c.clip_id)
    if not test:
        raise TrainError("ablation seeds: the run has no labelled test clips to score the seeds on")
    gold = [c.gold if c.gold is not None else data.labels[c.label] for c in test]
    runs, by_seed = [], {}
    for i, seed in enumerate(seeds):
        cfg = train_cfg.model_copy(update={"seed": int(seed)})
        t0 = time.perf_counter()
        res = first if (i == 0 and first is not None) else train(data, use, msfe_cfg, contrast_cfg, align_cfg, cfg)
        out = predict(res.model, test, use, cfg.batch_size, dtype=res.dtype)
        by_seed[str(seed)] = [data.labels[int(p)] for p in out["probs"].argmax(-1)]
        rec = _record(res, align_cfg, seed, data, test, out, data.labels, seconds=time.perf_counter() - t0)
        runs.append(rec)
        if on_run:
            on_run(rec)
    return {"design": {"kind": "seeds", "seeds": [int(s) for s in seeds],
                       "pool": "the run's own split: each seed trains on the training clips, chooses its epoch on "
                               "the validation clips and predicts the same test clips",
                       "n_clips": len(test), "n_predictions": len(test) * len(seeds)},
            "runs": runs,
            "predictions": {"clip_ids": [c.clip_id for c in test], "gold": gold, "by_seed": by_seed}}


def cross_validate(data: FeatureData, use, msfe_cfg, contrast_cfg, align_cfg, train_cfg, seeds: list[int],
                   folds: int, val_fraction: float,
                   on_run: Callable[[dict], None] | None = None) -> dict:
    """Every (seed, fold) run; `predictions`: clip ids, gold labels and, per seed, each clip's predicted
    label from the fold that held it out."""
    pool = [c for c in data.clips if c.split in ("train", "val") and c.label >= 0]
    ids = sorted(c.clip_id for c in pool)
    gold = {c.clip_id: data.labels[c.label] for c in pool}
    runs, by_seed = [], {}
    for seed in seeds:
        cfg = train_cfg.model_copy(update={"seed": int(seed)})
        pred: dict[str, str] = {}
        for k, view in views(data, folds, int(seed), val_fraction):
            res = train(view, use, msfe_cfg, contrast_cfg, align_cfg, cfg)
            test = view.split("test")
            out = predict(res.model, test, use, cfg.batch_size, dtype=res.dtype)
            for cid, p in zip(out["clip_ids"], out["probs"].argmax(-1)):
                pred[cid] = data.labels[int(p)]
            rec = _record(res, align_cfg, seed, view, test, out, data.labels, fold=k)
            runs.append(rec)
            if on_run:
                on_run(rec)
        by_seed[str(seed)] = [pred[c] for c in ids]
    return {"design": {"kind": "kfold", "folds": folds, "seeds": [int(s) for s in seeds], "val_fraction": val_fraction,
                       "pool": "the training clips (roles train and val); evaluation clips are not used",
                       "n_clips": len(ids), "n_predictions": len(ids) * len(seeds)},
            "runs": runs,
            "predictions": {"clip_ids": ids, "gold": [gold[c] for c in ids], "by_seed": by_seed}}
