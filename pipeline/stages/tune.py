"""`esva tune`: stage 2 -> data/models/stage2 (peft adapter, projectors, stage-1 copy, resolved config),
metrics/tune.json (synthetic-labelled test scores), per-step and per-epoch curves under metrics/tune/."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from esva import __version__
from esva.config import ENCODERS, ConfigError, Params, config_hash
from esva.data.manifest import read_manifest
from esva.encoders.base import checkpoint_identity
from esva.models.llm import resolve_base
from esva.models.projector import EXTRA, NEEDS
from esva.precision import dtype_name, precision_record, resolve_device, weights_dtype
from esva.provenance import atomic_write_json, atomic_write_text
from esva.store import open as open_store
from esva.store.ragged import INDEX
from esva.train.resume import Checkpointer, file_key, resume_path
from esva.data.instructions import instruction_labels
from esva.train.stage1 import load_features, scored_on
from esva.train.stage2 import save, tune
from pipeline.common import log
from pipeline.stages.extract import output_params

PARAMS = ("tune", "llm.quantize", "compute")  # compute.launcher: pipeline/cli.py; the params keys this stage reads (pipeline/deps.py; dvc.yaml lists exactly these)


def run(p: Params, manifest: Path, features_dir: Path, stage1_dir: Path, lm_dir: Path, out: Path,
        metrics_dir: Path | None = Path("metrics")) -> dict:
    cfg = p.tune
    t0 = time.perf_counter()
    df = read_manifest(manifest)
    data = load_features(df, {n: Path(features_dir) / f"{n}.zarr" for n in NEEDS}, NEEDS, cache_mb=cfg.feature_cache_mb,
                          extra=EXTRA)
    lost = len(data.skipped) / max(len(df), 1)
    if lost > cfg.max_skip_ratio:
        raise ConfigError(f"tune: {len(data.skipped)} of {len(df)} clips lack a label or features "
                          f"({lost:.1%} > tune.max_skip_ratio={cfg.max_skip_ratio}), e.g. {list(data.skipped.items())[:5]}")
    source, revision, _ = resolve_base(lm_dir)
    device = resolve_device(cfg.device, "tune.device")
    out = Path(out)
    resolved = {"tune": cfg.model_dump(mode="json"), "labels": list(data.labels),
                "base": {"checkpoint": source, "revision": revision, "identity": checkpoint_identity(source, revision)},
                "stage1": str(stage1_dir), "corpus": data.corpus, "code_version": __version__,
                "precision": {**precision_record(cfg.dtype, device, weights_dtype(cfg.dtype, device)),
                              "base_weights": dtype_name(weights_dtype(cfg.dtype, device)),
                              "trainable": "fp32", "quantize": p.llm.quantize,
                              "grad_checkpointing": cfg.grad_checkpointing},
                # how each feature store was made (what `esva predict` must reproduce on new videos)
                "features": {n: output_params(open_store(Path(features_dir) / f"{n}.zarr").attrs["params"])
                             for n in ENCODERS if (Path(features_dir) / f"{n}.zarr").exists()}}
    # under `accelerate launch` / torchrun every process trains its share of each batch; the main one writes
    main = int(os.environ.get("RANK", "0")) == 0
    live = None
    if metrics_dir is not None and main:
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

    # the loop's state every tune.checkpoint_every steps, beside the output folder (DVC clears that before a
    # rerun); keyed by the params and the inputs' bytes, so only the same run resumes from it
    inputs = [manifest, *(Path(features_dir) / f"{n}.zarr" / INDEX for n in NEEDS),
              *sorted(f for f in Path(stage1_dir).glob("*") if f.is_file()),
              *sorted(f for f in Path(lm_dir).glob("*") if f.is_file())]
    key = config_hash({k: v for k, v in resolved.items() if k != "code_version"}, p.llm.quantize, file_key(*inputs))
    resume = Checkpointer(resume_path(out), key, cfg.checkpoint_every)
    res = tune(data, df, stage1_dir, lm_dir, cfg, p.llm.quantize, on_step=on_step, on_epoch=on_epoch, checkpoint=checkpoint,
               resume=resume)
    train_seconds = time.perf_counter() - t0
    if live is not None:
        live.end()
    m = res.model
    if not main:
        return {"rank": int(os.environ["RANK"]), "best_epoch": res.best_epoch, "steps": res.steps}
    save(m, out, {**resolved, "epoch": res.best_epoch}, stage1_dir)
    atomic_write_text(out / "val_generations.jsonl",  # what a reload must reproduce
                      "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in res.val_answers))
    best = res.history[res.best_epoch - 1]
    summary = {
        "corpus": data.corpus, "split": "val", "scored_on": scored_on(df, data),
        "note": "synthetic corpus: not a result on MER2023 or any real benchmark" if data.corpus == "synthetic" else None,
        "labels": list(data.labels), "instruction_lists": list(instruction_labels(data.labels)),
        "base": resolved["base"]["checkpoint"], "layout": cfg.layout, "tokens": {"video": m.projector.n_video,
                                                                               "feature": m.projector.n_feature},
        "init_from": m.init_report or None,
        "precision": resolved["precision"], "best_epoch": res.best_epoch, "epochs": cfg.epochs,
        "val_accuracy": best["val_accuracy"], "val_unparseable_share": best["val_unparseable_share"],
        "val_loss": best["val_loss"], "steps": res.steps, "answer_tokens_trained": res.tokens,
        "train_seconds": round(train_seconds, 1),
        "clips": {"train": len(data.split("train")), "val": len(data.split("val")), "skipped": len(data.skipped)},
        "trainable_parameters": sum(v.numel() for v in m.trainable_state().values()),
        # over every training and validation encoding (test-split scores: `esva evaluate`, metrics/mer2023.json)
        "truncated_encodings": {"transcripts": m.stats["transcript_cut"], "answers": m.stats["answer_cut"]},
        "history": res.history,
    }
    if metrics_dir is not None:
        atomic_write_json(Path(metrics_dir) / "tune.json", summary)
    resume.clear()  # the outputs are complete: a rerun starts afresh
    log.info("tune: best epoch %d, validation label accuracy %.3f, unparseable share %.3f (corpus %s)",
             res.best_epoch, best["val_accuracy"], best["val_unparseable_share"], data.corpus)
    return summary
