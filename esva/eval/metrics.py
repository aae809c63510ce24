"""The benchmarks' metrics as pure functions (DESIGN.md section 5).

- MER2023 / MER2024 discrete: weighted F1 (the official metric: sklearn's `f1_score(average="weighted")`),
  macro F1, accuracy, per-class precision/recall/F1, the confusion matrix; valence MSE and MER2023's
  combined score `weighted F1 - 0.25 * MSE` when valence is predicted. A prediction outside the label
  set is wrong and counted in `invalid` (split into `unparseable` answers and labels `outside_label_set`,
  e.g. MERR's `doubt` on MER2023, which is scored on its six labels).
- MER2024-OV: labels lower-cased and mapped to synonym groups; per sample `accuracy = |gt & pred| / |pred|`
  and `recall = |gt & pred| / |gt|` (both 0 when pred is empty), averaged; `avg` is their mean.
- EMER (official judge: ChatGPT; these are offline proxies, named as such): `label_overlap_proxy` from
  the emotion words an explanation names (same lexicon as OV, inflections and negation handled) against
  the annotated labels, and `clue_overlap_proxy` from the cosine similarity of the explanations' sentence
  embeddings; both on 0-10. `emer_calibration` places a model between a floor and a ceiling measured on
  the corpus itself: each reference against itself (ceiling), against a seeded `paraphrase` of itself
  (near the ceiling), and against another clip's reference (floor).
"""

from __future__ import annotations

import re
import zlib
from typing import Sequence

import numpy as np

from esva import LABELS
from esva.eval.synonyms import Grouping, emotion_words

INVALID = "<invalid>"


class EvalError(ValueError):
    """Predictions that cannot be scored (ids that do not match, an empty split). Names what is wrong."""


def match_ids(pred_ids: Sequence[str], gold_ids: Sequence[str], what: str) -> None:
    """Predictions must cover exactly the gold ids: an error lists the missing and the extra ones."""
    p, g = list(map(str, pred_ids)), list(map(str, gold_ids))
    dup = sorted({x for x in p if p.count(x) > 1}) if len(set(p)) != len(p) else []
    missing, extra = sorted(set(g) - set(p)), sorted(set(p) - set(g))
    if missing or extra or dup:
        def show(xs):
            return f"{xs[:10]}{f' and {len(xs) - 10} more' if len(xs) > 10 else ''}"
        parts = [f"missing {len(missing)}: {show(missing)}" if missing else "",
                 f"extra {len(extra)}: {show(extra)}" if extra else "",
                 f"duplicated {len(dup)}: {show(dup)}" if dup else ""]
        raise EvalError(f"{what}: prediction ids do not match the labels ({'; '.join(x for x in parts if x)})")


def discrete_scores(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str] = LABELS,
                    valence_gold: Sequence[float] | None = None, valence_pred: Sequence[float] | None = None) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    if len(gold) == 0:
        raise EvalError("no samples to score")
    if len(gold) != len(pred):
        raise EvalError(f"{len(gold)} labels but {len(pred)} predictions")
    labels = list(labels)
    bad_gold = sorted({g for g in gold if g not in labels})
    if bad_gold:
        raise EvalError(f"gold labels outside the label set {labels}: {bad_gold}")
    yp = [p if p in labels else INVALID for p in pred]
    present = [lab for lab in labels if lab in set(gold)]
    prec, rec, f1, sup = precision_recall_fscore_support(gold, yp, labels=labels, zero_division=0)
    out = {
        "n": len(gold),
        "weighted_f1": float(f1_score(gold, yp, labels=labels, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(gold, yp, labels=present, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(gold, yp)),
        "invalid": int(sum(p == INVALID for p in yp)),  # = unparseable + outside_label_set
        "unparseable": int(sum(p is None for p in pred)),
        "outside_label_set": int(sum(p is not None and p not in labels for p in pred)),
        "chance_accuracy": 1.0 / len(labels),
        "majority_class_accuracy": max(list(gold).count(lab) for lab in present) / len(gold),
        "per_class": {lab: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                            "support": int(sup[i])} for i, lab in enumerate(labels)},
        "confusion": {"rows": "gold", "columns": labels + ["invalid"],
                      "matrix": confusion_matrix(gold, yp, labels=labels + [INVALID])[: len(labels)].tolist()},
    }
    if valence_pred is not None and valence_gold is not None:
        pairs = [(float(g), float(p)) for g, p in zip(valence_gold, valence_pred)
                 if g is not None and p is not None and np.isfinite(g) and np.isfinite(p)]
        if pairs:
            mse = float(np.mean([(g - p) ** 2 for g, p in pairs]))
            out.update(valence_mse=mse, valence_n=len(pairs), combined=out["weighted_f1"] - 0.25 * mse)
    return out


def ov_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], grouping: Grouping) -> dict:
    if len(gold) == 0:
        raise EvalError("no samples to score")
    if len(gold) != len(pred):
        raise EvalError(f"{len(gold)} label lists but {len(pred)} predictions")
    acc, rec = [], []
    for g, p in zip(gold, pred):
        gs, ps = grouping.groups(g), grouping.groups(p)
        hit = len(gs & ps)
        acc.append(hit / len(ps) if ps else 0.0)
        rec.append(hit / len(gs) if gs else 0.0)
    a, r = float(np.mean(acc)), float(np.mean(rec))
    return {"n": len(gold), "accuracy": a, "recall": r, "avg": (a + r) / 2, "grouping": grouping.name,
            "empty_predictions": int(sum(not grouping.groups(p) for p in pred))}


