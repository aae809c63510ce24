"""`esva adaptive`: the alignment controllers (fixed, fuzzy, neural, backstepping) on the harder conditions ->
metrics/adaptive.json (offset tracking error over time, oscillation) and metrics/robustness.json (emotion F1
per corrupted split), by stage-1 training seed (esva/eval/adaptive.py). Table 7 of `esva report` reads both."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from safetensors.torch import save_file

from esva.config import ConfigError, Params
from esva.data.manifest import corpus_of, read_manifest
from esva.eval.adaptive import evaluate_models, summarise
from esva.models.controllers import CONTROLLERS
from esva.provenance import atomic_write_json
from esva.train.stage1 import load_features, load_stage1, train
from pipeline.common import log

PARAMS = ("adaptive", "data.robust", "evaluate.mer", "features.use", "msfe", "contrast", "align", "train")  # (pipeline/deps.py)


def run(p: Params, manifest: Path, features_dir: Path, stage1_dir: Path, out_dir: Path = Path("metrics"),
        models_dir: Path | None = Path("data/models/adaptive")) -> dict:
    t0 = time.perf_counter()
    df = read_manifest(manifest)
    use = p.features.use
    first, cfg = load_stage1(stage1_dir)
    if first.aligner is None:  # e.g. dvc exp run -S align.enabled=false: nothing to control, recorded as such
        reason = (f"the stage-1 model in {stage1_dir} has no aligner (align.enabled false, or hubert or align.video "
                  f"not in features.use): no controller to evaluate")
        log.warning("adaptive: skipped: %s", reason)
        for name in ("adaptive.json", "robustness.json"):
            atomic_write_json(Path(out_dir) / name, {"corpus": corpus_of(df["dataset"]), "skipped": reason})
        if models_dir is not None:
            Path(models_dir).mkdir(parents=True, exist_ok=True)
        return {"skipped": reason}
    labels = first.labels
    paths = {n: Path(features_dir) / f"{n}.zarr" for n in use}
    data = load_features(df, paths, use, cache_mb=p.train.feature_cache_mb, labels=labels)
    # the clean evaluation split (evaluate.mer) and the condition splits (data.robust, role robust: never trained
    # on), read as `predict` rows
    pairs = [("clean", p.evaluate.mer.source, p.evaluate.mer.split)] + \
        [(x.split(":", 1)[1], *x.split(":", 1)) for x in p.data.robust]
    key = df["source"].astype(str) + ":" + df["split"].astype(str)
    has_gt = "gt_offset_track" in df.columns  # offset tracks (synth.conditions); else a known offset_ms is constant
    split_clips, truth = {}, {}
    for name, src, split in pairs:
        rows = df[key == f"{src}:{split}"]
        if rows.empty:
            raise ConfigError(f"adaptive: no manifest rows for {src}:{split} "
                              f"({'evaluate.mer' if name == 'clean' else 'data.robust'})")
        sub = load_features(rows.assign(role="predict"), paths, use, cache_mb=64, labels=labels)
        clips = sorted((c for c in sub.clips if c.label >= 0), key=lambda c: c.clip_id)
        if not clips:
            raise ConfigError(f"adaptive: {src}:{split} has no labelled clips with features ({len(sub.skipped)} skipped, "
                              f"e.g. {list(sub.skipped.items())[:3]})")
        split_clips[name] = clips
        for r in rows.itertuples(index=False):
            track = getattr(r, "gt_offset_track", None) if has_gt else None
            off = getattr(r, "offset_ms", None)
            if not (isinstance(track, str) and track) and off is not None and not pd.isna(off):
                track = json.dumps([[0.0, float(off)], [1e6, float(off)]])  # a known constant offset (offset_ms)
            if isinstance(track, str) and track:
                spans = getattr(r, "gt_corrupt_spans", None)
                truth[r.clip_id] = (track, spans if isinstance(spans, str) and spans else "[]")
            elif name != "clean":
                raise ConfigError(f"adaptive: {r.clip_id} ({src}:{split}, data.robust) has no ground-truth offset "
                                  f"track (gt_offset_track): condition splits come from `esva synth` with synth.conditions")
    seeds = [p.train.seed + i for i in range(p.adaptive.seeds)]
    models = [(seeds[0], first)]
    for s in seeds[1:]:
        log.info("adaptive: training stage-1 seed %d (%d of %d)", s, seeds.index(s) + 1, len(seeds))
        res = train(data, use, p.msfe, p.contrast, p.align, p.train.model_copy(update={"seed": s}))
        res.model.labels = labels
        models.append((s, res.model.eval()))

    def on_run(rec):
        log.info("adaptive [seed %d, %s, %s]: tracking error %s, weighted F1 %s", rec["seed"], rec["controller"],
                 rec["split"], f"{rec['mae_ms']:.1f} ms" if rec["mae_ms"] is not None else "n/a (no known offsets)",
                 f"{rec['f1']:.4f}" if rec["f1"] is not None else "n/a")

    runs, fits, gold = evaluate_models(models, data.split("train"), split_clips, truth, use, p.train.batch_size,
                                       labels, p.align.neural_steps, p.align.neural_lr, on_run=on_run)
    adaptive, robust = summarise(runs, gold, seeds, split_clips)
    if models_dir is not None:  # each seed's neural controller (`esva evaluate --controller neural` reads seed 0's)
        Path(models_dir).mkdir(parents=True, exist_ok=True)
        for s, f in fits.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in f["controller"].state_dict().items()},
                      str(Path(models_dir) / f"neural_seed{s}.safetensors"))
    for f in fits.values():
        f.pop("controller")
    al = first.aligner
    common = {"corpus": data.corpus,
              "note": "synthetic corpus: tests of the controllers, not a result on a real benchmark"
              if data.corpus == "synthetic" else None,
              "model": "stage-1 fusion classifier (its aligner's tau*(t) under each controller)",
              "controllers": list(CONTROLLERS), "seeds": seeds, "splits": {s: len(c) for s, c in split_clips.items()},
              "window": al.window, "hop": al.hop, "rate": al.rate, "max_shift": al.k,
              "offset_convention": "tau > 0: the video lags the audio"}
    atomic_write_json(Path(out_dir) / "adaptive.json", {**common, "neural_fit": fits, "tracking": adaptive,
                                                        "seconds": round(time.perf_counter() - t0, 1)})
    atomic_write_json(Path(out_dir) / "robustness.json", {**common, "f1": robust})
    for split, rows in adaptive.items():
        if "skipped" in rows:
            log.info("adaptive [%s]: tracking skipped: %s", split, rows["skipped"])
            continue
        log.info("adaptive [%s]: %s (one offset per clip: %.1f ms)", split,
                 ", ".join(f"{c} {r['tracking_mae_ms']['mean']:.1f} ms" for c, r in rows.items() if c != "references"),
                 rows["references"]["clip_tau_star"]["tracking_mae_ms"]["mean"])
    return {"tracking": adaptive, "f1": robust}
