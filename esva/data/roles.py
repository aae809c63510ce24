"""What a run does with each clip (`role`), decided from params, and the leakage guard.

- A row is evaluated when its `source:split` is one of `evaluate.{mer,ov,emer}`: role `eval:mer` (several
  joined by commas, e.g. `eval:mer,eval:ov`, when one split serves several metrics).
- A row trains both stages when its `source:split` is listed in `data.train`, and validates them when it
  is in `data.val`; when `data.val` is empty, a deterministic, label-stratified share `data.val_fraction`
  of the training rows (seeded by `data.seed`) becomes `val`, so no stage ever picks an epoch on
  training or test data.
- **Leakage guard:** a `train` or `val` row whose dataset name, or whose video content (size and the
  first and last MiB, so copies of one file match wherever they lie), equals any evaluated row's is
  removed (role `unused`); each removal is listed with the evaluated clip it matched. The manifest's
  `content_key` column (filled per source by `esva ingest-source`) is used when present, so the merge
  reads no video.
- A row whose `source:split` is in `data.robust` (harder conditions, `esva adaptive`) has role `robust`:
  decoded and featurised, evaluated, never trained on (the leakage guard counts it as evaluated).
- Everything else is `unused` (decoded by no stage).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from esva.data.manifest import default_role

log = logging.getLogger(__name__)

EVAL_ROLES = ("mer", "ov", "emer")
_SPAN = 1 << 20


def content_key(path: str | Path) -> str | None:
    """The identity of a video's bytes independent of its name, folder and mtime (size, first and last
    MiB); None for a file that cannot be read."""
    p = Path(path)
    try:
        size = p.stat().st_size
        h = hashlib.sha256(str(size).encode())
        with p.open("rb") as fh:
            h.update(fh.read(_SPAN))
            if size > _SPAN:
                fh.seek(max(_SPAN, size - _SPAN))
                h.update(fh.read(_SPAN))
        return h.hexdigest()
    except OSError:
        return None


def parse_pairs(pairs, key: str, sources: set[str]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        src, sep, split = str(pair).partition(":")
        if not sep or not split:
            raise ValueError(f"{key} entries are source:split, got {pair!r}")
        if src not in sources:
            raise ValueError(f"{key} names source {src!r}, which data.sources does not list ({sorted(sources)})")
        out.append((src, split))
    return out


def assign_roles(df: pd.DataFrame, data_cfg, evaluate_cfg, hash_contents: bool = True) -> tuple[pd.DataFrame, dict]:
    """The manifest with its `role` column, and a report: counts per role, the leak removals, the val carving."""
    df = df.copy()
    sources = {s.name for s in data_cfg.sources}
    train_pairs = set(parse_pairs(data_cfg.train, "data.train", sources))
    val_pairs = set(parse_pairs(data_cfg.val, "data.val", sources))
    robust_pairs = set(parse_pairs(getattr(data_cfg, "robust", ()), "data.robust", sources))
    key = list(zip(df["source"].astype(str), df["split"].astype(str)))
    roles = ["unused"] * len(df)
    evaluated = np.zeros(len(df), bool)
    for i, k in enumerate(key):
        tags = [f"eval:{r}" for r in EVAL_ROLES
                if (getattr(evaluate_cfg, r).source, getattr(evaluate_cfg, r).split) == k]
        if tags:
            roles[i] = ",".join(tags)
            evaluated[i] = True
        elif k in robust_pairs:
            roles[i] = "robust"
            evaluated[i] = True
        elif k in val_pairs:
            roles[i] = "val"
        elif k in train_pairs:
            roles[i] = "train"
    report: dict = {"leak": {"removed": 0, "by_name": 0, "by_content": 0, "clips": []}}
    # the leakage guard: names and contents of every evaluated clip
    eval_names = {}
    for i in np.flatnonzero(evaluated):
        eval_names.setdefault(str(df["name"].iloc[i]), str(df["clip_id"].iloc[i]))
    eval_keys: dict[str, str] = {}
    paths = [Path(str(r)) / str(v) for r, v in zip(df["root"], df["video_path"])]
    stored = list(df["content_key"]) if "content_key" in df.columns else None  # computed at ingest-source

    def key_of(i: int) -> str | None:
        if stored is not None:
            return stored[i] if isinstance(stored[i], str) and stored[i] else None
        return content_key(paths[i])

    if hash_contents:
        for i in np.flatnonzero(evaluated):
            k = key_of(i)
            if k:
                eval_keys.setdefault(k, str(df["clip_id"].iloc[i]))
    for i, role in enumerate(roles):
        if role not in ("train", "val"):
            continue
        hit, how = eval_names.get(str(df["name"].iloc[i])), "name"
        if hit is None and eval_keys:
            hit, how = eval_keys.get(key_of(i) or ""), "content"
        if hit is not None:
            roles[i] = "unused"
            report["leak"]["removed"] += 1
            report["leak"][f"by_{how}"] += 1
            report["leak"]["clips"].append({"clip_id": str(df["clip_id"].iloc[i]), "was": role, "matches": hit, "by": how})
    df["role"] = roles
    if not val_pairs:  # carve a validation share from the training rows, stratified by label, seeded
        train_idx = [i for i, r in enumerate(roles) if r == "train"]
        rng = np.random.default_rng(data_cfg.seed)
        carved = 0
        labels = df["label"].astype(object).where(df["label"].notna(), "<none>")
        for lab in sorted({str(labels.iloc[i]) for i in train_idx}):
            group = sorted((i for i in train_idx if str(labels.iloc[i]) == lab), key=lambda j: str(df["clip_id"].iloc[j]))
            n = int(round(len(group) * data_cfg.val_fraction))
            if len(group) >= 2:
                n = max(1, min(n, len(group) - 1))
            else:
                n = 0
            for j in rng.permutation(len(group))[:n]:
                df.iloc[group[j], df.columns.get_loc("role")] = "val"
                carved += 1
        report["val"] = {"carved_from_train": carved, "fraction": data_cfg.val_fraction, "seed": data_cfg.seed}
    else:
        report["val"] = {"from": sorted(f"{s}:{p}" for s, p in val_pairs)}
    report["roles"] = {str(k): int(v) for k, v in df["role"].value_counts().sort_index().items()}
    if report["leak"]["removed"]:
        log.warning("leak: %d training/validation clips are evaluated clips (%d by name, %d by content); removed",
                    report["leak"]["removed"], report["leak"]["by_name"], report["leak"]["by_content"])
    return df, report


def stage_split(role: str) -> str | None:
    """What the training stages call a role: train, val, or test (the MER evaluation rows, stage 1's
    test scores), predict (`esva predict`); None for a row they do not read."""
    if role in ("train", "val", "predict"):  # predict: `esva predict`'s own videos
        return role
    if "eval:mer" in str(role).split(","):
        return "test"
    return None


def roles_of(df: pd.DataFrame) -> pd.Series:
    """The manifest's roles; a frame built without them (tests, benchmarks: never `esva ingest`) reads its
    `split` as train/val/test, which is logged."""
    if "role" in df.columns and df["role"].notna().all():
        return df["role"].astype(str)
    log.warning("manifest without roles: train/val/test taken from its split column (run `esva ingest` for roles)")
    return df["split"].map(default_role)
