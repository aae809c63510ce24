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

`write_groupings` is the producing side (official: MERTools commit 89120b780ab18b28349f0e37dcc12b8cc253cb02,
`MER2024/main-ov.py` `generate_openset_synonym_mer2024` and `MER2024/toolkit/utils/chatgpt.py`
`get_openset_synonym`): per sample, the lower-cased gold and predicted labels are merged into one set,
and an LLM (officially gpt-3.5-turbo-16k-0613, temperature 0) is asked, as an emotion expert, to group
them into lists of same-meaning emotions, output as a list of lists, with one worked example; the reply
(stripped of a leading "Output:"-style label and of line breaks) is saved as `<name>.npy`. Here the
prompt is our own paraphrase; the set is sorted (the official order is Python's set order) so the
request is reproducible; a file that exists is kept (resumable), files are written atomically, and a
failed call or a reply with no list writes nothing (officially an empty reply would be saved) so that
a rerun asks again. `esva evaluate` calls it when `evaluate.ov_grouping_llm` is configured.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from esva.eval.chat import EndpointError, Messages, Post, endpoint_of, user
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
    acc, rec, empty, missing, ungrouped = [], [], 0, [], 0
    for name, g, p in zip(names, gold, pred):
        table = grouping.tables.get(str(name))
        if table is None:
            missing.append(str(name))
            continue
        gs = {table.get(w, w) for w in (x.strip().lower() for x in g) if w}
        ps = {table.get(w, w) for w in (x.strip().lower() for x in p) if w}
        ungrouped += sum(w not in table for w in {x.strip().lower() for x in p if x.strip()})
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
            # predicted words the grouping does not hold: the groupings were made for other predictions
            "predicted_words_without_group": ungrouped,
            "scoring": "official MER2024-OV rule on the official per-sample groupings"}


GROUPING_PROMPT = (
    "Act as an expert on emotions. Below is a set of emotion words. Group them so that each group holds "
    "words with the same meaning, and output only the result, as a list of lists.\n"
    "Input: ['Agree', 'agreement', 'Relaxed', 'acceptance', 'pleasant', 'relaxed', 'Accept', 'positive', 'Happy'] "
    "Output: [['Agree', 'agreement', 'Accept', 'acceptance'], ['Relaxed', 'relaxed'], ['pleasant', 'positive', 'Happy']]\n"
    "Input: {labels} Output:"
)
_LABEL_LEAD = re.compile(r"^\s*(?:output|input|输出|输入)?\s*[:：]?\s*", re.I)


def grouping_messages(gold: Sequence[str], pred: Sequence[str]) -> Messages:
    """The request for one sample: the union of its lower-cased gold and predicted labels (sorted)."""
    merged = sorted({w.strip().lower() for w in [*gold, *pred] if w.strip()})
    return user(GROUPING_PROMPT.format(labels=repr(merged)))


def clean_reply(text: str) -> str:
    """The reply as the official code stores it: a leading "Output:"-style label and line breaks removed."""
    return _LABEL_LEAD.sub("", text.strip(), count=1).replace("\n", "").strip()


def write_groupings(names: Sequence[str], gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
                    out: str | Path, post: Post) -> dict:
    """Ask `post` for each sample's synonym grouping and write `out/<name>.npy` (a 0-d unicode array, what
    `load_official` reads). A name whose file exists is skipped only when its groups hold every word of the
    sample's gold and predicted labels now: a grouping made for other predictions (a retuned model) is
    asked for again, never reused, since a new word outside it would score as no synonym of anything
    (`stale_regrouped` counts them). Every sample is tried; if any failed
    (endpoint error, or a reply with no list), a `GroupingError` lists them after the others are written,
    and a rerun resumes with just those."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = skipped = stale = 0
    failed: list[str] = []
    for name, g, p in zip(names, gold, pred):
        name = str(name)
        if not name or name.startswith(".") or "/" in name or "\\" in name:
            raise GroupingError(f"sample name {name!r} cannot be a grouping file name")
        dest = out / f"{name}.npy"
        if dest.exists():
            words = {w.strip().lower() for w in [*g, *p] if w.strip()}
            try:
                have = {w.strip().lower() for grp in parse_groups(str(np.load(dest, allow_pickle=False).reshape(()).item()))
                        for w in grp}
            except (OSError, ValueError):
                have = set()
            if words <= have:
                skipped += 1
                continue
            stale += 1
        try:
            reply = clean_reply(post(grouping_messages(g, p)))
        except EndpointError as exc:
            failed.append(f"{name}: {exc}")
            continue
        if not parse_groups(reply):
            failed.append(f"{name}: {endpoint_of(post)} replied with no list of lists: {reply[:200]!r}")
            continue
        tmp = dest.with_name(dest.name + ".tmp")
        with tmp.open("wb") as fh:
            np.save(fh, np.array(reply))
        os.replace(tmp, dest)
        written += 1
    if failed:
        raise GroupingError(f"{len(failed)} of {len(names)} samples got no grouping (kept {written} new files in "
                            f"{out}; rerun to resume): " + "; ".join(failed[:3]))
    return {"written": written, "skipped_existing": skipped, "stale_regrouped": stale, "folder": str(out)}