def label_overlap_proxy(gold_labels: Sequence[Sequence[str]], explanations: Sequence[str], grouping: Grouping) -> dict:
    """0-10 per sample: 5 x (precision + named). `named` is 1 when the explanation names (not negated) an
    emotion in one of the sample's annotated groups (its label, a synonym of it, or one of its open-vocabulary
    labels), 0 otherwise; `precision` is the share of the emotion groups it names that are annotated. So the
    right emotion alone scores 10, the right one and a wrong one 7.5, only wrong ones or none 0. (An
    explanation is not asked to list every open-vocabulary label, so naming one right emotion is full
    recall; OV's own metric counts them all.) A proxy for EMER's ChatGPT-judged label overlap."""
    if len(gold_labels) == 0:
        raise EvalError("no samples to score")
    if len(gold_labels) != len(explanations):
        raise EvalError(f"{len(gold_labels)} label lists but {len(explanations)} explanations")
    per = []
    for g, text in zip(gold_labels, explanations):
        gs, ps = grouping.groups(g), emotion_words(text, grouping)
        hit = len(gs & ps)
        per.append(5.0 * (hit / len(ps) + 1.0) if hit else 0.0)
    return {"label_overlap_proxy": float(np.mean(per)), "per_sample": per}


def clue_overlap_proxy(gold: Sequence[str], generated: Sequence[str], embed) -> dict:
    """0-10: 10 x max(0, cosine) of sentence embeddings of the reference and the generated explanation.
    `embed(texts) -> (N, D)` array (the bundled all-MiniLM-L6-v2 in the pipeline). A proxy for EMER's
    ChatGPT-judged clue overlap."""
    if len(gold) == 0:
        raise EvalError("no samples to score")
    a = np.asarray(embed(list(gold)), dtype=np.float64)
    b = np.asarray(embed(list(generated)), dtype=np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b /= np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    cos = (a * b).sum(1)
    per = (10.0 * np.clip(cos, 0.0, None)).tolist()
    return {"clue_overlap_proxy": float(np.mean(per)), "per_sample": per}


# --- EMER proxy calibration ---------------------------------------------------------------------------
# `paraphrase`: word and phrase swaps (matched whole-word, case-insensitively; one alternative drawn per match),
# on top of the synonym lexicon's own groups for emotion words. Plain description vocabulary, not tied to
# the synthetic corpus's templates, though it covers them.
PARAPHRASE_SWAPS: dict[str, tuple[str, ...]] = {
    "the speaker": ("the person", "the talker"), "the person": ("the speaker", "the individual"),
    "talks": ("speaks",), "talk": ("speak",), "says": ("states",), "fast": ("quickly", "rapidly"),
    "slowly": ("unhurriedly", "at a slow pace"), "at a moderate pace": ("at an average speed",),
    "loud": ("forceful", "strong"), "soft": ("quiet", "hushed"), "of normal loudness": ("of ordinary volume",),
    "high-pitched": ("high",), "low-pitched": ("deep",), "moderately pitched": ("mid-pitched",),
    "with wide pitch variation": ("with a lively melody", "with much variation in pitch"),
    "with a flat intonation": ("with a monotone melody", "with little melody"),
    "with some pitch movement": ("with a little melody",), "trembles": ("shakes", "quivers"),
    "rough": ("harsh", "rasping"), "unsteady": ("shaky",), "breathy": ("airy",), "rises": ("goes up", "climbs"),
    "falls": ("drops", "goes down"), "sharply": ("steeply",), "at the end": ("towards the end", "at the close"),
    "in the video": ("on screen", "in the footage"), "eyebrows": ("brows",), "raised": ("lifted",),
    "lowered": ("pulled down",), "drawn together": ("knitted",), "wide open": ("opened wide",),
    "narrowed": ("half-closed",), "the jaw drops": ("the mouth falls open",), "the mouth corners": ("the lip corners",),
    "pulled down": ("turned down",), "suggest": ("indicate", "imply"), "suggests": ("indicates", "implies"),
    "looks": ("appears", "seems"), "seems": ("appears", "looks"), "shows": ("displays",),
    "little expression": ("hardly any expression",), "carry": ("convey",), "clear": ("obvious", "definite"),
}
# the share of swappable words and phrases that are swapped: every one of them (1.0) rewords a templated
# reference so much that a sentence embedder scores it below another clip's reference
PARAPHRASE_SWAP_PROB = 0.3
PARAPHRASE_FILLERS = ("themselves", "itself", "really", "very", "quite", "just", "actually", "basically", "rather",
                      "somewhat", "clearly", "a bit", "a little bit")
_NOUN_ENDINGS = ("ness", "ment", "ion", "ity", "sm", "ude", "ence", "ance")
_NOUN_WORDS = frozenset({"joy", "sorrow", "grief", "anger", "rage", "fury", "fear", "panic", "shock", "worry",
                         "concern", "stress", "relief", "despair", "disgust", "contempt", "shame", "guilt",
                         "regret", "remorse", "pride", "love", "hope", "envy", "jealousy", "anxiety", "doubt",
                         "pity", "sympathy", "surprise", "boredom", "melancholy"})
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _kind(word: str) -> str:
    """'noun' or 'adj': which emotion words may replace each other ("happy" -> "joyful", never "joy")."""
    return "noun" if word in _NOUN_WORDS or word.endswith(_NOUN_ENDINGS) else "adj"


def _nonidentity(rng: np.random.Generator, n: int) -> list[int]:
    if n < 2:
        return list(range(n))
    while True:
        order = [int(i) for i in rng.permutation(n)]
        if order != list(range(n)):
            return order


def _lower_first(s: str) -> str:
    w = s.split(" ", 1)[0]
    return s[0].lower() + s[1:] if s and w[1:2].islower() and w != "I" else s


def _upper_first(s: str) -> str:
    return s[0].upper() + s[1:] if s else s


def paraphrase(text: str, grouping: Grouping, seed: int = 0, swap_prob: float = PARAPHRASE_SWAP_PROB) -> str:
    """A deterministic paraphrase of `text` (a pure function of text and seed) that keeps its meaning:

    1. clause reordering: the sentences in a seeded order; within a sentence, clauses joined by ";" in a
       seeded order, and in a comma list of three or more parts, the parts after the first shuffled;
    2. synonym swaps, each with probability `swap_prob`: an emotion word by another word of its synonym
       group (same part of speech: an adjective for an adjective), a phrase of PARAPHRASE_SWAPS by one of
       its alternatives;
    3. filler dropped: the words of PARAPHRASE_FILLERS ("really", "very", "themselves", ...).

    Negations are kept, so the emotions it names are the reference's: the label proxy gives a paraphrase
    the reference's own score, and a sentence embedder should find it close (near the ceiling)."""
    rng = np.random.default_rng([seed, zlib.crc32(str(text).encode("utf-8"))])
    sentences = [s.strip() for s in _SENTENCE.split(str(text).strip()) if s.strip()]
    out = []
    for sent in sentences:
        end = sent[-1] if sent[-1] in ".!?" else "."
        body = sent.rstrip(".!?").strip()
        clauses = [c.strip() for c in body.split(";") if c.strip()]
        clauses = [clauses[i] for i in _nonidentity(rng, len(clauses))]
        parts = []
        for c in clauses:
            items = [x.strip() for x in c.split(",") if x.strip()]
            if len(items) >= 3:
                conj = re.match(r"(and|or) ", items[-1])
                if conj:  # "a, b, and c": the conjunction stays before whatever comes last
                    items[-1] = items[-1][conj.end():]
                items = items[:1] + [items[1:][i] for i in _nonidentity(rng, len(items) - 1)]
                if conj:
                    items[-1] = conj.group(0) + items[-1]
            parts.append(", ".join([items[0]] + [_lower_first(x) for x in items[1:]]))
        out.append((parts, end))
    order = _nonidentity(rng, len(out))
    text2 = " ".join(_upper_first("; ".join(_lower_first(p) for p in out[i][0])) + out[i][1] for i in order)
    # swaps: the lexicon's emotion words and the phrase table, longest match first, one pass
    emo_groups: dict[str, list[str]] = {}
    for w, rep in grouping.table.items():
        emo_groups.setdefault(rep, []).append(w)
    swaps = dict(PARAPHRASE_SWAPS)
    for w, rep in grouping.table.items():
        alts = tuple(x for x in emo_groups[rep] if x != w and " " not in x and _kind(x) == _kind(w))
        if alts and " " not in w:
            swaps[w] = alts
    keys = sorted(swaps, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w-])(" + "|".join(re.escape(k) for k in keys) + r")(?![\w-])", re.IGNORECASE)

    def swap(m: re.Match) -> str:
        alts = swaps[m.group(0).lower()]
        if rng.random() >= swap_prob:
            return m.group(0)
        new = alts[int(rng.integers(len(alts)))]
        return _upper_first(new) if m.group(0)[0].isupper() else new

    text2 = pattern.sub(swap, text2)
    fill = re.compile(r"\s*\b(" + "|".join(re.escape(f) for f in PARAPHRASE_FILLERS) + r")\b", re.IGNORECASE)
    text2 = fill.sub("", text2)
    return re.sub(r"\s+", " ", text2).strip()


