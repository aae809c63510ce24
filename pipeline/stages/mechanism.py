"""`esva mechanism`: the mechanism checks -> metrics/mechanism.json.

Feature-level synthetic conditions in which MSFE's and the aligner's effects exist by construction
(esva/eval/mechanism.py): every variant trained once per seed on the condition's own train/val clips and scored
on its own test clips. They test the implementation, not the paper's claims; `esva report` prints them as such.
No data dependency: the features are generated in memory from the `mechanism` section.
"""

from __future__ import annotations

import time
from pathlib import Path

from esva.eval.mechanism import CONDITIONS, run_all
from esva.provenance import atomic_write_json
from pipeline.common import log

PARAMS = ("mechanism", "msfe", "contrast", "align", "train")  # the params keys this stage reads (pipeline/deps.py)


def run(p, out: Path = Path("metrics/mechanism.json")) -> dict:
    t0 = time.perf_counter()
    total = p.mechanism.seeds * sum(len(c.variants) for c in CONDITIONS.values())
    done: list[dict] = []

    def on_run(rec: dict) -> None:
        done.append(rec)
        test = rec["test"] or {}
        align = rec.get("alignment")
        log.info("mechanism %d/%d [%s, %s] seed %d: test weighted F1 %.4f, best epoch %d of %d (%.1f s)%s",
                 len(done), total, rec["condition"], rec["variant"], rec["seed"], test.get("weighted_f1", float("nan")),
                 rec["best_epoch"], rec["epochs_run"], rec["seconds"],
                 f", offsets within one frame {align['within_one_frame']:.3f}" if align else "")

    result = run_all(p.mechanism, p.msfe, p.contrast, p.align, p.train, on_run=on_run)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(out)
    atomic_write_json(out, result)
    log.info("mechanism: %d trainings in %.0f s -> %s (tests of the implementation, not of the paper's claims)",
             len(done), result["seconds"], out)
    return result
