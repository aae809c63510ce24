"""`esva report`: metrics/tables.md, the paper's Tables 2-7 in the paper's layout.

A thin shell: it loads the metrics files and the paper's numbers (esva/eval/paper_numbers.json) and
calls `esva.eval.tables.build_report`, which assembles every table (this run's numbers, with the model
that produced them, baselines, intervals and paired tests, beside the paper's numbers as printed).
"""

from __future__ import annotations

import json
from pathlib import Path

from esva.eval.metrics import ov_scores
from esva.eval.paper_numbers import load_paper_numbers
from esva.eval.synonyms import offline
from esva.eval.tables import build_report

PARAMS: tuple[str, ...] = ()  # reads no params, only metrics files


def _load(path: Path) -> dict | None:
    if not path.exists():
        return None
    with path.open("r", encoding="utf-8") as fh:
        return json.load(fh)


def load_metrics(m: Path) -> dict:
    """Every metrics file the tables read, as dicts (None where a file is absent)."""
    out = {k: _load(m / f"{k}.json") for k in ("train", "tune", "mer2023", "mer2024_ov", "emer", "alignment",
                                               "alignment_reference", "mechanism", "adaptive", "robustness")}
    out["ablation"] = {p.stem: _load(p) for p in sorted((m / "ablation").glob("*.json"))}
    # the stage-2 runs of Table 6 (tune_ablation@...): evaluate's mer2023.json and tune's tune.json per variant
    out["stage2"] = {d.name: {"mer2023": _load(d / "mer2023.json"), "tune": _load(d / "tune.json")}
                     for d in sorted((m / "stage2_ablation").glob("*")) if d.is_dir()}
    # Table 7: evaluate_controller@<name> (the stage-2 metrics with each alignment controller)
    out["controllers"] = {d.name: {k: _load(d / f"{k}.json") for k in ("mer2023", "mer2024_ov", "emer", "skipped")}
                          for d in sorted((m / "controllers").glob("*")) if d.is_dir()}
    return out


def run(metrics: Path = Path("metrics"), out: Path = Path("metrics/tables.md")) -> str:
    m = Path(metrics)
    empty = ov_scores([["x"]], [[]], offline())  # Table 4's Empty row: the metric's score of an empty answer
    text = build_report(load_metrics(m), load_paper_numbers(), metrics_dir=str(m), empty_ov=empty)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return text
