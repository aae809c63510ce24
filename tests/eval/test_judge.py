"""The optional LLM scorers (issue 13, item 7): the EMER judge's official procedure (clue overlap in one
call; label overlap in two steps, summarise then score; first number of the reply, 1-10) and the
MER2024-OV grouping writer. Every endpoint here is a fake `post` function: no test opens a socket."""

import numpy as np
import pandas as pd
import pytest

from esva.eval.chat import EndpointError, endpoint_of
from esva.eval.judge import (Judge, JudgeError, clue_messages, label_messages, parse_score, parse_summary,
                             summary_messages)
from esva.eval.official_ov import clean_reply, grouping_messages, load_official, official_ov_scores, write_groupings
from esva.eval.synonyms import GroupingError, offline
from pipeline.stages.evaluate import score


def text(messages):
    assert len(messages) == 1 and messages[0]["role"] == "user"  # one user turn, as the official scorers send
    return messages[0]["content"]


@pytest.mark.parametrize("reply, value", [
    ("Score: 7.5/10", 7.5),
    ("8", 8.0),
    ("'Score': 10; 'Reason': the clues match.", 10.0),
    ("The score is 6. Reason: half the clues match, 3 do not.", 6.0),  # "6." -> 6.0, later numbers ignored
    ("1", 1.0),
])
def test_the_score_is_the_first_number(reply, value):
    assert parse_score(reply) == value


@pytest.mark.parametrize("reply, match", [
    ("I cannot score this.", "no score"),
    ("", "no score"),
    ("Score: 0", "outside 1-10"),
    ("In 2023 the clip ... score 7", "outside 1-10"),  # the first number is not the score: an error, not clipped
    ("1..5", "unreadable score"),
])
def test_unreadable_scores_are_judge_errors(reply, match):
    with pytest.raises(JudgeError, match=match):
        parse_score(reply)


def test_summary_parsing():
    assert parse_summary("anxious") == ["anxious"]
    assert parse_summary("Emotions: Anxious, a bit sad and Angry.") == ["anxious", "a bit sad", "angry"]
    assert parse_summary("- happy\n- relieved\n- happy") == ["happy", "relieved"]
    with pytest.raises(JudgeError, match="no emotion words"):
        parse_summary(" . ")


def test_messages_carry_the_texts_and_the_scale():
    ref, pred = "He frowns and his voice shakes: he is afraid.", "She smiles; she seems happy."
    clue = text(clue_messages(ref, pred))
    assert ref in clue and pred in clue and "1 to 10" in clue and clue.index(ref) < clue.index(pred)
    assert "emotional states" in clue  # the judge is asked to summarise both, then compare
    summ = text(summary_messages(ref))
    assert summ.rstrip().endswith("Emotions:") and ref in summ and pred not in summ
    lab = text(label_messages(["afraid", "nervous"], ["happy"]))
    assert "afraid, nervous" in lab and "happy" in lab and "1 to 10" in lab and "afraid" not in lab.split("Predicted")[-1]


class FakeEndpoint:
    """Answers each kind of request the judge makes, and records the order."""

    def __init__(self, clue="'Score': 8; 'Reason': most clues.", label="Score: 6.5/10", fail_on=None):
        self.calls, self.replies, self.fail_on = [], {"clue": clue, "label": label}, fail_on

    def __call__(self, messages):
        t = text(messages)
        if t.startswith("Below are a reference description"):
            kind = "clue"
        elif t.startswith("Read the description"):
            kind = "summary:" + t.rsplit("Description: ", 1)[1].split("\n")[0]
        else:
            kind = "label:" + t.split("Reference emotions: ")[1].split("\n")[0] + "|" + t.split("Predicted emotions: ")[1].split("\n")[0]
        self.calls.append(kind)
        if self.fail_on and self.fail_on in t:
            raise EndpointError("http://judge.invalid/v1/chat/completions: connection refused")
        if kind == "clue":
            return self.replies["clue"]
        if kind.startswith("summary:"):
            return "Emotions: afraid, nervous" if "afraid" in kind else "happy"
        return self.replies["label"]


def test_the_official_flow_calls_in_order_and_scores():
    fake = FakeEndpoint()
    judge = Judge(fake, model="fake-gpt")
    res = judge.score("He is afraid.", "She is happy.")
    assert fake.calls == ["clue", "summary:He is afraid.", "summary:She is happy.", "label:afraid, nervous|happy"]
    assert (res.clue, res.label) == (8.0, 6.5)
    assert res.reference_emotions == ("afraid", "nervous") and res.prediction_emotions == ("happy",)
    assert "two steps" in judge.procedure and endpoint_of(fake).startswith("<injected")


def test_judge_errors_name_the_endpoint_and_the_reply():
    def post(messages):
        return "I would rather not say."

    post.endpoint = "http://judge.invalid/v1/chat/completions"
    with pytest.raises(JudgeError, match=r"judge\.invalid.*clue overlap.*I would rather not say"):
        Judge(post).score("a", "b")
    with pytest.raises(JudgeError, match="connection refused"):
        Judge(FakeEndpoint(fail_on="He is afraid.")).score("He is afraid.", "x")


def emer_frames(answers):
    gold = pd.DataFrame({"clip_id": ["c1", "c2", "c3"], "reason": ["He is afraid.", "He is afraid, he shakes.", "No clue."],
                         "ov_labels": [["afraid"], ["afraid"], ["sad"]], "label": ["fear", "fear", "sad"]})
    return pd.DataFrame({"clip_id": ["c3", "c1", "c2"], "answer": answers}), gold


