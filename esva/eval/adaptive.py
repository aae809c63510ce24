"""The alignment controllers under harder conditions (`esva adaptive`): offset tracking and emotion F1.

For each stage-1 model (training seeds `adaptive.seeds`, the first the stage's saved model), each controller
(esva/models/controllers.py) and each condition split (`data.robust`: drift, jump, noise, occlusion, missing;
plus the clean test split), the model runs in eval mode with that controller forming tau*(t):

- tracking error: per clip, the mean |tau_i - truth_i| in ms over its eq. 4 windows, truth_i the ground-truth
  offset track (`gt_offset_track`) at window i's centre; per condition, the mean over clips, then the mean and
  t-interval over seeds. Inside and outside the corrupted spans (`gt_corrupt_spans`) separately. Beside them,
  two references at the same windows: the clip's single offset (eq. 9's tau*) and predicting zero.
- oscillation: sign changes of the error per clip (errors within half a frame ignored).
- emotion F1 (weighted) on each split, by seed, for the interval over seeds and the paired bootstrap against
  `fixed` (esva.eval.stats).
- with train.reliability, the `fixed` controller once more with the fusion's reliability weights off (robustness
  rows `fixed, reliability off`, paired against `fixed`): what the down-weighting of atypical frames does to F1.
- each adaptive controller against `fixed`: the per-seed difference in tracking error, with its t-interval
  over seeds ("beyond the noise between seeds" when the interval excludes 0), and a bootstrap over clips.

The neural controller is trained per seed on the training clips (esva/train/controllers.py: self-supervised,
no offset labels are read).
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np
import torch

from esva.eval.stats import mean_ci, paired_bootstrap
from esva.models.controllers import CONTROLLERS, make
from esva.train.controllers import fit_neural_controller
from esva.train.stage1 import Clip, predict, scores

NO_RELIABILITY = "fixed, reliability off"  # robustness.json's row: train.reliability's effect on F1


def window_truth(track: str, n: int, window: int, hop: int, rate: float) -> np.ndarray:
    """The ground-truth offset (ms) at the centres of a clip's n windows (audio timeline, align.rate frames)."""
    knots = json.loads(track)
    t = (np.arange(n) * hop + (window - 1) / 2.0) / rate
    return np.interp(t, [k[0] for k in knots], [k[1] for k in knots])


def in_spans(spans: str, n: int, window: int, hop: int, rate: float) -> np.ndarray:
    """Which of the n windows' centres fall inside a corrupted span."""
    t = (np.arange(n) * hop + (window - 1) / 2.0) / rate
    inside = np.zeros(n, bool)
    for _, a, b in json.loads(spans or "[]"):
        inside |= (t >= a) & (t <= b)
    return inside


def sign_changes(err_ms: np.ndarray, dead_ms: float) -> int:
    s = np.sign(np.where(np.abs(err_ms) > dead_ms, err_ms, 0.0))
    s = s[s != 0]
    return int((s[1:] != s[:-1]).sum()) if s.size > 1 else 0


