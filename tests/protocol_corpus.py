"""A tiny copy of the paper's four benchmark corpora, in their published formats (esva/data/adapters.py), with
the overlaps the real ones have, for tests of the paper's protocol (instruction-tune on MERR; test on MER2023
test3, MER2024-OV and EMER):

- MER2023 (`mer2023/`): `train-label.csv`, `test1-label.csv`, `test3-label.csv` (`name,discrete,valence`, test3's
  valence the -10 placeholder), videos in `train/ test1/ test3/`, `transcription-engchi-polish.csv`
  (`name,chinese,english`; one clip has none).
- MERR (`merr/`), built from MER2023's videos: `MERR_coarse_grained.txt` with all nine labels and
  `MERR_fine_grained.txt`, a subset of it (as Emotion-LLaMA ships them: `name frames label [valence]`), their
  caption JSONs, `transcription_en_all.csv` (English only). Its clips include MER2023 training clips (same
  name, same bytes), a MER2023 test3 clip by name, and another test3 clip's bytes under a new name.
- EMER (`emer/`), MER2023 clips: v2 `final-EMER-reason.csv` (the reference explanations), v1 `gt-eng.csv` and
  `gt-chi.csv` (one clip in both releases, one in v1 only), `subtitle_chieng.csv`.
- MER2024 (`mer2024/`): `label-disdim.csv` (its train split), `label-ov.csv` (`name,openset`: its OV split,
  whose names are EMER's), `label-transcription.csv` (`name,chinese,english`).

A clip shared by several datasets is the same file (identical bytes) in each. `build(root)` writes tiny,
distinct byte strings as videos (enough for ingest); `build(root, pool)` gives every distinct clip a real video,
a stream copy of one of `pool` (e.g. esva synth's clips) with its own metadata tag, so that no two distinct clips
share bytes.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

MER2023 = {  # split -> (name, label, valence)
    "train": [("sample_00000001", "happy", "1.5"), ("sample_00000002", "sad", "-2.0"),
              ("sample_00000003", "angry", "-1.0"), ("sample_00000004", "neutral", "0.0")],
    "test1": [("sample_00001001", "surprise", "0.5"), ("sample_00001002", "worried", "-1.0")],
    "test3": [("samplenew_00000001", "happy", "-10"), ("samplenew_00000002", "worried", "-10"),
              ("samplenew_00000003", "surprise", "-10")],
}
TRANSCRIPTS = {  # name -> (chinese, english); sample_00001002 has none (counted, never filled)
    "sample_00000001": ("我今天太高兴了。", "I am so happy today."),
    "sample_00000002": ("我又失败了。", "I failed again."),
    "sample_00000003": ("你怎么敢这样对我！", "How dare you do this to me!"),
    "sample_00000004": ("我们明天开会。", "We have a meeting tomorrow."),
    "sample_00001001": ("什么？真的吗？", "What? Really?"),
    "samplenew_00000001": ("太好了，我们赢了！", "Great, we won!"),
    "samplenew_00000002": ("我担心他不会回来。", "I am afraid he will not come back."),
    "samplenew_00000003": ("天哪，这是怎么回事？", "Oh my, what happened?"),
}
# MERR: (name, frames, label, valence or None, the MER2023 clip whose video it is, or None for a clip of its own)
MERR = [
    ("sample_00000001", 75, "happy", "1.5", "sample_00000001"),       # a MER2023 training clip: trains
    ("sample_00000002", 60, "sad", "-10", "sample_00000002"),
    ("sample_00000003", 80, "angry", "-10", "sample_00000003"),       # EMER's and MER2024-OV's clip: leak by name
    ("sample_00000004", 50, "neutral", None, "sample_00000004"),
    ("samplenew_00000001", 64, "happy", "-10", "samplenew_00000001"),  # MER2023 test3 by name: leak by name
    ("samplenew_00009002", 70, "worried", "-10", "samplenew_00000002"),  # test3's bytes, another name: by content
    ("samplenew_00000101", 55, "neutral", None, None),
    ("samplenew_00000102", 66, "fear", "-10", None),
    ("samplenew_00000103", 48, "contempt", None, None),
    ("samplenew_00000104", 52, "doubt", None, None),
    ("samplenew_00000105", 61, "surprise", None, None),
    ("samplenew_00000106", 58, "worried", None, None),
    ("samplenew_00000107", 63, "happy", None, None),
    ("samplenew_00000108", 57, "sad", None, None),
    ("samplenew_00000109", 49, "angry", None, None),
    ("samplenew_00000110", 53, "fear", None, None),
]
MERR_FINE = ("sample_00000001", "samplenew_00000102", "samplenew_00000103")  # a subset of the coarse file
MERR_LABELS = ("neutral", "angry", "happy", "sad", "worried", "surprise", "fear", "contempt", "doubt")
EMER_V2 = {  # name -> (chinese, english) reference explanations
    "sample_00000003": ("他皱着眉头，提高了声音，显得很生气。", "He frowns and raises his voice: he is angry."),
    "sample_00001001": ("她睁大眼睛，语调上扬，显得很惊讶。", "Her eyes widen and her pitch rises: she is surprised."),
    "samplenew_00000003": ("他张大嘴巴，非常震惊。", "His mouth falls open: he is shocked."),
}
EMER_V1 = [  # (name, english emotions, chinese emotions, english reason); sample_00000003 is in v2 too (v2 wins)
    ("sample_00000003", "angry, annoyed", "生气，烦躁", "A frown and a loud voice."),
    ("sample_00000002", "sad, disappointed", "悲伤，失望", "Drooping eyes and a low voice suggest sadness."),
]
MER2024_TRAIN = [("sample_00002001", "happy", "2.0"), ("sample_00002002", "sad", "-1.5")]
MER2024_OV = {  # MER2024-OV's names are EMER's (plus an open set for one of its labelled clips)
    "sample_00000003": ["angry", "annoyed"], "sample_00001001": ["surprised", "curious"],
    "samplenew_00000003": ["surprised", "shocked"], "sample_00002001": ["happy", "excited"],
}
MER2024_TRANSCRIPTS = {"sample_00002001": ("太棒了！", "Wonderful!"), "sample_00002002": ("我很难过。", "I am sad.")}


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_protocol_block() -> dict:
    """The README's params block for the real benchmarks (the first ```yaml block under "Running on the real
    benchmarks"), parsed as written."""
    import yaml

    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Running on the real benchmarks"):]
    start = section.index("```yaml\n") + len("```yaml\n")
    return yaml.safe_load(section[start:section.index("```", start)])


