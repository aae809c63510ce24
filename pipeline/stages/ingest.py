"""`esva ingest`: dataset adapters -> data/manifest.parquet."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from esva import LABELS
from esva.config import ConfigError, IngestConfig, Source
from esva.data.adapters import run_adapter
from esva.data.manifest import corpus_of, to_frame, write_manifest
from esva.data.roles import assign_roles
from pipeline.common import StageFailed, StageReport, log

PARAMS = ("data", "ingest", "evaluate.mer", "evaluate.ov", "evaluate.emer")  # what this stage reads (pipeline/deps.py)


def run(cfg: IngestConfig, sources: tuple[Source, ...], out: Path, metrics_dir: Path | None = Path("metrics"),
        data_cfg=None, evaluate_cfg=None):
    """Every source through its adapter; clip ids `<source>.<name>` (unique across sources); roles from
    `data.train` / `data.val` / `evaluate.*` with the leakage guard (esva.data.roles). Without data_cfg
    (one source from the command line), that source's train/val/test splits keep their usual roles."""
    report = StageReport("ingest")
    rows: list[dict] = []
    for src in sources:
        res = run_adapter(src.adapter, src.root, dataset=src.name if src.adapter != "synthetic" else "synthetic",
                          labels=LABELS, language=data_cfg.transcript_language if data_cfg is not None else "english")
        report.extra.setdefault("per_source", {})[src.name] = {"adapter": src.adapter, "rows": len(res.rows),
                                                               "problems": len(res.problems), **res.notes}
        missing = res.notes.get("transcripts", {}).get("missing", 0)
        if missing:
            log.warning("ingest %s: %d of %d clips have no %s transcript (files: %s)", src.name, missing, len(res.rows),
                        res.notes["transcripts"]["language"], res.notes["transcripts"]["files"] or "none")
        report.clips_in += res.n_in
        for p in res.problems:
            report.skip(p.name, f"{src.root}/{p.source}" + (f":{p.row}" if p.row else ""), "invalid_row", p.reason)
        for r in res.rows:
            r["name"] = r.pop("source_name", r["clip_id"])
            r["source"] = src.name
            r["clip_id"] = f"{src.name}.{r['clip_id']}"
        rows.extend(res.rows)
        log.info("ingest %s (%s): %d rows, %d problems", src.name, src.adapter, len(res.rows), len(res.problems))
    counts = Counter(r["clip_id"] for r in rows)
    dups = sorted(i for i, n in counts.items() if n > 1)
    if dups:  # cannot happen with unique source names; kept as an invariant check
        raise StageFailed(f"ingest: clip ids collide: {dups[:10]}")
    if not rows:
        raise StageFailed(f"ingest: no valid clips from {[s.root for s in sources]}")
    df = to_frame(rows)
    if data_cfg is not None:
        try:
            df, roles = assign_roles(df, data_cfg, evaluate_cfg)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        report.extra.update(roles)
    else:
        report.extra["roles"] = {str(k): int(v) for k, v in df["role"].value_counts().sort_index().items()}
    report.done = len(df)
    report.corpus = corpus_of(df["dataset"])
    report.extra["splits"] = {str(k): int(v) for k, v in df["split"].value_counts().sort_index().items()}
    report.extra["labels"] = {str(k): int(v) for k, v in df["label"].value_counts().sort_index().items()}
    report.extra["sources"] = {str(k): int(v) for k, v in df["source"].value_counts().sort_index().items()}
    write_manifest(df, out)
    if metrics_dir is not None:
        report.write(metrics_dir)
    report.check(cfg.max_skip_ratio)
    return df
