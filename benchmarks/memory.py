"""Peak memory of stage 1 (`esva train`) and of one stage-2 epoch (`esva tune`) at N and factor x N clips.

Stages 1 and 2 stream features from the Zarr stores through a cache bounded in bytes
(`train.feature_cache_mb`, `tune.feature_cache_mb`), so their memory should not grow with the corpus.
This benchmark checks that at the paper's feature sizes: it writes, per size, a manifest and five
feature stores of random features (HuBERT-large 1024-d at 50 Hz, MAE-large 1024-d at 25 fps,
VideoMAE-large 1024-d at 12.5 Hz, EVA ViT-g 1408-d one vector per clip, MiniLM 384-d tokens) in
exactly the layout and attrs `esva extract` writes (`feature_fields`, `RaggedWriter`), clips of
2-8 s drawn by the synthetic corpus's own sampler, then runs the real commands as subprocesses:

    esva lm     (the tiny base LLM, one epoch on the N set, reused for both sizes; not measured)
    esva train  (train.epochs=1 after align.warmup_epochs=1)
    esva tune   (tune.epochs=1, the emotion task only; includes the epoch's validation loss and generation)

each under `/usr/bin/time -v` (else `os.wait4`), so the peak RSS is that command's alone. The
target: peak RSS at factor x N at most 1.3x that at N, and under 8 GB (8000 MB), for both commands.
Writes metrics/bench_memory.json. Random features: a memory benchmark, not a result on any corpus.

Reading the numbers: the feature cache may hold up to feature_cache_mb (at N=300 the corpus is smaller
than the default 512 MiB, at 3000 it is not), so `ratios_less_cache_estimate` also gives the ratio with
that share taken out. Both commands fix glibc's mmap and trim thresholds in process
(`esva.train.stream.bound_heap`, recorded in `allocator`), so the peak follows the memory in use rather
than what glibc's heap keeps after large frees (which grew with the number of batches); `malloc_env`
records any MALLOC_* tunables set on top. `--repeats 3` reports medians of three runs.

    python -m benchmarks.memory                      # N=300 and 10N=3000 clips (~30 min on 2 idle cores, 5 GB disk)
    python -m benchmarks.memory --n 40 --factor 2    # a quick run
    python -m benchmarks.memory --keep               # keep the generated sets (reused by the next run)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from benchmarks.report import cpu_name, write_result

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = 2  # bump when the generated data change, so kept sets are rebuilt (2: EVA's stage-2 tokens)
MARKER = "bench_memory_data.json"
RATIO_TARGET = 1.3
RSS_LIMIT_MB = 8000.0  # 8 GB

# the paper profile's encoders: width, frames per second (None: not a time series)
DIMS = {"hubert": 1024, "mae": 1024, "videomae": 1024, "eva": 1408, "text": 384}
RATES = {"hubert": 50.0, "mae": 25.0, "videomae": 12.5, "eva": None, "text": None}
INPUT_RATES = {"hubert": 16000.0, "mae": 25.0, "videomae": 25.0, "eva": 25.0, "text": None}
FRAME_LEVEL = ("hubert", "mae", "videomae")  # what stages 1 and 2 stream through the cache
# EVA also stores Emotion-LLaMA's visual tokens for stage 2 (features.eva.tokens): the CLS and every patch token of
# one image; ViT-g at blip2-opt-2.7b's own 224 px has 16 x 16 = 256 patches (Emotion-LLaMA's 448 px: 1024)
EVA_PATCHES = 256


def layers_of(name: str) -> list[str]:
    return ["last", "cls", "patches"] if name == "eva" else ["last"]


# ----------------------------------------------------------------------------- the data

def _split_plan(n: int, seed: int) -> list[tuple[str, str]]:
    """Balanced labels; 70/15/15 train/val/test with at least one clip in each split and every
    label in train (stage 1 refuses a class without a training clip)."""
    from esva import LABELS

    if n < len(LABELS) + 2:
        raise SystemExit(f"--n must be at least {len(LABELS) + 2} (one training clip per label, a val and a test clip), got {n}")
    rng = np.random.default_rng([seed, 11])
    labels = [LABELS[i % len(LABELS)] for i in range(n)]
    n_val = max(1, round(0.15 * n))
    n_test = max(1, round(0.15 * n))
    held = rng.permutation(np.arange(len(LABELS), n))[: n_val + n_test]  # the first six (one per label) train
    split = ["train"] * n
    for k, i in enumerate(held):
        split[int(i)] = "val" if k < n_val else "test"
    return list(zip(labels, split))


def _frames(name: str, seconds: float, transcript: str) -> int:
    if name == "hubert":  # HubertModel's conv stack on 16 kHz audio: 320-sample hop, 400-sample window
        return (int(round(seconds * 16000)) - 400) // 320 + 1
    if name == "mae":  # one vector per face frame at 25 fps
        return int(round(seconds * 25))
    if name == "videomae":  # 16-frame windows, tubelet 2: 8 vectors a window
        return max(1, int(round(seconds * 25)) // 16) * 8
    if name == "eva":  # one face frame
        return 1
    return min(128, len(transcript.split()) + 2)  # MiniLM tokens with [CLS] and [SEP]


def _attrs(name: str, n: int, seed: int) -> dict:
    """What pipeline/stages/extract.py writes into a feature store's attrs, for a paper-size encoder."""
    from esva import __version__
    from esva.config import FeaturesConfig, config_hash
    from esva.encoders import eva, hubert, mae, text, videomae

    paper = {"hubert": hubert, "mae": mae, "videomae": videomae, "eva": eva, "text": text}[name].PAPER_CHECKPOINT
    cfg = getattr(FeaturesConfig(), name).model_copy(update={"checkpoint": paper})
    identity = f"random-features-{name}-{DIMS[name]}d"
    return {
        "stage": f"extract_{name}", "corpus": "synthetic", "encoder": name,
        "checkpoint": {"checkpoint": paper, "revision": None, "identity": identity}, "revision": None,
        "layers": layers_of(name), "dim": DIMS[name], "frame_rate": RATES[name], "input_rate": INPUT_RATES[name],
        "fixed_lengths": {"patches": EVA_PATCHES} if name == "eva" else {},
        "dtype": "float16", "utterance": "mean over valid frames, float32", "compute_dtype": "float32",
        "precision": {"requested": "fp32", "compute": "float32", "device": "cpu"},
        "params": cfg.model_dump(mode="json"), "params_hash": config_hash(cfg), "code_version": __version__,
        "benchmark": f"benchmarks.memory: random features at paper dimensions (n={n}, seed={seed})",
    }


