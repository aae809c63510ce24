"""What every benchmark shares: its result written as JSON under metrics/ and echoed to stdout."""

from __future__ import annotations

import json
import platform
from pathlib import Path


def write_result(result: dict, out: Path) -> dict:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
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