def run_split(model, clips: list[Clip], truth: dict[str, tuple[str, str]], use, batch_size: int, controller,
              labels) -> dict:
    """One model, one controller, one split: per-clip tracking errors, oscillations, predictions, F1."""
    al = model.aligner
    saved = al.controller
    al.controller = controller
    try:
        pred = predict(model, clips, use, batch_size)
    finally:
        al.controller = saved
    frame_ms = 1000.0 / al.rate
    per_clip = []
    for c, track, clip_tau in zip(clips, pred["tau_tracks"], pred["tau_frames"]):
        if c.clip_id not in truth:  # no ground-truth offsets (a real corpus): F1 only
            continue
        tr, spans = truth[c.clip_id]
        tau_ms = np.asarray(track, dtype=float) * frame_ms
        gt = window_truth(tr, len(tau_ms), al.window, al.hop, al.rate)
        err = tau_ms - gt
        inside = in_spans(spans, len(err), al.window, al.hop, al.rate)
        per_clip.append({"clip_id": c.clip_id, "mae_ms": float(np.abs(err).mean()),
                         # the references at the same windows: one offset per clip (eq. 9's tau*), and zero
                         "clip_tau_mae_ms": float(np.abs(float(clip_tau) * frame_ms - gt).mean()),
                         "zero_mae_ms": float(np.abs(gt).mean()),
                         "mae_in_spans_ms": float(np.abs(err[inside]).mean()) if inside.any() else None,
                         "mae_outside_spans_ms": float(np.abs(err[~inside]).mean()) if (~inside).any() else None,
                         "oscillations": sign_changes(err, frame_ms / 2), "windows": int(len(err))})
    yhat = [labels[int(i)] for i in pred["probs"].argmax(-1)]
    return {"clips": per_clip, "predictions": yhat, "f1": scores(clips, pred, labels)}


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def summarise(runs: dict, gold: dict[str, list[str]], seeds: list[int], clips_of: dict[str, list[Clip]],
              b: int = 2000) -> tuple[dict, dict]:
    """runs[seed][controller][split] (run_split's records) -> (adaptive, robustness) summaries; a split whose
    clips lack ground-truth offsets has its tracking `skipped` with the reason (its F1 is still scored)."""
    adaptive: dict = {}
    robust: dict = {}
    splits = list(gold)
    names = list(runs[seeds[0]])
    for split in splits:
        adaptive[split], robust[split] = {}, {}
        for ctrl in names:
            recs = [runs[s][ctrl][split] for s in seeds]
            if len(recs[0]["clips"]) < len(gold[split]):
                adaptive[split] = {"skipped": "no ground-truth offset track (gt_offset_track) for "
                                              f"{len(gold[split]) - len(recs[0]['clips'])} of {len(gold[split])} clips: "
                                              "tracking error needs known offsets (esva synth's clips have them)"}
            f1s = [r["f1"]["weighted_f1"] for r in recs if r["f1"]]
            rrow = {"weighted_f1": mean_ci(f1s) if f1s else None, "by_seed": f1s,
                    "predictions": {"clip_ids": [c.clip_id for c in clips_of[split]], "gold": gold[split],
                                    "by_seed": {str(s): r["predictions"] for s, r in zip(seeds, recs)}}}
            if ctrl != "fixed":  # (also the reliability-off row: the same model and offsets, paired with fixed)
                fixed_preds = [runs[s]["fixed"][split]["predictions"] for s in seeds]
                rrow["paired_vs_fixed"] = paired_bootstrap(gold[split], [r["predictions"] for r in recs], fixed_preds, b=b)
            robust[split][ctrl] = rrow
            if "skipped" in adaptive[split] or ctrl not in CONTROLLERS:  # reliability off: the same offsets as fixed
                continue
            per_seed = [_mean(c["mae_ms"] for c in r["clips"]) for r in recs]
            row = {"tracking_mae_ms": mean_ci(per_seed), "by_seed": per_seed,
                   "in_spans_mae_ms": _mean(_mean(c["mae_in_spans_ms"] for c in r["clips"]) for r in recs),
                   "outside_spans_mae_ms": _mean(_mean(c["mae_outside_spans_ms"] for c in r["clips"]) for r in recs),
                   "oscillations_per_clip": _mean(_mean(c["oscillations"] for c in r["clips"]) for r in recs),
                   "windows": int(sum(c["windows"] for c in recs[0]["clips"])), "clips": len(recs[0]["clips"])}
            if ctrl != "fixed":
                fixed = [runs[s]["fixed"][split] for s in seeds]
                diff = [f - c for f, c in zip([_mean(x["mae_ms"] for x in r["clips"]) for r in fixed], per_seed)]
                row["vs_fixed"] = {"error_reduction_ms": mean_ci(diff), "by_seed": diff,
                                   "beyond_seed_noise": bool(len(diff) > 1 and mean_ci(diff)["lo"] > 0),
                                   "clip_bootstrap": _clip_bootstrap(fixed, recs, b)}
            adaptive[split][ctrl] = row
        if "skipped" not in adaptive[split]:  # references at the same windows (from the fixed runs: the same model)
            fixed = [runs[s]["fixed"][split] for s in seeds]
            adaptive[split]["references"] = {
                "clip_tau_star": {"tracking_mae_ms": mean_ci([_mean(c["clip_tau_mae_ms"] for c in r["clips"])
                                                              for r in fixed]),
                                  "what": "one offset per clip (eq. 9's tau*, the clip-level estimate) at every window"},
                "predict_zero": {"tracking_mae_ms": _mean(c["zero_mae_ms"] for c in fixed[0]["clips"]),
                                 "what": "no estimation: offset 0 at every window"}}
    return adaptive, robust


