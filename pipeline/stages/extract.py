"""`esva extract ENCODER`: frozen-encoder features -> data/features/<encoder>.zarr.

Shards (`--shard I/N`, or one per process under torchrun / `accelerate launch`): shard I of N takes every
N-th clip of the clips sorted longest first (so the shards carry equal work, and a clip's shard does not
depend on what is already done) and writes its own store beside the output,
`<out>.shards/I-of-N.zarr`, with the output's recipe. `merge` checks that every shard is there, complete
and made from the current inputs with the same recipe (else it names the shard, or the clip, and the
command that remakes it), and copies the clips into the output store, as a single process would have
written them (same fields, attrs, digests and skip records).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

from esva import __version__
from esva.precision import precision_record
from esva.config import config_hash
from esva.data.manifest import corpus_of, read_manifest
from esva.provenance import atomic_write_json, clip_digest, code_digest, text_digest
from esva.encoders import REGISTRY, load_encoder
from esva.encoders.engine import Job, Timings, feature_fields, run_extraction
from esva.encoders.engine import run_shared as run_shared_pass
from esva.store import RaggedWriter, StoreError
from esva.store.ragged import INDEX
from esva.store import open as open_store
from pipeline.common import Rate, StageFailed, StageReport, log, progress

def params_for(encoder: str) -> tuple[str, ...]:
    """The params keys `esva extract ENCODER` reads (pipeline/deps.py; dvc.yaml lists exactly these)."""
    return (f"features.{encoder}", "compute")


def shard_of(lengths: dict[str, int], index: int, count: int) -> dict[str, int]:
    """Shard `index` of `count`: every count-th clip of the clips sorted by length (longest first, then id)."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: the index must be in 0..{count - 1}")
    order = sorted(lengths, key=lambda c: (-lengths[c], c))
    return {c: lengths[c] for c in order[index::count]}


