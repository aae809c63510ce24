"""The `paper` profile's encoders at their real sizes, through esva's own loading and extraction code.

Each architecture is built at the published size with random weights (no hub access here), saved
with save_pretrained into a local directory, and then loaded exactly as a user's local checkpoint is:
`esva.encoders.load_encoder` (config and safetensors checks) and `run_extraction` into a Zarr store.
Reports parameters, throughput, peak accelerator memory and the compute dtype per encoder, and
writes metrics/bench_paper_sizes.json. Meant for a GPU; `--size tiny` is a quick CPU smoke run.

    python -m benchmarks.paper_sizes --clips 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Blip2VisionConfig, Blip2VisionModel, ViTMAEConfig, ViTMAEModel, VideoMAEConfig, VideoMAEModel

from benchmarks.extract import clips as audio_clips
from benchmarks.extract import large_config as hubert_large
from esva.config import EvaFeatures, HubertFeatures, MaeFeatures, VideoMaeFeatures
from esva.encoders import eva, hubert, load_encoder, mae, videomae
from esva.encoders.engine import feature_fields, run_extraction
from esva.store import RaggedWriter
from esva.store import open as open_store

PAPER = {
    # name: (builder of the real-size model, features config class, what the paper profile names)
    "hubert": (lambda: __import__("transformers").HubertModel(hubert_large()), HubertFeatures, hubert.PAPER_CHECKPOINT),
    "mae": (lambda: ViTMAEModel(ViTMAEConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                             intermediate_size=4096, image_size=224, patch_size=16, mask_ratio=0.0)),
            MaeFeatures, mae.PAPER_CHECKPOINT),
    "videomae": (lambda: VideoMAEModel(VideoMAEConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                                      intermediate_size=4096, image_size=224, patch_size=16,
                                                      num_frames=16, tubelet_size=2, use_mean_pooling=False)),
                 VideoMaeFeatures, videomae.PAPER_CHECKPOINT),
    "eva": (lambda: Blip2VisionModel(Blip2VisionConfig(hidden_size=1408, num_hidden_layers=39, num_attention_heads=16,
                                                       intermediate_size=6144, image_size=224, patch_size=14)),
            EvaFeatures, eva.PAPER_CHECKPOINT),
}
TINY = {"hubert": hubert.tiny_config, "mae": mae.tiny_config, "videomae": videomae.tiny_config, "eva": eva.tiny_config}
CLASSES = {"hubert": "HubertModel", "mae": ViTMAEModel, "videomae": VideoMAEModel, "eva": Blip2VisionModel}


def _build(name: str, size: str):
    if size == "paper":
        return PAPER[name][0]()
    cls = CLASSES[name]
    if isinstance(cls, str):
        cls = getattr(__import__("transformers"), cls)
    return cls(TINY[name]())


def _faces(n: int, frames: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"clip{i:02d}": rng.integers(0, 255, (frames, 224, 224, 3), dtype=np.uint8) for i in range(n)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=["paper", "tiny"], default="paper")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--frames", type=int, default=100, help="face frames per clip (4 s at 25 fps)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--encoders", default="hubert,mae,videomae,eva")
    ap.add_argument("--out", type=Path, default=Path("metrics/bench_paper_sizes.json"))
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    results = {"benchmark": "paper_sizes", "size": args.size, "device": args.device,
               "gpu": torch.cuda.get_device_name() if cuda else None, "torch": torch.__version__,
               "weights": "random (real architecture sizes); throughput only, no accuracy", "encoders": {}}
    audio = audio_clips(args.clips, 2.0, 8.0)
    faces = _faces(args.clips, args.frames)
    for name in args.encoders.split(","):
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as td:
            td = Path(td)
            model = _build(name, args.size)
            n_params = sum(p.numel() for p in model.parameters())
            model.save_pretrained(td / "ckpt", safe_serialization=True)
            del model
            cfg_cls = PAPER[name][1]
            budget = {"hubert": 16000 * 120, "mae": 512, "videomae": 32, "eva": 64}[name]
            cfg = cfg_cls(checkpoint=str(td / "ckpt"), device=args.device, dtype="auto", batch_budget=budget)
            enc, prov = load_encoder(name, cfg, td / "models")
            enc.budget = budget
            if name == "mae":
                enc.frame_rate = 25.0
            elif name == "videomae":
                enc.frame_rate = 12.5
            data = audio if name == "hubert" else faces
            lengths = {c: len(x) for c, x in data.items()}
            # warm-up batch, then the timed run
            with RaggedWriter(td / "warm.zarr", feature_fields(enc.layers, enc.dim), {}, "w") as w:
                first = next(iter(data))
                run_extraction(enc, {first: lengths[first]}, data.__getitem__, w, "pad")
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            with RaggedWriter(td / "f.zarr", feature_fields(enc.layers, enc.dim), {}, "f") as w:
                done, _ = run_extraction(enc, lengths, data.__getitem__, w, "pad")
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            store = open_store(td / "f.zarr")
            first = store.read(store.ids()[0])[enc.layers[0]]
            units = sum(lengths.values())
            results["encoders"][name] = {
                "paper_checkpoint": PAPER[name][2], "params_m": round(n_params / 1e6, 1), "dim": enc.dim,
                "compute_dtype": str(enc.dtype).replace("torch.", ""), "clips": done, "seconds": round(dt, 2),
                "clips_per_s": round(done / dt, 2),
                ("audio_seconds_per_s" if name == "hubert" else "frames_per_s"):
                    round((units / 16000 if name == "hubert" else units) / dt, 1),
                "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if cuda else None,
                "frame_feature_shape": list(first.shape), "finite": bool(np.isfinite(first).all()),
            }
            print(name, json.dumps(results["encoders"][name]), flush=True)
            del enc
            if cuda:
                torch.cuda.empty_cache()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
        fh.write("\n")
    return results


if __name__ == "__main__":
    main()
