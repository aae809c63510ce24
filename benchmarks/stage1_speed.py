"""Benchmark: stage-1 training (`esva.train.stage1.train`) with the former code (the aligner's per-offset
loops and MSFE's one convolution per scale) against the current code, side by side in one process on the
same features.

The former code (kept here as `legacy`, verbatim from before the change) indexed a (B, 2K+1, T, D)
shifted view of the video one offset at a time in `shift_scores`, `Aligner.cross_clip_contrastive` and
`Aligner.shift_video`; autograd then zero-filled a whole (B, 2K+1, T, D) gradient per offset, 3 x (2K+1)
times a step. The current code computes the 2K+1 diagonals from block products (`band_cosines`), the
cross-clip scores in one product and the soft shift as a depthwise correlation. MSFE ran one convolution
per scale (kernels 3, 7 and 15) and summed them weighted (`MSFE.branchwise`); it now runs one convolution
with the weighted sum of the zero-padded kernels (`MSFE.fused_kernel`), eq. 1 exactly, at the cost of the
widest kernel alone.

Both paths train the same model from the same seed on the same clips, alternately (old, new, old, new...),
each run `--epochs` joint epochs after `--warmup` aligner-only epochs with early stopping off; reported:
seconds per run (median), the ratio, seconds per training step, and how far the two paths' loss curves and
final predictions differ (float tolerance, not a different result). glibc's mmap threshold is fixed as
`esva train` fixes it (`esva.train.stream.bound_heap`, 4 MiB); the new path is then timed alternately with
the thresholds at 128 KiB (glibc's initial value, esva's setting before), at esva's 4 MiB and at 32 MiB
(glibc's ceiling): what mapping every large block costs here.

Features: random, at the demo's sizes (64-d tiny encoders; HuBERT 50 Hz, MAE 25 fps, VideoMAE 12.5 Hz;
2-5 s clips; the demo's 168 training and 36 validation clips), or the stores of a run
(`--features data/features --manifest data/manifest.parquet`). Writes metrics/bench_stage1.json.

    python -m benchmarks.stage1_speed                   # demo sizes, random features
    python -m benchmarks.stage1_speed --repeats 1 --epochs 1 --warmup 1 --clips 48   # a quick run
    python -m benchmarks.stage1_speed --threads 1       # on a machine shared with other jobs
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.report import cpu_name, write_result

from esva import LABELS
from esva.config import AlignConfig, ContrastConfig, MsfeConfig, Params, TrainConfig
from esva.models import align as align_mod
from esva.models.msfe import MSFE
from esva.train import stage1
from esva.train.stream import bound_heap

USE = ("hubert", "mae", "videomae", "eva", "text")
DIMS = {"hubert": 64, "mae": 64, "videomae": 64, "eva": 64, "text": 384}
RATES = {"hubert": 50.0, "mae": 25.0, "videomae": 12.5, "eva": 0.0, "text": 0.0}


# ----------------------------------------------------------------------------- the former code, verbatim

class legacy:  # noqa: N801 - a namespace
    @staticmethod
    def shift_scores(a, v, ma, mv, k, window):
        t = a.shape[1]
        vs, ms = align_mod._shifted(v.to(a.dtype), mv, k, t)
        cos = torch.stack([(a * vs[:, j]).sum(-1) for j in range(vs.shape[1])], 1)
        w = (ms & ma[:, None, :]).to(a.dtype)
        dist = torch.sqrt((2.0 - 2.0 * cos).clamp_min(1e-8))
        count = w.sum(-1)
        c_global = (cos * w).sum(-1) / count.clamp_min(1.0)
        n_win = (t + window - 1) // window
        padt = n_win * window - t
        dw = F.pad(dist * w, (0, padt)).view(*dist.shape[:2], n_win, window).sum(-1)
        cw = F.pad(w, (0, padt)).view(*w.shape[:2], n_win, window).sum(-1)
        has = (cw > 0).to(a.dtype)
        d_local = ((dw / cw.clamp_min(1.0)) * has).sum(-1) / has.sum(-1).clamp_min(1.0)
        return d_local, c_global, count

    @staticmethod
    def cross_clip_contrastive(self, out, ma, mv, tau):
        pa, pv = out["pa"], out["pv"]
        b, t, _ = pa.shape
        vs, ms = align_mod._shifted(pv, mv, self.k, t)
        fa, wa = pa.reshape(b, -1), ma.to(pa.dtype)
        scores = []
        for j in range(vs.shape[1]):
            num = fa @ vs[:, j].reshape(b, -1).T
            cnt = wa @ ms[:, j].to(pa.dtype).T
            scores.append(num / cnt.clamp_min(1.0))
        s = torch.stack(scores, -1)
        best = self.temperature * torch.logsumexp(s / self.temperature, dim=-1)
        logits = best / tau
        target = torch.arange(b, device=pa.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

    @staticmethod
    def shift_video(v, mv, p, k, t):
        dt = torch.promote_types(v.dtype, p.dtype)
        vs, ms = align_mod._shifted((v * mv[..., None].to(v.dtype)).to(dt), mv, k, t)
        p = p.to(dt)
        num = sum(p[:, j, None, None] * vs[:, j] for j in range(vs.shape[1]))
        den = sum(p[:, j, None] * ms[:, j] for j in range(ms.shape[1]))
        out = num / den[..., None].clamp_min(1e-6)
        return out, den > 1e-3


    @staticmethod
    def msfe_forward(self, x, mask):
        if not self.enabled:
            return x
        m = mask[..., None].to(x.dtype)
        h = (self.inp(x) * m).transpose(1, 2)
        mixed = self.branchwise(h)  # one convolution per scale
        y = self.out(self.drop(self.act(mixed.transpose(1, 2))))
        return (x + y) * m


@contextlib.contextmanager
def legacy_aligner():
    """The former per-offset loops in place of the current aligner functions, and MSFE's convolution per
    scale in place of the fused one, for the `with` body."""
    cls = align_mod.Aligner
    saved = (align_mod.shift_scores, cls.__dict__["cross_clip_contrastive"], cls.__dict__["shift_video"],
             MSFE.__dict__["forward"])
    align_mod.shift_scores = legacy.shift_scores
    cls.cross_clip_contrastive = legacy.cross_clip_contrastive
    cls.shift_video = staticmethod(legacy.shift_video)
    MSFE.forward = legacy.msfe_forward
    try:
        yield
    finally:
        align_mod.shift_scores, cls.cross_clip_contrastive, cls.shift_video, MSFE.forward = saved


# ----------------------------------------------------------------------------- data

def random_features(n_train: int, n_val: int, seed: int = 0) -> stage1.FeatureData:
    """Clips of 2-5 s with random features at the demo's sizes, labels balanced over the six classes."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n_train + n_val):
        lab = i % len(LABELS)
        sec = float(rng.uniform(2.0, 5.0))
        feats = {n: rng.normal(0.1 * lab, 1.0, (int(sec * RATES[n]), DIMS[n])).astype(np.float32)
                 for n in ("hubert", "mae", "videomae")}
        feats.update({n: rng.normal(0.1 * lab, 1.0, DIMS[n]).astype(np.float32) for n in ("eva", "text")})
        split = "train" if i < n_train else "val"
        clips.append(stage1.Clip(f"c{i:05d}", lab, split, float(rng.uniform(-200, 200)), feats))
    return stage1.FeatureData(clips, dict(DIMS), dict(RATES), "synthetic")


