"""Benchmark: `esva featurize` (decode and crop in worker processes beside the encoders, one pass) against the
stage commands one after the other (`esva decode`, `esva crop`, `esva extract hubert`, then
`esva extract mae videomae eva` in their shared pass), side by side on the same clips in one run.

Both paths are the project's own code (pipeline.stages.featurize.run against decode.run, crop.run, extract.run
and extract.run_shared), each writing fresh stores into a folder of its own; the encoders' tiny checkpoints
are built once before the timed runs. Each repeat runs both paths, the order alternating from repeat to
repeat; the figures are medians over the repeats. Reported: seconds and clips/s of each path, the ratio,
featurize's overlap (the busy seconds of its decode-and-crop workers and of its encoders over its wall
time: above 1.0 they ran at the same time), and whether the two paths wrote the same stores (decoded and
face stores equal clip for clip, features within the float rounding of another batch packing).

The clips are synthetic (the project's generator, as benchmarks/decode.py) and the encoders those of the
params file (the demo's tiny, randomly initialised ones unless --params says otherwise): on a CPU the
encoders are a small share of the work, so this measures the pass's overhead and overlap, not a GPU's gain.

Target: featurize no slower than the stages one after the other (ratio >= 1.0), with the same stores.
Writes metrics/bench_featurize.json.

    python -m benchmarks.featurize                 # 24 synthetic clips, 2 repeats
    python -m benchmarks.featurize --clips 48 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.decode import make_clips
from benchmarks.report import command, environment, write_result

ROOT = Path(__file__).resolve().parents[1]
ENCODERS = ["hubert", "mae", "videomae", "eva"]
VISION = ["mae", "videomae", "eva"]


def run_stages(p, d: Path, models: Path) -> float:
    from pipeline.stages import crop, decode, extract

    t0 = time.perf_counter()
    decode.run(p.decode, d / "m.parquet", d / "decoded.zarr", None)
    crop.run(p.crop, d / "decoded.zarr", d / "faces.zarr", None)
    extract.run("hubert", p.features.hubert, d / "features" / "hubert.zarr", decoded=d / "decoded.zarr",
                faces=d / "faces.zarr", models_dir=models, metrics_dir=None)
    extract.run_shared(VISION, {e: getattr(p.features, e) for e in VISION},
                       {e: d / "features" / f"{e}.zarr" for e in VISION}, faces=d / "faces.zarr", models_dir=models,
                       metrics_dir=None)
    return time.perf_counter() - t0


def run_featurize(p, d: Path, models: Path, workers: int) -> tuple[float, dict]:
    from pipeline.stages import featurize

    t0 = time.perf_counter()
    res = featurize.run(p, ENCODERS, manifest=d / "m.parquet", decoded=d / "decoded.zarr", faces=d / "faces.zarr",
                        features=d / "features", models_dir=models, metrics_dir=None, workers=workers)
    return time.perf_counter() - t0, res


def same_stores(a: Path, b: Path) -> dict:
    """Decoded and face stores equal clip for clip; features: same digests, largest difference per encoder."""
    from esva.store import open as open_store

    out: dict = {"media_equal": True, "feature_digests_equal": True, "feature_max_abs_diff": {}}
    for name in ("decoded.zarr", "faces.zarr"):
        sa, sb = open_store(a / name), open_store(b / name)
        if sorted(sa.ids()) != sorted(sb.ids()):
            out["media_equal"] = False
            continue
        for c in sa.ids():
            xa, xb = sa.read(c), sb.read(c)
            if sa.digest(c) != sb.digest(c) or any(not np.array_equal(xa[f], xb[f]) for f in xa):
                out["media_equal"] = False
    for e in ENCODERS:
        sa, sb = open_store(a / "features" / f"{e}.zarr"), open_store(b / "features" / f"{e}.zarr")
        if sorted(sa.ids()) != sorted(sb.ids()) or any(sa.digest(c) != sb.digest(c) for c in sa.ids()):
            out["feature_digests_equal"] = False
        worst = 0.0
        for c in set(sa.ids()) & set(sb.ids()):
            xa, xb = sa.read(c), sb.read(c)
            worst = max([worst] + [float(np.abs(xa[f].astype(np.float32) - xb[f].astype(np.float32)).max())
                                   for f in xa if xa[f].shape == xb[f].shape])
        out["feature_max_abs_diff"][e] = round(worst, 6)
    return out


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=2, help="both paths this many times, order alternating; medians")
    ap.add_argument("--workers", type=int, default=None,
                    help="featurize's decode-and-crop processes [default: max(decode.workers, crop.workers)]")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="synth, decode, crop and features")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="params override, e.g. --set synth.max_seconds=2.0 (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("metrics/bench_featurize.json"))
    args = ap.parse_args(argv)
    if args.clips < 1 or args.repeats < 1 or (args.workers is not None and args.workers < 1):
        raise SystemExit(f"--clips, --repeats and --workers must be >= 1, got {args.clips}, {args.repeats}, {args.workers}")

    from esva.config import IngestConfig, Source, load_params
    from pipeline.stages import ingest

    p = load_params(args.params, tuple(args.overrides))
    workers = args.workers or max(p.decode.workers, p.crop.workers)
    cores = os.cpu_count() or 1
    load_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="esva-bench-featurize-") as td:
        work = Path(td)
        _, synth_info = make_clips(args.params, args.overrides, args.clips, work / "raw", min(workers, cores))
        ingest.run(IngestConfig(), (Source(name="synthetic", adapter="synthetic", root=str(work / "raw")),),
                   work / "m.parquet", None)
        models = work / "models"
        warm = work / "warm"  # the tiny checkpoints, the ffmpeg binary and the files in the page cache
        warm.mkdir()
        shutil.copy(work / "m.parquet", warm / "m.parquet")
        run_stages(p, warm, models)
        shutil.rmtree(warm)
        seconds: dict[str, list[float]] = {"stages": [], "featurize": []}
        overlap, last = [], {}
        for r in range(args.repeats):
            order = ("featurize", "stages") if r % 2 == 0 else ("stages", "featurize")
            for name in order:
                d = work / f"{name}-{r}"
                d.mkdir()
                shutil.copy(work / "m.parquet", d / "m.parquet")
                if name == "stages":
                    seconds[name].append(run_stages(p, d, models))
                else:
                    s, res = run_featurize(p, d, models, workers)
                    seconds[name].append(s)
                    overlap.append(res["overlap"])
                last[name] = d
        check = same_stores(last["stages"], last["featurize"])
    med = {k: statistics.median(v) for k, v in seconds.items()}
    ratio = med["stages"] / med["featurize"]
    same = check["media_equal"] and check["feature_digests_equal"] and all(
        v <= 2e-2 for v in check["feature_max_abs_diff"].values())
    result = {
        "benchmark": "featurize",
        "command": command("benchmarks.featurize", argv),
        "environment": environment(p.features.hubert.device),
        "target": "esva featurize no slower than decode, crop and extract one after the other (ratio >= 1.0), "
                  "with the same stores",
        "meets_target": bool(ratio >= 1.0 and same),
        "corpus": "synthetic",
        "note": "synthetic clips, the params file's encoders (the demo's tiny random ones by default); both paths "
                "side by side in one process, order alternating per repeat; medians over repeats",
        "clips": args.clips, "repeats": args.repeats, "workers": workers, "cores": cores,
        "load_average_start": load_start, "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "ratio": round(ratio, 3),
        "stages": {"seconds": round(med["stages"], 2), "clips_per_second": round(args.clips / med["stages"], 3),
                   "seconds_runs": [round(x, 2) for x in seconds["stages"]]},
        "featurize": {"seconds": round(med["featurize"], 2), "clips_per_second": round(args.clips / med["featurize"], 3),
                      "seconds_runs": [round(x, 2) for x in seconds["featurize"]],
                      "overlap_runs": overlap},
        "same_stores": check, "synth": synth_info,
        "paths": {"stages": "decode.run, crop.run, extract.run(hubert), extract.run_shared(mae, videomae, eva): "
                            "what `dvc repro` runs for these stores, one after the other",
                  "featurize": f"featurize.run (workers={workers} processes decode and crop while the encoders run)"},
    }
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
