"""`esva train`: stage 1 on cached features -> data/models/stage1 (+ metrics/train.json, alignment.json,
per-epoch curves); with `--variant`, one ablation row -> metrics/ablation/<variant>.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from esva import __version__
from esva.config import ConfigError, MsfeConfig, Params, apply_overrides, config_hash, restrict
from esva.data.manifest import read_manifest
from esva.precision import precision_record, resolve_device, resolve_dtype
from esva.provenance import atomic_write_json, atomic_write_text
from esva.store.ragged import INDEX
from esva.train.cv import cross_validate, repeat_seeds, views
from esva.train.resume import Checkpointer, file_key, resume_path
from esva.train.stage1 import alignment_scores, load_features, predict, scored_on, scores, train
from pipeline.common import log

PARAMS = ("features.use", "msfe", "contrast", "align", "train")  # the params keys this stage reads (pipeline/deps.py)
ABLATE_PARAMS = PARAMS + ("ablate",)  # with --variant (the ablate stage): also the cross-validation settings

# The ablations of Tables 5 and 6, as params overrides on the same feature cache.
VARIANTS: dict[str, list[str]] = {
    # Table 6: the full model, without MSFE, without alignment, without both (Emotion-LLaMA-like)
    "full": [],
    "no_msfe": ["msfe.enabled=false"],
    "no_align": ["align.enabled=false"],
    "baseline": ["msfe.enabled=false", "align.enabled=false"],
    # Table 5: encoder combinations (plain features: no MSFE, no alignment), then MSFE-HuBERT + all video
    "enc_hubert": ["features.use=[hubert]", "msfe.enabled=false", "align.enabled=false"],
    "enc_mae": ["features.use=[mae]", "align.enabled=false"],
    "enc_videomae": ["features.use=[videomae]", "align.enabled=false"],
    "enc_eva": ["features.use=[eva]", "align.enabled=false"],
    "enc_text": ["features.use=[text]", "align.enabled=false"],
    "enc_mae_videomae_eva": ["features.use=[mae,videomae,eva]", "align.enabled=false"],
    "enc_hubert_mae": ["features.use=[hubert,mae]", "msfe.enabled=false", "align.enabled=false"],
    "enc_hubert_videomae": ["features.use=[hubert,videomae]", "msfe.enabled=false", "align.enabled=false"],
    "enc_hubert_mae_videomae": ["features.use=[hubert,mae,videomae]", "msfe.enabled=false", "align.enabled=false"],
    "enc_hubert_mae_eva": ["features.use=[hubert,mae,eva]", "msfe.enabled=false", "align.enabled=false"],
    "enc_hubert_videomae_eva": ["features.use=[hubert,videomae,eva]", "msfe.enabled=false", "align.enabled=false"],
    "enc_hubert_mae_videomae_eva": ["features.use=[hubert,mae,videomae,eva]", "msfe.enabled=false", "align.enabled=false"],
    "enc_msfe_hubert_mae_videomae_eva": ["features.use=[hubert,mae,videomae,eva]", "align.enabled=false"],
}


def variant_has_msfe(name: str) -> bool:
    """Whether a variant's model can hold an MSFE at all: not when its overrides switch MSFE off or leave
    HuBERT out of its features (MSFE runs on HuBERT frames). Those variants read nothing under `msfe`."""
    if name not in VARIANTS:
        raise ConfigError(f"unknown variant {name!r}; choose from {list(VARIANTS)}")
    over = dict(o.split("=", 1) for o in VARIANTS[name])
    if over.get("msfe.enabled", "").lower() == "false":
        return False
    return "features.use" not in over or "hubert" in over["features.use"].strip("[]").split(",")


def variant_keys(name: str) -> tuple[str, ...]:
    """The params keys a variant reads (its `ablate@VARIANT` entry in dvc.yaml lists exactly these): the
    ablate stage's, less `msfe` for a variant without MSFE, so that `dvc exp run -S msfe.scales=4` reruns
    only the rows whose models it changes."""
    return ABLATE_PARAMS if variant_has_msfe(name) else tuple(k for k in ABLATE_PARAMS if k != "msfe")


def variant_params(p, name: str) -> Params:
    """`p` (the params, or the view of them the CLI restricted to `variant_keys(name)`) with the variant's
    overrides. A variant without MSFE gets a fixed, switched-off `msfe` section instead of the params' own,
    so neither its weights nor its recorded config depend on keys it does not declare."""
    keys = variant_keys(name)
    tree = p.model_dump(mode="python")
    if "msfe" not in keys:
        tree["msfe"] = MsfeConfig(enabled=False).model_dump(mode="python")
    tree = apply_overrides(tree, VARIANTS[name])
    return restrict(Params.model_validate(tree), ABLATE_PARAMS, "ablate")  # still held to the keys it declares


def _curves(out_dir: Path):
    from dvclive import Live

    return Live(dir=str(out_dir), save_dvc_exp=False, dvcyaml=None, report=None)


def run(p: Params, manifest: Path, features_dir: Path, out: Path, metrics_dir: Path | None = Path("metrics"),
        variant: str | None = None, reference: Path | None = Path("metrics/alignment_reference.json")) -> dict:
    if variant:
        p = variant_params(p, variant)
    use = p.features.use
    df = read_manifest(manifest)
    data = load_features(df, {n: Path(features_dir) / f"{n}.zarr" for n in use}, use, cache_mb=p.train.feature_cache_mb)
    device = resolve_device(p.train.device, "train.device")
    precision = precision_record(p.train.dtype, device, resolve_dtype(p.train.dtype, device))
    lost = len(data.skipped) / max(len(df), 1)
    if lost > p.train.max_skip_ratio:
        raise ConfigError(f"train: {len(data.skipped)} of {len(df)} clips lack a label or features "
                          f"({lost:.1%} > train.max_skip_ratio={p.train.max_skip_ratio}), e.g. "
                          f"{list(data.skipped.items())[:5]}")
    if variant and p.ablate.folds >= 2:  # a corpus too small for the folds stops here, before any training
        next(views(data, p.ablate.folds, p.train.seed, p.ablate.val_fraction))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    resolved = {"variant": variant, "use": list(use), "labels": list(data.labels), "dims": data.dims, "rates": data.rates,
                "features": {"use": list(use)}, "msfe": p.msfe.model_dump(mode="json"),
                "contrast": p.contrast.model_dump(mode="json"), "align": p.align.model_dump(mode="json"),
                "train": p.train.model_dump(mode="json"), "code_version": __version__, "corpus": data.corpus,
                "precision": precision}

    def checkpoint(model, epoch):  # the last good (best so far) weights are always on disk, each file whole
        tmp = out / ".model.safetensors.tmp"
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
        os.replace(tmp, out / "model.safetensors")
        atomic_write_json(out / "config.json", {**resolved, "epoch": epoch})

    # the loop's state every train.checkpoint_every steps, beside (not inside) the output folder, which DVC
    # clears before a rerun; keyed by the params and the inputs' bytes, so only the same run resumes from it
    stores = [Path(features_dir) / f"{n}.zarr" / INDEX for n in use]
    key = config_hash({k: v for k, v in resolved.items() if k != "code_version"}, file_key(manifest, *stores))
    resume = Checkpointer(resume_path(out), key, p.train.checkpoint_every)

    live = _curves(Path(metrics_dir) / ("train" if not variant else f"ablation_curves/{variant}")) if metrics_dir else None

    def on_epoch(rec):
        if live is not None:
            for k, v in rec.items():
                if k not in ("epoch", "phase"):
                    live.log_metric(k, float(v))
            live.next_step()
        log.info("epoch %d (%s): %s", rec["epoch"], rec["phase"],
                 ", ".join(f"{k}={v:.4f}" for k, v in rec.items() if k not in ("epoch", "phase")))

    result = train(data, use, p.msfe, p.contrast, p.align, p.train, on_epoch=on_epoch, checkpoint=checkpoint,
                   resume=resume)
    if live is not None:
        live.end()
    checkpoint(result.model, result.best_epoch)
    test = data.split("test")
    pred = predict(result.model, test, use, p.train.batch_size, dtype=result.dtype)  # on the model's device
    test_scores = scores(test, pred, data.labels)
    val_scores = scores(data.split("val"), predict(result.model, data.split("val"), use, p.train.batch_size,
                                                   dtype=result.dtype), data.labels)
    align = alignment_scores(test, pred, p.align.rate, fps=p.align.rate)
    summary = {
        "corpus": data.corpus, "split": "test", "variant": variant or "main", "features_use": list(use),
        "labels": list(data.labels),  # the classes (the training rows' vocabulary); test scored on its own label set
        "scored_on": scored_on(df, data),  # the source:split pairs behind each of train / val / test
        # effective switches: MSFE needs hubert, alignment needs hubert and align.video in features.use
        "msfe": result.model.msfe is not None and result.model.msfe.enabled,
        "align": result.model.aligner is not None, "test": test_scores, "val": val_scores,
        "precision": precision, "best_epoch": result.best_epoch,
        "first_scored_epoch": (p.align.warmup_epochs if result.model.aligner is not None else 0) + 1,  # after the warm-up
        "epochs_run": len(result.history), "stopped_early": result.stopped_early,
        "clips": {"train": len(data.split("train")), "val": len(data.split("val")), "test": len(test),
                  "skipped": len(data.skipped)},
        "msfe_scale_weights": (result.model.msfe.scale_weights.detach().tolist()
                               if result.model.msfe is not None and p.msfe.enabled else None),
        "alignment": align,
    }
    seeds = [p.train.seed + i for i in range(p.ablate.encoder_seeds if variant.startswith("enc_") else p.ablate.seeds)] \
        if variant else []  # only the ablate stage reads (and declares) the ablate section
    if variant and p.ablate.folds == 0 and not test_scores:
        summary["seeds_skipped"] = "no labelled test clips: one run, nothing to score the seeds on"
        log.warning("train [%s]: %s", variant, summary["seeds_skipped"])
    elif variant and p.ablate.folds == 0:  # the row's statistics: seeds on the manifest's split (1: the saved run's)
        def on_seed(rec):
            log.info("train [%s] seed %d (%d of %d): test weighted F1 %.4f, best epoch %d", variant, rec["seed"],
                     seeds.index(rec["seed"]) + 1, len(seeds), rec["test"]["weighted_f1"], rec["best_epoch"])

        summary["model"] = "stage-1 fusion classifier"
        summary.update(repeat_seeds(data, use, p.msfe, p.contrast, p.align, p.train, seeds, first=result,
                                    on_run=on_seed))  # the saved model is seeds[0]'s
    if variant and p.ablate.folds >= 2:  # the ablation row's statistics: seeds x folds on the training clips
        total = len(seeds) * p.ablate.folds

        def on_run(rec):
            log.info("train [%s] cross-validation %d/%d (seed %d, fold %d): held-out weighted F1 %.4f, best epoch %d",
                     variant, len(done) + 1, total, rec["seed"], rec["fold"], rec["test"]["weighted_f1"], rec["best_epoch"])
            done.append(rec)

        done: list[dict] = []
        summary["model"] = "stage-1 fusion classifier"
        summary.update(cross_validate(data, use, p.msfe, p.contrast, p.align, p.train, seeds, p.ablate.folds,
                                      p.ablate.val_fraction, on_run=on_run))
        summary["split"] = f"{p.ablate.folds}-fold cross-validation on the training clips"
    if metrics_dir is not None:
        metrics_dir = Path(metrics_dir)
        if variant:
            (metrics_dir / "ablation").mkdir(parents=True, exist_ok=True)
            _dump(metrics_dir / "ablation" / f"{variant}.json", summary)
        else:
            _dump(metrics_dir / "train.json", summary)
            ref = None
            if reference is not None and Path(reference).exists():
                with Path(reference).open() as fh:
                    ref = json.load(fh)
            # the baselines (predict-zero, oracle, cross-correlations) are metrics/alignment_reference.json's rows
            rows = {"learned": align, "reference_xcorr_opening": ref.get("test") if ref else None}
            _dump(metrics_dir / "alignment.json", {"corpus": data.corpus, "split": "test",
                                                   "offset_convention": "tau > 0: the video lags the audio",
                                                   "rate": p.align.rate, **rows})
    resume.clear()  # the outputs are complete: a rerun starts afresh
    log.info("train%s: test weighted F1 %s (corpus %s)%s", f" [{variant}]" if variant else "",
             f"{test_scores['weighted_f1']:.4f}" if test_scores else "n/a (empty test split)", data.corpus,
             f", alignment within one frame {align['within_one_frame']:.3f}" if align else "")
    return summary


def _dump(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)) + "\n")

