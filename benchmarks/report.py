"""What every benchmark shares: its result written as JSON under metrics/ and echoed to stdout."""

from __future__ import annotations

import json
from pathlib import Path


def write_result(result: dict, out: Path) -> dict:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
    print(json.dumps(result, indent=2))
    return result
