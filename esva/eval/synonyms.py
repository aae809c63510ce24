"""An offline synonym grouping for the common emotion vocabulary, and user-supplied groupings.

MER2024-OV's official scoring asks an LLM to group each sample's labels into synonyms. Offline, esva
maps every label through a fixed table instead: each inner list is one group, represented by its
first word. A user can supply a grouping file (a JSON list of lists, or a text file with one
comma-separated group per line); the metric file records which grouping was used. A word in no
group is its own group. Words that often describe a voice or a face rather than a feeling ("flat",
"down", "warm", "content") are left out, because free-text explanations use them that way.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from esva.data.instructions import normalise_label

OFFLINE_NAME = "esva-offline-v1"

GROUPS: tuple[tuple[str, ...], ...] = (
    ("happy", "happiness", "joy", "joyful", "cheerful", "glad", "delighted", "pleased", "contented",
     "elated", "jubilant", "merry", "gleeful", "blissful", "ecstatic", "euphoric", "amused", "joyous"),
    ("excited", "excitement", "enthusiastic", "thrilled", "eager", "energetic", "exhilarated"),
    ("satisfied", "satisfaction", "fulfilled", "gratified"),
    ("relaxed", "relief", "relieved", "calm", "calmness", "peaceful", "serene", "tranquil", "composed"),
    ("neutral", "indifferent", "unemotional", "impassive", "emotionless"),
    ("sad", "sadness", "sorrow", "sorrowful", "unhappy", "downcast", "gloomy", "melancholy",
     "melancholic", "depressed", "dejected", "miserable", "heartbroken", "grief", "grieving", "mournful"),
    ("lonely", "loneliness", "isolated", "lonesome"),
    ("disappointed", "disappointment", "let down", "discouraged", "disheartened"),
    ("hurt", "pained", "wounded", "aggrieved"),
    ("helpless", "helplessness", "powerless", "hopeless", "despair", "desperate"),
    ("angry", "anger", "mad", "furious", "fury", "rage", "enraged", "irate", "outraged", "livid", "wrathful"),
    ("annoyed", "annoyance", "irritated", "irritation", "irritable", "frustrated", "frustration", "agitated",
     "exasperated", "impatient", "displeased", "dissatisfied", "resentful", "resentment"),
    ("disgusted", "disgust", "revolted", "repulsed", "contempt", "contemptuous", "scornful", "disdainful"),
    ("worried", "worry", "anxious", "anxiety", "nervous", "nervousness", "uneasy", "concerned", "concern",
     "apprehensive", "tense", "tension", "stressed", "stress", "restless", "troubled"),
    ("afraid", "fear", "fearful", "scared", "frightened", "terrified", "panicked", "panic", "alarmed", "horrified"),
    ("surprise", "surprised", "astonished", "astonishment", "amazed", "amazement", "shocked", "shock",
     "startled", "stunned", "astounded", "incredulous"),
    ("confused", "confusion", "puzzled", "perplexed", "bewildered", "baffled", "uncertain", "doubtful"),
    ("curious", "curiosity", "interested", "inquisitive", "intrigued"),
    ("embarrassed", "embarrassment", "ashamed", "shame", "shy", "awkward", "sheepish", "humiliated"),
    ("guilty", "guilt", "regretful", "regret", "remorseful", "remorse", "sorry", "apologetic"),
    ("proud", "pride", "confident", "confidence", "triumphant", "self-assured"),
    ("grateful", "gratitude", "thankful", "appreciative"),
    ("loving", "love", "affectionate", "affection", "caring", "fond"),
    ("hopeful", "hope", "optimistic", "expectant"),
    ("tired", "weary", "exhausted", "fatigued", "bored", "boredom", "listless"),
    ("jealous", "jealousy", "envious", "envy"),
    ("serious", "solemn", "stern", "earnest", "determined", "resolute"),
    ("sarcastic", "sarcasm", "mocking", "ironic", "sneering", "cynical"),
    ("doubt", "suspicious", "suspicion", "skeptical", "sceptical", "distrustful", "wary"),
    ("sympathetic", "sympathy", "compassionate", "compassion", "empathetic", "pity"),
)


class GroupingError(ValueError):
    """A grouping file that is malformed. Names the file and line."""




@dataclass(frozen=True)
class Grouping:
    name: str
    table: dict[str, str]  # word -> its group's representative

    def group(self, word: str) -> str:
        w = normalise_label(word)
        return self.table.get(w, w)

    def groups(self, words) -> set[str]:
        return {self.group(w) for w in words if normalise_label(w)}

    @property
    def lexicon(self) -> frozenset[str]:
        return frozenset(self.table)


def from_groups(groups, name: str, where: list[str] | None = None) -> Grouping:
    """A Grouping from a list of synonym lists; a word in two groups is an error naming both places."""
    table: dict[str, str] = {}
    first_seen: dict[str, str] = {}
    for i, grp in enumerate(groups):
        place = where[i] if where else f"group {i + 1}"
        words = [normalise_label(w) for w in grp if normalise_label(w)]
        if not words:
            raise GroupingError(f"{place}: an empty synonym group")
        for w in words:
            if w in table and table[w] != words[0]:
                raise GroupingError(f"{place}: {w!r} is already in another group ({first_seen[w]})")
            table[w] = words[0]
            first_seen.setdefault(w, place)
    return Grouping(name, table)


def offline() -> Grouping:
    return from_groups(GROUPS, OFFLINE_NAME)


def load_grouping(path: str | Path) -> Grouping:
    """A user grouping file: JSON (a list of lists of strings) or text (one comma-separated group per line;
    blank lines and lines starting with # are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise GroupingError(f"grouping file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GroupingError(f"{path}: not UTF-8 text ({exc})") from None
    digest = hashlib.sha256(raw).hexdigest()[:12]
    name = f"file:{path.name}@{digest}"
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GroupingError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, list) or not data:
            raise GroupingError(f"{path}:1: a grouping must be a non-empty JSON list of synonym lists")
        lines = _json_lines(text, len(data))
        for i, grp in enumerate(data):
            if not isinstance(grp, list) or not all(isinstance(w, str) for w in grp):
                raise GroupingError(f"{path}:{lines[i]}: group {i + 1} must be a list of strings, got {grp!r}")
        return from_groups(data, name, [f"{path}:{n}" for n in lines])
    groups, where = [], []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        words = [w for w in s.split(",")]
        if any(not normalise_label(w) for w in words):
            raise GroupingError(f"{path}:{n}: malformed group {s!r} (an empty or non-word entry)")
        groups.append(words)
        where.append(f"{path}:{n}")
    if not groups:
        raise GroupingError(f"{path}: no synonym groups")
    return from_groups(groups, name, where)