def test_judge_failures_are_counted_not_fatal_in_evaluate():
    preds, gold = emer_frames(["Looks sad.", "She is happy.", "BROKEN"])
    clue_replies = iter(["Score: 9", "Score: 3", "Score: 5"])  # c1, then c3 (c2's answer makes every call fail)

    class Fake(FakeEndpoint):
        def __call__(self, messages):
            t = text(messages)
            if t.startswith("Below are a reference description") and "BROKEN" not in t:
                self.calls.append("clue")
                return next(clue_replies)
            return super().__call__(messages)

    fake = Fake(label="7", fail_on="BROKEN")
    res = score("emer", preds, gold, offline(), embed=None, judge=Judge(fake, model="fake-gpt"))
    # c1 (answer "She is happy."): clue 9, label 7; c2 ("BROKEN"): fails, counted; c3 ("Looks sad."): clue 3, label 7
    assert res["judge_failed"] == 1 and res["judge_n"] == 2
    assert res["clue_overlap_judge"] == pytest.approx((9 + 3) / 2) and res["label_overlap_judge"] == pytest.approx(7.0)
    assert res["judge_model"] == "fake-gpt" and "two steps" in res["judge_procedure"] and res["judge_scale"] == "1-10"
    assert res["n"] == 3  # the offline proxies are still there for every sample
    none = score("emer", *emer_frames(["BROKEN"] * 3), offline(), judge=Judge(FakeEndpoint(fail_on="BROKEN")))
    assert none["judge_failed"] == 3 and "clue_overlap_judge" not in none


# MER2024-OV: the producing side of the official per-sample groupings

def test_grouping_request_and_reply_cleaning():
    t = text(grouping_messages(["Doubt", "satisfied"], ["question", "doubt"]))
    assert t.endswith("Input: ['doubt', 'question', 'satisfied'] Output:")  # the lower-cased union, sorted
    assert "list of lists" in t and "same meaning" in t
    assert clean_reply("Output: [['a', 'b'],\n ['c']]") == "[['a', 'b'], ['c']]"


def test_grouping_writer_is_resumable_and_reproduces_the_official_scores(tmp_path):
    names = ["s1", "s2"]
    gold = [["doubt", "satisfied"], ["happy", "excited"]]
    pred = [["question"], ["Joyful", "calm"]]
    replies = {"['doubt', 'question', 'satisfied']": "Output: [['doubt', 'question'], ['satisfied']]",
               "['calm', 'excited', 'happy', 'joyful']": "[['happy', 'joyful'], ['excited'], ['calm']]"}
    asked = []

    def post(messages):
        key = text(messages).rsplit("Input: ", 1)[1].removesuffix(" Output:")
        asked.append(key)
        return replies[key]

    out = tmp_path / "openset-synonym"
    assert write_groupings(names, gold, pred, out, post) == {"written": 2, "skipped_existing": 0, "stale_regrouped": 0,
                                                             "folder": str(out)}
    assert sorted(p.name for p in out.iterdir()) == ["s1.npy", "s2.npy"]  # no temp files left
    arr = np.load(out / "s1.npy", allow_pickle=False)
    assert arr.shape == () and arr.dtype.kind == "U" and str(arr) == "[['doubt', 'question'], ['satisfied']]"
    assert len(asked) == 2

    # a rerun asks nothing for the files that exist
    assert write_groupings(names, gold, pred, out, post)["skipped_existing"] == 2 and len(asked) == 2

    res = official_ov_scores(names, gold, pred, load_official(out))
    # s1: G={doubt, satisfied} P={doubt}: acc 1, rec 1/2; s2: G={happy, excited} P={happy, calm}: acc 1/2, rec 1/2
    assert res["n"] == 2 and res["accuracy"] == pytest.approx(0.75) and res["recall"] == pytest.approx(0.5)
    assert res["avg"] == pytest.approx(0.625) and res["predicted_words_without_group"] == 0

    # a retuned model predicts a word s1's grouping does not hold: s1 is asked again, never scored on the old file
    replies["['doubt', 'satisfied', 'suspicious']"] = "[['doubt', 'suspicious'], ['satisfied']]"
    new = [["suspicious"], ["Joyful", "calm"]]
    stale = official_ov_scores(names, gold, new, load_official(out))
    assert stale["predicted_words_without_group"] == 1  # what scoring on stale groupings would have hidden
    assert write_groupings(names, gold, new, out, post)["stale_regrouped"] == 1 and len(asked) == 3
    fresh = official_ov_scores(names, gold, new, load_official(out))
    assert fresh["predicted_words_without_group"] == 0 and fresh["accuracy"] == pytest.approx(0.75)


def test_grouping_writer_failures_write_nothing_and_resume(tmp_path):
    calls = []

    def flaky(messages):
        calls.append(1)
        if len(calls) == 1:
            raise EndpointError("http://llm.invalid/v1/chat/completions: timed out")
        if len(calls) == 2:
            return "Sorry, I cannot help."
        return "[['sad', 'down']]"

    out = tmp_path / "g"
    args = (["a", "b", "c"], [["sad"]] * 3, [["down"]] * 3, out)
    with pytest.raises(GroupingError, match=r"2 of 3 .*timed out.*Sorry") as err:
        write_groupings(*args, flaky)
    assert "rerun to resume" in str(err.value) and [p.name for p in out.glob("*.npy")] == ["c.npy"]
    assert write_groupings(*args, flaky) == {"written": 2, "skipped_existing": 1, "stale_regrouped": 0, "folder": str(out)}
    assert len(calls) == 5 and sorted(p.name for p in out.iterdir()) == ["a.npy", "b.npy", "c.npy"]
    with pytest.raises(GroupingError, match="cannot be a grouping file name"):
        write_groupings(["../x"], [["sad"]], [["sad"]], out, flaky)
