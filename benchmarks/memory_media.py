"""Peak memory of the media stages (`esva decode`, `esva crop`, `esva extract ENCODER`) at N and factor x N clips.

The media stages stream clip by clip (a bounded window of clips in flight, each clip written to its Zarr
store as it is done), so their memory should not grow with the corpus. This benchmark checks that on a
synthetic corpus built per size by the pipeline's own commands, as dvc.yaml chains them:

    esva synth          (synth.n_clips = the size, no condition clips)          not measured against the target
    esva ingest-source  synthetic --adapter synthetic --root ...                 not measured against the target
    esva ingest         --from ...  (data.sources pointed at that root)          not measured against the target
    esva decode         measured
    esva crop           measured
    esva extract ENC    measured, per encoder (default hubert and mae; the params' checkpoints, tiny by default,
                        written under each size's own --models folder, as the DVC stage writes them)
    esva featurize ENC  measured: the same encoders in one pass from the videos (decode and crop in worker
                        processes), into stores of its own (--no-featurize leaves it out)

each as a subprocess under `/usr/bin/time -v` (else `os.wait4`), so the peak RSS is that command's alone
(benchmarks.memory.measure: the largest of the command's process and any child it waited for, e.g. one
ffmpeg; the 1 s timeline sums the process tree). Every measured command runs with the params as they are
(decode.workers, crop.workers, batch budgets), into fresh stores.
Target: per command (featurize included), peak RSS at factor x N <= 1.1x that at N. Writes metrics/bench_memory_media.json.
Synthetic clips (esva's generator, 2-5 s at 320x240, 25 fps by default): a memory benchmark, not a result on
any corpus.

    python -m benchmarks.memory_media                          # N=24 and 2N=48 clips (~6 min on 2 cores)
    python -m benchmarks.memory_media --n 6 --encoders hubert  # a quick run
    python -m benchmarks.memory_media --encoders hubert mae videomae eva --keep
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from benchmarks.memory import esva, measure, time_v
from benchmarks.report import command, environment, write_result

ROOT = Path(__file__).resolve().parents[1]
RATIO_TARGET = 1.1
MARKER = "bench_memory_media_data.json"
GENERATOR = 1  # bump when the way the corpus is built changes, so kept corpora are rebuilt


def corpus_key(n: int, params: Path, overrides: list[str]) -> dict:
    return {"generator": GENERATOR, "n": n, "params": str(params), "overrides": list(overrides)}


def build_corpus(work: Path, n: int, params: Path, overrides: list[str], workers: int) -> dict:
    """synth -> ingest-source -> ingest into work (reused when work's marker matches); what was run and how long."""
    key = corpus_key(n, params, overrides)
    marker = work / MARKER
    if marker.exists():
        try:
            if json.loads(marker.read_text())["key"] == key and (work / "manifest.parquet").exists():
                return {**json.loads(marker.read_text())["info"], "reused": True}
        except (OSError, ValueError, KeyError):
            pass
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    raw = (work / "raw").resolve()
    sets = [x for o in overrides for x in ("--set", o)]
    source = f"data.sources=[{{name: synthetic, adapter: synthetic, root: {json.dumps(str(raw))}}}]"
    common = ["--params", str(params), "--metrics", str(work / "metrics"), *sets]
    steps = {
        "synth": [esva(), "synth", *common, "--set", f"synth.n_clips={n}", "--set", "synth.conditions={}",
                  "--set", f"synth.workers={workers}", "--out", str(raw)],
        "ingest-source": [esva(), "ingest-source", "synthetic", "--adapter", "synthetic", "--root", str(raw),
                          "--out", str(work / "sources" / "synthetic.parquet"), *common],
        "ingest": [esva(), "ingest", "--from", str(work / "sources"), "--out", str(work / "manifest.parquet"),
                   *common, "--set", source],
    }
    info: dict = {"clips": n, "steps": {}}
    t0 = time.perf_counter()
    for name, cmd in steps.items():
        print(f"[{n} clips] esva {name} (building the corpus; not measured against the target)", file=sys.stderr)
        rec = measure(cmd, work / "logs" / f"{name}.log")
        info["steps"][name] = {k: rec[k] for k in ("peak_rss_mb", "seconds", "command", "failed", "log_tail") if k in rec}
        if rec.get("failed"):
            info["failed"] = name
            return {**info, "reused": False}
    info["build_seconds"] = round(time.perf_counter() - t0, 1)
    marker.write_text(json.dumps({"key": key, "info": info}, indent=2))
    return {**info, "reused": False}


def stage_report(work: Path, name: str) -> dict:
    try:
        rep = json.loads((work / "metrics" / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}
    keep = ("clips_in", "done", "skipped", "seconds", "frames", "audio_seconds", "batches", "batch_peak_mb")
    out = {k: rep[k] for k in keep if k in rep}
    pipe = rep.get("pipeline") or {}
    # extract: the forward's peak memory follows the largest padded batch, which encoder.batch_budget bounds;
    # a small corpus may not fill it (few clips within max_padding of each other), a larger one does
    for k in ("batches", "largest_batch_units", "padding_share"):
        if k in pipe:
            out[f"pipeline_{k}"] = pipe[k]
    return out


def run_size(work: Path, n: int, params: Path, overrides: list[str], encoders: list[str], workers: int,
             featurize: bool = True) -> dict:
    """Build (or reuse) the corpus, then measure decode, crop, each extract and (with `featurize`) `esva featurize`
    of the same encoders, into fresh stores."""
    corpus = build_corpus(work, n, params, overrides, workers)
    out: dict = {"clips": n, "corpus_build": corpus}
    if corpus.get("failed"):
        out["failed"] = f"esva {corpus['failed']} failed"
        return out
    for d in ("decoded.zarr", "faces.zarr", "features", "models", "metrics/skips"):
        shutil.rmtree(work / d, ignore_errors=True)
    sets = [x for o in overrides for x in ("--set", o)]
    common = ["--params", str(params), "--metrics", str(work / "metrics"), *sets]
    cmds = {
        "decode": [esva(), "decode", "--manifest", str(work / "manifest.parquet"), "--out", str(work / "decoded.zarr"),
                   *common],
        "crop": [esva(), "crop", "--decoded", str(work / "decoded.zarr"), "--out", str(work / "faces.zarr"), *common],
    }
    for enc in encoders:
        cmds[f"extract_{enc}"] = [esva(), "extract", enc, "--out", str(work / "features" / f"{enc}.zarr"),
                                  "--decoded", str(work / "decoded.zarr"), "--faces", str(work / "faces.zarr"),
                                  "--manifest", str(work / "manifest.parquet"), "--models", str(work / "models"),
                                  *common]
    media = [e for e in encoders if e != "text"]
    if featurize and media:  # the one-pass path into stores of its own (the models folder shared)
        shutil.rmtree(work / "featurize", ignore_errors=True)
        cmds["featurize"] = [esva(), "featurize", *media, "--manifest", str(work / "manifest.parquet"),
                             "--decoded", str(work / "featurize" / "decoded.zarr"),
                             "--faces", str(work / "featurize" / "faces.zarr"),
                             "--features", str(work / "featurize" / "features"), "--models", str(work / "models"),
                             *common]
    out["commands"] = {}
    for name, cmd in cmds.items():
        if name != "decode" and out["commands"].get("decode", {}).get("failed"):
            out["commands"][name] = {"skipped": "esva decode failed"}
            continue
        if name.startswith("extract_") and name != "extract_hubert" and out["commands"].get("crop", {}).get("failed"):
            out["commands"][name] = {"skipped": "esva crop failed"}
            continue
        print(f"[{n} clips] esva {name.replace('_', ' ', 1)}", file=sys.stderr)
        rec = measure(cmd, work / "logs" / f"{name}.log")
        rec["stage_report"] = stage_report(work, name)
        out["commands"][name] = rec
    dec = out["commands"]["decode"].get("stage_report", {})
    out["frames"], out["audio_seconds"] = dec.get("frames"), dec.get("audio_seconds")
    out["longest_clip_frames"] = longest_clip(work / "decoded.zarr")
    return out


def longest_clip(store: Path) -> int | None:
    """Frames of the longest decoded clip: what one clip in flight holds at most (the peak follows it)."""
    try:
        from esva.store import open as open_store

        src = open_store(store)
        return max(int(src.meta(c)["n_frames"]) for c in src.ids())
    except Exception:  # noqa: BLE001 - a record, not a check
        return None


def verdicts(small: dict, big: dict, names: list[str]) -> tuple[dict, dict, dict]:
    """Per command: the ratio of the peaks (factor x N over N) and whether it meets the target; `overall`."""
    ratios, peaks, meets = {}, {}, {}
    for name in names:
        a, b = small.get("commands", {}).get(name, {}), big.get("commands", {}).get(name, {})
        ok = "peak_rss_mb" in a and "peak_rss_mb" in b and not a.get("failed") and not b.get("failed")
        peaks[name] = {"N": a.get("peak_rss_mb"), "factor_N": b.get("peak_rss_mb")}
        ratios[name] = round(b["peak_rss_mb"] / a["peak_rss_mb"], 3) if ok else None
        meets[name] = bool(ok and ratios[name] <= RATIO_TARGET)
    meets["overall"] = bool(names) and all(meets[n] for n in names)
    return ratios, peaks, meets


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=24, help="clips in the smaller corpus (N; at least 6)")
    ap.add_argument("--factor", type=int, default=2, help="the larger corpus has factor x N clips")
    ap.add_argument("--encoders", nargs="+", default=["hubert", "mae"],
                    help="encoders to extract (hubert, mae, videomae, eva, text)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/esva-bench-memory-media"), help="corpora go to WORK/N<clips>")
    ap.add_argument("--keep", action="store_true", help="keep the corpora and stores (a later run with the same "
                    "sizes and params reuses the corpora); without it they are removed at the end")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="params override for every command, e.g. --set decode.workers=1 (repeatable)")
    ap.add_argument("--no-featurize", action="store_true", help="leave out `esva featurize` of the same encoders")
    ap.add_argument("--out", type=Path, default=Path("metrics/bench_memory_media.json"))
    args = ap.parse_args(argv)
    if args.factor < 2:
        raise SystemExit(f"--factor must be >= 2, got {args.factor}")
    if args.n < 6:
        raise SystemExit(f"--n must be at least 6 (synth.n_clips' minimum), got {args.n}")
    from esva.config import ENCODERS, load_params

    bad = [e for e in args.encoders if e not in ENCODERS]
    if bad:
        raise SystemExit(f"--encoders must be among {list(ENCODERS)}, got {bad}")

    p = load_params(args.params, tuple(args.overrides))
    params = args.params.resolve()
    factor_name = f"{args.factor}N"
    names = ["decode", "crop", *(f"extract_{e}" for e in args.encoders)]
    if not args.no_featurize and any(e != "text" for e in args.encoders):
        names.append("featurize")
    workers = min(p.synth.workers, os.cpu_count() or 1)
    result: dict = {
        "benchmark": "memory_media",
        "command": command("benchmarks.memory_media", argv),
        "environment": environment("cpu"),
        "target": f"per command, peak RSS at {factor_name} <= {RATIO_TARGET}x that at N",
        "corpus": "synthetic",
        "note": "synthetic clips written by esva's own generator (esva synth) and ingested by the pipeline's commands; "
                "a memory benchmark, not a result on any corpus",
        "rss_method": "/usr/bin/time -v" if time_v() else "os.wait4 ru_maxrss",
        "rss_scope": "the command's process or the largest child it waited for (not their sum); the timeline sums the tree",
        "units": "MB = 10^6 bytes",
        "n": args.n, "factor": args.factor, "encoders": args.encoders, "overrides": args.overrides,
        "settings": {"decode.workers": p.decode.workers, "crop.workers": p.crop.workers, "crop.backend": p.crop.backend,
                     "synth": {"width": p.synth.width, "height": p.synth.height, "fps": p.synth.fps,
                               "seconds": [p.synth.min_seconds, p.synth.max_seconds]},
                     **{f"features.{e}.checkpoint": getattr(p.features, e).checkpoint for e in args.encoders}},
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "sizes": {},
    }
    try:
        for name, n in (("N", args.n), (factor_name, args.n * args.factor)):
            result["sizes"][name] = run_size(args.work / f"N{n}", n, params, args.overrides, args.encoders, workers,
                                             not args.no_featurize)
    finally:
        if not args.keep:
            for n in (args.n, args.n * args.factor):
                shutil.rmtree(args.work / f"N{n}", ignore_errors=True)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    small, big = result["sizes"]["N"], result["sizes"][factor_name]
    result["ratios"], result["peak_rss_mb"], result["meets_target"] = verdicts(small, big, names)
    result["failed"] = bool(small.get("failed") or big.get("failed") or any(
        c.get("failed") or "skipped" in c for s in (small, big) for c in s.get("commands", {}).values()))
    return write_result(result, args.out)


if __name__ == "__main__":
    sys.exit(1 if main().get("failed") else 0)
