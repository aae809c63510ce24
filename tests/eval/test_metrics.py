"""The benchmark metrics against hand-computed values and independent computations."""

import json

import pytest

from esva.eval.metrics import (EvalError, clue_overlap_proxy, discrete_scores, label_overlap_proxy, match_ids,
                               ov_scores)
from esva.eval.synonyms import GroupingError, emotion_words, load_grouping, offline

GOLD = ["happy", "happy", "sad", "sad", "angry", "neutral"]
PRED = ["happy", "sad", "sad", None, "angry", "happy"]  # None: an answer outside the label set


def test_discrete_scores_by_hand_and_against_sklearn():
    from sklearn.metrics import f1_score

    s = discrete_scores(GOLD, PRED, valence_gold=[1, 2, -1, -2, -3, 0], valence_pred=[1, 1, -1, -1, -3, 1])
    # per class: happy P=R=F=.5 (2), sad .5 (2), angry 1 (1), neutral 0 (1) -> weighted (1 + 1 + 1 + 0) / 6
    assert s["weighted_f1"] == pytest.approx(0.5)
    assert s["weighted_f1"] == pytest.approx(f1_score(GOLD, [p or "?" for p in PRED], average="weighted"))
    assert s["accuracy"] == pytest.approx(0.5) and s["macro_f1"] == pytest.approx(0.5)
    assert s["invalid"] == 1 and s["n"] == 6
    assert s["chance_accuracy"] == pytest.approx(1 / 6) and s["majority_class_accuracy"] == pytest.approx(2 / 6)
    assert s["per_class"]["angry"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert s["per_class"]["worried"]["support"] == 0
    m = s["confusion"]["matrix"]
    assert s["confusion"]["columns"][-1] == "invalid" and m[3][6] == 1 and m[0][2] == 1 and m[2][2] == 1 and m[2][3] == 1
    assert s["valence_mse"] == pytest.approx(0.5) and s["combined"] == pytest.approx(0.5 - 0.125)


def test_discrete_scores_against_sklearn_on_random_labels():
    import numpy as np
    from sklearn.metrics import f1_score

    from esva import LABELS

    rng = np.random.default_rng(0)
    gold = list(rng.choice(LABELS, 200))
    pred = [str(x) for x in rng.choice(list(LABELS) + ["joyful"], 200)]
    s = discrete_scores(gold, pred)
    assert s["weighted_f1"] == pytest.approx(f1_score(gold, pred, average="weighted"))
    assert s["invalid"] == pred.count("joyful")


def test_open_vocabulary_by_hand_on_twelve_samples():
    gold = [["happy"], ["happy", "excited"], ["sad"], ["sad", "lonely"], ["angry"], ["worried"],
            ["surprise", "astonished"], ["neutral"], ["Happy "], ["confused", "curious"], ["grateful"], ["zorgy"]]
    pred = [["joyful"], ["happy"], [], ["sorrowful", "lonely", "angry"], ["furious", "mad"],
            ["anxious", "nervous", "scared"], ["shocked"], ["calm"], ["HAPPY", "happy"], ["puzzled", "bored"],
            ["thankful", "happy"], ["zorgy"]]
    acc = [1, 1, 0, 2 / 3, 1, 0.5, 1, 0, 1, 0.5, 0.5, 1]
    rec = [1, 0.5, 0, 1, 1, 1, 1, 0, 1, 0.5, 1, 1]
    s = ov_scores(gold, pred, offline())
    assert s["accuracy"] == pytest.approx(sum(acc) / 12) and s["recall"] == pytest.approx(sum(rec) / 12)
    assert s["avg"] == pytest.approx((sum(acc) + sum(rec)) / 24)
    assert s["empty_predictions"] == 1 and s["grouping"] == "esva-offline-v1"


def test_grouping_files_json_and_text(tmp_path):
    j = tmp_path / "g.json"
    j.write_text(json.dumps([["happy", "glad"], ["sad", "blue"]]))
    g = load_grouping(j)
    assert g.group("Glad") == "happy" and g.group("blue") == "sad" and g.name.startswith("file:g.json@")
    t = tmp_path / "g.txt"
    t.write_text("# my grouping\nhappy, glad\n\nsad, blue\n")
    assert load_grouping(t).table == g.table


@pytest.mark.parametrize("name, text, message", [
    ("bad.txt", "happy, glad\nsad, , blue\n", r"bad.txt:2: malformed group"),
    ("clash.txt", "happy, glad\nsad, glad\n", r"clash.txt:2: 'glad' is already in another group"),
    ("bad.json", '[["happy", "glad"],\n ["sad", 3]]', r"bad.json:2: group 2 must be a list of strings"),
    ("empty.json", "[]", r"empty.json:1: a grouping must be a non-empty JSON list"),
    ("broken.json", '[["happy", "glad"],\n ["sad" "x"]]', r"broken.json:2: not valid JSON"),
])
def test_malformed_grouping_files_name_the_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(GroupingError, match=message):
        load_grouping(tmp_path / name)


def test_prediction_ids_must_match_the_labels():
    with pytest.raises(EvalError, match=r"missing 1: \['c'\]; extra 1: \['z'\]"):
        match_ids(["a", "b", "z"], ["a", "b", "c"], "evaluate.mer")
    with pytest.raises(EvalError, match="duplicated 1"):
        match_ids(["a", "a", "b"], ["a", "b"], "evaluate.mer")
    match_ids(["b", "a"], ["a", "b"], "ok")
    with pytest.raises(EvalError, match="no samples"):
        discrete_scores([], [])


def test_emer_proxies_by_hand():
    g = offline()
    assert emotion_words("He looks furious, almost enraged, and a bit let down.", g) == {"angry", "disappointed"}
    assert emotion_words("The voice is flat and the corners are pulled down.", g) == set()  # cue words, not feelings
    res = label_overlap_proxy([["angry"], ["sad", "lonely"], ["happy"]],
                              ["He is furious.", "She seems sad.", "No emotion words here."], g)
    # 5 x (precision + names an annotated emotion): sample 1: 10; sample 2 names sad (lonely needn't be named): 10;
    # sample 3: 0 (tests/eval/test_emer_calibration.py has the rest)
    assert res["per_sample"] == pytest.approx([10.0, 10.0, 0.0]) and res["label_overlap_proxy"] == pytest.approx(20 / 3)
    vecs = {"a": [1.0, 0.0], "b": [1.0, 1.0], "c": [-1.0, 0.0]}
    res = clue_overlap_proxy(["a", "a", "a"], ["a", "b", "c"], lambda xs: [vecs[x] for x in xs])
    assert res["per_sample"] == pytest.approx([10.0, 10 / 2 ** 0.5, 0.0])