def paper_params(root: Path) -> dict:
    """The `data` and `evaluate` sections of the paper's protocol over the corpus under `root`: the README's
    block verbatim, with each dataset root (`/data/<NAME>` there) pointed at that dataset under `root`. Its
    `features` and `llm` sections (hub checkpoints, a GPU) are not applied: tests run the tiny encoders."""
    root = Path(root)
    block = readme_protocol_block()
    data, evaluate = dict(block["data"]), dict(block["evaluate"])
    sources = []
    for src in data["sources"]:
        assert Path(src["root"]).name.lower() == src["name"], f"README: the root of {src['name']} is {src['root']}"
        sources.append({**src, "root": str(root / src["name"])})
    data["sources"] = sources
    return {"data": data, "evaluate": evaluate}


def _csv(path: Path, header: list[str], rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


class _Videos:
    """One file per distinct clip (made once), copied byte for byte wherever a dataset ships that clip."""

    def __init__(self, pool: list[Path] | None):
        self.pool = [Path(p) for p in pool] if pool else None
        self.made: dict[str, Path] = {}

    def put(self, clip: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if clip in self.made:
            shutil.copyfile(self.made[clip], dest)
            return
        if self.pool is None:
            dest.write_bytes(f"video of clip {clip}\n".encode() * 64)
        else:
            from tests.conftest import ffmpeg

            src = self.pool[len(self.made) % len(self.pool)]
            ffmpeg("-i", str(src), "-map", "0", "-c", "copy", "-metadata", f"comment={clip}", str(dest))
        self.made[clip] = dest


def build(root: Path, pool: list[Path] | None = None) -> Path:
    """The four corpora under root/{mer2023,merr,emer,mer2024}; see the module's docstring. Returns root."""
    root = Path(root)
    v = _Videos(pool)
    mer = root / "mer2023"
    for split, rows in MER2023.items():
        _csv(mer / f"{split}-label.csv", ["name", "discrete", "valence"], rows)
        for name, _, _ in rows:
            v.put(name, mer / split / f"{name}.mp4")
    _csv(mer / "transcription-engchi-polish.csv", ["name", "chinese", "english"],
         [(n, zh, en) for n, (zh, en) in TRANSCRIPTS.items()])

    merr = root / "merr"
    merr.mkdir(parents=True, exist_ok=True)
    line = {n: " ".join(str(x) for x in (n, f, lab, val) if x is not None) for n, f, lab, val, _ in MERR}
    (merr / "MERR_coarse_grained.txt").write_text("\n".join(line[n] for n, *_ in MERR) + "\n", encoding="utf-8")
    (merr / "MERR_fine_grained.txt").write_text("\n".join(line[n] for n in MERR_FINE) + "\n", encoding="utf-8")
    coarse = {n: {"AU_list": ["AU04", "AU07"], "visual_prior_list": ["brow lowered"], "audio_prior_list": "a firm tone",
                  "smp_reason_caption": f"Coarse: the expression and tone of {n} suggest {lab}."}
              for n, _, lab, _, _ in MERR}
    fine = {n: {"smp_reason_caption": f"Fine: in {n} the brows, the mouth and the words together show "
                                      f"{dict((m, lab) for m, _, lab, _, _ in MERR)[n]}."} for n in MERR_FINE}
    (merr / "MERR_coarse_grained.json").write_text(json.dumps(coarse, ensure_ascii=False), encoding="utf-8")
    (merr / "MERR_fine_grained.json").write_text(json.dumps(fine, ensure_ascii=False), encoding="utf-8")
    _csv(merr / "transcription_en_all.csv", ["name", "sentence"],
         [(n, TRANSCRIPTS[n][1] if n in TRANSCRIPTS else f"Words of {n}.") for n, *_ in MERR if n != "samplenew_00000104"])
    for n, _, _, _, clip in MERR:
        v.put(clip or n, merr / "video" / f"{n}.mp4")

    emer = root / "emer"
    _csv(emer / "final-EMER-reason.csv", ["name", "chinese", "english"], [(n, zh, en) for n, (zh, en) in EMER_V2.items()])
    _csv(emer / "gt-eng.csv", ["names", "emotions", "subtitles", "reasons"],
         [(n, en, TRANSCRIPTS[n][1], why) for n, en, _, why in EMER_V1])
    _csv(emer / "gt-chi.csv", ["names", "emotions", "subtitles", "reasons"],
         [(n, zh, TRANSCRIPTS[n][0], why) for n, _, zh, why in EMER_V1])
    names = list(EMER_V2) + [n for n, *_ in EMER_V1 if n not in EMER_V2]
    _csv(emer / "subtitle_chieng.csv", ["name", "chinese", "english"], [(n, *TRANSCRIPTS[n]) for n in names])
    for n in names:
        v.put(n, emer / "video" / f"{n}.mp4")

    m24 = root / "mer2024"
    _csv(m24 / "label-disdim.csv", ["name", "discrete", "valence"], MER2024_TRAIN)
    _csv(m24 / "label-ov.csv", ["name", "openset"], [(n, repr(words)) for n, words in MER2024_OV.items()])
    texts = {**{n: TRANSCRIPTS[n] for n in MER2024_OV if n in TRANSCRIPTS}, **MER2024_TRANSCRIPTS}
    _csv(m24 / "label-transcription.csv", ["name", "chinese", "english"], [(n, zh, en) for n, (zh, en) in texts.items()])
    for n in [n for n, *_ in MER2024_TRAIN] + [n for n in MER2024_OV if n not in dict((m, 0) for m, *_ in MER2024_TRAIN)]:
        v.put(n, m24 / "video" / f"{n}.mp4")
    return root
