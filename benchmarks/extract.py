"""Benchmark: the extraction engine against the per-clip loop MERTools and Emotion-LLaMA use, side by side in
one process, for HuBERT-large, MAE-large, VideoMAE-large and EVA ViT-g (BLIP-2's vision tower) at their real
sizes with random weights.

- loop: one clip at a time, float32, every hidden state kept, one .npy per clip (MERTools' loop), through the
  same encoder object and preprocessing as the engine;
- engine: `run_extraction` (length-bucketed batches, the `dtype` policy, the loader / encoder / writer
  pipeline, a float16 Zarr store).
The two alternate (loop, engine, engine, loop) and each figure is the mean of its two runs. Reported per
encoder: seconds, the ratio, FLOP/s (from torch's FLOP counter on one clip per encoder, scaled by input;
HuBERT analytically) as a share of the fp32 and bf16 matmul rates measured in the same process, the engine's
time per pipeline stage (load, forward, write, waiting on input) and padding, and the fidelity: the lowest
per-frame cosine of the engine's stored features against the loop's float32 ones.

Targets (issue 16): on a GPU, engine >= 3x the loop and >= 40% of the bf16 matmul rate; on a CPU with native
bf16, >= 2x; on any CPU, no slower (>= 1x); everywhere, cosine >= 0.999 per frame. `--profile` also writes
torch.profiler's top operators of one loop pass and one engine pass to metrics/bench_extract_profile.txt.

    python -m benchmarks.extract                          # all four, real size, dtype auto
    python -m benchmarks.extract --dtype fp32             # the engine alone (no bf16): batching and pipeline
    python -m benchmarks.extract --encoders hubert --size tiny --out /tmp/x.json   # a smoke run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import (Blip2VisionConfig, Blip2VisionModel, HubertConfig, HubertModel, VideoMAEConfig, VideoMAEModel,
                          ViTMAEConfig, ViTMAEModel)

from benchmarks.report import command, environment, write_result

from esva.config import EvaFeatures, HubertFeatures, MaeFeatures, SynthConfig, VideoMaeFeatures
from esva.data.synthetic import sample_spec, synth_audio
from esva.encoders import eva, hubert, load_encoder, mae, videomae
from esva.encoders.engine import Timings, feature_fields, run_extraction
from esva.precision import cpu_supports_bf16
from esva.store import RaggedWriter
from esva.store import open as open_store

ENCODERS = ("hubert", "mae", "videomae", "eva")
COSINE_TARGET = 0.999


def large_config() -> HubertConfig:
    """HuBERT-large (hubert-large-ll60k / chinese-hubert-large) dimensions."""
    return HubertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
                        feat_proj_layer_norm=True, mask_time_prob=0.0)


REAL = {  # the published sizes; the paper profile's checkpoints ship these configs
    "hubert": (HubertModel, large_config),
    "mae": (ViTMAEModel, lambda: ViTMAEConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                              intermediate_size=4096, image_size=224, patch_size=16, mask_ratio=0.0)),
    "videomae": (VideoMAEModel, lambda: VideoMAEConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                                       intermediate_size=4096, image_size=224, patch_size=16,
                                                       num_frames=16, tubelet_size=2, use_mean_pooling=False)),
    "eva": (Blip2VisionModel, lambda: Blip2VisionConfig(hidden_size=1408, num_hidden_layers=39, num_attention_heads=16,
                                                        intermediate_size=6144, image_size=224, patch_size=14)),
}
TINY = {"hubert": hubert.tiny_config, "mae": mae.tiny_config, "videomae": videomae.tiny_config, "eva": eva.tiny_config}
FEATURES = {"hubert": HubertFeatures, "mae": MaeFeatures, "videomae": VideoMaeFeatures, "eva": EvaFeatures}
BUDGET = {"hubert": 16000 * 60, "mae": 64, "videomae": 8, "eva": 16}  # the params.yaml defaults


def hubert_flops(c: HubertConfig, n_samples: int) -> float:
    """Forward FLOPs (2 x MACs) of HubertModel on one clip, from its config."""
    macs, length, ch_in = 0.0, n_samples, 1
    for k, s, ch in zip(c.conv_kernel, c.conv_stride, c.conv_dim):
        length = (length - k) // s + 1
        macs += length * ch * ch_in * k
        ch_in = ch
    t, d, f = length, c.hidden_size, c.intermediate_size
    macs += t * ch_in * d  # feature projection
    macs += t * d * d * c.num_conv_pos_embeddings / c.num_conv_pos_embedding_groups  # positional conv
    per_layer = t * (4 * d * d + 2 * d * f) + 2 * t * t * d  # projections, FFN, attention scores and values
    return 2.0 * (macs + c.num_hidden_layers * per_layer)


def matmul_gflops(device: str, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def clips(n: int, min_s: float, max_s: float, seed: int = 0) -> dict[str, np.ndarray]:
    """n synthetic utterances (the demo corpus's own sampler) of min_s..max_s seconds at 16 kHz."""
    cfg = SynthConfig(min_seconds=min_s, max_seconds=max_s, seed=seed)
    labels = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
    out = {}
    for i in range(n):
        spec = sample_spec(i, labels[i % 6], "test", cfg)
        out[f"clip{i:02d}"], _ = synth_audio(spec, 16000, np.random.default_rng([seed, i]))
    return out


def faces(n: int, frames: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """n clips of `frames` face crops (random pixels: the cost of a forward pass does not depend on them)."""
    rng = np.random.default_rng(seed)
    return {f"clip{i:02d}": rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8) for i in range(n)}


def loop(enc, data: dict, out_dir: Path, device: str) -> dict[str, np.ndarray]:
    """The per-clip float32 loop (`enc` loaded with dtype fp32): one clip per forward, every hidden state
    kept, np.save per clip."""
    assert enc.dtype == torch.float32
    feats = {}
    for cid, item in data.items():
        batch = enc.collate([cid], [item])
        out = enc.encode(batch)[enc.layers[0]]
        n = int(enc.output_lengths(batch)[0])
        x = out[0, :n].float().cpu().numpy()
        np.save(out_dir / f"{cid}.npy", x)
        feats[cid] = x
    _sync(device)
    return feats


def engine(enc, data: dict, path: Path, tm: Timings) -> int:
    with RaggedWriter(path, feature_fields(enc.layers, enc.dim), {}, "bench") as w:
        done, _ = run_extraction(enc, {c: len(x) for c, x in data.items()}, data.__getitem__, w, "pad", timings=tm)
    return done


def clip_flops(name: str, enc, model_cfg, data: dict) -> float:
    """FLOPs of the forward passes over `data`: HuBERT analytically per clip; the vision encoders counted by
    torch's FlopCounterMode on the first clip (every clip has the same frames) times the number of clips."""
    if name == "hubert":
        return sum(hubert_flops(model_cfg, len(a)) for a in data.values())
    from torch.utils.flop_counter import FlopCounterMode

    cid = next(iter(data))
    with FlopCounterMode(display=False) as fc:
        enc.encode(enc.collate([cid], [data[cid]]))
    return float(fc.get_total_flops()) * len(data)


def min_cosine(store_path: Path, ref: dict[str, np.ndarray], layer: str) -> float:
    store = open_store(store_path)
    worst = 1.0
    for cid, r in ref.items():
        e = store.read(cid, [layer])[layer].astype(np.float32)
        num = (e * r).sum(-1)
        den = np.linalg.norm(e, axis=-1) * np.linalg.norm(r, axis=-1) + 1e-12
        worst = min(worst, float((num / den).min()))
    return worst


def profile_table(fn, device: str, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        fn()
    key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def target_for(device: str, dtype: torch.dtype) -> tuple[float, float | None, str]:
    """(speedup target, share of the bf16 matmul rate or None, the rule in words) for this machine."""
    if device.startswith("cuda"):
        return 3.0, 0.40, "GPU: engine >= 3x the per-clip fp32 loop and >= 40% of the bf16 matmul rate"
    if dtype == torch.bfloat16 and cpu_supports_bf16():
        return 2.0, None, "CPU with native bf16 (engine in bf16): engine >= 2x the per-clip fp32 loop"
    return 1.0, None, "CPU (engine in fp32): engine no slower than the per-clip fp32 loop (>= 1x)"


def bench_one(name: str, args, mm: dict, td: Path, prof: list[str]) -> dict:
    cls, make_cfg = REAL[name] if args.size == "large" else (REAL[name][0], TINY[name])
    model_cfg = make_cfg()
    torch.manual_seed(0)
    model = cls(model_cfg)
    n_params = sum(p.numel() for p in model.parameters())
    ckpt = td / f"{name}-ckpt"
    model.save_pretrained(ckpt, safe_serialization=True)
    del model
    cfg = FEATURES[name](checkpoint=str(ckpt), device=args.device, dtype=args.dtype, batch_budget=BUDGET[name])
    enc, _ = load_encoder(name, cfg, td / "models")
    enc.budget = BUDGET[name]
    # the loop's own fp32 copy of the same weights (the engine's bf16 encoder stores its matmul weights in bf16)
    ref_enc, _ = load_encoder(name, cfg.model_copy(update={"dtype": "fp32"}), td / "models") if enc.dtype != torch.float32 \
        else (enc, None)
    if name == "hubert":
        data = clips(args.clips, args.min_seconds, args.max_seconds)
        units = {"audio_seconds": round(sum(len(a) for a in data.values()) / 16000, 1)}
    else:
        size = getattr(model_cfg, "image_size", 224)
        n = args.vision_clips
        data = faces(n, args.frames, size)
        units = {"frames": n * args.frames}
        if name == "mae":
            enc.frame_rate = ref_enc.frame_rate = 25.0
        elif name == "videomae":
            enc.frame_rate = ref_enc.frame_rate = 12.5
    flops = clip_flops(name, ref_enc, model_cfg, data)
    first = next(iter(data))
    warm = {first: data[first]}
    (td / "warm").mkdir(exist_ok=True)
    loop(ref_enc, warm, td / "warm", args.device)  # allocator, kernels and threads warm for both paths
    engine(enc, warm, td / f"{name}-warm.zarr", Timings())
    t_loop, t_eng, tms, ref = [], [], [], None
    for k, which in enumerate(("loop", "engine", "engine", "loop")):
        _sync(args.device)
        t0 = time.perf_counter()
        if which == "loop":
            d = td / f"{name}-loop{k}"
            d.mkdir()
            ref = loop(ref_enc, data, d, args.device)
            t_loop.append(time.perf_counter() - t0)
        else:
            tm = Timings()
            engine(enc, data, td / f"{name}-engine{k}.zarr", tm)
            _sync(args.device)
            t_eng.append(time.perf_counter() - t0)
            tms.append(tm.as_dict())
    if args.profile and not prof:  # the first encoder only: where each path spends its time
        sub = dict(list(data.items())[: max(2, len(data) // 4)])
        (td / "prof").mkdir(exist_ok=True)
        prof.append(f"== {name}: per-clip fp32 loop, {len(sub)} clips ==\n"
                    + profile_table(lambda: loop(ref_enc, sub, td / "prof", args.device), args.device))
        prof.append(f"== {name}: engine ({str(enc.dtype).replace('torch.', '')}), {len(sub)} clips ==\n"
                    + profile_table(lambda: engine(enc, sub, td / f"{name}-prof.zarr", Timings()), args.device))
    tl, te = float(np.mean(t_loop)), float(np.mean(t_eng))
    cos = min_cosine(td / f"{name}-engine1.zarr", ref, enc.layers[0])
    speed_target, mm_share, _ = target_for(args.device, enc.dtype)
    engine_gflops = flops / te / 1e9
    share_bf16 = engine_gflops / mm["bf16"]
    ok = {"speedup": tl / te >= speed_target, "cosine": cos >= COSINE_TARGET}
    if mm_share is not None:
        ok["matmul_share"] = share_bf16 >= mm_share
    res = {
        "params_m": round(n_params / 1e6, 1), "clips": len(data), **units,
        "engine_compute_dtype": str(enc.dtype).replace("torch.", ""), "batch_budget": BUDGET[name],
        "loop_seconds": round(tl, 3), "engine_seconds": round(te, 3), "runs_seconds": {"loop": [round(x, 3) for x in t_loop],
                                                                                   "engine": [round(x, 3) for x in t_eng]},
        "speedup": round(tl / te, 3), "target_speedup": speed_target,
        "flop_total": int(flops), "gflop_total": round(flops / 1e9, 1), "loop_gflops": round(flops / tl / 1e9, 1), "engine_gflops": round(engine_gflops, 1),
        "engine_share_of_fp32_matmul": round(engine_gflops / mm["fp32"], 3), "engine_share_of_bf16_matmul": round(share_bf16, 3),
        "loop_share_of_fp32_matmul": round(flops / tl / 1e9 / mm["fp32"], 3),
        "engine_pipeline": tms[-1], "min_frame_cosine_vs_loop_fp32": round(cos, 5),
        "meets_target": {**ok, "overall": all(ok.values())},
    }
    print(name, res["speedup"], res["min_frame_cosine_vs_loop_fp32"], flush=True)
    del enc, ref_enc
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=ENCODERS)
    ap.add_argument("--size", choices=["large", "tiny"], default="large")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--clips", type=int, default=None, help="HuBERT clips [CPU 8, GPU 256]")
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--max-seconds", type=float, default=6.0)
    ap.add_argument("--vision-clips", type=int, default=None, help="face clips for the vision encoders [CPU 4, GPU 64]")
    ap.add_argument("--frames", type=int, default=None, help="face frames per clip [CPU 16, GPU 64]")
    ap.add_argument("--profile", action="store_true", help="torch.profiler tables -> metrics/bench_extract_profile.txt")
    ap.add_argument("--out", type=Path, default=Path("metrics/bench_extract.json"))
    args = ap.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.clips = args.clips or (256 if gpu else 8)
    args.vision_clips = args.vision_clips or (64 if gpu else 4)
    args.frames = args.frames or (64 if gpu else 16)
    mm = {"fp32": matmul_gflops(args.device, torch.float32), "bf16": matmul_gflops(args.device, torch.bfloat16)}
    prof: list[str] = []
    results = {}
    with tempfile.TemporaryDirectory() as td:
        for name in args.encoders:
            results[name] = bench_one(name, args, mm, Path(td), prof)
    dtype = torch.bfloat16 if any(r["engine_compute_dtype"] == "bfloat16" for r in results.values()) else torch.float32
    _, _, rule = target_for(args.device, dtype)
    result = {
        "benchmark": "extract", "command": command("benchmarks.extract", argv), "environment": environment(args.device),
        "model": f"{args.size} architectures, random weights; synthetic audio and random face pixels (a speed "
                 "benchmark, not a result on any corpus)",
        "dtype_requested": args.dtype, "matmul_gflops": {k: round(v, 1) for k, v in mm.items()},
        "target": f"{rule}; every encoder's stored features within cosine {COSINE_TARGET} of the fp32 loop per frame",
        "encoders": results,
        "meets_target": {**{n: r["meets_target"]["overall"] for n, r in results.items()},
                         "overall": all(r["meets_target"]["overall"] for r in results.values())},
    }
    if prof:
        path = args.out.with_name(args.out.stem + "_profile.txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n\n".join(prof) + "\n", encoding="utf-8")
        result["profile"] = str(path)
    return write_result(result, args.out)


if __name__ == "__main__":
    main()
