"""The EMER proxies' calibration (issue 14, item 6): each proxy's ceiling (a reference against itself), a
paraphrase (near the ceiling), the floor (another clip's reference) and the model's position between; and a
label proxy that credits the right emotion or a synonym of it."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest

from esva.config import SynthConfig
from esva.data.synthetic import assign_labels, sample_spec
from esva.eval.metrics import (EvalError, calibration_position, clue_overlap_proxy, emer_calibration,
                               label_overlap_proxy, mismatched, paraphrase)
from esva.eval.synonyms import emotion_words, offline

G = offline()


def bow(texts, dim: int = 512) -> np.ndarray:
    """A deterministic fake sentence embedder: hashed bag of words."""
    out = np.zeros((len(texts), dim))
    for i, t in enumerate(texts):
        for w in re.findall(r"[a-z]+", str(t).lower()):
            out[i, zlib.crc32(w.encode()) % dim] += 1.0
    return out


@pytest.fixture(scope="module")
def corpus():
    """The default synthetic corpus's test clips: references, labels, annotated label lists (no rendering)."""
    cfg = SynthConfig()
    specs = [sample_spec(i, lab, split, cfg)
             for i, (lab, split) in enumerate(assign_labels(cfg.n_clips, cfg.seed, (0.7, 0.15, 0.15)))]
    specs = [s for s in specs if s.split == "test"]
    refs = [s.reason for s in specs]
    labels = [s.label for s in specs]
    gold = [list(s.ov_labels) + [s.label] for s in specs]
    rng = np.random.default_rng(5)
    good = []  # a decent model: the reference of another clip with the same label (same cues, same emotion)
    for i, lab in enumerate(labels):
        good.append(refs[int(rng.choice([j for j, x in enumerate(labels) if x == lab and j != i]))])
    bad = ["The speaker talks at a moderate pace in a moderately pitched voice with some pitch movement; the voice "
           "is of normal loudness. The face shows little expression. The words carry no clear emotion."] * len(refs)
    return refs, labels, gold, good, bad


@pytest.mark.parametrize("text, gold, credited", [
    ("She looks joyful.", ["happy"], True),
    ("She looks joyful.", ["sad"], False),
    ("He is happy.", ["happy", "joyful", "excited"], True),  # synthetic gold: the label plus open-vocabulary words
    ("The words themselves suggest the person is surprised.", ["surprise", "curious"], True),
    ("The speaker seems worried.", ["worried", "anxious"], True),
    ("She smiled happily.", ["happy"], True),  # inflection: happily -> happy
    ("He keeps worrying about it.", ["worried"], True),  # worrying -> worry
    ("The words carry no clear emotion.", ["neutral", "calm"], False),
    ("She is not happy at all.", ["happy"], False),  # negated
    ("Neither angry nor sad.", ["angry"], False),
])
def test_label_proxy_credits_the_right_emotion_or_a_synonym(text, gold, credited):
    score = label_overlap_proxy([gold], [text], G)["per_sample"][0]
    assert score == (10.0 if credited else 0.0)


def test_label_proxy_by_hand():
    res = label_overlap_proxy([["angry"], ["sad", "lonely"], ["happy"], ["angry"]],
                              ["He is furious.", "She seems sad.", "No emotion words here.", "Angry, or maybe sad."], G)
    # named right and nothing else: 10; right + wrong: 5 x (1/2 + 1) = 7.5; none: 0
    assert res["per_sample"] == pytest.approx([10.0, 10.0, 0.0, 7.5])
    assert emotion_words("She isn't angry, she is calm.", G) == {"relaxed"}
    assert emotion_words("Hopefully the results come soon, concerning the plan.", G) == set()
    with pytest.raises(EvalError, match="2 label lists but 1"):
        label_overlap_proxy([["a"], ["b"]], ["x"], G)


def test_paraphrase_is_deterministic_and_keeps_the_emotions(corpus):
    refs = corpus[0]
    for r in refs[:12]:
        p = paraphrase(r, G, seed=0)
        assert p == paraphrase(r, G, seed=0) and p != r
        assert emotion_words(p, G) == emotion_words(r, G)  # synonyms swapped within their group, never dropped
        assert sorted(re.findall(r"[.!?]", p)) == sorted(re.findall(r"[.!?]", r))  # the same sentences, reordered
    assert any(paraphrase(r, G, seed=1) != paraphrase(r, G, seed=0) for r in refs[:12])
    p = paraphrase("I am really very happy, not sad! He seems worried; she is calm, relaxed, and a bit angry.", G, 3,
                   swap_prob=1.0)
    assert "really" not in p and "very" not in p and "a bit" not in p and "not" in p
    assert emotion_words(p, G) == {"happy", "worried", "relaxed", "angry"}
    assert paraphrase("Nothing to swap here", G, 0) == "Nothing to swap here."


