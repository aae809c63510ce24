"""Dataset adapters: each reads a dataset's own files and returns manifest rows plus problems.

A registry dict maps the adapter name to its function `(root, name, labels, language) -> AdapterResult`.
Formats (as the datasets ship them; MERTools, Emotion-LLaMA and AffectGPT describe them):

- synthetic: `labels.csv` + `ground_truth.csv` written by `esva synth`, videos under `videos/`.
- folder: every video under root; optional `labels.csv` (`name,label` or `name,discrete`) and
  `transcripts.csv` (`name,transcript`).
- mer2023: `train-label.csv` / `test{1,2,3}-label.csv` (`name,discrete,valence`), videos in
  `train/ test1/ test2/ test3/` (or anywhere under root).
- mer2024: `label-disdim.csv` (`name,discrete[,valence]`) and an OV file (`name,openset`, openset a Python
  list string such as "['happy', 'excited']").
- merr: Emotion-LLaMA's space-separated annotation txt (`name frames label [valence]`) plus the
  coarse- and fine-grained caption JSON files ({name: {"caption"| "smp_reason_caption": ...}}).
- emer: v1 `gt-eng.csv` / `gt-chi.csv` (`names,emotions,subtitles,reasons`); v2 `final-EMER-reason.csv`
  (`name,chinese,english`: the *reference explanations*, never transcripts); the CASIA (MER2025 OV-MERD)
  release: `track3_train_ovmerd.csv` (`name,reason`), `track2_train_ovmerd.csv` (`name,openset`).

Transcripts come only from each dataset's own transcript files, named below (`TRANSCRIPTS`), in the
language `data.transcript_language` asks for; a clip without one is counted, never filled from another
file. A valence of -10 is MER's and MERR's "no valence" placeholder and is stored as missing.
"""

from __future__ import annotations

import ast
import csv
import json
import os
from pathlib import Path
from typing import Callable, Iterable

from esva import LABELS, MERR_LABELS
from esva.data.manifest import AdapterResult, Problem, confined, safe_id

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".flv", ".mpg", ".mpeg")

ALIASES = {
    "worry": "worried", "surprised": "surprise", "anger": "angry", "happiness": "happy", "sadness": "sad",
    "neutrality": "neutral", "neu": "neutral", "ang": "angry", "hap": "happy", "wor": "worried", "sur": "surprise",
}


FORMULA_START = ("=", "+", "@", "\t", "\r")  # what a spreadsheet would run as a formula (a name never starts so)


class AdapterError(ValueError):
    """A dataset root that does not hold the files its adapter needs. Names the file."""


def normalise_label(raw: object, labels: Iterable[str]) -> str | None:
    """Map a raw label to the label set; None for empty. Raises KeyError for unknown labels."""
    if raw is None:
        return None
    s = str(raw).strip().lower()
    if s in ("", "nan", "none"):
        return None
    s = ALIASES.get(s, s)
    if s not in set(labels):
        raise KeyError(s)
    return s


def _read_csv(path: Path) -> list[dict[str, str]]:
    """Rows as dicts; a row with more fields than the header is an error naming file and line."""
    reader = None
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as fh:
            rows = []
            reader = csv.DictReader(fh)
            for i, r in enumerate(reader, start=2):
                if None in r:
                    raise AdapterError(f"{path}:{i}: more fields than the header has (an unquoted comma?): {r[None]!r}")
                row = {(k or "").strip(): (v or "").strip() for k, v in r.items()}
                if any("\0" in x for kv in row.items() for x in kv):
                    raise AdapterError(f"{path}:{reader.line_num}: a NUL byte in a field (a binary or corrupt file?)")
                rows.append(row)
            return rows
    except UnicodeDecodeError as exc:
        raise AdapterError(f"{path}: not UTF-8 text ({exc}); re-save it as UTF-8") from None
    except csv.Error as exc:  # NUL bytes, a field over csv's size limit, a broken quote
        line = f":{reader.line_num}" if reader is not None else ""
        raise AdapterError(f"{path}{line}: malformed CSV ({exc})") from None


def _require(path: Path, columns: Iterable[str]) -> list[dict[str, str]]:
    if not path.exists():
        raise AdapterError(f"missing file: {path}")
    header = _header(path)
    missing = [c for c in columns if c not in header]
    if missing:
        raise AdapterError(f"{path}: missing columns {missing} (has {header})")
    return _read_csv(path)