def _clip_bootstrap(fixed: list[dict], other: list[dict], b: int, seed: int = 0) -> dict:
    """Mean (fixed - other) per-clip tracking error over seeds x clips, with a bootstrap over clips."""
    d = np.array([[f["mae_ms"] - o["mae_ms"] for f, o in zip(fr["clips"], orr["clips"])]
                  for fr, orr in zip(fixed, other)])  # (seeds, clips)
    per_clip = d.mean(0)
    rng = np.random.default_rng(seed)
    boots = per_clip[rng.integers(0, per_clip.size, size=(b, per_clip.size))].mean(1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return {"mean": float(per_clip.mean()), "lo": float(lo), "hi": float(hi), "n_clips": int(per_clip.size)}


def evaluate_models(models: list[tuple[int, object]], train_clips: list[Clip], split_clips: dict[str, list[Clip]],
                    truth: dict[str, tuple[str, str]], use, batch_size: int, labels, neural_steps: int,
                    neural_lr: float, on_run: Callable[[dict], None] | None = None) -> tuple[dict, dict, dict]:
    """Every (seed, controller, split); returns (runs, neural fit records and controllers, gold labels per
    split). A model whose own controller is `neural` (align.controller, fitted by stage 1) is used as it is."""
    runs: dict = {}
    fits: dict = {}
    for seed, model in models:
        own = model.aligner.controller
        if getattr(model.aligner, "controller_name", "") == "neural":
            neural, losses = own, [float("nan")]
        else:
            neural, losses = fit_neural_controller(model, train_clips, use, batch_size, seed, neural_steps, neural_lr)
        fits[str(seed)] = {"first_loss": losses[0], "last_loss": losses[-1], "steps": len(losses), "controller": neural}
        runs[seed] = {}
        names = list(CONTROLLERS) + ([NO_RELIABILITY] if getattr(model, "reliability", None) is not None else [])
        for name in names:
            ctrl = neural if name == "neural" else make("fixed" if name == NO_RELIABILITY else name)
            runs[seed][name] = {}
            saved = model.reliability if name == NO_RELIABILITY else None
            if name == NO_RELIABILITY:  # the same model, its fusion without the reliability weights
                model.reliability = None
            try:
                for split, clips in split_clips.items():
                    runs[seed][name][split] = run_split(model, clips, truth, use, batch_size, ctrl, labels)
            finally:
                if name == NO_RELIABILITY:
                    model.reliability = saved
            for split in split_clips:
                rec = runs[seed][name][split]
                if on_run:
                    on_run({"seed": seed, "controller": name, "split": split,
                            "mae_ms": _mean(c["mae_ms"] for c in rec["clips"]),
                            "f1": rec["f1"]["weighted_f1"] if rec["f1"] else None})
    gold = {split: [c.gold if c.gold is not None else labels[c.label] for c in clips]
            for split, clips in split_clips.items()}
    return runs, fits, gold
