"""`esva ingest`: dataset adapters -> data/manifest.parquet, in two steps that DVC runs as stages of their own.

- `esva ingest-source NAME` (DVC: `ingest-source@i`, one stage per `data.sources` entry, its dataset root a
  dep): one dataset through its adapter -> `data/sources/NAME.parquet`, its rows with clip ids
  `<source>.<name>` and each video's content key (esva.data.roles.content_key, for the leakage guard), and in
  the file's metadata how it was made (the source entry and the transcript language) and its skipped rows;
  its report in `metrics/ingest/NAME.json`.
- `esva ingest --from data/sources` (DVC: `ingest`): the per-source files of the sources `data.sources` lists
  now (a file of a source no longer listed is ignored; a missing one, or one written under other source
  settings, is an error naming it) -> roles and the leakage guard -> `data/manifest.parquet`,
  `metrics/ingest.json`. It reads no video.

`esva ingest` alone runs both steps in memory, through the same functions.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from esva.config import ConfigError, IngestConfig, Source
from esva.data.adapters import run_adapter
from esva.data.manifest import corpus_of, to_frame, write_manifest
from esva.data.roles import assign_roles, content_key
from esva.provenance import atomic_write_bytes
from pipeline.common import StageFailed, StageReport, log

PARAMS = ("data", "ingest", "evaluate.mer", "evaluate.ov", "evaluate.emer")  # what this stage reads (pipeline/deps.py)
# what `esva ingest-source` reads: the source entry itself (name, adapter, root) comes on its command line
SOURCE_PARAMS = ("data.transcript_language",)
SOURCE_FORMAT = 1  # of the per-source files; a file of another format is rebuilt, never read
_META_KEY = b"esva.ingest_source"


@dataclass
class SourceTable:
    """One source after its adapter: how it was read (`made_with`), its rows, and what the merged report
    keeps of it (its per_source entry, rows read, skipped rows)."""

    made_with: dict
    frame: pd.DataFrame
    info: dict
    clips_in: int
    skips: list[dict] = field(default_factory=list)


def made_with(src: Source, language: str) -> dict:
    """What a per-source file depends on besides the dataset's files and the code: checked by the merge."""
    return {"format": SOURCE_FORMAT, "name": src.name, "adapter": src.adapter, "root": src.root,
            "transcript_language": language}


def read_source(src: Source, language: str = "english") -> SourceTable:
    """One source through its adapter: rows with ids `<source>.<name>` and the content key of each video."""
    res = run_adapter(src.adapter, src.root, dataset=src.name if src.adapter != "synthetic" else "synthetic",
                      language=language)
    info = {"adapter": src.adapter, "rows": len(res.rows), "problems": len(res.problems), **res.notes}
    missing = res.notes.get("transcripts", {}).get("missing", 0)
    if missing:
        log.warning("ingest %s: %d of %d clips have no %s transcript (files: %s)", src.name, missing, len(res.rows),
                    res.notes["transcripts"]["language"], res.notes["transcripts"]["files"] or "none")
    skips = []
    for p in res.problems:
        skips.append({"clip_id": p.name, "path": f"{src.root}/{p.source}" + (f":{p.row}" if p.row else ""),
                      "reason": "invalid_row", "detail": p.reason})
        log.warning("skip %s (%s): invalid_row %s", p.name, skips[-1]["path"], p.reason)
    for r in res.rows:
        r["name"] = r.pop("source_name", r["clip_id"])
        r["source"] = src.name
        r["clip_id"] = f"{src.name}.{r['clip_id']}"
        r["content_key"] = content_key(Path(r["root"]) / r["video_path"])  # the merge's leak guard reads no video
    unreadable = sum(r["content_key"] is None for r in res.rows)
    info["content_keys"] = {"hashed": len(res.rows) - unreadable, "unreadable": unreadable}
    frame = to_frame(res.rows)
    if "content_key" not in frame.columns:  # a source without valid rows
        frame["content_key"] = pd.Series([], dtype=object)
    log.info("ingest %s (%s): %d rows, %d problems", src.name, src.adapter, len(res.rows), len(res.problems))
    return SourceTable(made_with(src, language), frame, info, res.n_in, skips)