def index_videos(root: Path, exts: Iterable[str] = VIDEO_EXTS) -> dict[str, list[Path]]:
    """stem -> video paths under root (relative), found recursively."""
    exts = tuple(e.lower() for e in exts)
    out: dict[str, list[Path]] = {}
    for dirpath, _, files in os.walk(root):
        for f in sorted(files):
            if f.lower().endswith(exts) and not f.endswith(".part.mp4"):
                p = Path(dirpath, f).relative_to(root)
                out.setdefault(Path(f).stem, []).append(p)
    return out


# each dataset's transcript files, in order of preference: (file, {language: column})
TRANSCRIPTS: dict[str, list[tuple[str, dict[str, str]]]] = {
    "mer2023": [("transcription-engchi-polish.csv", {"english": "english", "chinese": "chinese"}),
                ("transcription.csv", {"chinese": "sentence"})],  # the ASR output (Chinese)
    "mer2024": [("label-transcription.csv", {"english": "english", "chinese": "chinese"}),
                ("transcription-merge.csv", {"chinese": "chinese"}),
                ("transcription_all_new.csv", {"english": "sentence_en"}),
                ("transcription.csv", {"chinese": "sentence"})],
    "merr": [("transcription_en_all.csv", {"english": "sentence"})],
    "emer": [("subtitle_chieng.csv", {"english": "english", "chinese": "chinese"}),
             ("subtitle-eng.csv", {"english": "english", "chinese": "chinese"})],
    "folder": [("transcripts.csv", {"english": "transcript", "chinese": "transcript"})],
    "synthetic": [],  # labels.csv's own transcript column
}


def transcripts(root: Path, adapter: str, language: str) -> tuple[dict[str, str], list[str]]:
    """name -> transcript in `language` from the dataset's own transcript files; and the files used."""
    found: dict[str, str] = {}
    used = []
    for name, columns in TRANSCRIPTS.get(adapter, []):
        path = root / name
        col = columns.get(language)
        if col is None or not path.exists():
            continue
        header = _header(path)
        if "name" not in header or col not in header:
            raise AdapterError(f"{path}: a transcript file needs the columns name,{col} (has {header})")
        used.append(name)
        for r in _read_csv(path):
            if r.get(col) and r["name"] not in found:
                found[r["name"]] = r[col]
    return found, used


class _Builder:
    """Collects rows and problems with the checks every adapter shares."""

    def __init__(self, dataset: str, root: Path, labels: Iterable[str], adapter: str = "folder",
                 language: str = "english"):
        self.dataset, self.root, self.labels = dataset, root, tuple(labels)
        self.videos = index_videos(root)
        self.result = AdapterResult()
        self.seen: dict[str, str] = {}
        self.texts, files = transcripts(root, adapter, language)
        self.result.notes["transcripts"] = {"language": language, "files": files, "found": 0, "missing": 0}
        self.result.notes["valence_placeholders"] = 0

    def add(self, src: str, row_no: int | None, name: str, split: str, label: object = None, valence: object = None,
            ov: list[str] | None = None, transcript: str | None = None, reason: str = "",
            prefer_dir: str | None = None, video: Path | None = None, **extra) -> None:
        self.result.n_in += 1
        name = (name or "").strip()
        if not name:
            self.result.problems.append(Problem(src, row_no, name, "empty name"))
            return
        if name[0] in FORMULA_START:
            self.result.problems.append(Problem(src, row_no, name, "the name looks like a spreadsheet formula; "
                                                                  "no clip is named so"))
            return
        cid = safe_id(name)
        if cid in self.seen:
            self.result.problems.append(Problem(src, row_no, name, f"duplicate id (first seen at {self.seen[cid]})"))
            return
        try:
            lab = normalise_label(label, self.labels)
        except KeyError as exc:
            self.result.problems.append(Problem(src, row_no, name, f"unknown label {exc.args[0]!r} (label set: {list(self.labels)})"))
            return
        cands = [video] if video is not None else (self.videos.get(name) or self.videos.get(Path(name).stem, []))
        if prefer_dir:
            pref = [c for c in cands if c.parts and c.parts[0] == prefer_dir]
            cands = pref or cands
        if not cands:
            self.result.problems.append(Problem(src, row_no, name, f"missing video (no {name}.* under {self.root})"))
            return
        try:
            confined(self.root, cands[0])
        except ValueError as exc:
            self.result.problems.append(Problem(src, row_no, name, str(exc)))
            return
        val = None
        if valence not in (None, ""):
            try:
                val = float(valence)
            except (TypeError, ValueError):
                self.result.problems.append(Problem(src, row_no, name, f"valence {valence!r} is not a number"))
                return
            if val == -10.0:  # MER2023 / MERR: "no valence", not a valence of -10
                val = None
                self.result.notes["valence_placeholders"] += 1
        self.seen[cid] = f"{src}:{row_no}"
        text = transcript if transcript is not None else self.texts.get(name, "")
        self.result.notes["transcripts"]["found" if text else "missing"] += 1
        self.result.rows.append({
            "clip_id": cid, "video_path": cands[0].as_posix(), "root": str(self.root), "split": split,
            "label": lab, "valence": val, "ov_labels": [w.strip().lower() for w in (ov or []) if w.strip()],
            "transcript": text,
            "reason": reason or "", "dataset": self.dataset, "source_name": name, **extra,
        })


