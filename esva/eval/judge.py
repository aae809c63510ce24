"""An optional LLM judge for EMER, following the official ChatGPT scoring procedure.

Where the procedure was read: github.com/zeroQiaoba/AffectGPT, commit e0aec193cacde8991710ccdf65b7b80122322abb,
`AffectGPT/evaluation.py` (EMER's evaluation; `EMER/README.md` describes the data). It computes two
scores per (reference, generated) explanation pair, each on a 1-10 scale, asking gpt-3.5-turbo-16k-0613
at temperature 0 with one user message per call:

- clue overlap (`func_clue_scoring`): one call with both explanations, asking the model to summarise
  the emotional states in the reference, then in the prediction, then score their overlap 1-10 (higher
  overlap, higher score), answering "score: <value>; reason: <why>";
- label overlap (`get_summarized_emotions` + `func_label_scoring`), two steps: first, for each
  explanation separately, ask for the person's most likely emotional state as emotion words only
  (one few-shot example: "looks happy but is actually anxious" -> "anxious"); then give the two emotion
  summaries and ask for their overlap on 1-10, answering in the same score/reason form.

Each reply's score is the first number in it: the first match of the regex `[\\d][.]*[\\d]*`, as a
float. A model's score is the mean over its samples (`chatgpt_scoring_analyze`). So `emer.json` gets
`clue_overlap_judge` and `label_overlap_judge` (1-10), as in the paper's Table 3.

Our prompts are our own English paraphrases of the official (Chinese) ones, with the same steps and
output form. Differences, on purpose: a score outside 1-10 (e.g. "0", or a stray "85") is a `JudgeError`
rather than clipped or kept, because it means the first number was not the score; a failed call or a
reply with no number is a `JudgeError` (the official code would crash on it), which `esva evaluate`
counts (`judge_failed`) and leaves out of the means. Off unless `evaluate.judge.base_url` and `model` are
set; never called by the tests, which inject a fake `post`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from esva.eval.chat import EndpointError, Messages, Post, chat_post, endpoint_of, user

PROCEDURE = ("EMER official (AffectGPT evaluation.py): clue overlap = one call scoring the two explanations "
             "1-10; label overlap = two steps (summarise each explanation's emotions, then score their overlap "
             "1-10); score = first number in the reply")
SCALE = (1.0, 10.0)
_FIRST_NUMBER = re.compile(r"[\d][.]*[\d]*")  # the official parse rule, verbatim

_SCORE_FORM = "Reply in the form 'Score': <score>; 'Reason': <reason>, with the score first."

CLUE_PROMPT = (
    "Below are a reference description of a person in a video and a predicted description of the same person. "
    "Score the predicted description from 1 to 10: first sum up the emotional states of the person that the "
    "reference description expresses, then those that the predicted description expresses, and judge how much "
    "they overlap; the more overlap, the higher the score.\n"  # unnumbered: the score is the reply's first number
    f"{_SCORE_FORM}\n\n"
    "Reference description: {reference}\n\n"
    "Predicted description: {prediction}\n\n"
    "Output:"
)

SUMMARY_PROMPT = (
    "Read the description of a video below and infer the person's most likely emotional state. "
    "Answer with emotion words only.\n\n"
    "Description: He seems cheerful on the surface, but underneath he is anxious.\n"
    "Emotions: anxious\n\n"
    "Description: {explanation}\n"
    "Emotions:"
)

LABEL_PROMPT = (
    "Below are a person's reference emotions and predicted emotions. Score from 1 to 10 how much the predicted "
    "emotions overlap the reference emotions: the more overlap, the higher the score.\n"
    f"{_SCORE_FORM}\n\n"
    "Reference emotions: {reference}\n\n"
    "Predicted emotions: {prediction}\n\n"
    "Output:"
)


class JudgeError(RuntimeError):
    """The judge endpoint failed or answered in a form that cannot be read."""


# pure functions: messages and parsing

def clue_messages(reference: str, prediction: str) -> Messages:
    """The clue-overlap call: both explanations, summarised and compared by the judge in one reply."""
    return user(CLUE_PROMPT.format(reference=reference.strip(), prediction=prediction.strip()))


def summary_messages(explanation: str) -> Messages:
    """Label overlap, step 1: the emotion words one explanation expresses."""
    return user(SUMMARY_PROMPT.format(explanation=explanation.strip()))


def label_messages(reference_emotions: list[str], prediction_emotions: list[str]) -> Messages:
    """Label overlap, step 2: the two step-1 summaries, to be scored 1-10."""
    return user(LABEL_PROMPT.format(reference=", ".join(reference_emotions),
                                    prediction=", ".join(prediction_emotions)))


_LEAD = re.compile(r"^\s*(?:output|emotions?|answer|result)\s*[:：]\s*", re.I)
_SPLIT = re.compile(r"[,;/\n，、；]|\band\b")
_TRIM = " \t-*•·'\"`[](){}.。!"


def parse_summary(text: str) -> list[str]:
    """The emotion words of a step-1 reply ("Emotions: anxious, a bit sad" -> ["anxious", "a bit sad"]):
    a leading label dropped, split on commas / semicolons / slashes / lines / "and", lower-cased, in order,
    without repeats. No word at all is a `JudgeError`."""
    words: list[str] = []
    for part in _SPLIT.split(_LEAD.sub("", text.strip())):
        w = " ".join(_LEAD.sub("", part).strip(_TRIM).lower().split())
        if w and w not in words:
            words.append(w)
    if not words:
        raise JudgeError(f"no emotion words in the summary reply: {text[:200]!r}")
    return words


def parse_score(text: str) -> float:
    """The first number in a scoring reply (the official rule: regex `[\\d][.]*[\\d]*`, first match, float).
    No number, an unreadable one ("1..2"), or one outside 1-10 is a `JudgeError` (not clipped)."""
    found = _FIRST_NUMBER.findall(text)
    if not found:
        raise JudgeError(f"no score in the reply: {text[:200]!r}")
    try:
        value = float(found[0])
    except ValueError:
        raise JudgeError(f"unreadable score {found[0]!r} in the reply: {text[:200]!r}") from None
    if not SCALE[0] <= value <= SCALE[1]:
        raise JudgeError(f"score {value:g} is outside 1-10 (the first number is not the score?): {text[:200]!r}")
    return value


@dataclass(frozen=True)
class JudgeScore:
    clue: float  # clue overlap, 1-10
    label: float  # label overlap, 1-10
    reference_emotions: tuple[str, ...]  # label overlap's step-1 summaries
    prediction_emotions: tuple[str, ...]


class Judge:
    """Scores one (reference, prediction) pair with four calls, in this order: clue overlap; summary of the
    reference; summary of the prediction; label overlap of the two summaries. `post` sends messages and
    returns the reply's text (`esva.eval.chat.chat_post` for a real endpoint, a plain function in tests)."""

    procedure = PROCEDURE

    def __init__(self, post: Post, model: str = "") -> None:
        self.post, self.model = post, model
        self.endpoint = endpoint_of(post)

    @classmethod
    def from_endpoint(cls, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                      timeout_s: float = 60.0) -> "Judge":
        return cls(chat_post(base_url, model, api_key_env, timeout_s), model)

    def _ask(self, step: str, messages: Messages, parse):
        try:
            reply = self.post(messages)
        except EndpointError as exc:
            raise JudgeError(f"judge ({step}): {exc}") from None
        try:
            return parse(reply)
        except JudgeError as exc:
            raise JudgeError(f"judge {self.endpoint} ({step}): {exc}") from None

    def score(self, reference: str, prediction: str) -> JudgeScore:
        clue = self._ask("clue overlap", clue_messages(reference, prediction), parse_score)
        ref_emo = self._ask("summarise the reference", summary_messages(reference), parse_summary)
        pred_emo = self._ask("summarise the prediction", summary_messages(prediction), parse_summary)
        label = self._ask("label overlap", label_messages(ref_emo, pred_emo), parse_score)
        return JudgeScore(clue, label, tuple(ref_emo), tuple(pred_emo))