def write_source(table: SourceTable, out: Path) -> None:
    """The per-source parquet, with `made_with`, counts and skipped rows in its metadata (one file, one DVC out)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.Table.from_pandas(table.frame, preserve_index=False)
    meta = {"made_with": table.made_with, "info": table.info, "clips_in": table.clips_in, "skips": table.skips}
    t = t.replace_schema_metadata({**(t.schema.metadata or {}), _META_KEY: json.dumps(meta, sort_keys=True).encode()})
    buf = io.BytesIO()
    pq.write_table(t, buf)
    atomic_write_bytes(out, buf.getvalue())


def read_source_file(path: Path) -> SourceTable:
    import pyarrow.parquet as pq

    try:
        t = pq.read_table(path)
    except Exception as exc:  # not parquet, truncated
        raise StageFailed(f"ingest: {path}: not a readable per-source file ({exc.__class__.__name__}: {exc})") from None
    raw = (t.schema.metadata or {}).get(_META_KEY)
    if raw is None:
        raise StageFailed(f"ingest: {path} was not written by `esva ingest-source` (no {_META_KEY.decode()} metadata)")
    meta = json.loads(raw)
    frame = t.to_pandas()
    frame["ov_labels"] = frame["ov_labels"].map(lambda v: [str(x) for x in v] if v is not None else [])
    return SourceTable(meta["made_with"], frame, meta["info"], int(meta["clips_in"]), list(meta["skips"]))


def run_source(src: Source, language: str, out: Path, metrics_dir: Path | None = Path("metrics")) -> SourceTable:
    """`esva ingest-source`: one source -> its parquet, and metrics/ingest/<name>.json (skips in
    metrics/skips/ingest/<name>.csv). The share of skipped rows is checked by the merge, over all sources."""
    table = read_source(src, language)
    write_source(table, out)
    if metrics_dir is not None:
        report = StageReport(f"ingest/{src.name}", corpus=corpus_of(table.frame["dataset"]), clips_in=table.clips_in,
                             done=len(table.frame), skips=list(table.skips))
        report.extra.update(source=table.made_with, **table.info)
        report.extra["splits"] = {str(k): int(v) for k, v in table.frame["split"].value_counts().sort_index().items()}
        report.extra["labels"] = {str(k): int(v) for k, v in table.frame["label"].value_counts().sort_index().items()}
        report.write(metrics_dir)
    return table


def load_sources(folder: Path, data_cfg) -> list[SourceTable]:
    """The per-source files of the sources data.sources lists now, each checked against its entry."""
    tables = []
    for src in data_cfg.sources:
        path = Path(folder) / f"{src.name}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"ingest: {path} is missing: source {src.name!r} of data.sources has not been "
                                    f"ingested (run `esva ingest-source {src.name}`, or `dvc repro`)")
        table = read_source_file(path)
        want = made_with(src, data_cfg.transcript_language)
        if table.made_with != want:
            diff = ", ".join(f"{k} {table.made_with.get(k)!r} in the file, {v!r} in params"
                             for k, v in want.items() if table.made_with.get(k) != v)
            raise StageFailed(f"ingest: {path} was written under other settings than source {src.name!r} has now "
                              f"({diff}); run `esva ingest-source {src.name}` again")
        tables.append(table)
    listed = {s.name for s in data_cfg.sources}
    stale = sorted(p.name for p in Path(folder).glob("*.parquet") if p.stem not in listed)
    if stale:
        log.info("ingest: ignoring %s in %s (sources no longer in data.sources)", stale, folder)
    return tables


def merge(cfg: IngestConfig, tables: list[SourceTable], out: Path, metrics_dir: Path | None = Path("metrics"),
          data_cfg=None, evaluate_cfg=None):
    """The sources' rows -> roles from `data.train` / `data.val` / `evaluate.*` with the leakage guard
    (esva.data.roles) -> the manifest. Without data_cfg (one source from the command line), that source's
    train/val/test splits keep their usual roles."""
    report = StageReport("ingest")
    rows: list[dict] = []
    for t in tables:
        report.extra.setdefault("per_source", {})[t.made_with["name"]] = t.info
        report.clips_in += t.clips_in
        report.skips.extend(t.skips)
        rows.extend(t.frame.to_dict("records"))
    counts = Counter(r["clip_id"] for r in rows)
    dups = sorted(i for i, n in counts.items() if n > 1)
    if dups:  # cannot happen with unique source names; kept as an invariant check
        raise StageFailed(f"ingest: clip ids collide: {dups[:10]}")
    if not rows:
        raise StageFailed(f"ingest: no valid clips from {[t.made_with['root'] for t in tables]}")
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


def run_merge(cfg: IngestConfig, folder: Path, out: Path, metrics_dir: Path | None = Path("metrics"),
              data_cfg=None, evaluate_cfg=None):
    """`esva ingest --from FOLDER`: the merge over the per-source files (see load_sources)."""
    return merge(cfg, load_sources(folder, data_cfg), out, metrics_dir, data_cfg, evaluate_cfg)


def run(cfg: IngestConfig, sources: tuple[Source, ...], out: Path, metrics_dir: Path | None = Path("metrics"),
        data_cfg=None, evaluate_cfg=None):
    """Every source through its adapter, then the merge, in memory (what the two DVC stages do through files)."""
    language = data_cfg.transcript_language if data_cfg is not None else "english"
    return merge(cfg, [read_source(src, language) for src in sources], out, metrics_dir, data_cfg, evaluate_cfg)
