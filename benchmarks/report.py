"""What every benchmark shares: its result written as JSON under metrics/ and echoed to stdout, with the
machine it ran on (`environment`), the exact command, and a `meets_target` verdict.

Every `metrics/bench_<stage>.json` carries at its top:
- `benchmark`, `command` (the exact command line that produced it), `target` (in words) and `meets_target`
  (true | false, or a dict of verdicts with an `overall` entry);
- `environment`: the device (and the accelerator's name), cores, the CPU model and the instruction-set
  flags that decide the kernels (AVX2, AVX-512, AVX512-BF16, AMX), torch's CPU capability and threads.
`write_result` refuses a result without `meets_target`: a benchmark that cannot say whether it met its
target is not finished.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from pathlib import Path

FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve")


def write_result(result: dict, out: Path) -> dict:
    if "meets_target" not in result:
        raise ValueError(f"benchmark result for {out} has no meets_target verdict")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, out)
    print(json.dumps(result, indent=2))
    return result


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (else what platform knows), for every benchmark's JSON."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The instruction-set flags among FLAGS that /proc/cpuinfo lists for this CPU."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in FLAGS if f in have]
    except OSError:
        pass
    return []


def command(module: str, argv: list[str] | None) -> str:
    """The exact command line: `python -m MODULE ARGS` (argv as given, else this process's own)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", module, *args])


def environment(device: str = "cpu") -> dict:
    """Where a benchmark ran: device, accelerator name, cores, CPU model and flags, torch's capability and threads."""
    import torch

    env = {"device": device, "cores": os.cpu_count(), "cpu": cpu_name(), "machine": platform.machine(),
           "cpu_flags": cpu_flags(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(),
           # other work on the machine when the benchmark started (ratios are side by side; absolutes suffer)
           "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None}
    try:
        from esva.precision import cpu_supports_bf16

        env["cpu_native_bf16"] = bool(cpu_supports_bf16())
    except Exception:  # noqa: BLE001 - a record, not a check
        env["cpu_native_bf16"] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        env["accelerator"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    return env
