"""Benchmark: face boxes from per-frame detection against detection on every k-th frame with the boxes
interpolated between (`crop.detect_every`), side by side on the same clips in one run.

For each clip, both paths run back to back (per-frame first, then every k-th frame, alternating the order
from clip to clip), each one what `esva crop` does to a clip: detect (`detect_tracked`), fill the no-face
frames, smooth and warp the crops (`crop_frames`). Reported: seconds of each path (detection and warping
apart), the ratio, detector calls per frame, and the IoU of the final (smoothed) boxes of the two paths
on every frame: min, mean, 1st percentile, the share of frames below 0.9 and of clips with any, and the
frames per second of each path. The target: the every-k path at least 3x as many frames per second as
per-frame detection, with a mean IoU of at least 0.9 against the per-frame boxes; `meets_target` gives
the verdict per k and `overall` is that of the default k (crop.detect_every). As a
yardstick, per-frame detection is also compared with itself run on the frames shifted by 3 pixels (a
different scan grid of the Haar cascade: how far per-frame detection agrees with itself).
The clips are the demo's: synthetic clips rendered in-process at the demo's size, difficulty and length
(2-5 s at 25 fps), or the clips of a decoded store (`--decoded data/interim/decoded.zarr`).
The store writes of `esva crop` are the same for both paths and are not timed here. Writes
metrics/bench_crop.json.

    python -m benchmarks.crop                      # 16 synthetic clips, k = 5 (the default of crop.detect_every)
    python -m benchmarks.crop --every 3 5 8        # several k side by side
    python -m benchmarks.crop --decoded data/interim/decoded.zarr --clips 60
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.report import command, cpu_name, environment, write_result

from esva import LABELS
from esva.config import CropConfig, SynthConfig
from esva.media.faces import box_iou, crop_frames, detect_tracked, fill_missing, make_detector

SPEEDUP_TARGET = 3.0  # frames per second of the every-k path over per-frame detection
IOU_TARGET = 0.9  # mean IoU of its final boxes against the per-frame ones
TARGET = (f"every-k path >= {SPEEDUP_TARGET:g}x per-frame detection (frames per second) with mean IoU >= "
          f"{IOU_TARGET:g} against per-frame boxes")


def synthetic_clips(n: int, seed: int = 7) -> list[np.ndarray]:
    """n demo clips (320x240, 2-5 s at 25 fps, the demo's difficulty), rendered without encoding."""
    from esva.data.synthetic import mouth_track, render_frames, sample_spec, synth_audio

    cfg = SynthConfig(seed=seed)
    out = []
    for i in range(n):
        spec = sample_spec(i, LABELS[i % len(LABELS)], "train", cfg)
        rng = np.random.default_rng([cfg.seed, i, 1])
        _, env = synth_audio(spec, cfg.sample_rate, rng)
        n_frames = int(round(spec.duration_s * cfg.fps))
        mouth = mouth_track(env, cfg.sample_rate, cfg.fps, n_frames, spec.offset_ms)
        out.append(render_frames(spec, mouth, cfg.width, cfg.height, rng))
    return out


def store_clips(path: Path, n: int) -> list[np.ndarray]:
    from esva.store import open as open_store

    src = open_store(path)
    return [src.read(c, ["frames"])["frames"] for c in src.ids()[:n]]


def store_corpus(path: Path) -> str:
    from esva.store import open as open_store

    return str(open_store(path).attrs.get("corpus", "unknown"))


def one_path(det, frames: np.ndarray, every: int, cfg: CropConfig) -> dict:
    t0 = time.perf_counter()
    dets, how = detect_tracked(det, frames, every)
    t1 = time.perf_counter()
    filled, _ = fill_missing(dets)
    _, boxes = crop_frames(frames, filled, cfg.size, cfg.margin, cfg.smooth)
    t2 = time.perf_counter()
    return {"detect_s": t1 - t0, "crop_s": t2 - t1, "boxes": boxes, "detector_frames": int((how == 1).sum()),
            "interpolated": int((how == 2).sum())}


def iou_stats(ious: list[np.ndarray]) -> dict:
    allv = np.concatenate(ious)
    return {"min": round(float(allv.min()), 4), "mean": round(float(allv.mean()), 4),
            "p1": round(float(np.percentile(allv, 1)), 4), "frames_below_0.9": round(float((allv < 0.9).mean()), 5),
            "clips_with_a_frame_below_0.9": int(sum(float(i.min()) < 0.9 for i in ious))}


def run(clips: list[np.ndarray], every: list[int], cfg: CropConfig, self_check: bool = True) -> dict:
    det = make_detector(cfg.backend, cfg.device)
    ref_t = {"detect_s": 0.0, "crop_s": 0.0}
    res = {k: {"detect_s": 0.0, "crop_s": 0.0, "detector_frames": 0, "interpolated": 0, "ious": []} for k in every}
    shifted = []
    for i, frames in enumerate(clips):
        runs = {}
        order = [1, *every] if i % 2 == 0 else [*every, 1]  # alternate which path runs first
        for k in order:
            runs[k] = one_path(det, frames, k, cfg)
        ref = runs[1]
        ref_t["detect_s"] += ref["detect_s"]
        ref_t["crop_s"] += ref["crop_s"]
        for k in every:
            r = res[k]
            for f in ("detect_s", "crop_s", "detector_frames", "interpolated"):
                r[f] += runs[k][f]
            r["ious"].append(box_iou(ref["boxes"], runs[k]["boxes"]))
        if self_check:  # per-frame detection on the frames moved by 3 pixels: its own reproducibility
            d = 3
            dets, _ = detect_tracked(det, np.ascontiguousarray(frames[:, d:, d:]), 1)
            for x in dets:
                if x is not None:
                    x.box = x.box + d
            filled, _ = fill_missing(dets)
            _, boxes = crop_frames(frames[:, :8, :8], filled, 8, cfg.margin, cfg.smooth)
            shifted.append(box_iou(ref["boxes"], boxes))
    n_frames = sum(len(c) for c in clips)
    per_frame_s = ref_t["detect_s"] + ref_t["crop_s"]
    out = {"clips": len(clips), "frames": n_frames, "backend": det.name, "smooth": cfg.smooth, "size": cfg.size,
           "per_frame": {"seconds": round(per_frame_s, 3), "detect_s": round(ref_t["detect_s"], 3),
                         "crop_s": round(ref_t["crop_s"], 3), "frames_per_second": round(n_frames / per_frame_s, 2)},
           "every": {}}
    for k in every:
        r = res[k]
        s = r["detect_s"] + r["crop_s"]
        out["every"][str(k)] = {
            "seconds": round(s, 3), "detect_s": round(r["detect_s"], 3), "crop_s": round(r["crop_s"], 3),
            "frames_per_second": round(n_frames / s, 2), "speedup": round(per_frame_s / s, 3), "detect_speedup": round(ref_t["detect_s"] / r["detect_s"], 3),
            "detector_calls_per_frame": round(r["detector_frames"] / n_frames, 4),
            "interpolated_share": round(r["interpolated"] / n_frames, 4),
            "iou_vs_per_frame": iou_stats(r["ious"]),
        }
    if self_check:
        out["per_frame_vs_itself_shifted_3px"] = iou_stats(shifted)
    return out


def verdicts(res: dict, default_k: int) -> dict:
    """meets_target per k (its speedup, i.e. its frames per second over per-frame detection's, and its mean
    IoU against the per-frame boxes) and `overall`: the default k's verdict (False when it was not run)."""
    out = {}
    for k, r in res["every"].items():
        out[k] = bool(r["speedup"] >= SPEEDUP_TARGET and r["iou_vs_per_frame"]["mean"] >= IOU_TARGET)
    out["overall"] = out.get(str(default_k), False)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=int, nargs="+", default=[CropConfig().detect_every])
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--decoded", type=Path, default=None, help="a decoded store (esva decode) instead of rendered clips")
    ap.add_argument("--no-self-check", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("metrics/bench_crop.json"))
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    import cv2

    cv2.setNumThreads(1)  # as `esva crop`'s workers: one thread each
    cfg = CropConfig()
    clips = store_clips(args.decoded, args.clips) if args.decoded else synthetic_clips(args.clips)
    every = [k for k in args.every if k > 1]
    if not every:
        raise SystemExit(f"--every needs at least one k > 1 (k = 1 is the per-frame baseline), got {args.every}")
    default_k = cfg.detect_every
    result = {"benchmark": "crop", "command": command("benchmarks.crop", argv), "environment": environment("cpu"),
              "target": TARGET, "default_k": default_k, "cpu": cpu_name(), "machine": platform.machine(),
              "clips_from": str(args.decoded) if args.decoded else "synthetic (rendered, demo settings)",
              "corpus": store_corpus(args.decoded) if args.decoded else "synthetic",
              "note": "seconds are one thread, both paths side by side on the same clips; store writes not included",
              **run(clips, every, cfg, not args.no_self_check)}
    result["meets_target"] = verdicts(result, default_k)
    if str(default_k) not in result["every"]:
        result["meets_target_note"] = f"the default k ({default_k}) was not run (--every {' '.join(map(str, every))})"
    return write_result(result, args.out)


if __name__ == "__main__":
    main()