def _store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def generate(work: Path, n: int, seed: int) -> dict:
    """Manifest + five feature stores under `work`, written clip by clip (one clip's arrays in memory
    at a time, plus the writers' pending shard tails). Reused when the marker says the same set is there."""
    marker = work / MARKER
    want = {"generator": GENERATOR, "n": n, "seed": seed, "dims": DIMS, "rates": RATES, "eva_patches": EVA_PATCHES}
    if marker.exists():
        have = json.loads(marker.read_text())
        if {k: have.get(k) for k in want} == json.loads(json.dumps(want)):
            have["reused"] = True
            return have
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)

    from esva import LABELS
    from esva.config import SynthConfig, config_hash
    from esva.data.manifest import to_frame, write_manifest
    from esva.data.synthetic import sample_spec
    from esva.encoders.engine import feature_fields
    from esva.store import RaggedWriter
    from pipeline.common import Rate, progress

    t0 = time.perf_counter()
    synth = SynthConfig(seed=seed, min_seconds=2.0, max_seconds=8.0)
    # a little class signal: a label-dependent mean per encoder (the frames are N(proto, 1))
    proto_rng = np.random.default_rng([seed, 3])
    proto = {name: {lab: proto_rng.normal(0.0, 0.3, dim).astype(np.float32) for lab in LABELS} for name, dim in DIMS.items()}
    rows, seconds, frame_bytes = [], 0.0, {"train": 0, "val": 0, "test": 0}
    features = work / "features"
    with ExitStack() as stack:
        writers = {}
        for name, dim in DIMS.items():
            fp = config_hash("bench_memory", GENERATOR, name, dim, n, seed)
            # flushed by bytes rather than every 16 clips: the same layout, far fewer shard rewrites
            writers[name] = stack.enter_context(RaggedWriter(features / f"{name}.zarr", feature_fields(layers_of(name), dim),
                                                             _attrs(name, n, seed), fp, flush_every=1 << 30,
                                                             flush_bytes=64 << 20))
        rate = Rate()
        with progress(f"generate {n} clips") as bar:
            task = bar.add_task("generate", total=n, rate="0.00")
            for i, (label, split) in enumerate(_split_plan(n, seed)):
                spec = sample_spec(i, label, split, synth)
                cid = f"bench_{i:06d}"
                rng = np.random.default_rng([seed, 5, i])
                for name, dim in DIMS.items():
                    t = _frames(name, spec.duration_s, spec.transcript)
                    x = rng.standard_normal((t, dim), dtype=np.float32)
                    x += proto[name][label]
                    x16 = x.astype(np.float16)
                    utt = x16.astype(np.float32).mean(0, keepdims=True)  # the mean of what is stored, as the engine's
                    arrays = {"last": x16, "last_utt": utt}
                    if name == "eva":  # the stage-2 tokens: CLS and the patches of the same image
                        for fld, n_rows in (("cls", 1), ("patches", EVA_PATCHES)):
                            y = (rng.standard_normal((n_rows, dim), dtype=np.float32) + proto[name][label]).astype(np.float16)
                            arrays[fld], arrays[f"{fld}_utt"] = y, y.astype(np.float32).mean(0, keepdims=True)
                    writers[name].add(cid, arrays, {"frames": t})
                    if name in FRAME_LEVEL:
                        frame_bytes[split] += x16.nbytes
                seconds += spec.duration_s
                rows.append({"clip_id": cid, "video_path": f"{cid}.mp4", "root": str(work / "videos"), "split": split,
                             "label": label, "valence": spec.valence, "transcript": spec.transcript,
                             "reason": spec.reason, "ov_labels": spec.ov_labels, "dataset": "synthetic",
                             "offset_ms": spec.offset_ms, "duration_s": spec.duration_s})
                bar.update(task, advance=1, rate=rate.tick())
    write_manifest(to_frame(rows), work / "manifest.parquet")
    info = {**want, "clips": n, "audio_seconds": round(seconds, 1),
            "splits": {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")},
            "frame_level_bytes": sum(frame_bytes.values()), "frame_level_bytes_by_split": frame_bytes,
            "store_bytes": {name: _store_bytes(features / f"{name}.zarr") for name in DIMS},
            "generate_seconds": round(time.perf_counter() - t0, 1)}
    info["store_bytes"]["total"] = sum(info["store_bytes"].values())
    marker.write_text(json.dumps(info, indent=2))
    info["reused"] = False
    return info


# ----------------------------------------------------------------------------- measuring a command

@functools.cache
def time_v() -> bool:
    """GNU time is there (`/usr/bin/time -v` reports the command's maximum resident set size)."""
    return Path("/usr/bin/time").exists() and subprocess.run(["/usr/bin/time", "-v", "true"],
                                                             capture_output=True).returncode == 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """RSS of the measured process tree once a second (a timeline to see where memory grows; the peak
    reported is the kernel's, from wait4)."""

    def __init__(self, pid: int, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.t0 = pid, every, time.perf_counter()
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            tree, todo = [], [self.pid]
            while todo:
                p = todo.pop()
                tree.append(p)
                todo += _children(p)
            kb = sum(_rss_kb(p) for p in tree if p != self.pid or not time_v())  # /usr/bin/time itself is ~2 MB
            self.samples.append((round(time.perf_counter() - self.t0, 1), round(kb * 1024 / 1e6, 1)))

    def timeline(self, points: int = 40) -> str:
        """'seconds:MB' pairs, at most `points` of them, evenly spread."""
        s = self.samples
        if len(s) > points:
            s = [s[i] for i in np.unique(np.linspace(0, len(s) - 1, points).round().astype(int))]
        return " ".join(f"{t:g}:{mb:.0f}" for t, mb in s)


def measure(cmd: list[str], log_path: Path) -> dict:
    """Run `cmd` (cwd: the repository), its output to `log_path`; its peak RSS and wall seconds."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    time_out = log_path.with_suffix(".time")
    full = ["/usr/bin/time", "-v", "-o", str(time_out), *cmd] if time_v() else list(cmd)
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(full, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        sampler = Sampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop.set()
        sampler.join()
    seconds = time.perf_counter() - t0
    peak_kb = usage.ru_maxrss  # Linux: KiB, the largest of the child and its waited-for descendants
    method = "os.wait4 ru_maxrss"
    if time_v() and time_out.exists():
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_out.read_text())
        if m:
            peak_kb, method = int(m.group(1)), "/usr/bin/time -v"
    rec = {"peak_rss_mb": round(peak_kb * 1024 / 1e6, 1), "seconds": round(seconds, 1), "rss_method": method,
           "rss_timeline_seconds_mb": sampler.timeline(), "command": shlex.join(cmd), "log": str(log_path)}
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        rec.update(failed=True, returncode=proc.returncode, log_tail=tail)
        print(f"FAILED ({proc.returncode}): {shlex.join(cmd)}\n  " + "\n  ".join(tail), file=sys.stderr)
    return rec


def measure_repeated(cmd: list[str], log_path: Path, repeats: int) -> dict:
    """`measure` `repeats` times; the peak RSS and seconds reported are the medians (the peak varies from run
    to run with how the allocator's heap fragments), every run's peak is listed."""
    runs = []
    for r in range(repeats):
        runs.append(measure(cmd, log_path if r == 0 else log_path.with_name(f"{log_path.stem}.{r}{log_path.suffix}")))
        if runs[-1].get("failed"):
            return runs[-1]
    if repeats == 1:
        return runs[0]
    rec = dict(runs[0])
    rec["peak_rss_mb"] = round(float(np.median([x["peak_rss_mb"] for x in runs])), 1)
    rec["seconds"] = round(float(np.median([x["seconds"] for x in runs])), 1)
    rec["peak_rss_mb_runs"] = [x["peak_rss_mb"] for x in runs]
    rec["rss_timeline_seconds_mb"] = [x["rss_timeline_seconds_mb"] for x in runs]
    return rec


# ----------------------------------------------------------------------------- one size

def esva() -> str:
    """The `esva` console script of the interpreter running this (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).with_name("esva")
    found = str(beside) if beside.exists() else shutil.which("esva")
    if not found:
        raise SystemExit("the `esva` command is not installed beside this Python or on PATH (pip install -e .)")
    return found


def run_size(work: Path, n: int, seed: int, params: Path, overrides: list[str], llm: Path, repeats: int = 1) -> dict:
    """Generate (or reuse) the set, then measure `esva train` and `esva tune` on it. `llm` is the base
    LLM folder: trained here by `esva lm` (one epoch) when it does not exist yet, else reused."""
    data = generate(work, n, seed)
    common = ["--manifest", str(work / "manifest.parquet"), "--params", str(params), "--metrics", str(work / "metrics")]
    sets = [x for o in overrides for x in ("--set", o)]
    for d in ("stage1", "stage2", "metrics"):
        shutil.rmtree(work / d, ignore_errors=True)
    out = {"clips": data["clips"], "audio_seconds": data["audio_seconds"], "splits": data["splits"],
           "store_bytes": data["store_bytes"], "frame_level_bytes": data["frame_level_bytes"],
           "frame_level_bytes_by_split": data["frame_level_bytes_by_split"],
           "generate_seconds": data["generate_seconds"], "data_reused": data["reused"]}
    if not (llm / "source.json").exists():
        print(f"[{n} clips] esva lm (not measured against the target)", file=sys.stderr)
        lm = measure([esva(), "lm", *common, "--out", str(llm), *sets, "--set", "llm.epochs=1"], work / "logs" / "lm.log")
        out["lm"] = {k: lm[k] for k in ("peak_rss_mb", "seconds", "command", "failed", "log_tail") if k in lm}
        if lm.get("failed"):
            shutil.rmtree(llm, ignore_errors=True)
            out["train"] = out["tune"] = {"skipped": "esva lm failed"}
            return out
    else:
        out["lm"] = {"reused": str(llm)}
    print(f"[{n} clips] esva train", file=sys.stderr)
    out["train"] = measure_repeated([esva(), "train", *common, "--features", str(work / "features"), "--out",
                                     str(work / "stage1"), "--reference", str(work / "none.json"), *sets,
                                     "--set", "train.epochs=1", "--set", "align.warmup_epochs=1"],
                                    work / "logs" / "train.log", repeats)
    if out["train"].get("failed"):
        out["tune"] = {"skipped": "esva train failed"}
        return out
    print(f"[{n} clips] esva tune", file=sys.stderr)
    out["tune"] = measure_repeated([esva(), "tune", *common, "--features", str(work / "features"), "--stage1",
                                    str(work / "stage1"), "--llm", str(llm), "--out", str(work / "stage2"), *sets,
                                    "--set", "tune.epochs=1", "--set", "tune.tasks={emotion: 1.0}",
                                    "--set", "tune.max_new_tokens=8"], work / "logs" / "tune.log", repeats)
    for stage in ("train", "tune"):
        try:
            out[stage]["clips_used"] = json.loads((work / "metrics" / f"{stage}.json").read_text()).get("clips")
        except (OSError, ValueError):
            pass
    return out


def _cache_estimate(rec: dict, cmd: str, cache_mb: int) -> None:
    """What the feature cache holds at most: the frame-level features the command reads (train: every
    labelled clip; tune: train and val), capped at the budget. Peak RSS less that is the part that
    should not depend on the corpus at all (an estimate: the peak need not fall when the cache is full)."""
    run = rec.get(cmd, {})
    if "peak_rss_mb" not in run:
        return
    splits = ("train", "val", "test") if cmd == "train" else ("train", "val")
    read = sum(rec["frame_level_bytes_by_split"][s] for s in splits)
    run["cache_fill_mb_estimate"] = round(min(read, cache_mb << 20) / 1e6, 1)
    run["peak_rss_mb_less_cache_estimate"] = round(run["peak_rss_mb"] - run["cache_fill_mb_estimate"], 1)


def _allocator() -> str:
    """What the measured commands do to the C allocator (they call bound_heap from load_features)."""
    import platform

    from esva.train.stream import HEAP_MMAP_THRESHOLD

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        return (f"glibc {platform.libc_ver()[1]}: esva train and tune fix the mmap and trim thresholds at "
                f"{HEAP_MMAP_THRESHOLD} bytes in process (esva.train.stream.bound_heap)")
    return "not glibc: the allocator's defaults"


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="clips in the smaller set (N)")
    ap.add_argument("--factor", type=int, default=10, help="the larger set has factor x N clips")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/esva-bench-memory"),
                    help="sets go to WORK/N<clips>, the base LLM to WORK/llm")
    ap.add_argument("--keep", action="store_true", help="keep the generated sets (a later run with the same n and "
                    "seed reuses them); without it they are removed at the end")
    ap.add_argument("--repeats", type=int, default=1, help="run train and tune this many times per size; "
                    "report the median peak (the peak varies from run to run)")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="params override for every command, e.g. --set train.feature_cache_mb=64 (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("metrics/bench_memory.json"))
    args = ap.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
    if args.factor < 2:
        raise SystemExit(f"--factor must be >= 2, got {args.factor}")

    import torch

    from esva.config import load_params

    p = load_params(args.params, tuple(args.overrides))
    factor_name = f"{args.factor}N"
    sizes = [("N", args.n), (factor_name, args.n * args.factor)]
    cache = {"train": p.train.feature_cache_mb, "tune": p.tune.feature_cache_mb}
    result: dict = {
        "benchmark": "memory",
        "note": "random features at the paper's encoder dimensions (synthetic data, not extracted from any video); "
                "a memory benchmark, not a result on any corpus",
        "target": f"peak RSS at {factor_name} <= {RATIO_TARGET}x that at N and < 8 GB",
        "command": shlex.join(["python", "-m", "benchmarks.memory", *argv]),
        "device": "cpu", "cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "rss_method": "/usr/bin/time -v" if time_v() else "os.wait4 ru_maxrss",
        "units": "MB = 10^6 bytes; 8 GB = 8000 MB",
        "feature_cache_mb": cache, "overrides": args.overrides,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},  # glibc tunables in force
        "allocator": _allocator(),
        "dims": DIMS, "frame_rates": RATES, "seconds_per_clip": [2.0, 8.0], "seed": args.seed, "repeats": args.repeats,
        "settings": {"train": "train.epochs=1, align.warmup_epochs=1 (two passes over the training split, "
                              "then validation and test predictions)",
                     "tune": "tune.epochs=1, tune.tasks={emotion: 1.0}, tune.max_new_tokens=8 (one epoch: "
                             "training, validation loss and generation)",
                     "lm": "llm.epochs=1 on the N set, reused for every size (not measured against the target)"},
        "sizes": {},
    }
    llm = args.work / "llm"
    shutil.rmtree(llm, ignore_errors=True)
    try:
        for name, n in sizes:
            work = args.work / f"N{n}"
            try:
                rec = run_size(work, n, args.seed, args.params.resolve(), args.overrides, llm, args.repeats)
            finally:
                if not args.keep and (work / MARKER).exists():
                    shutil.rmtree(work, ignore_errors=True)
            for cmd in ("train", "tune"):
                _cache_estimate(rec, cmd, cache[cmd])
            result["sizes"][name] = rec
    finally:
        if not args.keep:
            shutil.rmtree(llm, ignore_errors=True)
    small, big = result["sizes"]["N"], result["sizes"][factor_name]
    result["ratios"], result["ratios_less_cache_estimate"], result["meets_target"] = {}, {}, {}
    for cmd in ("train", "tune"):
        a, b = small[cmd].get("peak_rss_mb"), big[cmd].get("peak_rss_mb")
        ok = bool(a and b and not small[cmd].get("failed") and not big[cmd].get("failed"))
        result["ratios"][cmd] = round(b / a, 3) if ok else None
        result["meets_target"][cmd] = bool(ok and b / a <= RATIO_TARGET and max(a, b) < RSS_LIMIT_MB)
        if ok:
            ae, be = small[cmd]["peak_rss_mb_less_cache_estimate"], big[cmd]["peak_rss_mb_less_cache_estimate"]
            result["ratios_less_cache_estimate"][cmd] = round(be / ae, 3)
    result["meets_target"]["overall"] = result["meets_target"]["train"] and result["meets_target"]["tune"]
    fits = [c for c in ("train", "tune") if "cache_fill_mb_estimate" in small[c]
            and small[c]["cache_fill_mb_estimate"] < cache[c] * 2 ** 20 / 1e6]
    if fits:
        budgets = ", ".join(f"{c}.feature_cache_mb={cache[c]}" for c in fits)
        result["caveat"] = (f"at N the features that {' and '.join(fits)} read fit in the feature cache ({budgets}), "
                            "so part of the growth to the larger size is the cache filling up to its bound; "
                            "ratios_less_cache_estimate takes that out (an estimate)")
    result["failed"] = any(s.get(c, {}).get("failed") or "skipped" in s.get(c, {})
                           for s in (small, big) for c in ("lm", "train", "tune"))
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    sys.exit(1 if main().get("failed") else 0)
