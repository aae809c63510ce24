"""`esva tune`: stage 2 -> data/models/stage2 (peft adapter, projectors, stage-1 copy, resolved config),
metrics/tune.json (synthetic-labelled test scores), per-step and per-epoch curves under metrics/tune/."""

from __future__ import annotations

import json
import time
from pathlib import Path

from esva import LABELS, __version__
from esva.config import ENCODERS, ConfigError, Params
from esva.data.instructions import eval_samples, parse_ov
from esva.data.manifest import read_manifest
from esva.encoders.base import checkpoint_identity
from esva.models.llm import resolve_base
from esva.models.projector import NEEDS
from esva.store import open as open_store
from esva.train.stage1 import load_features
from esva.train.stage2 import ANSWER_TOKENS, label_scores, save, tune
from pipeline.common import log
from pipeline.stages.extract import OUTPUT_EXCLUDE


def run(p: Params, manifest: Path, features_dir: Path, stage1_dir: Path, lm_dir: Path, out: Path,
        metrics_dir: Path | None = Path("metrics")) -> dict:
    cfg = p.tune
    t0 = time.perf_counter()
    df = read_manifest(manifest)
    data = load_features(df, {n: Path(features_dir) / f"{n}.zarr" for n in NEEDS}, NEEDS)
    lost = len(data.skipped) / max(len(df), 1)
    if lost > cfg.max_skip_ratio:
        raise ConfigError(f"tune: {len(data.skipped)} of {len(df)} clips lack a label or features "
                          f"({lost:.1%} > tune.max_skip_ratio={cfg.max_skip_ratio}), e.g. {list(data.skipped.items())[:5]}")
    source, revision, _ = resolve_base(lm_dir)
    out = Path(out)
    resolved = {"tune": cfg.model_dump(mode="json"), "labels": list(LABELS),
                "base": {"checkpoint": source, "revision": revision, "identity": checkpoint_identity(source, revision)},
                "stage1": str(stage1_dir), "corpus": data.corpus, "code_version": __version__,
                # how each feature store was made (what `esva predict` must reproduce on new videos)
                "features": {n: {k: v for k, v in open_store(Path(features_dir) / f"{n}.zarr").attrs["params"].items()
                                 if k not in OUTPUT_EXCLUDE}
                             for n in ENCODERS if (Path(features_dir) / f"{n}.zarr").exists()}}
    live = None
    if metrics_dir is not None:
        from dvclive import Live

        live = Live(dir=str(Path(metrics_dir) / "tune"), save_dvc_exp=False, dvcyaml=None, report=None)

    def on_step(rec):  # every curve is plotted against the optimizer step
        if live is not None:
            live.step = rec["step"]
            live.log_metric("train_loss", rec["train_loss"])

    def on_epoch(rec):
        log.info("tune epoch %d: %s", rec["epoch"], ", ".join(f"{k}={v:.4f}" for k, v in rec.items() if k != "epoch"))
        if live is not None:
            for k, v in rec.items():
                if k not in ("epoch", "train_loss"):
                    live.log_metric(k, float(v))
            live.log_metric("epoch", rec["epoch"])

    def checkpoint(model, epoch):  # the best weights so far are always on disk
        save(model, out, {**resolved, "epoch": epoch}, stage1_dir)

    res = tune(data, df, stage1_dir, lm_dir, cfg, on_step=on_step, on_epoch=on_epoch, checkpoint=checkpoint)
    train_seconds = time.perf_counter() - t0
    if live is not None:
        live.end()
    m = res.model
    save(m, out, {**resolved, "epoch": res.best_epoch}, stage1_dir)
    test_ids = {c.clip_id for c in data.split("test")}
    test_df = df[df["clip_id"].isin(test_ids)]
    by_id = {c.clip_id: c for c in data.clips}
    m.stats.update(transcript_cut=0, answer_cut=0)
    generations, summary_tasks = [], {}
    for task in ("emotion", "ov", "reason"):
        samples = eval_samples(test_df, task)
        answers = m.generate([by_id[s.clip_id] for s in samples], samples, cfg.eval_batch_size,
                             ANSWER_TOKENS.get(task))
        generations += [{"clip_id": s.clip_id, "task": task, "instruction": s.instruction, "answer": a,
                         "target": s.target} for s, a in zip(samples, answers)]
        if task == "emotion":
            summary_tasks[task] = label_scores(answers, [s.target for s in samples])
        elif task == "ov":
            summary_tasks[task] = _ov_exact(answers, [s.target for s in samples])
        else:
            summary_tasks[task] = {"n": len(answers), "empty": sum(not a for a in answers),
                                   "mean_words": sum(len(a.split()) for a in answers) / max(len(answers), 1)}
    with (out / "test_generations.jsonl").open("w", encoding="utf-8") as fh:
        for g in generations:
            fh.write(json.dumps(g, ensure_ascii=False) + "\n")
    summary = {
        "corpus": data.corpus, "split": "test",
        "note": "synthetic corpus: not a result on MER2023 or any real benchmark" if data.corpus == "synthetic" else None,
        "base": resolved["base"]["checkpoint"], "best_epoch": res.best_epoch, "epochs": cfg.epochs,
        "steps": res.steps, "answer_tokens_trained": res.tokens, "train_seconds": round(train_seconds, 1),
        "clips": {"train": len(data.split("train")), "val": len(data.split("val")), "test": len(test_df),
                  "skipped": len(data.skipped)},
        "trainable_parameters": sum(v.numel() for v in m.trainable_state().values()),
        "truncated": {"transcripts": m.stats["transcript_cut"], "answers": m.stats["answer_cut"]},
        "test": summary_tasks, "history": res.history,
    }
    if metrics_dir is not None:
        with (Path(metrics_dir) / "tune.json").open("w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2)
            fh.write("\n")
    emo = summary_tasks["emotion"]
    log.info("tune: test label accuracy %.3f (chance %.3f), unparseable %d of %d (corpus %s)",
             emo.get("accuracy", float("nan")), emo.get("chance_accuracy", float("nan")), emo.get("unparseable", 0),
             emo.get("n", 0), data.corpus)
    return summary


def _ov_exact(answers: list[str], targets: list[str]) -> dict:
    """Exact-word overlap of open-vocabulary lists (no synonym grouping; `esva evaluate` has the
    official MER2024-OV metric). Per sample precision |gt & pred|/|pred| and recall |gt & pred|/|gt|."""
    prec, rec, empty = [], [], 0
    for a, t in zip(answers, targets):
        pred, gt = set(parse_ov(a)), set(parse_ov(t))
        empty += not pred
        prec.append(len(pred & gt) / len(pred) if pred else 0.0)
        rec.append(len(pred & gt) / len(gt) if gt else 0.0)
    n = max(len(answers), 1)
    return {"n": len(answers), "exact_precision": sum(prec) / n, "exact_recall": sum(rec) / n, "empty": empty}