def _json_lines(text: str, n: int) -> list[int]:
    """Best-effort line number of each top-level group in a JSON list (for error messages)."""
    lines, depth, line = [], 0, 1
    for ch in text:
        if ch == "\n":
            line += 1
        elif ch == "[":
            depth += 1
            if depth == 2:
                lines.append(line)
        elif ch == "]":
            depth -= 1
    return (lines + [line] * n)[:n]


_WORD = re.compile(r"[a-z]+(?:[-'][a-z]+)*")
_CLAUSE = re.compile(r"[.;:!?,()\n]+|\s[-\u2013\u2014]\s|\bbut\b")
# a lexicon word within NEGATION_WINDOW words after one of these (same clause) is not credited: "not happy"
NEGATORS = frozenset({"not", "no", "never", "nor", "neither", "without", "hardly", "barely", "scarcely"})
NEGATION_WINDOW = 3
# inflected forms tried when a word is not in the lexicon (one step): happily -> happy, worries -> worry,
# worrying -> worry, angered -> anger, gloominess -> gloomy
_SUFFIXES = (("ily", "y"), ("ly", ""), ("iness", "y"), ("ness", ""), ("ies", "y"), ("es", ""), ("s", ""),
             ("ied", "y"), ("ing", ""), ("ing", "e"), ("ed", ""), ("ed", "e"))
# forms whose stem is an emotion word but which do not name a feeling
NOT_INFLECTED = frozenset({"concerning", "hopefully", "thankfully", "seriously", "surely", "sorely"})


def _lookup(word: str, table: dict[str, str]) -> str | None:
    if word in table:
        return table[word]
    if word in NOT_INFLECTED:
        return None
    for suffix, repl in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            stem = word[: -len(suffix)] + repl
            if stem in table:
                return table[stem]
    return None


def _negated(words: list[str], i: int) -> bool:
    return any(w in NEGATORS or w.endswith("n't") for w in words[max(0, i - NEGATION_WINDOW):i])


def emotion_words(text: str, grouping: Grouping) -> set[str]:
    """The emotion groups a free text mentions: every word (and two-word phrase) in the grouping's lexicon,
    also in an inflected form (happily, worries, worrying), unless negated in its clause ("not happy",
    "neither sad nor angry")."""
    found: set[str] = set()
    for clause in _CLAUSE.split(str(text).lower()):
        words = _WORD.findall(clause)
        for i, w in enumerate(words):
            hit = grouping.table.get(f"{w} {words[i + 1]}") if i + 1 < len(words) else None
            hit = hit or _lookup(w, grouping.table)
            if hit is not None and not _negated(words, i):
                found.add(hit)
    return found
