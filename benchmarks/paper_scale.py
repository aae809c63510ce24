"""Paper-scale smoke run of the whole chain: every model at its full width, through the real CLI.

The paper profile's models are built with random weights (nothing can be downloaded here) at their
published widths and saved with save_pretrained (safetensors) into a work folder, then used exactly
as a user's local checkpoints are: `features.<enc>.checkpoint=<folder>` and `llm.checkpoint=<folder>`.

- HuBERT-large (hubert-large-ll60k: 1024 wide, 16 heads, FFN 4096, 7-layer 512-channel conv front end),
  MAE-large (ViTMAE 1024/16/4096, patch 16, 224 px), VideoMAE-large (1024/16/4096, tubelet 2, 16 frames,
  224 px), EVA ViT-g as BLIP-2's vision tower (Blip2VisionModel 1408/16/6144, patch 14, 224 px, qkv bias)
  and Llama-2-7B (4096 wide, FFN 11008, 32 heads, vocab 32000, context 4096).
- Depth: the full depths (24, 24, 24, 39 and 32 layers) when a CUDA device is present, with every stage
  on it and `dtype: auto`; on a CPU the same widths truncated to `--layers` (default 2), extraction and
  stage 1 in fp32 and stage 2 in bf16.
- The Llama-2 tokenizer is not available offline: a byte-level BPE tokenizer is trained with
  `esva.models.llm.train_tokenizer` on the corpus text (asked for 32000 entries; a small corpus gives
  far fewer). The embedding table and LM head are still 32000 x 4096, as Llama-2's; ids the tokenizer
  lacks decode to nothing. The folder is used the way `esva lm` records a local checkpoint.

The chain: `esva synth` (a few short clips) -> ingest -> decode -> crop -> `esva extract` with each
media encoder (and the text encoder as configured) -> `esva train` (1-2 epochs) -> `esva lm` -> `esva tune`
(one epoch of bf16 LoRA steps with gradient checkpointing; its validation generates) -> `esva evaluate`
on the training split -> `esva predict` on one clip. Each step records its model shapes, dtypes (from
the stores' attrs and the metrics files), feature shapes, seconds and peak memory. A failing step is
recorded with its error and the run goes on where it can; the exit status is 1 if any step failed.

Random weights: a smoke run of shapes, dtypes and memory at paper scale, never a result.

    python -m benchmarks.paper_scale                 # CPU: 2 layers each, ~10 min on 2 cores
    python -m benchmarks.paper_scale --layers 1 --keep --work /tmp/ps
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from benchmarks.extract import large_config as hubert_large_config
from benchmarks.report import cpu_name, write_result
from benchmarks.tune import LLAMA2_7B

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ("hubert", "mae", "videomae", "eva")
ENCODERS = MEDIA + ("text",)
FULL_DEPTH = {"hubert": 24, "mae": 24, "videomae": 24, "eva": 39, "llm": 32}
NOTE = ("random weights at the paper's widths (truncated depth on a CPU): a smoke run of shapes, dtypes and "
        "memory through the real CLI, not a result")


# ----------------------------------------------------------------------------- the paper's architectures

def encoder_config(name: str, layers: int):
    """The transformers config of a paper encoder at full width with `layers` layers."""
    from transformers import Blip2VisionConfig, ViTMAEConfig, VideoMAEConfig

    if name == "hubert":  # facebook/hubert-large-ll60k, TencentGameMate/chinese-hubert-large
        c = hubert_large_config()
        c.num_hidden_layers = layers
        return c
    if name == "mae":  # facebook/vit-mae-large (its encoder; ViTMAEModel has no decoder)
        return ViTMAEConfig(hidden_size=1024, num_hidden_layers=layers, num_attention_heads=16, intermediate_size=4096,
                            image_size=224, patch_size=16, qkv_bias=True, mask_ratio=0.0)
    if name == "videomae":  # MCG-NJU/videomae-large
        return VideoMAEConfig(hidden_size=1024, num_hidden_layers=layers, num_attention_heads=16, intermediate_size=4096,
                              image_size=224, patch_size=16, num_frames=16, tubelet_size=2, qkv_bias=True,
                              use_mean_pooling=False)
    if name == "eva":  # Salesforce/blip2-opt-2.7b's vision tower (EVA ViT-g/14)
        return Blip2VisionConfig(hidden_size=1408, num_hidden_layers=layers, num_attention_heads=16,
                                 intermediate_size=6144, image_size=224, patch_size=14, qkv_bias=True,
                                 layer_norm_eps=1e-6)
    raise ValueError(f"no paper encoder named {name!r}")


def preprocessor_config(name: str) -> dict:
    """What the real checkpoints ship beside their weights (the encoders read mean/std and normalisation)."""
    from esva.encoders import eva, hubert
    from esva.encoders.base import IMAGENET_MEAN, IMAGENET_STD

    if name == "hubert":
        return {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "sampling_rate": hubert.SAMPLE_RATE,
                "do_normalize": True, "return_attention_mask": True, "feature_size": 1, "padding_value": 0.0}
    if name == "eva":
        return {"image_processor_type": "BlipImageProcessor", "image_mean": list(eva.CLIP_MEAN),
                "image_std": list(eva.CLIP_STD), "size": {"height": 224, "width": 224}}
    size = {"shortest_edge": 224} if name == "videomae" else {"height": 224, "width": 224}
    return {"image_processor_type": "VideoMAEImageProcessor" if name == "videomae" else "ViTImageProcessor",
            "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD), "size": size}


def build_encoder(name: str, layers: int, path: Path, seed: int = 0) -> None:
    """Random weights, saved the way a hub checkpoint is laid out (esva's own tiny-preset writer)."""
    from transformers import Blip2VisionModel, HubertModel, ViTMAEModel, VideoMAEModel

    from esva.encoders.base import save_tiny_model

    cls = {"hubert": HubertModel, "mae": ViTMAEModel, "videomae": VideoMAEModel, "eva": Blip2VisionModel}[name]
    save_tiny_model(cls, encoder_config(name, layers), path, seed, preprocessor_config(name))


def build_llm(layers: int, path: Path, texts: list[str], device: str, seed: int = 0) -> dict:
    """Llama-2-7B's architecture with `layers` layers, random weights in bf16 (Llama-2-7b-chat-hf ships
    16-bit weights), and a byte-level BPE tokenizer trained on `texts`, in one folder that loads with
    AutoModelForCausalLM / AutoTokenizer. The embedding table keeps Llama-2's 32000 rows whatever the
    tokenizer's size."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from esva.models.llm import train_tokenizer

    path.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(texts, LLAMA2_7B["vocab_size"], path)
    cfg = LlamaConfig(**dict(LLAMA2_7B, num_hidden_layers=layers), rms_norm_eps=1e-5, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    model.save_pretrained(str(path), safe_serialization=True)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"tokenizer_entries": len(tok), "embedding_rows": cfg.vocab_size,
            "tokenizer_note": "byte-level BPE trained with esva.models.llm.train_tokenizer on the corpus text "
                              f"(asked for {cfg.vocab_size} entries, got {len(tok)}); the embedding table and LM "
                              f"head keep Llama-2's {cfg.vocab_size} rows, and generated ids the tokenizer lacks "
                              "decode to nothing"}


# ----------------------------------------------------------------------------- what a step reports

def count_parameters(folder: Path) -> int:
    """Parameters of a safetensors checkpoint, from its headers (no weights are read)."""
    from safetensors import safe_open

    n = 0
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                shape = st.get_slice(k).get_shape()
                size = 1
                for s in shape:
                    size *= int(s)
                n += size
    return n


def model_shape(folder: Path) -> dict:
    with (Path(folder) / "config.json").open("r", encoding="utf-8") as fh:
        c = json.load(fh)
    out = {"model_type": c.get("model_type"), "hidden_size": c.get("hidden_size"), "layers": c.get("num_hidden_layers"),
           "heads": c.get("num_attention_heads"), "intermediate_size": c.get("intermediate_size"),
           "parameters": count_parameters(folder), "weights_dtype": c.get("dtype", c.get("torch_dtype"))}
    keys = ("image_size", "patch_size", "num_frames", "tubelet_size", "qkv_bias")
    if c.get("model_type") == "llama":
        keys = ("vocab_size", "max_position_embeddings", "num_key_value_heads", "rms_norm_eps", "tie_word_embeddings")
    for k in keys:
        if k in c:
            out[k] = c[k]
    if c.get("model_type") == "hubert":
        out["conv_dim"] = c.get("conv_dim")
    return out


def read_json(path: Path) -> dict | None:
    path = Path(path)
    if not path.is_file():
        return None
    with path.open("r", encoding="utf-8") as fh:
        return json.load(fh)


def feature_shapes(store_path: Path) -> dict:
    """dim, layers and the stored arrays of the first clip (frames x dim) of a feature store."""
    from esva.store import open as open_store

    st = open_store(store_path)
    ids = sorted(st.ids())
    first = st.read(ids[0])
    return {"dim": st.attrs.get("dim"), "layers": st.attrs.get("layers"), "frame_rate": st.attrs.get("frame_rate"),
            "clips": len(ids), "clip": ids[0], "arrays": {k: [int(s) for s in v.shape] for k, v in first.items()},
            "arrays_dtype": {k: str(v.dtype) for k, v in first.items()},
            "frames_of_one_clip": int(first[st.attrs["layers"][0]].shape[0])}


def maxrss_gib() -> float:
    """ru_maxrss of this process (KiB on Linux), in GiB: its peak resident memory since the last reset."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak_rss() -> bool:
    """Linux resets the peak RSS (VmHWM, and with it ru_maxrss) to the current RSS on `5` written to
    /proc/self/clear_refs; False where that is not possible (then only the process-wide peak is known)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_now_gib() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 2**20, 3)
    except OSError:
        pass
    return None


def _where(exc_info) -> dict | None:
    """Where an exception came from, as file:line: the innermost frame of this project's code (esva/,
    pipeline/, benchmarks/) and the innermost frame of all (which may be in a dependency)."""
    if not exc_info or exc_info[2] is None:
        return None
    frames = traceback.extract_tb(exc_info[2])
    if not frames:
        return None
    own = [f for f in frames if any(f"/{d}/" in f.filename for d in ("esva", "pipeline", "benchmarks"))
           and "site-packages" not in f.filename]

    def fmt(f) -> str:
        try:
            rel = Path(f.filename).resolve().relative_to(ROOT)
        except ValueError:
            rel = Path(f.filename)
        return f"{rel}:{f.lineno} ({f.name})"

    return {"project": fmt(own[-1]) if own else None, "innermost": fmt(frames[-1])}


class Runner:
    """Runs the steps in order, each timed and measured; a failure is recorded and later steps that need
    its outputs are skipped, naming it."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.steps: dict[str, dict] = {}
        self.process_peak = maxrss_gib()  # the running maximum of ru_maxrss over the resets

    def ok(self, name: str) -> bool:
        return self.steps.get(name, {}).get("status") == "ok"

    def run(self, name: str, fn: Callable[[], dict | None], needs: tuple[str, ...] = (), command: str | None = None) -> dict:
        rec: dict = {"command": command}
        missing = [n for n in needs if not self.ok(n)]
        if missing:
            rec.update(status="skipped", error=f"not run: needs {missing}, which did not succeed")
            self.steps[name] = rec
            _say(f"[paper_scale] {name}: skipped ({rec['error']})")
            return rec
        _say(f"[paper_scale] {name} ...")
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.process_peak = max(self.process_peak, maxrss_gib())
        per_step = reset_peak_rss()
        t0 = time.perf_counter()
        try:
            extra = fn() or {}
            rec.update(status="ok", **extra)
        except Exception as exc:  # a failing step is recorded and the run goes on
            rec.update(status="failed", error=f"{type(exc).__name__}: {exc}".strip(), where=_where(sys.exc_info()))
        if self.cuda:
            torch.cuda.synchronize()
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        peak = maxrss_gib()
        self.process_peak = max(self.process_peak, peak)
        rec["peak_rss_gib_step"] = round(peak, 3) if per_step else None
        rec["peak_rss_gib_process"] = round(self.process_peak, 3)
        rec["rss_gib_after"] = rss_now_gib()
        if self.cuda:
            rec["peak_gpu_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        prec = rec.get("precision")
        if isinstance(prec, dict) and prec.get("compute"):
            rec["dtype"] = prec["compute"]
        self.steps[name] = rec
        _say(f"[paper_scale] {name}: {rec['status']} in {rec['seconds']} s, peak RSS {rec['peak_rss_gib_step']} GiB "
             f"(process {rec['peak_rss_gib_process']} GiB)"
             + (f" - {rec['error']} at {rec.get('where')}" if rec["status"] == "failed" else ""))
        return rec


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class CliFailed(RuntimeError):
    """An `esva` command that exited non-zero without an exception (e.g. `predict` with every file failing)."""


def esva(args: list[str]) -> str:
    """One `esva` command through the real Typer app, in this process; returns its stdout."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    # ESVA_DEBUG: the CLI re-raises its known errors instead of printing one line, so a failure keeps its
    # traceback (the file and line it came from); the message is the same one the CLI prints
    res = CliRunner(env={"ESVA_DEBUG": "1"}).invoke(app, args, catch_exceptions=True)
    if res.exit_code != 0:
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            raise res.exception.with_traceback(res.exc_info[2])
        tail = [ln for ln in res.output.strip().splitlines() if ln.strip()][-6:]
        raise CliFailed(f"esva {args[0]} exited {res.exit_code}: " + " | ".join(tail))
    return res.stdout


# ----------------------------------------------------------------------------- the run

def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cuda = torch.cuda.is_available()
    ap.add_argument("--layers", type=int, default=None,
                    help="layers of every model (default: the full depths on CUDA, 2 on a CPU)")
    ap.add_argument("--llm-layers", type=int, default=None, help="layers of the Llama-2-7B slice (default: --layers)")
    ap.add_argument("--clips", type=int, default=6,
                    help="synthetic clips; stage 1 needs every one of the 6 classes in the training split, so >= 6")
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--max-seconds", type=float, default=1.4)
    ap.add_argument("--train-epochs", type=int, default=2)
    ap.add_argument("--dtype", choices=["fp32", "bf16", "auto"], default="auto" if cuda else "fp32",
                    help="extraction, stage 1 and llm.dtype (default: auto on CUDA, fp32 on a CPU)")
    ap.add_argument("--tune-dtype", choices=["fp32", "bf16", "auto"], default="auto" if cuda else "bf16",
                    help="stage 2 (default: auto on CUDA, bf16 on a CPU)")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="tune.max_new_tokens (reason/ov answers)")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a new temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (checkpoints, stores, metrics)")
    ap.add_argument("--out", type=Path, default=Path("metrics/bench_paper_scale.json"))
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    if args.clips < 6:
        ap.error("--clips must be >= 6: stage 1 needs a training clip of every class")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    depth = {n: (args.layers if args.layers is not None else (FULL_DEPTH[n] if cuda else 2)) for n in MEDIA}
    depth["llm"] = args.llm_layers or (args.layers if args.layers is not None else (FULL_DEPTH["llm"] if cuda else 2))
    if min(depth.values()) < 1:
        ap.error("--layers / --llm-layers must be >= 1")
    args.depth = depth

    if args.work is None:
        work = Path(tempfile.mkdtemp(prefix="esva-paper-scale-"))
    else:
        work = args.work
        if work.exists() and any(work.iterdir()):
            ap.error(f"--work {work} is not empty")
        work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()
    try:
        result = _run(args, work, cuda, t_start)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return write_result(result, args.out)


def _run(args, work: Path, cuda: bool, t_start: float) -> dict:
    device = "cuda" if cuda else "cpu"
    depth = args.depth
    params = work / "params.yaml"  # a snapshot, so the run is not affected by edits to the repo's params.yaml
    shutil.copyfile(ROOT / "params.yaml", params)
    p = ["--params", str(params)]
    m = work / "metrics"
    manifest, decoded, faces, feats = work / "manifest.parquet", work / "decoded.zarr", work / "faces.zarr", work / "features"
    ckpt = {n: work / "checkpoints" / n for n in MEDIA} | {"llm": work / "checkpoints" / "llama2-7b-arch"}

    def sets(*kv: str) -> list[str]:
        return [x for item in kv for x in ("--set", item)]

    def enc_set(n: str) -> list[str]:  # the text encoder stays as configured (the bundled MiniLM)
        return sets(*([f"features.{n}.checkpoint={ckpt[n]}"] if n in MEDIA else []), f"features.{n}.device={device}",
                    f"features.{n}.dtype={args.dtype}")

    train_set = sets(f"train.device={device}", f"train.dtype={args.dtype}", f"train.epochs={args.train_epochs}",
                     "align.warmup_epochs=1")
    llm_set = sets(f"llm.checkpoint={ckpt['llm']}", f"llm.device={device}", f"llm.dtype={args.dtype}")
    tune_set = sets(f"tune.device={device}", f"tune.dtype={args.tune_dtype}", "tune.epochs=1",
                    "tune.grad_checkpointing=true", "tune.batch_size=1", "tune.grad_accum=2",
                    f"tune.max_new_tokens={args.max_new_tokens}")
    gen_set = sets(f"tune.device={device}")  # evaluate and predict load stage 2 there, in the dtype it was tuned in
    on_train = sets(*[f"evaluate.{r}.split=train" for r in ("mer", "ov", "emer")])

    r = Runner(cuda)
    threads = torch.get_num_threads()

    def cli(name: str, cmd: list[str], needs: tuple[str, ...], after: Callable[[str], dict] | None = None) -> dict:
        def fn():
            out = esva(cmd)
            return after(out) if after else None

        return r.run(name, fn, needs, command=shlex.join(["esva", *cmd]))

    # 1. a few synthetic clips, through the project's own stages
    cli("synth", ["synth", *p, *sets(f"synth.n_clips={args.clips}", "synth.workers=1",
                                     f"synth.min_seconds={args.min_seconds}", f"synth.max_seconds={args.max_seconds}"),
                  "--out", str(work / "raw"), "--metrics", str(m)], (),
        lambda _: {"report": _pick(read_json(m / "synth.json"), ("clips_in", "done"))})
    def hold_out():  # one clip validates: both stages choose epochs on validation clips only, and a few clips,
        # one per label, leave nothing for ingest's stratified carving
        from esva.data.manifest import read_manifest, write_manifest

        esva(["ingest", *p, "--dataset", "synthetic", "--root", str(work / "raw"), "--out", str(manifest),
              "--metrics", str(m)])
        df = read_manifest(manifest)
        df.loc[df.index[0], "role"] = "val"
        write_manifest(df, manifest)

    r.run("ingest", hold_out, ("synth",), command=shlex.join(["esva", "ingest", *p, "--dataset", "synthetic", "--root",
                                                               str(work / "raw"), "--out", str(manifest)])
          + " (then one clip's role set to val)")
    cli("decode", ["decode", *p, "--manifest", str(manifest), "--out", str(decoded), "--metrics", str(m)], ("ingest",),
        lambda _: {"report": _pick(read_json(m / "decode.json"), ("clips_in", "done"))})
    cli("crop", ["crop", *p, "--decoded", str(decoded), "--out", str(faces), "--metrics", str(m)], ("decode",),
        lambda _: {"report": _pick(read_json(m / "crop.json"), ("clips_in", "done", "face_detection_rate"))})

    # 2. the paper's models at full width (random weights), saved as local checkpoints
    for n in MEDIA:
        r.run(f"build_{n}", lambda n=n: (build_encoder(n, depth[n], ckpt[n]), {"model": model_shape(ckpt[n])})[1],
              command=f"save_pretrained({encoder_config(n, depth[n]).__class__.__name__[:-6]}Model, "
                      f"layers={depth[n]}) -> {ckpt[n]}")

    def llm_folder():
        import pandas as pd

        from esva.models.llm import tokenizer_corpus

        info = build_llm(depth["llm"], ckpt["llm"], tokenizer_corpus(pd.read_parquet(manifest)), device)
        return {"model": model_shape(ckpt["llm"]), **info}

    r.run("build_llm", llm_folder, ("ingest",),
          command=f"save_pretrained(LlamaForCausalLM(Llama-2-7B config, layers={depth['llm']}), bf16) + "
                  f"train_tokenizer -> {ckpt['llm']}")

    # 3. extraction with each encoder
    for n in ENCODERS:
        def after(_, n=n):
            st = feats / f"{n}.zarr"
            from esva.store import open as open_store

            attrs = open_store(st).attrs
            rep = read_json(m / f"extract_{n}.json") or {}
            src = ckpt[n] if n in MEDIA else Path(attrs["checkpoint"]["path"])
            return {"model": model_shape(src), "precision": attrs.get("precision"),
                    "stored_dtype": attrs.get("dtype"), "features": feature_shapes(st),
                    "report": _pick(rep, ("clips_in", "done", "padded", "frames", "store_bytes"))}

        cli(f"extract_{n}", ["extract", n, *p, *enc_set(n), "--out", str(feats / f"{n}.zarr"),
                             "--decoded", str(decoded), "--faces", str(faces), "--manifest", str(manifest),
                             "--models", str(work / "models"), "--metrics", str(m)],
            ("decode", "crop", "ingest") + ((f"build_{n}",) if n in MEDIA else ()), after)

    # 4. stage 1 on the 1024/1408-wide features
    def after_train(_):
        s = read_json(m / "train.json") or {}
        cfg = read_json(work / "stage1" / "config.json") or {}
        return {"model": {"parameters": count_parameters(work / "stage1"), "input_dims": cfg.get("dims"),
                          "hidden": cfg.get("train", {}).get("hidden"), "msfe_hidden": cfg.get("msfe", {}).get("hidden"),
                          "align_dim": cfg.get("align", {}).get("dim")},
                "precision": s.get("precision"), "report": _pick(s, ("epochs_run", "best_epoch", "clips"))}

    cli("train", ["train", *p, *train_set, "--manifest", str(manifest), "--features", str(feats), "--metrics", str(m),
                  "--reference", str(work / "no_reference.json"), "--out", str(work / "stage1")],
        tuple(f"extract_{n}" for n in ENCODERS), after_train)

    # 5. stage 2: record the base LLM, a few bf16 LoRA steps (validation generates), evaluate, predict
    def base_shape() -> dict:
        shape = model_shape(ckpt["llm"])
        from transformers import AutoTokenizer

        shape["tokenizer_entries"] = len(AutoTokenizer.from_pretrained(str(ckpt["llm"])))
        return shape

    cli("lm", ["lm", *p, *llm_set, "--manifest", str(manifest),
               "--out", str(work / "llm"), "--metrics", str(m)], ("build_llm", "ingest"),
        lambda _: {"model": base_shape(), "source": read_json(work / "llm" / "source.json").get("checkpoint"),
                   "precision": (read_json(m / "lm.json") or {}).get("precision"),
                   "precision_note": "a local checkpoint is only recorded by `esva lm` (no computation, so "
                                     "lm.json has no precision); stage 2 loads it in tune.dtype"})

    def after_tune(_):
        s = read_json(m / "tune.json") or {}
        return {"model": {"base": base_shape(), "trainable_parameters": s.get("trainable_parameters"),
                          "lora_r": (read_json(work / "stage2" / "adapter_config.json") or {}).get("r")},
                "precision": s.get("precision"),
                "report": _pick(s, ("steps", "answer_tokens_trained", "clips", "val_accuracy", "val_unparseable_share",
                                    "truncated_encodings")),
                "history": s.get("history"),
                "val_generations": _count_lines(work / "stage2" / "val_generations.jsonl")}

    cli("tune", ["tune", *p, *tune_set, "--manifest", str(manifest), "--features", str(feats),
                 "--stage1", str(work / "stage1"), "--llm", str(work / "llm"), "--out", str(work / "stage2"),
                 "--metrics", str(m)], ("train", "lm"), after_tune)

    def stage2_precision() -> dict | None:
        return (read_json(work / "stage2" / "config.json") or {}).get("precision")

    def after_eval(_):
        mer = read_json(m / "mer2023.json") or {}
        return {"model": {"base": base_shape()},
                "precision": mer.get("precision") or stage2_precision(),
                "precision_source": "metrics mer2023.json" if mer.get("precision") else
                "stage2/config.json (evaluate loads the base in the dtype it was tuned in; mer2023.json has no "
                "precision field)",
                "report": {"mer2023": _pick(mer, ("n", "weighted_f1", "accuracy", "invalid")),
                           "mer2024_ov": _pick(read_json(m / "mer2024_ov.json"), ("avg",)),
                           "emer": _pick(read_json(m / "emer.json"), ("n", "empty_explanations"))}}

    cli("evaluate", ["evaluate", *p, *gen_set, *on_train, "--manifest", str(manifest), "--features", str(feats),
                     "--model", str(work / "stage2"), "--llm", str(work / "llm"),
                     "--predictions-dir", str(work / "predictions"), "--out", str(m)], ("tune",), after_eval)

    video = sorted((work / "raw" / "videos").glob("*.mp4"))[:1] if (work / "raw" / "videos").is_dir() else []
    said = ""  # the clip's own transcript, so predict's prompt is the one evaluate generated from
    if video and manifest.is_file():
        import pandas as pd

        rows = pd.read_parquet(manifest, columns=["clip_id", "transcript"])
        said = str(dict(zip(rows["clip_id"], rows["transcript"])).get(video[0].stem) or "")

    def after_predict(out: str):
        res = json.loads(out)
        import pandas as pd

        ev = work / "predictions" / "mer2023.parquet"
        ev_answer = None
        if ev.is_file():
            ev_rows = pd.read_parquet(ev)
            hit = ev_rows.loc[ev_rows["clip_id"] == video[0].stem, "answer"]
            ev_answer = str(hit.iloc[0]) if len(hit) else None
        return {"video": video[0].name, "video_note": "one of the synthetic clips, given to predict as a raw video "
                                                      "(predict reads no manifest) with its own transcript",
                "model": {"base": base_shape()}, "precision": stage2_precision(),
                "precision_source": "stage2/config.json (predict loads the base in the dtype it was tuned in)",
                "clips": len(res), "errors": [x["error"] for x in res if x.get("error")],
                "result_keys": sorted({k for x in res for k in x}),
                "label": [x.get("label") for x in res], "answer": [x.get("answer") for x in res],
                "evaluate_answer_same_clip": ev_answer,
                "same_answer_as_evaluate": (res[0].get("answer") == ev_answer) if res and ev_answer is not None else None,
                "same_answer_note": "information only: predict re-decodes and re-extracts the clip and generates for "
                                    "it alone, evaluate reads the stored float16 features in a batch of all clips; "
                                    "in bf16 with random weights the greedy answers may differ"}

    cli("predict", ["predict", *[str(v) for v in video], "--json", *p, *[x for n in ENCODERS for x in enc_set(n)],
                    *gen_set, "--model", str(work / "stage2"), "--llm", str(work / "llm"),
                    "--encoders", str(work / "models"), *(["--transcript", said] if said else [])],
        ("tune",), after_predict)

    failed = [n for n, s in r.steps.items() if s["status"] != "ok"]
    result = {
        "benchmark": "paper_scale", "note": NOTE,
        "target": "every step of the chain runs at the paper's widths", "meets_target": not failed,
        "command": shlex.join(["python", "-m", "benchmarks.paper_scale", *args.argv]),
        "device": device, "device_name": torch.cuda.get_device_name() if cuda else cpu_name(),
        "cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
        "torch_threads": threads, "transformers": __import__("transformers").__version__,
        "depth": depth, "full_depth": FULL_DEPTH, "truncated": depth != FULL_DEPTH,
        "dtype": {"extract_train_llm": args.dtype, "tune": args.tune_dtype},
        "clips": args.clips, "clip_seconds": [args.min_seconds, args.max_seconds],
        "params_yaml_sha256": hashlib.sha256(params.read_bytes()).hexdigest()[:16],
        "peak_rss_note": "every stage runs in this one process (typer's CliRunner), so ru_maxrss is cumulative: "
                         "peak_rss_gib_process is the process's peak when the step ended (never decreases); "
                         "peak_rss_gib_step is the step's own peak (the peak is reset through /proc/self/clear_refs "
                         "before each step; null where that is not possible); rss_gib_after is the RSS left after it",
        "work": str(work) if args.keep else None,
        "summary": {n: {k: s.get(k) for k in ("status", "seconds", "peak_rss_gib_step", "peak_rss_gib_process",
                                               "peak_gpu_allocated_gib", "dtype")} for n, s in r.steps.items()},
        "steps": r.steps, "failed": failed, "ok": not failed,
        "seconds_steps": round(sum(s.get("seconds", 0.0) for s in r.steps.values()), 1),
        "seconds_wall": round(time.perf_counter() - t_start, 1),
    }
    return result


def _pick(d: dict | None, keys) -> dict:
    return {k: d.get(k) for k in keys} if d else {}


def _count_lines(path: Path) -> int | None:
    path = Path(path)
    if not path.is_file():
        return None
    with path.open("r", encoding="utf-8") as fh:
        return sum(1 for _ in fh)


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
