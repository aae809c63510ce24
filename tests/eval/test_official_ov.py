"""MER2024-OV from the official per-sample groupings, in the format the official scorer writes
(one `<name>.npy` per sample holding the LLM's reply as a 0-d string array) (issue 13)."""

import numpy as np
import pandas as pd
import pytest

from esva.eval.official_ov import load_official, official_ov_scores, parse_groups
from esva.eval.synonyms import GroupingError
from pipeline.stages.evaluate import score


@pytest.fixture
def groupings(tmp_path):
    d = tmp_path / "openset-synonym"
    d.mkdir()
    replies = {
        "sample_00000021": "[['suspect', 'doubt', 'question'], ['positive', 'satisfied']]",
        "sample_00000022": "Output: [['happy', 'joyful'], ['excited']]",
        "sample_00000023": "[['Angry', 'angry', 'furious']]",  # the LLM's own capitalisation leads the group
    }
    for name, text in replies.items():
        np.save(d / f"{name}.npy", np.array(text))
    return d


def test_the_official_rule_by_hand(groupings):
    g = load_official(groupings)
    assert parse_groups("Output: [['happy', 'joyful'], ['excited']]") == [["happy", "joyful"], ["excited"]]
    names = ["sample_00000021", "sample_00000022", "sample_00000023", "sample_00000099"]
    gold = [["doubt", "satisfied"], ["happy", "excited"], ["angry"], ["sad"]]
    pred = [["question"], ["Joyful", "calm"], ["furious"], ["sad"]]
    res = official_ov_scores(names, gold, pred, g)
    # 21: G={suspect, positive} P={suspect}: acc 1, rec 1/2; 22: G={happy, excited} P={happy, calm}: acc 1/2, rec 1/2
    # 23: G={Angry} P={Angry}: acc 1, rec 1; 99: no grouping file, not scored
    assert res["n"] == 3 and res["not_scored_no_grouping"] == 1
    assert res["accuracy"] == pytest.approx((1 + 0.5 + 1) / 3) and res["recall"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert res["avg"] == pytest.approx((res["accuracy"] + res["recall"]) / 2)
    empty = official_ov_scores(names[:1], gold[:1], [[]], g)
    assert empty["accuracy"] == empty["recall"] == 0.0 and empty["empty_predictions"] == 1


def test_evaluate_scores_ov_by_the_datasets_own_names(groupings):
    from esva.eval.official_ov import PerSampleGrouping

    g = load_official(groupings)
    assert isinstance(g, PerSampleGrouping)
    gold = pd.DataFrame({"clip_id": ["mer2024.sample_00000021", "mer2024.sample_00000022"],
                         "name": ["sample_00000021", "sample_00000022"],
                         "ov_labels": [["doubt", "satisfied"], ["happy", "excited"]]})
    preds = pd.DataFrame({"clip_id": gold["clip_id"], "answer": ["question", "joyful, calm"]})
    res = score("ov", preds, gold, g)
    assert res["n"] == 2 and res["accuracy"] == pytest.approx(0.75) and res["recall"] == pytest.approx(0.5)


def test_bad_grouping_folders_name_the_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GroupingError, match="no <name>.npy"):
        load_official(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    np.save(tmp_path / "bad" / "x.npy", np.zeros(3))
    with pytest.raises(GroupingError, match=r"x.npy: expected one string"):
        load_official(tmp_path / "bad")
    np.save(tmp_path / "bad" / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(GroupingError, match=r"x.npy: not a grouping file"):  # never unpickled
        load_official(tmp_path / "bad")
