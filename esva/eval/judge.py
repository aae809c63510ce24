"""An optional LLM judge for EMER through an OpenAI-compatible chat-completions endpoint.

EMER's official scores come from ChatGPT comparing a generated explanation with the annotated one:
how much of the reference's emotional clues the prediction covers (clue overlap) and how well the
emotional states it concludes match (label overlap), each on 0-10. This module asks the endpoint the
user configures (`evaluate.judge.base_url`, `model`, key in the env var `api_key_env`) the same two
questions. It is never used by default or in the tests; esva reports offline proxies otherwise.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request

PROMPT = (
    "You compare two descriptions of a person in a video clip. The reference was written by annotators; "
    "the prediction by a model. Score on 0-10: (1) clue_overlap: how many of the emotional clues in the "
    "reference (facial expressions, voice, words, context) the prediction also describes, with no credit "
    "for clues that contradict the reference; (2) label_overlap: how well the emotional states the "
    "prediction concludes match those of the reference, counting synonyms as matches. Reply with JSON only: "
    '{{"clue_overlap": <number>, "label_overlap": <number>}}.\n\nReference: {reference}\n\nPrediction: {prediction}'
)


class JudgeError(RuntimeError):
    """The judge endpoint failed or answered in a form that cannot be read."""


def parse_scores(text: str) -> tuple[float, float]:
    """The two scores from a judge's reply (JSON, possibly wrapped in prose or a code fence), clipped to 0-10."""
    m = re.search(r"\{.*?\}", text, re.S)
    if not m:
        raise JudgeError(f"no JSON object in the judge's reply: {text[:200]!r}")
    try:
        obj = json.loads(m.group(0))
        clue, label = float(obj["clue_overlap"]), float(obj["label_overlap"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise JudgeError(f"unreadable judge reply {m.group(0)[:200]!r}: {exc}") from None
    return min(max(clue, 0.0), 10.0), min(max(label, 0.0), 10.0)


class Judge:
    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 60.0) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.timeout = model, timeout_s
        self.key = os.environ.get(api_key_env, "")

    def score(self, reference: str, prediction: str) -> tuple[float, float]:
        body = json.dumps({"model": self.model, "temperature": 0,
                           "messages": [{"role": "user", "content": PROMPT.format(reference=reference,
                                                                                  prediction=prediction)}]}).encode()
        req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json",
                                                                    "Authorization": f"Bearer {self.key}"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                reply = json.load(resp)
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
            raise JudgeError(f"judge {self.url}: {exc}") from None
        try:
            return parse_scores(reply["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError) as exc:
            raise JudgeError(f"judge {self.url}: unexpected response shape ({exc})") from None