def mismatched(labels: Sequence[str | None], seed: int = 0) -> list[int]:
    """For each sample, another sample's index: a seeded permutation with no fixed point in which every
    sample is paired with one of a different label where one exists (tried 200 times, then each index drawn
    alone from those with a different label, else any other). The calibration's floor."""
    n = len(labels)
    if n < 2:
        return []
    rng = np.random.default_rng([seed, 11])
    labs = [None if lab is None or (isinstance(lab, float) and np.isnan(lab)) else str(lab) for lab in labels]

    def differs(i: int, j: int) -> bool:
        return i != j and (labs[i] is None or labs[i] != labs[j])

    can_differ = [any(differs(i, j) for j in range(n)) for i in range(n)]
    for _ in range(200):
        perm = [int(j) for j in rng.permutation(n)]
        if all(differs(i, j) if can_differ[i] else i != j for i, j in enumerate(perm)):
            return perm
    return [int(rng.choice([j for j in range(n) if (differs(i, j) if can_differ[i] else i != j)]))
            for i in range(n)]


def calibration_position(ceiling: float | None, floor: float | None, model: float | None) -> float | None:
    """Where the model falls between floor (0) and ceiling (1); None when the two cannot be told apart.
    Not clipped: below 0 is worse than an unrelated reference, above 1 better than the reference itself."""
    if ceiling is None or floor is None or model is None or ceiling - floor < 1e-9:
        return None
    return float((model - floor) / (ceiling - floor))


