"""`esva extract ENCODER`: frozen-encoder features -> data/features/<encoder>.zarr."""

from __future__ import annotations

import json
from pathlib import Path

from esva import __version__
from esva.precision import precision_record
from esva.config import config_hash
from esva.data.manifest import corpus_of, read_manifest
from esva.provenance import clip_digest, code_digest, text_digest
from esva.encoders import REGISTRY, load_encoder
from esva.encoders.engine import feature_fields, run_extraction
from esva.store import RaggedWriter, StoreError
from esva.store import open as open_store
from pipeline.common import Rate, StageReport, log, progress

def params_for(encoder: str) -> tuple[str, ...]:
    """The params keys `esva extract ENCODER` reads (pipeline/deps.py; dvc.yaml lists exactly these)."""
    return (f"features.{encoder}",)


OUTPUT_EXCLUDE = ("batch_budget", "device", "dtype", "max_skip_ratio")  # knobs that do not change what is stored


def producer(name: str) -> tuple[str, ...]:
    """The code that computes an encoder's features: its module, the shared encoder code, the engine."""
    return (REGISTRY[name].module.__name__, "esva.encoders.base", "esva.encoders.engine")


def output_params(params: dict) -> dict:
    """The part of a `features.<encoder>` section that changes what is stored (its dumped JSON form)."""
    return {k: v for k, v in params.items() if k not in OUTPUT_EXCLUDE}


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def run(name: str, cfg, out: Path, decoded: Path = Path("data/interim/decoded.zarr"),
        faces: Path = Path("data/interim/faces.zarr"), manifest: Path = Path("data/manifest.parquet"),
        models_dir: Path = Path("data/models/encoders"), metrics_dir: Path | None = Path("metrics"),
        provenance_dir: Path | None = None) -> StageReport:
    """`provenance_dir` (default `models_dir/<name>`) receives source.json, where the weights came from."""
    _quiet_transformers()
    if name not in REGISTRY:
        raise ValueError(f"unknown encoder {name!r}; choose from {sorted(REGISTRY)}")
    modality = REGISTRY[name].modality
    # the input first (a missing store is a clear error), then the checkpoint, before any clip
    def source(path: Path, stage: str):
        store = open_store(path)
        if store.attrs.get("stage") != stage:
            raise StoreError(f"{path} is not the output of `esva {stage}` (stage={store.attrs.get('stage')!r})")
        return store

    if modality == "audio":
        src = source(decoded, "decode")
        hubert_rate = REGISTRY[name].module.SAMPLE_RATE
        if int(src.attrs["sample_rate"]) != hubert_rate:
            raise StoreError(f"{decoded} holds audio at {src.attrs['sample_rate']} Hz; HuBERT needs {hubert_rate} Hz "
                             f"(set decode.sample_rate: {hubert_rate})")
        corpus = src.attrs.get("corpus", "unknown")
        lengths = {c: int(src.meta(c)["n_samples"]) for c in src.ids()}
        inputs = {c: src.digest(c) for c in src.ids()}
        rate_in = float(src.attrs["sample_rate"])
        load = lambda c: src.read(c, ["audio"])["audio"]  # noqa: E731
    elif modality == "faces":
        src = source(faces, "crop")
        corpus = src.attrs.get("corpus", "unknown")
        lengths = {c: int(src.meta(c)["n_frames"]) for c in src.ids()}
        inputs = {c: src.digest(c) for c in src.ids()}
        rate_in = float(src.attrs.get("fps") or 25.0)
        load = lambda c: src.read(c, ["faces"])["faces"]  # noqa: E731
    else:
        df = read_manifest(manifest)
        df = df[df["role"] != "unused"]  # as decode: no stage reads them
        corpus = corpus_of(df["dataset"])
        texts = dict(zip(df["clip_id"], df["transcript"]))
        inputs = {c: text_digest(t) for c, t in texts.items()}
        lengths = {c: len(t or "") for c, t in texts.items()}
        rate_in = None
        load = texts.__getitem__
    encoder, prov = load_encoder(name, cfg, models_dir)
    encoder.budget = cfg.batch_budget
    if name == "mae":
        encoder.frame_rate = rate_in / cfg.frame_stride
    elif name == "videomae":
        encoder.frame_rate = rate_in / encoder.tubelet
    prov_dir = Path(provenance_dir or Path(models_dir) / name)  # beside the tiny weights by default
    prov_dir.mkdir(parents=True, exist_ok=True)
    with (prov_dir / "source.json").open("w", encoding="utf-8") as fh:
        json.dump({"encoder": name, **prov, "code_version": __version__}, fh, indent=2)
    stage = f"extract_{name}"
    report = StageReport(stage, corpus=corpus, clips_in=len(lengths))
    keep = output_params(cfg.model_dump(mode="json"))
    code = code_digest(producer(name))
    weights = prov.get("weights_sha256") or prov["identity"]
    # the recipe every clip shares (encoder, output params, compute dtype, weights, code); a clip's digest adds
    # its input's own digest, so a changed video or transcript recomputes that clip alone
    fp = config_hash(name, keep, str(encoder.dtype), weights, code)
    digests = {c: clip_digest(recipe=fp, input=inputs[c]) for c in lengths}
    attrs = {
        "stage": stage, "corpus": corpus, "encoder": name, "checkpoint": prov, "revision": cfg.revision,
        "layers": list(encoder.layers), "dim": encoder.dim, "frame_rate": encoder.frame_rate,
        "input_rate": rate_in, "dtype": "float16", "utterance": "mean over valid frames, float32",
        "fixed_lengths": dict(getattr(encoder, "fixed_lengths", {})),
        "compute_dtype": str(encoder.dtype).replace("torch.", ""),
        "precision": precision_record(cfg.dtype, encoder.device, encoder.dtype), "params": cfg.model_dump(mode="json"),
        "params_hash": config_hash(cfg), "code_version": __version__, "code_digest": code, "weights_digest": weights,
    }
    with RaggedWriter(out, feature_fields(encoder.layers, encoder.dim), attrs, fp, digests=digests) as writer:
        report.resumed = len(writer.reused)
        todo = {c: lengths[c] for c in writer.todo()}
        rate = Rate()
        with progress(stage) as bar:
            task = bar.add_task(stage, total=len(lengths), completed=report.resumed, rate="0.00")
            done, skips = run_extraction(encoder, todo, load, writer, cfg.short_policy,
                                         on_done=lambda k: bar.update(task, advance=k, rate=rate.tick()))
        for s in skips:
            report.skip(s.clip_id, s.clip_id, s.reason, s.detail)
        writer.record_skips({s.clip_id: {"reason": s.reason, "detail": s.detail} for s in skips})
        report.extra["clips"] = writer.counts()
    store = open_store(out)
    report.done = len(store)
    log.info("%s: %s", stage, report.extra["clips"])
    report.extra.update({
        "encoder": name, "checkpoint": prov["checkpoint"], "weights_format": prov.get("format"),
        "tensors_loaded": prov.get("tensors_loaded"), "tensors_expected": prov.get("tensors_expected"),
        "weights_sha256": prov.get("weights_sha256"), "dim": encoder.dim, "layers": list(encoder.layers),
        "compute_dtype": attrs["compute_dtype"], "precision": attrs["precision"], "frames": int(sum(store.meta(c)["frames"] for c in store.ids())),
        "padded": sum("padded_from" in store.meta(c) for c in store.ids()),
        "store_bytes": sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file()),
    })
    if metrics_dir is not None:
        report.write(metrics_dir)
    log.info("%s: %d clips, %d skipped, %.1f MB", stage, report.done, len(report.skips), report.extra["store_bytes"] / 1e6)
    report.check(cfg.max_skip_ratio)
    return report