def synthetic(root: Path, dataset: str, labels: Iterable[str], language: str = "english") -> AdapterResult:
    b = _Builder(dataset, root, labels, "synthetic", language)
    rows = _require(root / "labels.csv", ["name", "split", "discrete", "valence", "transcript", "reason", "openset"])
    gt = {r["clip_id"]: r for r in _require(root / "ground_truth.csv", ["clip_id", "offset_ms"])}
    for i, r in enumerate(rows, start=2):
        extra = {}
        g = gt.get(r["name"])
        if g is None:
            b.result.problems.append(Problem("labels.csv", i, r["name"], "no ground-truth row in ground_truth.csv"))
            b.result.n_in += 1
            continue
        for k, v in g.items():
            if k in ("clip_id", "index", "label", "split", "transcript", "reason", "ov_labels", "valence"):
                continue
            try:
                extra[f"gt_{k}" if k != "offset_ms" else k] = float(v) if v not in ("True", "False") else v == "True"
            except ValueError:
                extra[f"gt_{k}"] = v
        b.add("labels.csv", i, r["name"], r["split"], r["discrete"], r["valence"], _pylist(r["openset"]),
              r["transcript"], r["reason"], **extra)
    return b.result


def _pylist(s: str) -> list[str]:
    s = (s or "").strip()
    if not s:
        return []
    try:
        v = ast.literal_eval(s)
    except (ValueError, SyntaxError):
        v = [w for w in s.strip("[]").replace(";", ",").split(",")]
    if isinstance(v, str):
        v = [v]
    return [str(w).strip().strip("'\"") for w in v if str(w).strip()]


def folder(root: Path, dataset: str, labels: Iterable[str], language: str = "english") -> AdapterResult:
    b = _Builder(dataset, root, labels, "folder", language)
    lab_file = root / "labels.csv"
    known: dict[str, tuple[int, dict]] = {}
    if lab_file.exists():
        for i, r in enumerate(_read_csv(lab_file), start=2):
            known[Path(r.get("name", "")).stem] = (i, r)
    for stem, paths in sorted(b.videos.items()):
        for p in paths:
            i, r = known.get(stem, (None, {}))
            name = p.with_suffix("").as_posix() if len(paths) > 1 else stem
            b.add("labels.csv" if i else p.as_posix(), i, name, r.get("split") or "all",
                  r.get("label") or r.get("discrete"), r.get("valence"), _pylist(r.get("openset", "")), None,
                  r.get("reason", ""), video=p)
    return b.result


def mer2023(root: Path, dataset: str, labels: Iterable[str], language: str = "english") -> AdapterResult:
    b = _Builder(dataset, root, labels, "mer2023", language)
    files = [(s, root / f"{s}-label.csv") for s in ("train", "test1", "test2", "test3")]
    if not any(p.exists() for _, p in files):
        raise AdapterError(f"{root}: no MER2023 label file (expected train-label.csv or test1/2/3-label.csv)")
    for split, path in files:
        if not path.exists():
            continue
        for i, r in enumerate(_require(path, ["name", "discrete"]), start=2):
            b.add(path.name, i, r["name"], split, r["discrete"], r.get("valence"), prefer_dir=split)
    return b.result


