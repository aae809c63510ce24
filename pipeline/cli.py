"""The `esva` command line: one command per stage; each only parses and calls a stage's run()."""

from __future__ import annotations

import functools
import os
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from esva import __version__

app = typer.Typer(
    name="esva", add_completion=False, pretty_exceptions_enable=False,
    help="ESVA pipeline: synth -> ingest -> decode -> crop (-> extract -> train -> tune -> evaluate -> report). "
         "Every command reads --params (default params.yaml) and accepts --set key=value overrides.",
)
err = Console(stderr=True)

ParamsOpt = Annotated[Optional[Path], typer.Option("--params", help="params file (YAML) [default: params.yaml if there is one here, else the built-in defaults]")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a params key, e.g. --set decode.fps=25 (repeatable)")]
MetricsOpt = Annotated[Path, typer.Option("--metrics", help="folder for the stage report metrics/<stage>.json")]
FeaturesOpt = Annotated[Path, typer.Option("--features", help="folder of the feature stores")]
LlmOpt = Annotated[Path, typer.Option("--llm", help="base LLM folder from `esva lm`")]
Stage2Opt = Annotated[Path, typer.Option("--model", help="stage-2 folder from `esva tune`")]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False, rich_tracebacks=False)], force=True)
    for noisy in ("numba", "matplotlib", "PIL", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _params(path: Optional[Path], overrides: Optional[list[str]]):
    """An explicit --params file must exist; without one, ./params.yaml if present, else the built-in
    defaults (so every command runs from any directory)."""
    from esva.config import load_params

    if path is None:
        path = Path("params.yaml") if Path("params.yaml").is_file() else None
        if path is None:
            logging.getLogger("esva").info("no params.yaml here: using the built-in defaults (`esva params` prints them)")
    return load_params(path, tuple(overrides or ()))


def _stage_params(stage, path: Path, overrides: Optional[list[str]], item: Optional[str] = None):
    """The params as a DVC stage may read them: only the keys its module declares (`PARAMS`, or
    `params_for(item)`), which are the keys dvc.yaml lists for it; reading any other is an error."""
    from esva.config import restrict

    keys = stage.PARAMS if hasattr(stage, "PARAMS") else stage.params_for(item)
    return restrict(_params(path, overrides), keys, stage.__name__.rsplit(".", 1)[-1])


def friendly(fn):
    """Known failures print one clear line (no traceback) and exit 2; ESVA_DEBUG=1 shows tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from esva.config import ConfigError
        from esva.data.adapters import AdapterError
        from esva.encoders.base import CheckpointError
        from esva.encoders.engine import FeatureError
        from esva.media.faces import FaceBackendError
        from esva.eval.judge import JudgeError
        from esva.eval.metrics import EvalError
        from esva.eval.synonyms import GroupingError
        from esva.models.llm import LlmError
        from esva.train.stage1 import TrainError
        from esva.store import StoreError
        from pipeline.common import StageFailed
        from esva.media.worker import WorkerFailed

        try:
            return fn(*args, **kwargs)
        except (ConfigError, AdapterError, StoreError, StageFailed, FaceBackendError, FileNotFoundError, ValueError,
                CheckpointError, FeatureError, TrainError, LlmError, EvalError, GroupingError, JudgeError, WorkerFailed) as exc:
            import os

            if os.environ.get("ESVA_DEBUG"):
                raise
            err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@app.callback(invoke_without_command=True)
def main(ctx: typer.Context,
         verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
         version: Annotated[bool, typer.Option("--version", help="print the version and exit")] = False) -> None:
    _setup_logging(verbose)
    if version:
        typer.echo(__version__)
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


@app.command()
@friendly
def synth(out: Annotated[Path, typer.Option(help="output folder for videos/, labels.csv, ground_truth.csv")] = Path("data/raw/synthetic"),
          params: ParamsOpt = None, set_: SetOpt = None, metrics: MetricsOpt = Path("metrics")) -> None:
    """Generate the embedded synthetic corpus (params section `synth`)."""
    from pipeline.stages import synth as stage

    stage.run(_stage_params(stage, params, set_).synth, out, metrics)


@app.command()
@friendly
def ingest(dataset: Annotated[Optional[str], typer.Option(help="adapter: synthetic, folder, mer2023, mer2024, merr, emer; default: every entry of data.sources")] = None,
           root: Annotated[Optional[Path], typer.Option(help="dataset root folder (with --dataset)")] = None,
           from_: Annotated[Optional[Path], typer.Option("--from", help="merge the per-source files of `esva ingest-source` in this folder (DVC's ingest stage) instead of reading the datasets")] = None,
           out: Annotated[Path, typer.Option(help="manifest to write")] = Path("data/manifest.parquet"),
           params: ParamsOpt = None, set_: SetOpt = None, metrics: MetricsOpt = Path("metrics")) -> None:
    """Read datasets with their adapters and write the manifest (params `data`, `ingest`, `evaluate.*`)."""
    from esva.config import ADAPTERS, ConfigError, Source
    from pipeline.stages import ingest as stage

    p = _stage_params(stage, params, set_)
    if dataset or root:
        if not (dataset and root):
            raise ConfigError("--dataset and --root go together")
        if from_:
            raise ConfigError("--from merges data.sources' files; it does not go with --dataset/--root")
        if dataset not in ADAPTERS:
            raise ConfigError(f"--dataset must be one of {list(ADAPTERS)}, got {dataset!r}")
        # one source from the command line: its own splits keep their usual roles (train, val, test)
        stage.run(p.ingest, (Source(name=dataset, adapter=dataset, root=str(root)),), out, metrics)
        return
    if from_:
        stage.run_merge(p.ingest, from_, out, metrics, data_cfg=p.data, evaluate_cfg=p.evaluate)
        return
    stage.run(p.ingest, p.data.sources, out, metrics, data_cfg=p.data,
              evaluate_cfg=p.evaluate)


@app.command("ingest-source")
@friendly
def ingest_source(name: Annotated[str, typer.Argument(help="the source's name (a data.sources entry)")],
                  adapter: Annotated[Optional[str], typer.Option(help="its adapter (with --root; default: its data.sources entry's)")] = None,
                  root: Annotated[Optional[str], typer.Option(help="its dataset root (with --adapter)")] = None,
                  out: Annotated[Optional[Path], typer.Option(help="per-source file [default: data/sources/NAME.parquet]")] = None,
                  params: ParamsOpt = None, set_: SetOpt = None, metrics: MetricsOpt = Path("metrics")) -> None:
    """One dataset through its adapter, for `esva ingest --from` (params `data.transcript_language`; DVC runs
    it once per data.sources entry with the entry on its command line)."""
    from esva.config import ConfigError, Source
    from pipeline.stages import ingest as stage

    if (adapter is None) != (root is None):
        raise ConfigError("--adapter and --root go together")
    if adapter is not None:
        from esva.config import restrict

        src = Source(name=name, adapter=adapter, root=root)
        language = restrict(_params(params, set_), stage.SOURCE_PARAMS, "ingest-source").data.transcript_language
    else:  # by hand: the entry from the params file (DVC's stage passes it, so that it depends on it alone)
        data = _params(params, set_).data
        found = [s for s in data.sources if s.name == name]
        if not found:
            raise ConfigError(f"data.sources has no source {name!r} (it has {[s.name for s in data.sources]})")
        src, language = found[0], data.transcript_language
    stage.run_source(src, language, out or Path(f"data/sources/{name}.parquet"), metrics)


@app.command()
@friendly
def decode(manifest: Annotated[Path, typer.Option(help="manifest from `esva ingest`")] = Path("data/manifest.parquet"),
           out: Annotated[Path, typer.Option(help="Zarr store of decoded audio and frames")] = Path("data/interim/decoded.zarr"),
           params: ParamsOpt = None, set_: SetOpt = None, metrics: MetricsOpt = Path("metrics")) -> None:
    """Decode every clip to 16 kHz mono audio and RGB frames (params section `decode`); resumable."""
    from pipeline.stages import decode as stage

    stage.run(_stage_params(stage, params, set_).decode, manifest, out, metrics)


@app.command()
@friendly
def crop(decoded: Annotated[Path, typer.Option(help="store from `esva decode`")] = Path("data/interim/decoded.zarr"),
         out: Annotated[Path, typer.Option(help="Zarr store of aligned face crops")] = Path("data/interim/faces.zarr"),
         params: ParamsOpt = None, set_: SetOpt = None, metrics: MetricsOpt = Path("metrics")) -> None:
    """Detect, align and crop faces from the decoded frames (params section `crop`); resumable."""
    from pipeline.stages import crop as stage

    stage.run(_stage_params(stage, params, set_).crop, decoded, out, metrics)


@app.command()
@friendly
def extract(encoders: Annotated[list[str], typer.Argument(help="hubert, mae, videomae, eva or text; several vision "
                                                                 "encoders share one pass over the faces")],
            out: Annotated[Optional[Path], typer.Option(help="feature store [default: data/features/ENCODER.zarr]")] = None,
            decoded: Annotated[Path, typer.Option(help="decoded store (audio encoders)")] = Path("data/interim/decoded.zarr"),
            faces: Annotated[Path, typer.Option(help="face store (vision encoders)")] = Path("data/interim/faces.zarr"),
            manifest: Annotated[Path, typer.Option(help="manifest (text encoder)")] = Path("data/manifest.parquet"),
            models: Annotated[Path, typer.Option(help="folder for tiny checkpoints and weight provenance")] = Path("data/models/encoders"),
            shard: Annotated[Optional[str], typer.Option(help="I/N: extract shard I (0-based) of N into OUT.shards/ "
                                                                   "(one task of a SLURM array); merge with --merge N")] = None,
            merge: Annotated[Optional[int], typer.Option(help="merge the N shards in OUT.shards/ into OUT")] = None,
            params: ParamsOpt = None, set_: SetOpt = None, metrics: MetricsOpt = Path("metrics")) -> None:
    """Frozen-encoder features, frame-level and utterance-level, into a Zarr store (params `features.ENCODER`); resumable.

    Under torchrun or `accelerate launch` each process extracts its own shard on its own GPU and rank 0
    merges them; params `compute.launcher` makes `esva extract` do that by itself (README)."""
    from esva.config import ENCODERS, ConfigError, restrict
    from pipeline.stages import extract as stage

    bad = [e for e in encoders if e not in ENCODERS]
    if bad:
        raise ConfigError(f"ENCODER must be one of {list(ENCODERS)}, got {bad[0]!r}")
    if len(encoders) > 1:
        if out is not None or shard is not None or merge is not None:
            raise ConfigError("--out, --shard and --merge take one encoder; several write data/features/ENCODER.zarr each")
        p = restrict(_params(params, set_), tuple(k for e in encoders for k in stage.params_for(e)), "extract")
        vision = [e for e in encoders if e in ("mae", "videomae", "eva")]
        for e in encoders:  # audio and text have inputs of their own: one after the other
            if e not in vision:
                stage.run(e, getattr(p.features, e), Path(f"data/features/{e}.zarr"), decoded=decoded, faces=faces,
                          manifest=manifest, models_dir=models, metrics_dir=metrics)
        if len(vision) > 1:
            stage.run_shared(vision, {e: getattr(p.features, e) for e in vision},
                             {e: Path(f"data/features/{e}.zarr") for e in vision}, faces=faces, models_dir=models,
                             metrics_dir=metrics)
        elif vision:
            stage.run(vision[0], getattr(p.features, vision[0]), Path(f"data/features/{vision[0]}.zarr"), faces=faces,
                      models_dir=models, metrics_dir=metrics)
        return
    encoder = encoders[0]
    p = _stage_params(stage, params, set_, encoder)
    cfg, out = getattr(p.features, encoder), out or Path(f"data/features/{encoder}.zarr")
    where = dict(decoded=decoded, faces=faces, manifest=manifest)
    if shard is not None and merge is not None:
        raise ConfigError("--shard and --merge are two steps: run the shards, then merge them")
    if merge is not None:
        stage.merge(encoder, cfg, out, merge, metrics_dir=metrics, **where)
        return
    if shard is not None:
        try:
            stage.run(encoder, cfg, out, models_dir=models, metrics_dir=metrics, shard=stage.parse_shard(shard), **where)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # one process of torchrun / accelerate launch: its shard, then rank 0 merges
        from pipeline.distributed import sharded_extract

        sharded_extract(stage, encoder, cfg, out, models, metrics, where)
        return
    if p.compute.launcher == "multi-gpu" and p.compute.processes > 1:
        from pipeline.distributed import relaunch

        relaunch(p.compute.processes)
        return
    if p.compute.launcher == "multi-node":
        if p.compute.shards < 2:
            raise ConfigError("compute.launcher is multi-node but compute.shards is "
                              f"{p.compute.shards}: set it to the N of the array's `--shard I/N`")
        stage.merge(encoder, cfg, out, p.compute.shards, metrics_dir=metrics, **where)
        return
    stage.run(encoder, cfg, out, models_dir=models, metrics_dir=metrics, **where)


@app.command()
@friendly
def featurize(encoders: Annotated[Optional[list[str]], typer.Argument(help="any of hubert, mae, videomae, eva [default: all four]")] = None,
              manifest: Annotated[Path, typer.Option(help="manifest from `esva ingest`")] = Path("data/manifest.parquet"),
              decoded: Annotated[Path, typer.Option(help="decoded store (as `esva decode --out`)")] = Path("data/interim/decoded.zarr"),
              faces: Annotated[Path, typer.Option(help="face store (as `esva crop --out`)")] = Path("data/interim/faces.zarr"),
              features: FeaturesOpt = Path("data/features"),
              models: Annotated[Path, typer.Option(help="folder for tiny checkpoints and weight provenance")] = Path("data/models/encoders"),
              workers: Annotated[Optional[int], typer.Option(help="decode-and-crop processes [default: max(decode.workers, crop.workers)]")] = None,
              params: ParamsOpt = None, set_: SetOpt = None, metrics: MetricsOpt = Path("metrics")) -> None:
    """Raw videos to features in one pass: decode and crop in worker processes while the encoders run (resumable).

    Writes the stores of `esva decode`, `esva crop` and `esva extract ENCODER`, so those commands (and `dvc repro`)
    find every clip done afterwards; the report goes to metrics/featurize.json."""
    from esva.config import ConfigError, restrict
    from pipeline.stages import featurize as stage

    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    p = restrict(_params(params, set_), stage.PARAMS, "featurize")
    try:
        stage.run(p, list(encoders or stage.ENCODERS), manifest=manifest, decoded=decoded, faces=faces,
                  features=features, models_dir=models, metrics_dir=metrics, workers=workers)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


@app.command()
@friendly
def train(out: Annotated[Path, typer.Option(help="model folder (safetensors + resolved config)")] = Path("data/models/stage1"),
          variant: Annotated[Optional[str], typer.Option(help="an ablation row (writes metrics/ablation/VARIANT.json)")] = None,
          manifest: Annotated[Path, typer.Option(help="manifest (labels and splits)")] = Path("data/manifest.parquet"),
          features: FeaturesOpt = Path("data/features"),
          reference: Annotated[Path, typer.Option(help="the sync-baseline row for alignment.json")] = Path("metrics/alignment_reference.json"),
          params: ParamsOpt = None, set_: SetOpt = None, metrics: MetricsOpt = Path("metrics")) -> None:
    """Stage 1: MSFE + alignment + fusion on cached features (params msfe, contrast, align, train, features.use)."""
    from pipeline.stages import train as stage

    from esva.config import restrict

    # the ablate stage also reads `ablate`; a variant without MSFE reads nothing under `msfe`
    keys = stage.variant_keys(variant) if variant else stage.PARAMS
    p = restrict(_params(params, set_), keys, "ablate" if variant else "train")
    stage.run(p, manifest, features, out, metrics, variant=variant, reference=reference)


@app.command()
@friendly
def lm(out: Annotated[Path, typer.Option(help="base LLM folder (tiny: weights + tokenizer; else a pointer)")] = Path("data/models/llm"),
       manifest: Annotated[Path, typer.Option(help="manifest (the tiny LLM learns the training split's text)")] = Path("data/manifest.parquet"),
       params: ParamsOpt = None, set_: SetOpt = None, metrics: MetricsOpt = Path("metrics")) -> None:
    """The base LLM of stage 2 (params `llm`): tiny = tokenizer + small LLaMA pretrained on corpus text."""
    from pipeline.stages import lm as stage

    stage.run(_stage_params(stage, params, set_).llm, manifest, out, metrics)


@app.command()
@friendly
def tune(out: Annotated[Path, typer.Option(help="stage-2 folder (peft adapter, projectors, stage-1 copy, config)")] = Path("data/models/stage2"),
         manifest: Annotated[Path, typer.Option(help="manifest (texts, labels, splits)")] = Path("data/manifest.parquet"),
         features: FeaturesOpt = Path("data/features"),
         stage1: Annotated[Path, typer.Option(help="stage-1 model folder")] = Path("data/models/stage1"),
         llm: LlmOpt = Path("data/models/llm"),
         params: ParamsOpt = None, set_: SetOpt = None, metrics: MetricsOpt = Path("metrics")) -> None:
    """Stage 2: LoRA instruction tuning with projected audio and video tokens (params `tune`).

    Data parallel under `accelerate launch` or torchrun as it is; params `compute.launcher: multi-gpu` makes it
    start itself under torchrun with `compute.processes` processes (README "Many GPUs, many machines")."""
    from pipeline.stages import tune as stage

    p = _stage_params(stage, params, set_)
    if p.compute.launcher == "multi-gpu" and p.compute.processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        from pipeline.distributed import relaunch

        relaunch(p.compute.processes)
        return
    stage.run(p, manifest, features, stage1, llm, out, metrics)


@app.command()
@friendly
def predict(videos: Annotated[list[Path], typer.Argument(help="video files (any container ffmpeg reads)")],
            json_: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
            transcript: Annotated[Optional[list[str]], typer.Option(help="what is said in a video, as FILE=TEXT or TEXT for a single video (repeatable)")] = None,
            model: Stage2Opt = Path("data/models/stage2"),
            llm: LlmOpt = Path("data/models/llm"),
            encoders: Annotated[Path, typer.Option(help="encoder checkpoints used for training")] = Path("data/models/encoders"),
            keep: Annotated[Optional[Path], typer.Option(help="keep the intermediate stores in this folder")] = None,
            params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Label, explanation and per-modality evidence for raw videos: decode -> crop -> extract -> stage 1 -> stage 2."""
    from pipeline.stages import predict as stage

    results = stage.run(_params(params, set_), videos, model, llm, encoders, transcripts=stage.parse_transcripts(transcript, videos), workdir=keep)
    if json_:
        import json

        typer.echo(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        stage.show(results, Console())
    if results and all(r.get("error") for r in results):
        raise typer.Exit(1)


@app.command()
@friendly
def evaluate(out: Annotated[Path, typer.Option(help="folder for mer2023.json, mer2024_ov.json, emer.json, plots")] = Path("metrics"),
             manifest: Annotated[Path, typer.Option(help="manifest (gold labels, splits)")] = Path("data/manifest.parquet"),
             features: FeaturesOpt = Path("data/features"),
             model: Stage2Opt = Path("data/models/stage2"),
             llm: LlmOpt = Path("data/models/llm"),
             predictions_dir: Annotated[Path, typer.Option("--predictions-dir", help="where generated predictions go (parquet)")] = Path("data/predictions"),
             predictions: Annotated[Optional[Path], typer.Option(help="score this file (clip_id, answer) instead of generating; needs --task")] = None,
             task: Annotated[Optional[str], typer.Option(help="mer, ov or emer (with --predictions)")] = None,
             controller: Annotated[Optional[str], typer.Option(help="alignment controller in place of the model's own: fixed, fuzzy, neural, backstepping")] = None,
             controller_weights: Annotated[Optional[Path], typer.Option("--controller-weights", help="the neural controller's network (esva adaptive)")] = None,
             params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Generate on each evaluation split and score it as the benchmarks do (params `evaluate`)."""
    from esva.config import ConfigError
    from pipeline.stages import evaluate as stage

    if (predictions is None) != (task is None):
        raise ConfigError("--predictions and --task go together")
    if task is not None and task not in stage.TASKS:
        raise ConfigError(f"--task must be one of {list(stage.TASKS)}, got {task!r}")
    stage.run(_stage_params(stage, params, set_), manifest, features, model, llm, out, predictions_dir,
              roles=(task,) if task else ("mer", "ov", "emer"), predictions=predictions, controller=controller,
              controller_weights=controller_weights)


@app.command()
@friendly
def report(out: Annotated[Path, typer.Option(help="the tables, as Markdown")] = Path("metrics/tables.md"),
           metrics: MetricsOpt = Path("metrics")) -> None:
    """Assemble the paper's Tables 2-7 from the metrics files, beside the paper's published numbers."""
    from pipeline.stages import report as stage

    stage.run(metrics, out)


@app.command("sync-baseline")
@friendly
def sync_baseline(out: Annotated[Path, typer.Option(help="reference metrics file")] = Path("metrics/alignment_reference.json"),
                  decoded: Annotated[Path, typer.Option(help="decoded store")] = Path("data/interim/decoded.zarr"),
                  faces: Annotated[Path, typer.Option(help="face store")] = Path("data/interim/faces.zarr"),
                  manifest: Annotated[Path, typer.Option(help="manifest with offset_ms")] = Path("data/manifest.parquet"),
                  params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """The alignment baselines: predict-zero, the oracle, and cross-correlations of audio energy with mouth opening and with mouth motion (params align.max_shift)."""
    from pipeline.stages import sync as stage

    stage.run(_stage_params(stage, params, set_).align.max_shift, decoded, faces, manifest, out)


@app.command()
@friendly
def mechanism(out: Annotated[Path, typer.Option(help="the mechanism checks' metrics file")] = Path("metrics/mechanism.json"),
              params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Mechanism checks: feature-level synthetic conditions where MSFE's and the aligner's effects exist by
    construction (params mechanism, msfe, contrast, align, train). Tests of the implementation, not evidence
    for the paper's claims."""
    from pipeline.stages import mechanism as stage

    stage.run(_stage_params(stage, params, set_), out)


@app.command()
@friendly
def adaptive(out: Annotated[Path, typer.Option(help="folder of adaptive.json and robustness.json")] = Path("metrics"),
             manifest: Annotated[Path, typer.Option(help="manifest with the condition splits' ground truth")] = Path("data/manifest.parquet"),
             features: Annotated[Path, typer.Option(help="folder of the feature stores")] = Path("data/features"),
             model: Annotated[Path, typer.Option(help="the stage-1 model (its seed; the others train here)")] = Path("data/models/stage1"),
             models: Annotated[Path, typer.Option(help="folder for each seed's neural controller")] = Path("data/models/adaptive"),
             params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """The alignment controllers (fixed, fuzzy, neural, backstepping) on the harder conditions of data.robust:
    offset tracking error and oscillation (adaptive.json), emotion F1 per corrupted split (robustness.json)."""
    from pipeline.stages import adaptive as stage

    stage.run(_stage_params(stage, params, set_), manifest, features, model, out, models)


@app.command()
@friendly
def convert(checkpoint: Annotated[str, typer.Argument(help="a checkpoint folder or hub id that ships pytorch_model.bin")],
            out: Annotated[Path, typer.Argument(help="new folder for the safetensors copy")],
            revision: Annotated[Optional[str], typer.Option(help="hub revision (branch, tag, commit)")] = None) -> None:
    """Write a .bin checkpoint as safetensors once (read with torch's weights_only loader, every tensor
    compared after writing); point `features.<encoder>.checkpoint` at OUT afterwards."""
    from esva.checkpoints import convert as run_convert

    rep = run_convert(checkpoint, out, revision)
    typer.echo(f"{rep['source']} -> {rep['out']}: {rep['tensors']} tensors in {', '.join(rep['files'])}")


@app.command("params")
@friendly
def show_params(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Print the effective params (the file, or the built-in defaults, with --set applied) as YAML: a
    starting point for your own params file."""
    import yaml

    typer.echo(yaml.safe_dump(_params(params, set_).model_dump(mode="json"), sort_keys=False, allow_unicode=True), nl=False)


@app.command()
@friendly
def verify(stores: Annotated[list[Path], typer.Argument(help="one or more esva stores (decoded, faces, features)")],
           as_json: Annotated[bool, typer.Option("--json", help="print the full report as JSON")] = False) -> None:
    """Check stores against their checksums, their index and their per-clip provenance. Lists every bad
    clip by id; exits 1 when any store has a problem."""
    import json

    from esva.store import verify as verify_store

    reports = [verify_store(p) for p in stores]
    failed = False
    for rep in reports:
        bad = rep["bad"]
        failed |= bool(bad or rep["store"])
        if not as_json:
            status = "ok" if not (bad or rep["store"]) else "FAILED"
            typer.echo(f"{rep['path']}: {status}: {rep['ok']} of {rep['clips']} clips ok, {len(bad)} bad")
            for problem in rep["store"]:
                typer.echo(f"  store: {problem}")
            for cid, errs in bad.items():
                typer.echo(f"  {cid}: {'; '.join(errs)}")
    if as_json:
        typer.echo(json.dumps(reports, indent=2))
    if failed:
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

