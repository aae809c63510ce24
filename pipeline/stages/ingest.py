"""`esva ingest`: dataset adapters -> data/manifest.parquet."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from esva import LABELS
from esva.config import IngestConfig, Source
from esva.data.adapters import run_adapter
from esva.data.manifest import corpus_of, to_frame, write_manifest
from pipeline.common import StageFailed, StageReport, log

PARAMS = ("data.sources", "ingest")  # the params keys this stage reads (pipeline/deps.py; dvc.yaml lists exactly these)


def run(cfg: IngestConfig, sources: tuple[Source, ...], out: Path, metrics_dir: Path | None = Path("metrics")):
    report = StageReport("ingest")
    rows: list[dict] = []
    for src in sources:
        res = run_adapter(src.adapter, src.root, dataset=src.name if src.adapter != "synthetic" else "synthetic",
                          labels=LABELS)
        report.clips_in += res.n_in
        for p in res.problems:
            report.skip(p.name, f"{src.root}/{p.source}" + (f":{p.row}" if p.row else ""), "invalid_row", p.reason)
        rows.extend(res.rows)
        log.info("ingest %s (%s): %d rows, %d problems", src.name, src.adapter, len(res.rows), len(res.problems))
    counts = Counter(r["clip_id"] for r in rows)
    dups = sorted(i for i, n in counts.items() if n > 1)
    if dups:
        raise StageFailed(f"ingest: clip ids collide across sources: {dups[:10]} (rename a source)")
    if not rows:
        raise StageFailed(f"ingest: no valid clips from {[s.root for s in sources]}")
    df = to_frame(rows)
    report.done = len(df)
    report.corpus = corpus_of(df["dataset"])
    report.extra["splits"] = {str(k): int(v) for k, v in df["split"].value_counts().sort_index().items()}
    report.extra["labels"] = {str(k): int(v) for k, v in df["label"].value_counts().sort_index().items()}
    write_manifest(df, out)
    if metrics_dir is not None:
        report.write(metrics_dir)
    report.check(cfg.max_skip_ratio)
    return df