def store_features(features: Path, manifest: Path, use) -> stage1.FeatureData:
    from esva.data.manifest import read_manifest

    df = read_manifest(manifest)
    return stage1.load_features(df, {n: Path(features) / f"{n}.zarr" for n in use}, use)


# ----------------------------------------------------------------------------- runs

def configs(p: Params, epochs: int, warmup: int):
    train = p.train.model_copy(update={"epochs": epochs, "patience": epochs + 1, "checkpoint_every": 0})
    return p.msfe, p.contrast, p.align.model_copy(update={"warmup_epochs": warmup}), train


def one_run(data, use, cfgs, legacy_code: bool) -> tuple[float, stage1.TrainResult, int]:
    ctx = legacy_aligner() if legacy_code else contextlib.nullcontext()
    with ctx:
        t = time.perf_counter()
        res = stage1.train(data, use, *cfgs)
        wall = time.perf_counter() - t
    n_train = len(data.split("train"))
    bs = cfgs[3].batch_size
    steps_per_epoch = sum(1 for i in range(0, n_train, bs) if min(bs, n_train - i) >= 2)
    return wall, res, steps_per_epoch * len(res.history)


def compare(r_old: stage1.TrainResult, r_new: stage1.TrainResult, data, use) -> dict:
    keys = [k for k in r_old.history[0] if k.startswith(("train_", "val_loss"))]
    rel = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-9) for a, b in zip(r_old.history, r_new.history) for k in keys)
    clips = data.split("val")
    p_old = stage1.predict(r_old.model, clips, use, 32, "cpu")
    p_new = stage1.predict(r_new.model, clips, use, 32, "cpu")
    return {"max_relative_loss_difference": float(rel),
            "max_abs_probability_difference": float(np.abs(p_old["probs"] - p_new["probs"]).max()),
            "same_argmax_share": float((p_old["probs"].argmax(-1) == p_new["probs"].argmax(-1)).mean()),
            "max_abs_tau_difference_frames": float(np.abs(p_old["tau_frames"] - p_new["tau_frames"]).max()),
            "epochs": len(r_old.history)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=204, help="training + validation clips (the demo: 168 + 36)")
    ap.add_argument("--epochs", type=int, default=2, help="joint epochs per run (after --warmup)")
    ap.add_argument("--warmup", type=int, default=1, help="aligner-only epochs per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--features", type=Path, default=None, help="a run's feature stores instead of random ones")
    ap.add_argument("--manifest", type=Path, default=Path("data/manifest.parquet"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's); 1 keeps a shared "
                    "machine's other load from stalling the threads of each operation")
    ap.add_argument("--out", type=Path, default=Path("metrics/bench_stage1.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from esva.config import load_params

    p = load_params(args.params if args.params.exists() else None, [])
    use = tuple(p.features.use) if args.features else USE
    bounded = bound_heap()  # as esva train (load_features) does
    if args.features:
        data = store_features(args.features, args.manifest, use)
    else:
        n_val = max(len(LABELS), round(args.clips * 36 / 204))
        data = random_features(args.clips - n_val, n_val)
    cfgs = configs(p, args.epochs, args.warmup)
    one_run(data, use, cfgs, False)  # warm: imports, the stores' cache
    old, new, steps = [], [], 0
    r_old = r_new = None
    for _ in range(args.repeats):
        w, r_old, steps = one_run(data, use, cfgs, True)
        old.append(w)
        w, r_new, _ = one_run(data, use, cfgs, False)
        new.append(w)
    small, bnd, big = [], [], []
    if bounded:  # the new path, alternately at 128 KiB (glibc's initial thresholds), esva's 4 MiB and 32 MiB (the ceiling)
        import ctypes

        from esva.train.stream import HEAP_MMAP_THRESHOLD, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD

        libc = ctypes.CDLL(None)
        for _ in range(args.repeats):
            for threshold, into in ((128 << 10, small), (HEAP_MMAP_THRESHOLD, bnd), (32 << 20, big)):
                libc.mallopt(M_MMAP_THRESHOLD, threshold)
                libc.mallopt(M_TRIM_THRESHOLD, threshold)
                into.append(one_run(data, use, cfgs, False)[0])
        bound_heap()  # back to esva's setting
    mo, mn = statistics.median(old), statistics.median(new)
    result = {
        "cpu": cpu_name(), "machine": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "features": str(args.features) if args.features else "random, demo sizes",
        "clips": {"train": len(data.split("train")), "val": len(data.split("val"))},
        "use": list(use), "batch_size": cfgs[3].batch_size, "warmup_epochs": args.warmup, "joint_epochs": args.epochs,
        "steps_per_run": steps, "repeats": args.repeats, "allocator_bounded": bool(bounded),
        "legacy_seconds": [round(x, 3) for x in old], "current_seconds": [round(x, 3) for x in new],
        "legacy_seconds_per_step": round(mo / steps, 4), "current_seconds_per_step": round(mn / steps, 4),
        "speedup": round(mo / mn, 3),
        "agreement": compare(r_old, r_new, data, use),
        "note": "one process, runs alternated; seconds include each epoch's validation pass",
        "target": "the current stage-1 code no slower than the former (speedup >= 1), same training within float tolerance",
        "meets_target": bool(mo / mn >= 1.0),
    }
    if big:
        result["allocator"] = {"esva_threshold_bytes": HEAP_MMAP_THRESHOLD,
                               "current_seconds_threshold_128KiB": [round(x, 3) for x in small],
                               "current_seconds_threshold_esva": [round(x, 3) for x in bnd],
                               "current_seconds_threshold_32MiB": [round(x, 3) for x in big],
                               "cost_ratio_128KiB_vs_32MiB": round(statistics.median(small) / statistics.median(big), 3),
                               "cost_ratio_esva_vs_32MiB": round(statistics.median(bnd) / statistics.median(big), 3)}
    return write_result(result, args.out)


if __name__ == "__main__":
    main()
