"""Instruction data for stage 2, built from the manifest, and the parsing of generated answers.

Every sample follows Emotion-LLaMA's template (first_face.py), inside Llama-2-chat's `[INST] ... [/INST]`:

    <video><VideoHere></video> <feature><FeatureHere></feature> The person in video says: {transcript}.  [{task}] {instruction}

Tasks, with Emotion-LLaMA's instruction texts:
- `emotion`: the target is the label word; the instruction lists the run's training vocabulary in
  Emotion-LLaMA's order (`instruction_labels`: on MERR exactly Emotion-LLaMA's nine, on a six-label corpus six);
- `reason`: the coarse reasoning text (MERR_coarse_grained `caption`; the manifest's `reason`);
- `reason_v2`: the fine reasoning text (MERR_fine_grained `smp_reason_caption`; the manifest's `reason_fine`
  where a corpus has it);
- `ov` (esva's own, for MER2024-OV): a comma-separated open-vocabulary label list.
Reasoning targets are normalised as Emotion-LLaMA's `blip_caption` does: lower case, `.!"()*#:;~` as spaces,
whitespace collapsed, at most 200 words. Training draws one phrasing per sample (seeded); evaluation picks
one per clip from a hash of its id, so a run is reproducible and no phrasing is favoured.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from esva import LABELS, MERR_LABELS

TASKS = ("emotion", "reason", "reason_v2", "ov")

VIDEO_SLOT = "<VideoHere>"
FEATURE_SLOT = "<FeatureHere>"
TEMPLATE = ("<video>" + VIDEO_SLOT + "</video> <feature>" + FEATURE_SLOT
            + "</feature> The person in video says: {transcript}.  [{task}] {instruction} ")

# Emotion-LLaMA's nine labels, in the order its [emotion] instruction lists them
EMOTION_LLAMA_LABELS = MERR_LABELS


def instruction_labels(vocab) -> tuple[str, ...]:
    """The labels an [emotion] instruction lists: the run's vocabulary, in Emotion-LLaMA's order."""
    vocab = tuple(vocab)
    return tuple(lab for lab in EMOTION_LLAMA_LABELS if lab in vocab) + tuple(v for v in vocab if v not in EMOTION_LLAMA_LABELS)
_REASON = (
    "Please analyze all the clues in the video and reason out the emotional label of the person in the video.",
    "What is the emotional state of the person in the video? Please tell me the reason.",
    "What are the facial expressions and vocal tone used in the video? What is the intended meaning behind his "
    "words? Which emotion does this reflect?",
    "Please integrate information from various modalities to infer the emotional category of the person in the video.",
    "Could you describe the emotion-related features of the individual in the video? What emotional category do "
    "they fall into?",
)
PHRASINGS: dict[str, tuple[str, ...]] = {
    "emotion": ("Please determine which emotion label in the video represents: {labels}.",),
    "reason": _REASON,
    "reason_v2": _REASON,
    "ov": (
        "List every emotion word that describes the person, separated by commas.",
        "Which emotions can you recognise? Give a comma-separated list.",
        "Name all the emotions the person may feel, as a comma-separated list of words.",
    ),
}
CAPTION_WORDS = 200


def caption_text(text: str, max_words: int = CAPTION_WORDS) -> str:
    """Emotion-LLaMA's normalisation of reasoning answers (blip_caption)."""
    t = re.sub(r"[.!\"()*#:;~]", " ", str(text).lower())
    return " ".join(re.sub(r"\s{2,}", " ", t).strip().split(" ")[:max_words]).strip()


@dataclass(frozen=True)
class Instruction:
    """One stage-2 sample: the template's text parts and the answer (empty at inference)."""

    clip_id: str
    task: str
    transcript: str
    instruction: str
    target: str = ""


def instruction_text(task: str, phrasing: int, labels: tuple[str, ...] = EMOTION_LLAMA_LABELS) -> str:
    if task not in PHRASINGS:
        raise ValueError(f"unknown task {task!r}; choose from {list(TASKS)}")
    options = PHRASINGS[task]
    return options[phrasing % len(options)].format(labels=", ".join(labels))