def test_mismatched_pairs_differ():
    labels = ["a", "a", "b", "b", "c", "c"]
    perm = mismatched(labels, seed=0)
    assert sorted(perm) == list(range(6)) and all(labels[i] != labels[j] for i, j in enumerate(perm))
    assert perm == mismatched(labels, seed=0)
    same = mismatched(["a"] * 4, seed=0)  # no other label: any other clip
    assert all(i != j for i, j in enumerate(same))
    assert mismatched(["a"], 0) == [] and all(i != j for i, j in enumerate(mismatched([None, None, None], 0)))


def test_position_by_hand():
    assert calibration_position(10.0, 8.0, 9.0) == pytest.approx(0.5)
    assert calibration_position(10.0, 8.0, 7.0) == pytest.approx(-0.5)  # worse than an unrelated reference
    assert calibration_position(5.0, 5.0, 7.0) is None and calibration_position(10.0, None, 3.0) is None
    refs = ["The cat is happy.", "The dog is sad."]
    expl = ["She looks joyful.", "Nothing to say."]
    cal = emer_calibration(refs, expl, [["happy"], ["sad"]], G, bow, ["happy", "sad"])
    lab = cal["label_overlap_proxy"]
    # ceiling: each reference names its own emotion (10, 10); floor: the other's (0, 0); model: (10, 0)
    assert (lab["ceiling"], lab["paraphrase"], lab["floor"], lab["model"]) == (10.0, 10.0, 0.0, 5.0)
    assert lab["position"] == pytest.approx(0.5)
    clue = cal["clue_overlap_proxy"]
    e = bow(refs + expl)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    cross = 10 * np.clip(e[0] @ e[1], 0, None)  # floor: the two references against each other, both ways
    model = 10 * np.mean([max(0.0, e[0] @ e[2]), max(0.0, e[1] @ e[3])])
    assert clue["ceiling"] == pytest.approx(10.0) and clue["floor"] == pytest.approx(cross)
    assert clue["model"] == pytest.approx(model)
    assert clue["position"] == pytest.approx((model - cross) / (10.0 - cross))
    assert emer_calibration(refs, expl, [["happy"], ["sad"]], G)["clue_overlap_proxy"] is None
    one = emer_calibration(refs[:1], expl[:1], [["happy"]], G, bow)
    assert one["label_overlap_proxy"]["floor"] is None and one["label_overlap_proxy"]["position"] is None


def _check_separates(cal_good, cal_bad):
    for cal in (cal_good, cal_bad):
        clue, lab = cal["clue_overlap_proxy"], cal["label_overlap_proxy"]
        assert clue["ceiling"] >= clue["paraphrase"] > clue["floor"]
        assert lab["ceiling"] == lab["paraphrase"] > lab["floor"]  # a paraphrase names the same emotions
    assert cal_good["clue_overlap_proxy"]["position"] > 0.3 > 0.0 > cal_bad["clue_overlap_proxy"]["position"]
    assert cal_good["label_overlap_proxy"]["position"] > 0.5 and cal_bad["label_overlap_proxy"]["position"] <= 0.0


def test_calibration_on_the_synthetic_references_bag_of_words(corpus):
    refs, labels, gold, good, bad = corpus
    _check_separates(emer_calibration(refs, good, gold, G, bow, labels),
                     emer_calibration(refs, bad, gold, G, bow, labels))


@pytest.fixture(scope="module")
def minilm():
    from esva.eval.embed import SentenceEmbedder

    return SentenceEmbedder()


def test_calibration_on_the_synthetic_references_minilm(corpus, minilm):
    refs, labels, gold, good, bad = corpus
    good_cal = emer_calibration(refs, good, gold, G, minilm, labels)
    _check_separates(good_cal, emer_calibration(refs, bad, gold, G, minilm, labels))
    # the raw proxy alone says little (every reference shares the template): a clip's reference against another
    # clip's scores above 8 of 10; the calibration is what places a score
    assert good_cal["clue_overlap_proxy"]["floor"] > 7.5
    assert clue_overlap_proxy(refs, refs, minilm)["clue_overlap_proxy"] == pytest.approx(10.0, abs=1e-3)