def emer_calibration(references: Sequence[str], explanations: Sequence[str], gold_labels: Sequence[Sequence[str]],
                     grouping: Grouping, embed=None, labels: Sequence[str | None] | None = None,
                     seed: int = 0) -> dict:
    """Each EMER proxy measured on the corpus itself, to read the model's score against:
    ceiling (each reference scored as the explanation of its own clip), paraphrase (a `paraphrase` of it:
    should stay near the ceiling), floor (another clip's reference, of a different label where possible:
    a fluent but unrelated explanation), model (the generated explanations) and position
    (model - floor) / (ceiling - floor). `clue_overlap_proxy` is None without an embedder."""
    references, explanations = [str(r) for r in references], [str(e) for e in explanations]
    n = len(references)
    if n == 0:
        raise EvalError("no samples to score")
    if len(explanations) != n or len(gold_labels) != n:
        raise EvalError(f"{n} references, {len(explanations)} explanations, {len(gold_labels)} label lists")
    paraphrases = [paraphrase(r, grouping, seed) for r in references]
    other = mismatched(labels if labels is not None else [None] * n, seed)
    texts = {"ceiling": references, "paraphrase": paraphrases,
             "floor": [references[j] for j in other] if other else None, "model": explanations}

    def rows(score) -> dict:
        res = {k: (score(v) if v is not None else None) for k, v in texts.items()}
        res["position"] = calibration_position(res["ceiling"], res["floor"], res["model"])
        return res

    out = {"label_overlap_proxy": rows(lambda t: label_overlap_proxy(gold_labels, t, grouping)["label_overlap_proxy"]),
           "clue_overlap_proxy": None}
    if embed is not None:
        unique = list(dict.fromkeys(references + paraphrases + explanations))
        vecs = dict(zip(unique, np.asarray(embed(unique), dtype=np.float64)))

        def cached(xs):
            return np.stack([vecs[x] for x in xs])

        out["clue_overlap_proxy"] = rows(lambda t: clue_overlap_proxy(references, t, cached)["clue_overlap_proxy"])
    out.update(n=n, seed=seed, paraphrase_example=paraphrases[0],
               method="ceiling: each reference as its own clip's explanation; paraphrase: a seeded paraphrase of "
                      "it (clauses reordered, synonyms swapped, filler dropped; esva.eval.metrics.paraphrase); "
                      "floor: another clip's reference (a seeded derangement, different labels where possible); "
                      "position = (model - floor) / (ceiling - floor), not clipped. The label proxy's ceiling is "
                      "what the references score (they name an emotion only where their clip's words do), not its "
                      "0-10 scale's maximum: a model that names the right emotion more often can exceed it")
    return out