def target_text(row, task: str) -> str | None:
    """The answer for `task` from a manifest row, or None when the row has nothing to learn from."""
    if task == "emotion":
        lab = row.label
        return str(lab) if isinstance(lab, str) and lab else None
    if task in ("reason", "reason_v2"):
        text = getattr(row, "reason" if task == "reason" else "reason_fine", None)
        if text is None or (isinstance(text, float) and np.isnan(text)):
            return None
        return caption_text(text) or None
    ov = [str(w).strip().lower() for w in (row.ov_labels if row.ov_labels is not None else []) if str(w).strip()]
    return ", ".join(dict.fromkeys(ov)) or None


def clip_phrasing(clip_id: str) -> int:
    """The evaluation phrasing of a clip: stable across runs and machines (crc32, not hash())."""
    return zlib.crc32(clip_id.encode("utf-8"))


def training_samples(df: pd.DataFrame, mix: dict[str, float], seed: int, epoch: int,
                     labels: tuple[str, ...] = EMOTION_LLAMA_LABELS) -> list[Instruction]:
    """One epoch of samples. `mix[task]` is the expected number of samples per clip and epoch:
    its integer part is always drawn, its fraction with that probability (seeded by seed and epoch)."""
    rng = np.random.default_rng([seed, epoch])
    out: list[Instruction] = []
    for row in df.itertuples(index=False):
        for task in TASKS:
            w = float(mix.get(task, 0.0))
            n = int(w) + int(rng.random() < (w - int(w)))
            target = target_text(row, task)
            if target is None:
                continue
            for _ in range(n):
                phr = int(rng.integers(len(PHRASINGS[task])))
                out.append(Instruction(row.clip_id, task, str(row.transcript or ""), instruction_text(task, phr, labels),
                                       target))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def eval_samples(df: pd.DataFrame, task: str, labels: tuple[str, ...] = EMOTION_LLAMA_LABELS,
                 with_targets: bool = True) -> list[Instruction]:
    """One sample per clip for `task`, the phrasing chosen by clip id; targets kept for scoring."""
    out = []
    for row in df.itertuples(index=False):
        target = (target_text(row, task) or "") if with_targets else ""
        out.append(Instruction(row.clip_id, task, str(row.transcript or ""),
                               instruction_text(task, clip_phrasing(row.clip_id), labels), target))
    return out


_WORD = re.compile(r"[a-z]+(?:[-'][a-z]+)*")


def lenient_label(answer: str, labels: tuple[str, ...] = LABELS, default: str = "neutral") -> str:
    """Emotion-LLaMA's reading of an [emotion] answer (its MER2023 evaluation): the last space-separated
    token of the answer, lower-cased, when it is one of `labels`, else `default` ("neutral"); punctuation
    is not stripped, so "happy." is read as the default, as there. Reported beside the strict parse only so
    that figures can be set beside Emotion-LLaMA's published ones."""
    tokens = str(answer).strip().split(" ")
    last = tokens[-1].lower() if tokens else ""
    return last if last in labels else default


def parse_label(answer: str, labels: tuple[str, ...] = LABELS) -> str | None:
    """The label an answer names, or None when it names none or several different ones.

    Whole words only and case-insensitive; "surprised" is not silently read as "surprise". An answer
    outside the label set is None, and callers count it as unparseable."""
    words = _WORD.findall(answer.lower())
    found = [w for w in words if w in labels]
    if not found:
        return None
    if words and words[0] in labels:  # "happy, because ..." names the label first
        return words[0]
    return found[0] if len(set(found)) == 1 else None


def normalise_label(word: str) -> str:
    """Lower case, letters, apostrophes, hyphens and single spaces only: how labels are compared."""
    return re.sub(r"\s+", " ", re.sub(r"[^a-z' -]", "", str(word).lower())).strip(" -'")


def parse_ov(answer: str) -> list[str]:
    """A comma-separated answer as a list of normalised labels, in order, without duplicates or empties."""
    items = [normalise_label(part) for part in re.split(r"[,;\n]", answer)]
    return list(dict.fromkeys(i for i in items if i))