def mer2024(root: Path, dataset: str, labels: Iterable[str], language: str = "english") -> AdapterResult:
    b = _Builder(dataset, root, labels, "mer2024", language)
    disc = root / "label-disdim.csv"
    ov_files = [p for p in sorted(root.glob("*.csv")) if {"name", "openset"} <= set(_header(p))]
    if not disc.exists() and not ov_files:
        raise AdapterError(f"{root}: no MER2024 label file (expected label-disdim.csv or a name,openset CSV)")
    ov: dict[str, list[str]] = {}
    for p in ov_files:
        for r in _read_csv(p):
            ov[r["name"]] = _pylist(r["openset"])
    done = set()
    if disc.exists():
        for i, r in enumerate(_require(disc, ["name", "discrete"]), start=2):
            b.add(disc.name, i, r["name"], "train", r["discrete"], r.get("valence"), ov.get(r["name"]))
            done.add(r["name"])
    for p in ov_files:
        for i, r in enumerate(_read_csv(p), start=2):
            if r["name"] not in done:
                b.add(p.name, i, r["name"], "ov", None, None, ov[r["name"]])
                done.add(r["name"])
    return b.result


def _header(path: Path) -> list[str]:
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as fh:
            return [h.strip() for h in next(csv.reader(fh), [])]
    except UnicodeDecodeError as exc:
        raise AdapterError(f"{path}: not UTF-8 text ({exc})") from None


REASON_KEYS = ("smp_reason_caption", "reason_caption", "caption", "description", "reason")


def _caption(v: object) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, dict):
        for k in REASON_KEYS:
            if isinstance(v.get(k), str):
                return v[k]
    return ""


