"""Benchmark: the extraction engine against the naive baseline MERTools uses, side by side in one run.

HuBERT-large's architecture (random weights, real size) on ~24 synthetic clips of 2-8 s:
- naive: one clip at a time, float32, all hidden states kept, one .npy per clip (MERTools' loop);
- engine: esva's run_extraction (length-bucketed batches under a sample budget, the dtype policy
  of `features.hubert.dtype`, float16 Zarr store).
Reports wall time, the ratio, achieved GFLOP/s (counted analytically from the config) and that as a
fraction of a plain torch matmul measured in the same process, and the fidelity of the engine's
stored features against the naive float32 ones. Writes metrics/bench_extract.json.

    python -m benchmarks.extract                  # the real size on this machine
    python -m benchmarks.extract --size tiny      # a quick smoke run
    python -m benchmarks.extract --device cuda    # on a GPU (bf16 where supported)
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import HubertConfig, HubertModel

from benchmarks.report import write_result

from esva.checkpoints import locate
from esva.config import HubertFeatures, SynthConfig
from esva.data.synthetic import sample_spec, synth_audio
from esva.encoders.engine import feature_fields, run_extraction
from esva.encoders.hubert import HubertEncoder, tiny_config
from esva.store import RaggedWriter
from esva.store import open as open_store


def large_config() -> HubertConfig:
    """HuBERT-large (hubert-large-ll60k / chinese-hubert-large) dimensions."""
    return HubertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
                        feat_proj_layer_norm=True, mask_time_prob=0.0)


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


def matmul_gflops(device: str, n: int = 2048, reps: int = 5) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
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
    cfg = SynthConfig(min_seconds=min_s, max_seconds=max_s, seed=seed)
    labels = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
    out = {}
    for i in range(n):
        spec = sample_spec(i, labels[i % 6], "test", cfg)
        out[f"clip{i:02d}"], _ = synth_audio(spec, 16000, np.random.default_rng([seed, i]))
    return out


def naive(model: HubertModel, audio: dict[str, np.ndarray], out_dir: Path, device: str) -> dict[str, np.ndarray]:
    """MERTools' loop: per clip, float32, output_hidden_states=True, np.save per clip."""
    feats = {}
    with torch.inference_mode():
        for cid, a in audio.items():
            x = torch.from_numpy(a)
            x = ((x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7))[None].to(device)
            out = model(x, output_hidden_states=True)  # all layers kept, as MERTools does
            last = out.last_hidden_state[0].float().cpu().numpy()  # the final (layer-normed) layer
            np.save(out_dir / f"{cid}.npy", last)
            feats[cid] = last
    return feats


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=["large", "tiny"], default="large")
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--max-seconds", type=float, default=8.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--budget-seconds", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=Path("metrics/bench_extract.json"))
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    cfg = large_config() if args.size == "large" else tiny_config()
    audio = clips(args.clips, args.min_seconds, args.max_seconds)
    total_samples = sum(len(a) for a in audio.values())
    flops = sum(hubert_flops(cfg, len(a)) for a in audio.values())
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        HubertModel(cfg).save_pretrained(td / "ckpt", safe_serialization=True)
        feat_cfg = HubertFeatures(checkpoint=str(td / "ckpt"), dtype=args.dtype, device=args.device,
                                  batch_budget=int(args.budget_seconds * 16000))
        enc = HubertEncoder(locate(td / "ckpt", None, "hubert"), feat_cfg)
        enc.budget = feat_cfg.batch_budget
        model = enc.model  # the same weights for both
        mm = matmul_gflops(args.device)
        # warm-up (allocator, kernels) on one short clip for both paths
        first = next(iter(audio))
        (td / "warm").mkdir()
        naive(model, {first: audio[first][:32000]}, td / "warm", args.device)
        (td / "naive").mkdir()
        _sync(args.device)
        t0 = time.perf_counter()
        ref = naive(model, audio, td / "naive", args.device)
        _sync(args.device)
        t_naive = time.perf_counter() - t0
        t0 = time.perf_counter()
        with RaggedWriter(td / "engine.zarr", feature_fields(enc.layers, enc.dim), {}, "bench") as w:
            done, _ = run_extraction(enc, {c: len(a) for c, a in audio.items()}, audio.__getitem__, w, "pad")
        _sync(args.device)
        t_engine = time.perf_counter() - t0
        store = open_store(td / "engine.zarr")
        cos = []
        for cid, r in ref.items():
            e = store.read(cid)["last"].astype(np.float32)
            num = (e * r).sum(-1)
            den = np.linalg.norm(e, axis=-1) * np.linalg.norm(r, axis=-1) + 1e-12
            cos.append(float((num / den).min()))
    result = {
        "benchmark": "extract", "model": f"hubert-{args.size} architecture, random weights",
        "device": args.device, "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "clips": len(audio), "audio_seconds": round(total_samples / 16000, 1),
        "engine_compute_dtype": str(enc.dtype).replace("torch.", ""), "engine_batch_budget_s": args.budget_seconds,
        "naive_seconds": round(t_naive, 2), "engine_seconds": round(t_engine, 2),
        "speedup": round(t_naive / t_engine, 3), "target_speedup": 3.0,
        "met_target": bool(t_naive / t_engine >= 3.0),
        "gflop_total": round(flops / 1e9, 1), "naive_gflops": round(flops / t_naive / 1e9, 1),
        "engine_gflops": round(flops / t_engine / 1e9, 1), "matmul_gflops": round(mm, 1),
        "engine_fraction_of_matmul": round(flops / t_engine / 1e9 / mm, 3),
        "naive_fraction_of_matmul": round(flops / t_naive / 1e9 / mm, 3),
        "min_frame_cosine_vs_naive_fp32": round(min(cos), 5),
    }
    return write_result(result, args.out)


if __name__ == "__main__":
    main()