def shard_path(out: Path, index: int, count: int) -> Path:
    return Path(out).parent / f"{Path(out).name}.shards" / f"{index}-of-{count}.zarr"


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` (0-based I) -> (I, N); anything else is an error naming the value."""
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: need N >= 1 and 0 <= I < N")
    return i, n


OUTPUT_EXCLUDE = ("batch_budget", "device", "dtype", "max_skip_ratio")  # knobs that do not change what is stored


def producer(name: str) -> tuple[str, ...]:
    """The code that computes an encoder's features: its module, the shared encoder code, the engine."""
    return (REGISTRY[name].module.__name__, "esva.encoders.base", "esva.encoders.engine")


def output_params(params: dict) -> dict:
    """The part of a `features.<encoder>` section that changes what is stored (its dumped JSON form)."""
    return {k: v for k, v in params.items() if k not in OUTPUT_EXCLUDE}


class GpuUtilisation:
    """Samples the GPU's utilisation (NVML, through torch.cuda.utilization) twice a second while extraction runs.
    On a CPU, or without NVML, `summary()` says why there is no figure instead of giving one."""

    def __init__(self, device: str, every_s: float = 0.5) -> None:
        self.device, self.every_s = str(device), every_s
        self.samples: list[float] = []
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "GpuUtilisation":
        import torch

        if not self.device.startswith("cuda"):
            self.reason = "the encoder runs on the CPU"
            return self
        try:
            torch.cuda.utilization(self.device)
        except Exception as exc:  # noqa: BLE001 - pynvml missing or no NVML: recorded, not fatal
            self.reason = f"no NVML reading ({exc.__class__.__name__}: {exc})"
            return self

        def sample() -> None:
            while not self._stop.wait(self.every_s):
                try:
                    self.samples.append(float(torch.cuda.utilization(self.device)))
                except Exception:  # noqa: BLE001
                    return

        self._thread = threading.Thread(target=sample, name="esva-gpu-util", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict:
        if not self.samples:
            return {"mean_percent": None, "samples": 0, "reason": self.reason or "the run was shorter than one sample"}
        xs = sorted(self.samples)
        return {"mean_percent": round(sum(xs) / len(xs), 1), "median_percent": xs[len(xs) // 2], "samples": len(xs)}


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _inputs(name: str, decoded: Path, faces: Path, manifest: Path):
    """What the encoder reads: (corpus, input lengths, input digests, input rate, load(clip_id))."""
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
    return corpus, lengths, inputs, rate_in, load


@dataclass
class _Run:
    """One encoder's extraction: what `_setup` prepares and `_finish` reports."""

    name: str
    cfg: Any
    encoder: Any
    prov: dict
    out: Path
    stage: str
    report: StageReport
    fp: str
    digests: dict[str, str]
    attrs: dict
    lengths: dict[str, int]
    load: Any
    shard: tuple[int, int] | None
    target: Path | None = None  # a shard's final store (clips already merged there are copied, not recomputed)
    timings: Timings = field(default_factory=Timings)


def _setup(name: str, cfg, out: Path, decoded: Path, faces: Path, manifest: Path, models_dir: Path,
           provenance_dir: Path | None, shard: tuple[int, int] | None, read: tuple | None = None) -> _Run:
    """`read`: what `_inputs` returned, when the caller has it already (a shared pass reads the faces once)."""
    _quiet_transformers()
    if name not in REGISTRY:
        raise ValueError(f"unknown encoder {name!r}; choose from {sorted(REGISTRY)}")
    corpus, lengths, inputs, rate_in, load = read or _inputs(name, decoded, faces, manifest)
    shard_name, target = "", None
    if shard is not None:
        index, count = shard
        lengths = shard_of(lengths, index, count)
        inputs = {c: inputs[c] for c in lengths}
        target, out = Path(out), shard_path(out, index, count)
        shard_name = f".shard-{index}-of-{count}"
    encoder, prov = load_encoder(name, cfg, models_dir)
    encoder.budget = cfg.batch_budget
    if name == "mae":
        encoder.frame_rate = rate_in / cfg.frame_stride
    elif name == "videomae":
        encoder.frame_rate = rate_in / encoder.tubelet
    prov_dir = Path(provenance_dir or Path(models_dir) / name)  # beside the tiny weights by default
    if shard is None or shard[0] == 0:  # one writer of the provenance note when shards run side by side
        atomic_write_json(prov_dir / "source.json", {"encoder": name, **prov, "code_version": __version__})
    stage = f"extract_{name}"
    report = StageReport(stage + shard_name, corpus=corpus, clips_in=len(lengths))
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
    if shard is not None:
        attrs["shard"] = list(shard)
    return _Run(name, cfg, encoder, prov, out, stage, report, fp, digests, attrs, lengths, load, shard, target)


def _reuse_merged(r: _Run, writer: RaggedWriter) -> int:
    """A shard's clips that the merged store already holds with the digest they should have: copied into the
    shard store, so a sharded rerun after one video changed recomputes that clip alone."""
    if r.target is None or not (Path(r.target) / INDEX).exists():
        return 0
    try:
        merged = open_store(r.target)
    except StoreError:
        return 0
    if merged.attrs.get("fingerprint") != r.fp:
        return 0
    n = 0
    for cid in writer.todo():
        if cid in merged and merged.digest(cid) == r.digests[cid]:
            writer.add(cid, merged.read(cid), merged.meta(cid))
            n += 1
    writer.commit()
    return n


def _writer(r: _Run) -> RaggedWriter:
    return RaggedWriter(r.out, feature_fields(r.encoder.layers, r.encoder.dim), r.attrs, r.fp, digests=r.digests)


def _close(r: _Run, writer: RaggedWriter, skips) -> None:
    """Inside the writer's block: the skips and the counts."""
    for s in skips:
        r.report.skip(s.clip_id, s.clip_id, s.reason, s.detail)
    writer.record_skips({s.clip_id: {"reason": s.reason, "detail": s.detail} for s in skips})
    r.report.extra["clips"] = writer.counts()


def _finish(r: _Run, metrics_dir: Path | None, gpu: "GpuUtilisation") -> StageReport:
    report, encoder, prov = r.report, r.encoder, r.prov
    store = open_store(r.out)
    report.done = len(store)
    log.info("%s: %s", r.stage, report.extra["clips"])
    report.extra.update({
        "encoder": r.name, "checkpoint": prov["checkpoint"], "weights_format": prov.get("format"),
        "tensors_loaded": prov.get("tensors_loaded"), "tensors_expected": prov.get("tensors_expected"),
        "weights_sha256": prov.get("weights_sha256"), "dim": encoder.dim, "layers": list(encoder.layers),
        "compute_dtype": r.attrs["compute_dtype"], "precision": r.attrs["precision"],
        "frames": int(sum(store.meta(c)["frames"] for c in store.ids())),
        "padded": sum("padded_from" in store.meta(c) for c in store.ids()),
        "store_bytes": sum(f.stat().st_size for f in Path(r.out).rglob("*") if f.is_file()),
        # where the time went: each pipeline stage's busy seconds (load, forward, write), padding share
        "pipeline": r.timings.as_dict(), "gpu_utilisation": gpu.summary(),
    })
    if r.shard is not None:
        report.extra["shard"] = list(r.shard)
        atomic_write_json(Path(r.out).with_suffix(".report.json"), report.as_dict())
    elif metrics_dir is not None:
        report.write(metrics_dir)
    log.info("%s: %d clips, %d skipped, %.1f MB", r.stage, report.done, len(report.skips), report.extra["store_bytes"] / 1e6)
    report.check(r.cfg.max_skip_ratio)
    return report


def run(name: str, cfg, out: Path, decoded: Path = Path("data/interim/decoded.zarr"),
        faces: Path = Path("data/interim/faces.zarr"), manifest: Path = Path("data/manifest.parquet"),
        models_dir: Path = Path("data/models/encoders"), metrics_dir: Path | None = Path("metrics"),
        provenance_dir: Path | None = None, shard: tuple[int, int] | None = None, prefetch: int = 2) -> StageReport:
    """`provenance_dir` (default `models_dir/<name>`) receives source.json, where the weights came from.
    `shard` (I, N): extract shard I of N into `shard_path(out, I, N)` (its report beside it, not in metrics/)."""
    r = _setup(name, cfg, out, decoded, faces, manifest, models_dir, provenance_dir, shard)
    gpu = GpuUtilisation(r.encoder.device)
    with gpu, _writer(r) as writer:
        r.report.resumed = len(writer.reused) + _reuse_merged(r, writer)
        todo = {c: r.lengths[c] for c in writer.todo()}
        rate = Rate()
        with progress(r.stage) as bar:
            task = bar.add_task(r.stage, total=len(r.lengths), completed=r.report.resumed, rate="0.00")
            _, skips = run_extraction(r.encoder, todo, r.load, writer, cfg.short_policy,
                                      on_done=lambda k: bar.update(task, advance=k, rate=rate.tick()),
                                      prefetch=prefetch, timings=r.timings)
        _close(r, writer, skips)
    return _finish(r, metrics_dir, gpu)


def run_shared(names: list[str], cfgs: dict, outs: dict[str, Path], faces: Path = Path("data/interim/faces.zarr"),
               models_dir: Path = Path("data/models/encoders"), metrics_dir: Path | None = Path("metrics")) -> list[StageReport]:
    """`esva extract mae videomae eva`: the vision encoders in one pass over the face store (`run_shared`): each
    clip's faces are read and decompressed once for all of them. Each encoder's store, metrics and resumption
    are those of `run` (its clips in an order shared by all, so a batch may hold other clips than in a run of
    its own: equal features up to float rounding)."""
    bad = [n for n in names if REGISTRY[n].modality != "faces"] if all(n in REGISTRY for n in names) else names
    if bad or len(set(names)) != len(names):
        raise ValueError(f"a shared pass takes distinct vision encoders (mae, videomae, eva), got {names}")
    read = _inputs(names[0], Path("-"), faces, Path("-"))  # the face store's lengths and digests, once for all
    runs = [_setup(n, cfgs[n], outs[n], Path("-"), faces, Path("-"), models_dir, None, None, read) for n in names]
    gpu = GpuUtilisation(runs[0].encoder.device)
    with gpu, contextlib.ExitStack() as stack:
        writers = [stack.enter_context(_writer(r)) for r in runs]
        rate = Rate()
        with progress("extract " + "+".join(names)) as bar:
            jobs = []
            for r, w in zip(runs, writers):
                r.report.resumed = len(w.reused)
                task = bar.add_task(r.stage, total=len(r.lengths), completed=r.report.resumed, rate="0.00")
                jobs.append(Job(r.encoder, {c: r.lengths[c] for c in w.todo()}, w, r.cfg.short_policy,
                                on_done=lambda k, t=task: bar.update(t, advance=k, rate=rate.tick()), timings=r.timings))
            run_shared_pass(jobs, runs[0].load)
        for r, w, job in zip(runs, writers, jobs):
            _close(r, w, job.skips)
    reports, failed = [], []
    for r in runs:  # every encoder's outputs and metrics first, then any encoder over its skip ratio
        try:
            reports.append(_finish(r, metrics_dir, gpu))
        except StageFailed as exc:
            failed.append(exc)
    if failed:
        raise failed[0]
    return reports


def merge(name: str, cfg, out: Path, count: int, decoded: Path = Path("data/interim/decoded.zarr"),
          faces: Path = Path("data/interim/faces.zarr"), manifest: Path = Path("data/manifest.parquet"),
          metrics_dir: Path | None = Path("metrics"), keep_shards: bool = False) -> StageReport:
    """Merge the `count` shard stores of `esva extract NAME --shard I/count` into `out`.

    Every shard must exist, be complete, share one recipe, and hold (or have skipped) exactly its clips of
    the current inputs with the digests they have now; otherwise a StoreError names the shard (or the clip)
    and the command that remakes it. Clips already in `out` with the right digest are kept (a rerun after
    one changed video copies that clip alone). The shard stores are removed afterwards unless `keep_shards`."""
    _quiet_transformers()
    if name not in REGISTRY:
        raise ValueError(f"unknown encoder {name!r}; choose from {sorted(REGISTRY)}")
    corpus, lengths, inputs, _, _ = _inputs(name, decoded, faces, manifest)
    redo = f"esva extract {name} --out {out} --shard"
    shards, attrs, fp, seconds = [], None, None, []
    for i in range(count):
        path = shard_path(out, i, count)
        if not path.exists():
            raise StoreError(f"shard {i}/{count} of {name} is missing: {path} (run `{redo} {i}/{count}`)")
        store = open_store(path)
        if not store.attrs.get("complete"):
            raise StoreError(f"shard {i}/{count} of {name} did not finish: {path} (run `{redo} {i}/{count}` again; it resumes)")
        if store.attrs.get("stage") != f"extract_{name}" or store.attrs.get("shard") != [i, count]:
            raise StoreError(f"{path} is not shard {i}/{count} of `esva extract {name}` "
                             f"(stage={store.attrs.get('stage')!r}, shard={store.attrs.get('shard')!r})")
        if fp is None:
            fp, attrs = store.attrs["fingerprint"], {k: v for k, v in store.attrs.items() if k in _ATTR_KEYS}
        elif store.attrs["fingerprint"] != fp:
            raise StoreError(f"shard {i}/{count} of {name} was made with another recipe (encoder, params, dtype, weights "
                             f"or code) than shard 0: {path} (run `{redo} {i}/{count}` again with the same params)")
        want = shard_of(lengths, i, count)
        skipped = store.attrs.get("skip_records", {})
        for cid in want:
            expect = clip_digest(recipe=fp, input=inputs[cid])
            got = store.digest(cid) if cid in store else (skipped.get(cid) or {}).get("digest")
            if got is None:
                raise StoreError(f"shard {i}/{count} of {name} lacks clip {cid!r}: {path} (run `{redo} {i}/{count}` again)")
            if got != expect:
                raise StoreError(f"shard {i}/{count} of {name} holds clip {cid!r} made from another input than the "
                                 f"current one: {path} (run `{redo} {i}/{count}` again; it recomputes what changed)")
        extra = sorted(set(store.ids()) - set(want))
        if extra:
            raise StoreError(f"{path} holds clips that are not in shard {i}/{count} of the current inputs "
                             f"({', '.join(extra[:5])}); run `{redo} {i}/{count}` again")
        shards.append(store)
        rep = path.with_suffix(".report.json")
        if rep.exists():
            seconds.append(json.loads(rep.read_text(encoding="utf-8")).get("seconds"))
    stage = f"extract_{name}"
    report = StageReport(stage, corpus=corpus, clips_in=len(lengths))
    digests = {c: clip_digest(recipe=fp, input=inputs[c]) for c in lengths}
    fields = shards[0].fields
    merged_attrs = {**attrs, "merged_from_shards": count}
    skips: dict[str, dict] = {}
    with RaggedWriter(out, fields, merged_attrs, fp, digests=digests) as writer:
        report.resumed = len(writer.reused)
        todo = set(writer.todo())
        with progress(f"merge {stage}") as bar:
            task = bar.add_task(f"merge {stage}", total=len(todo), rate="")
            for store in shards:
                for cid in store.ids():
                    if cid in todo:
                        writer.add(cid, store.read(cid), store.meta(cid))
                        bar.update(task, advance=1)
                for cid, rec in store.attrs.get("skip_records", {}).items():
                    skips[cid] = {"reason": rec.get("reason"), "detail": rec.get("detail", "")}
        for cid, rec in sorted(skips.items()):
            report.skip(cid, cid, rec["reason"], rec["detail"])
        writer.record_skips(skips)
        report.extra["clips"] = writer.counts()
    merged = open_store(out)
    report.done = len(merged)
    report.extra.update({
        "encoder": name, "shards": count, "shard_seconds": seconds, "compute_dtype": attrs.get("compute_dtype"),
        "precision": attrs.get("precision"), "dim": attrs.get("dim"), "layers": attrs.get("layers"),
        "checkpoint": (attrs.get("checkpoint") or {}).get("checkpoint"),
        "frames": int(sum(merged.meta(c)["frames"] for c in merged.ids())),
        "store_bytes": sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file()),
    })
    if metrics_dir is not None:
        report.write(metrics_dir)
    if not keep_shards:
        shutil.rmtree(shard_path(out, 0, count).parent, ignore_errors=True)
    log.info("%s: merged %d shards, %d clips, %d skipped", stage, count, report.done, len(report.skips))
    report.check(cfg.max_skip_ratio)
    return report


# the store attrs a merged store takes from its shards (how it was made; not the index state)
_ATTR_KEYS = ("stage", "corpus", "encoder", "checkpoint", "revision", "layers", "dim", "frame_rate", "input_rate",
              "dtype", "utterance", "fixed_lengths", "compute_dtype", "precision", "params", "params_hash",
              "code_version", "code_digest", "weights_digest")