def merr(root: Path, dataset: str, labels: Iterable[str], language: str = "english") -> AdapterResult:
    b = _Builder(dataset, root, labels, "merr", language)
    txts = sorted(root.glob("*.txt"))
    if not txts:
        raise AdapterError(f"{root}: no MERR annotation txt (`name frames label [valence]` per line)")
    captions: dict[str, str] = {}
    for grain in ("coarse", "fine"):  # fine-grained captions win over coarse ones
        for p in sorted(root.glob(f"*{grain}*.json")):
            try:
                with p.open("r", encoding="utf-8") as fh:
                    data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise AdapterError(f"{p}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
            if not isinstance(data, dict):
                raise AdapterError(f"{p}: expected a JSON object name -> caption, got {type(data).__name__}")
            for k, v in data.items():
                if _caption(v):
                    captions[k] = _caption(v)
    # MERR_fine_grained.txt lists a subset of MERR_coarse_grained.txt's clips: a clip in several files is one
    # row (the first file's, coarse before fine), counted; the same name with another label is a problem
    listed: dict[str, tuple[str, int, str]] = {}
    b.result.notes["in_several_files"] = 0
    for path in txts:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise AdapterError(f"{path}: not UTF-8 text ({exc})") from None
        for i, line in enumerate(lines, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 3:
                b.result.n_in += 1
                b.result.problems.append(Problem(path.name, i, parts[0], f"expected `name frames label [valence]`, got {line.strip()!r}"))
                continue
            first = listed.get(parts[0])
            if first is not None and first[0] != path.name:
                if ALIASES.get(parts[2].lower(), parts[2].lower()) == ALIASES.get(first[2].lower(), first[2].lower()):
                    b.result.notes["in_several_files"] += 1
                else:
                    b.result.n_in += 1
                    b.result.problems.append(Problem(path.name, i, parts[0], f"label {parts[2]!r} here but {first[2]!r} "
                                                                             f"in {first[0]}:{first[1]}"))
                continue
            listed.setdefault(parts[0], (path.name, i, parts[2]))
            val = parts[3] if len(parts) > 3 else None
            b.add(path.name, i, parts[0], "train", parts[2], val, reason=captions.get(parts[0], ""))
    return b.result


CHINESE_LABELS = {"生气": "angry", "高兴": "happy", "担忧": "worried", "悲伤": "sad", "惊讶": "surprise", "中性": "neutral"}


def emer(root: Path, dataset: str, labels: Iterable[str], language: str = "english") -> AdapterResult:
    """EMER in any of its releases, one row per clip (a later release's row wins over an earlier one):
    - CASIA / MER2025 OV-MERD (split `ovmerd`): `track3_train_ovmerd.csv` (name,reason) with
      `track2_train_ovmerd.csv` (name,openset) for the open-vocabulary labels;
    - v2 (split `v2`): `final-EMER-reason.csv` (name,chinese,english), the reference explanations;
    - v1 (split `v1`): `gt-eng.csv` (English) or `gt-chi.csv` (Chinese) (names,emotions,subtitles,reasons),
      whose `subtitles` are the transcripts.
    A reference explanation only ever fills `reason`; transcripts come from the subtitles (v1) or the
    release's subtitle file (`subtitle_chieng.csv`)."""
    b = _Builder(dataset, root, labels, "emer", language)
    casia, v2 = root / "track3_train_ovmerd.csv", root / "final-EMER-reason.csv"
    v1 = [root / ("gt-eng.csv" if language == "english" else "gt-chi.csv"), root / "gt-eng.csv", root / "gt-chi.csv"]
    v1 = next((p for p in v1 if p.exists()), None)
    legacy = [p for p in sorted(root.glob("*.csv")) if p != v1 and p.name not in ("gt-eng.csv", "gt-chi.csv")
              and {"names", "emotions"} <= set(_header(p))]
    if not (casia.exists() or v2.exists() or v1 or legacy):
        raise AdapterError(f"{root}: no EMER file (track3_train_ovmerd.csv, final-EMER-reason.csv, gt-eng.csv "
                           "or gt-chi.csv)")
    if casia.exists():
        ov_file = root / "track2_train_ovmerd.csv"
        ov = {r["name"]: _pylist(r["openset"]) for r in _require(ov_file, ["name", "openset"])} if ov_file.exists() else {}
        for i, r in enumerate(_require(casia, ["name", "reason"]), start=2):
            b.add(casia.name, i, r["name"], "ovmerd", None, None, ov.get(r["name"]), None, r["reason"])
    if v2.exists():
        col = "english" if language == "english" else "chinese"
        earlier = set(b.seen)
        for i, r in enumerate(_require(v2, ["name", col]), start=2):
            if safe_id(r["name"]) in earlier:  # a later release has this clip
                continue
            b.add(v2.name, i, r["name"], "v2", None, None, None, None, r[col])
    earlier = set(b.seen)
    for path in [p for p in (v1,) if p] + legacy:
        for i, r in enumerate(_require(path, ["names", "emotions", "subtitles", "reasons"]), start=2):
            if safe_id(r["names"]) in earlier:  # a later release has this clip
                continue
            raw = r["emotions"].replace(";", ",").replace("，", ",").replace("、", ",")
            words = [w.strip().lower() for w in raw.split(",") if w.strip()]
            words = [CHINESE_LABELS.get(w, w) for w in words]
            label = next((w for w in (ALIASES.get(x, x) for x in words) if w in b.labels), None)
            b.add(path.name, i, r["names"], "v1", label, None, words, b.texts.get(r["names"]) or r["subtitles"],
                  r["reasons"])
    return b.result


ADAPTERS: dict[str, Callable[..., AdapterResult]] = {
    "synthetic": synthetic, "folder": folder, "mer2023": mer2023, "mer2024": mer2024, "merr": merr, "emer": emer,
}


# each adapter's label set: MERR's nine (Emotion-LLaMA's spelling), MER2023/2024's six elsewhere
LABEL_SETS: dict[str, tuple[str, ...]] = {"merr": MERR_LABELS}


def run_adapter(adapter: str, root: str | Path, dataset: str | None = None, labels: Iterable[str] | None = None,
                language: str = "english") -> AdapterResult:
    """The adapter's rows; `labels` defaults to the dataset's own label set (LABEL_SETS, else MER's six)."""
    if adapter not in ADAPTERS:
        raise AdapterError(f"unknown dataset adapter {adapter!r}; choose from {sorted(ADAPTERS)}")
    if language not in ("english", "chinese"):
        raise AdapterError(f"transcript language must be english or chinese, got {language!r}")
    root = Path(root)
    if not root.is_dir():
        raise AdapterError(f"dataset root is not a directory: {root}")
    labels = tuple(labels) if labels is not None else LABEL_SETS.get(adapter, LABELS)
    return ADAPTERS[adapter](root, dataset or adapter, labels, language)
