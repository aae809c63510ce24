"""MER2024-OV as the official scorer computes it, from the official per-sample synonym groupings.

The official procedure asks an LLM, once per sample, to group the union of that sample's gold and
predicted labels into synonym lists, and saves the raw reply as `<name>.npy` (a 0-d unicode array,
e.g. "[['suspect', 'doubt', 'question'], ['positive', 'satisfied']]") in one folder per run. Scoring
then, per sample with a grouping file:

- every word is replaced by the first word of the group that holds it (exactly as written, so case
  matters, as in the official code), a word in no group by itself;
- G and P are the mapped gold and predicted label sets (both lower-cased first);
- accuracy = |G ∩ P| / |P| and recall = |G ∩ P| / |G|, both 0 when P is empty;
- each is averaged over the samples, and `avg` is their mean.

Samples without a grouping file are not scored (as officially); they are counted. Point
`evaluate.grouping` at such a folder to score this way; a file there is the offline/user grouping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from esva.eval.synonyms import GroupingError

_LIST = re.compile(r"\[([^\[\]]*)\]")
_WORD = re.compile(r"""['"]([^'"]*)['"]""")


def parse_groups(text: str) -> list[list[str]]:
    """The synonym lists in an LLM reply such as "[['a', 'b'], ['c']]" (anything around them ignored)."""
    groups = []
    for inner in _LIST.findall(text):
        words = [w.strip() for w in _WORD.findall(inner) if w.strip()]
        if words:
            groups.append(words)
    return groups


@dataclass(frozen=True)
class PerSampleGrouping:
    name: str
    tables: dict[str, dict[str, str]]  # sample name -> {word: its group's first word}


def load_official(folder: str | Path) -> PerSampleGrouping:
    """Every `<name>.npy` in `folder` (np.load without pickle: a 0-d string array)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.npy"))
    if not files:
        raise GroupingError(f"{folder}: no <name>.npy grouping files (the official MER2024-OV format)")
    tables = {}
    for f in files:
        try:
            arr = np.load(f, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise GroupingError(f"{f}: not a grouping file ({exc.__class__.__name__}: {exc})") from None
        if arr.dtype.kind != "U" or arr.size != 1:
            raise GroupingError(f"{f}: expected one string (the LLM's grouping), got {arr.dtype} of shape {arr.shape}")
        table: dict[str, str] = {}
        for grp in parse_groups(str(arr.reshape(()).item())):
            for w in grp:
                table.setdefault(w, grp[0])
        tables[f.stem] = table
    return PerSampleGrouping(f"official-per-sample:{folder.name} ({len(tables)} samples)", tables)


def official_ov_scores(names: Sequence[str], gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
                       grouping: PerSampleGrouping) -> dict:
    acc, rec, empty, missing = [], [], 0, []
    for name, g, p in zip(names, gold, pred):
        table = grouping.tables.get(str(name))
        if table is None:
            missing.append(str(name))
            continue
        gs = {table.get(w, w) for w in (x.strip().lower() for x in g) if w}
        ps = {table.get(w, w) for w in (x.strip().lower() for x in p) if w}
        if not ps:
            empty += 1
            acc.append(0.0)
            rec.append(0.0)
            continue
        hit = len(gs & ps)
        acc.append(hit / len(ps))
        rec.append(hit / len(gs) if gs else 0.0)
    if not acc:
        raise GroupingError(f"{grouping.name}: no sample of this split has a grouping file "
                            f"(e.g. {missing[:3]}); the files are named by the dataset's own sample names")
    a, r = float(np.mean(acc)), float(np.mean(rec))
    return {"n": len(acc), "accuracy": a, "recall": r, "avg": (a + r) / 2, "grouping": grouping.name,
            "empty_predictions": empty, "not_scored_no_grouping": len(missing),
            "scoring": "official MER2024-OV rule on the official per-sample groupings"}
