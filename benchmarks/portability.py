"""Does the fp32 embedded default give the same figures on another CPU? (issue 10)

CI machines and users' machines differ in instruction set: some have AVX-512 (and native bf16), some
only AVX2. This machine can run both kinds of float32 kernels: ATen's vectorised kernels follow
ATEN_CPU_CAPABILITY, oneDNN follows ONEDNN_MAX_CPU_ISA and MKL follows MKL_ENABLE_INSTRUCTIONS. So
`esva train` (stage 1, the committed demo's features and params) runs twice in fresh processes,
with this machine's own kernels and with every library held to AVX2, and the test metrics are compared.

    python -m benchmarks.portability [--features data/features] [--manifest data/manifest.parquet]

writes metrics/bench_portability.json. It needs the demo's features (`make demo` first).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import cpu_name, write_result

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def _train(env_extra: dict, features: Path, manifest: Path, work: Path) -> dict:
    env = {**os.environ, **env_extra}
    cmd = [sys.executable, "-m", "pipeline.cli", "train", "--manifest", str(manifest), "--features", str(features),
           "--out", str(work / "stage1"), "--metrics", str(work / "m"), "--reference", str(work / "none.json")]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    out = json.loads((work / "m" / "train.json").read_text())
    return {"aten_capability": probe, "seconds": round(time.perf_counter() - t0, 1), "test": out["test"],
            "val": out["val"], "best_epoch": out["best_epoch"], "alignment": out["alignment"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=Path, default=Path("data/features"))
    ap.add_argument("--manifest", type=Path, default=Path("data/manifest.parquet"))
    ap.add_argument("--out", type=Path, default=Path("metrics/bench_portability.json"))
    args = ap.parse_args()
    if not (args.features / "hubert.zarr").exists():
        sys.exit(f"{args.features}/hubert.zarr not found: run `make demo` first")
    runs = {}
    with tempfile.TemporaryDirectory(prefix="esva-port-") as tmp:
        for name, env in (("native", {}), ("avx2", AVX2)):
            work = Path(tmp) / name
            work.mkdir()
            runs[name] = _train(env, args.features, args.manifest, work)
    a, b = runs["native"], runs["avx2"]
    diff = {k: abs(a["test"][k] - b["test"][k]) for k in ("weighted_f1", "accuracy", "macro_f1")}
    diff["alignment_mae_ms"] = abs(a["alignment"]["mae_ms"] - b["alignment"]["mae_ms"]) \
        if a.get("alignment") and b.get("alignment") else None
    committed = None
    if Path("metrics/train.json").exists():
        c = json.loads(Path("metrics/train.json").read_text())
        committed = {"weighted_f1": c["test"]["weighted_f1"], "precision": c.get("precision")}
    write_result({
        "what": "stage-1 training (esva train, the demo's params and features) with this CPU's kernels and with "
                "every library held to AVX2; fp32 (the embedded default)",
        "corpus": "synthetic", "command": "python -m benchmarks.portability", "runs": runs, "abs_difference": diff,
        "identical": a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"], "committed_metrics_train": committed,
        "env_avx2": AVX2, "cpu": cpu_name(), "cores": os.cpu_count(),
        "target": "identical test metrics and best epoch with this CPU's kernels and with AVX2 kernels",
        "meets_target": bool(a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]),
    }, args.out)


if __name__ == "__main__":
    main()
