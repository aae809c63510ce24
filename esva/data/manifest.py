"""The manifest: one row a clip (DESIGN.md section 3), stored as parquet."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

COLUMNS = ["clip_id", "source", "name", "video_path", "root", "split", "role", "label", "valence", "ov_labels",
           "transcript", "reason", "dataset"]
# rows given no role by params (a source named on the command line, tests, benchmarks): its train / val / test
# splits keep their usual meaning, any other split ("all" of a plain folder) is `extract`: decoded and
# extracted, never trained on or evaluated
_DEFAULT_ROLE = {"train": "train", "val": "val", "test": "eval:mer"}


def default_role(split: object) -> str:
    """The role of a row that params gave none (see above)."""
    return _DEFAULT_ROLE.get(str(split), "extract")

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_id(name: str) -> str:
    """A clip id that is safe as a key and a file name: ASCII letters, digits, `_.-`.

    Names that are already safe are kept; others are transliterated and get a short hash of the
    original so that two names that fold to the same ASCII stay distinct."""
    if _SAFE.sub("", name) == name and name and not name.startswith("."):
        return name
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = _SAFE.sub("_", folded).strip("._") or "clip"
    return f"{slug[:80]}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:8]}"


@dataclass
class Problem:
    """A row that failed validation: where it is, and why."""

    source: str
    row: int | None
    name: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.row}" if self.row is not None else self.source
        return f"{where}: {self.name!r}: {self.reason}"


@dataclass
class AdapterResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    n_in: int = 0
    notes: dict[str, Any] = field(default_factory=dict)  # counts for the ingest report (transcripts, ...)


def to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = None
    df["valence"] = pd.to_numeric(df["valence"], errors="coerce").astype("float64")
    df["source"] = df["source"].where(df["source"].notna(), df["dataset"])
    df["name"] = df["name"].where(df["name"].notna(), df["clip_id"])
    df["role"] = df["role"].where(df["role"].notna(), df["split"].map(default_role))
    df["ov_labels"] = df["ov_labels"].map(lambda v: list(v) if isinstance(v, (list, tuple)) else [])
    for col in ("transcript", "reason"):
        df[col] = df[col].fillna("").astype(str)
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[COLUMNS + extra].reset_index(drop=True)


def write_manifest(df: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.parquet")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)


class ManifestError(ValueError):
    """A manifest that is not one, or a row that points outside its dataset root. Names file and row."""


def confined(root: str | Path, rel: str | Path) -> Path:
    """`root/rel`, provided it stays inside root: `rel` must be relative, without `..`, and must not leave
    root through a symbolic link. Raises ValueError saying which rule it broke."""
    rel_s = str(rel)
    if not rel_s or Path(rel_s).is_absolute() or rel_s.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel_s):
        raise ValueError(f"video path {rel_s!r} is absolute; it must be relative to the dataset root")
    if ".." in Path(rel_s.replace("\\", "/")).parts:
        raise ValueError(f"video path {rel_s!r} climbs out of the dataset root ('..')")
    full = Path(root) / rel_s
    real_root = Path(root).resolve()
    real = full.resolve()
    if real != real_root and real_root not in real.parents:
        raise ValueError(f"video path {rel_s!r} leads outside the dataset root {root} (a link to {real})")
    return full


def read_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest not found: {path} (run `esva ingest` first)")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # not parquet, truncated
        raise ManifestError(f"{path}: not a readable parquet manifest ({exc.__class__.__name__}: {exc})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        hint = " (written by an older esva: run `esva ingest` again)" if set(missing) <= {"source", "name", "role"} else ""
        raise ManifestError(f"{path}: not an esva manifest, missing columns {missing}{hint}")
    for i, (root, rel) in enumerate(zip(df["root"].astype(str), df["video_path"].astype(str)), start=1):
        try:
            confined(root, rel)
        except ValueError as exc:
            raise ManifestError(f"{path}: row {i} (clip {df['clip_id'].iloc[i - 1]!r}): {exc}") from None
    df["ov_labels"] = df["ov_labels"].map(lambda v: [str(x) for x in v] if v is not None else [])
    return df


def corpus_of(datasets) -> str:
    """`synthetic` when every clip is synthetic, else the datasets joined; what each metric file states."""
    ds = sorted(set(datasets))
    return "synthetic" if ds == ["synthetic"] else ",".join(ds) if ds else "unknown"


def video_file(row: pd.Series | dict) -> Path:
    return Path(str(row["root"])) / str(row["video_path"])
