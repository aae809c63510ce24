"""Label sets per source, the run's vocabulary, MER2023's six-label scoring and Emotion-LLaMA's lenient
parse (issue 13, item 4 and 7), and that no stage chooses an epoch without validation clips (item 3)."""

import numpy as np
import pandas as pd
import pytest

from esva import ALL_LABELS, LABELS, MERR_LABELS, label_set_of, vocabulary
from esva.config import AlignConfig, ContrastConfig, MsfeConfig, TrainConfig
from esva.data.instructions import eval_samples, instruction_labels, lenient_label, parse_label, training_samples
from esva.data.manifest import to_frame
from esva.eval.metrics import discrete_scores
from esva.train.stage1 import Clip, FeatureData, TrainError, predict, scores, train


def test_vocabulary_follows_the_training_rows_in_a_fixed_order():
    assert vocabulary(["sad", "doubt", None, "happy", "sad", float("nan")]) == ("happy", "sad", "doubt")
    assert vocabulary(MERR_LABELS) == ALL_LABELS and len(ALL_LABELS) == 9
    assert vocabulary(LABELS) == LABELS  # six-label corpora keep MER2023's class indices
    with pytest.raises(ValueError, match="'furious'"):
        vocabulary(["happy", "furious"])


def test_a_split_is_scored_on_its_own_label_set():
    assert label_set_of(["happy", "sad", "worried"]) == LABELS  # MER2023: the six, whatever the run's vocabulary
    assert label_set_of(["happy", "doubt"]) == ("happy", "doubt")


def test_the_instruction_lists_the_training_vocabulary_in_emotion_llamas_order():
    assert instruction_labels(ALL_LABELS) == MERR_LABELS  # exactly Emotion-LLaMA's list on MERR
    assert instruction_labels(LABELS) == ("happy", "sad", "neutral", "angry", "worried", "surprise")
    df = to_frame([{"clip_id": "a", "video_path": "a.mp4", "root": "r", "split": "train", "label": "fear",
                    "transcript": "hi", "dataset": "merr"}])
    nine = training_samples(df, {"emotion": 1.0}, seed=0, epoch=1, labels=instruction_labels(ALL_LABELS))
    six = eval_samples(df, "emotion", instruction_labels(LABELS))
    assert nine[0].target == "fear" and "fear, contempt, doubt" in nine[0].instruction
    assert "fear" not in six[0].instruction and "surprise" in six[0].instruction


@pytest.mark.parametrize("answer, want", [
    ("The emotion is happy", "happy"),       # the last token
    ("happy", "happy"),
    ("I think she is Sad", "sad"),           # lower-cased
    ("happy.", "neutral"),                   # punctuation is not stripped, as in Emotion-LLaMA's code
    ("happy, not sad at all", "neutral"),    # the last token is no label: neutral
    ("doubt", "neutral"),                    # MERR's label is not one of MER2023's six
    ("", "neutral"),
])
def test_lenient_parse_is_emotion_llamas(answer, want):
    assert lenient_label(answer, LABELS) == want


def test_mer2023_counts_answers_outside_its_six_labels_as_wrong():
    gold = ["happy", "sad", "worried", "neutral"]
    answers = ["happy", "doubt", "I cannot tell", "neutral"]
    pred = [parse_label(a, ALL_LABELS) for a in answers]
    assert pred == ["happy", "doubt", None, "neutral"]
    res = discrete_scores(gold, pred, label_set_of(gold))
    assert res["accuracy"] == 0.5 and res["invalid"] == 2
    assert res["outside_label_set"] == 1 and res["unparseable"] == 1
    assert res["confusion"]["columns"][-1] == "invalid" and len(res["confusion"]["columns"]) == 7


def test_evaluate_reports_the_strict_and_the_lenient_figure_side_by_side():
    from esva.eval.synonyms import offline
    from pipeline.stages.evaluate import score

    gold = pd.DataFrame({"clip_id": ["a", "b", "c"], "label": ["happy", "sad", "neutral"], "valence": [None] * 3})
    preds = pd.DataFrame({"clip_id": ["a", "b", "c"], "answer": ["happy.", "she is sad", "contempt"]})
    res = score("mer", preds, gold, offline())
    # strict: "happy." -> happy, "she is sad" -> sad, contempt -> outside the six
    assert res["accuracy"] == pytest.approx(2 / 3) and res["outside_label_set"] == 1
    # lenient: "happy." -> neutral (wrong), "sad" -> sad, contempt -> neutral (right by default)
    assert res["emotion_llama_lenient"]["accuracy"] == pytest.approx(2 / 3)
    assert "Emotion-LLaMA" in res["emotion_llama_lenient"]["rule"]


def _nine_label_data(val=True, seed=0):
    rng = np.random.default_rng(seed)
    clips = []
    for i, lab in enumerate(MERR_LABELS):
        for k in range(3):
            split = "val" if (val and k == 2) else "train"
            feats = {"text": rng.normal(ALL_LABELS.index(lab) * 0.5, 1, 12).astype(np.float32)}
            clips.append(Clip(f"{lab}_{k}", ALL_LABELS.index(lab), split, None, feats, lab))
    for k, lab in enumerate(LABELS):  # the MER2023 test rows: six labels
        clips.append(Clip(f"t{k}", ALL_LABELS.index(lab), "test", None,
                          {"text": rng.normal(k * 0.5, 1, 12).astype(np.float32)}, lab))
    return FeatureData(clips, {"text": 12}, {"text": 0.0}, "test", labels=ALL_LABELS)


CFGS = dict(msfe_cfg=MsfeConfig(hidden=8), contrast_cfg=ContrastConfig(), align_cfg=AlignConfig(enabled=False),
            train_cfg=TrainConfig(epochs=2, batch_size=8, hidden=16, patience=2))


def test_stage1_trains_nine_classes_and_scores_mer_on_six():
    data = _nine_label_data()
    res = train(data, ("text",), **CFGS)
    assert res.model.head[-1].out_features == 9 and res.model.labels == ALL_LABELS
    test = data.split("test")
    probs = np.zeros((len(test), 9))
    probs[:, ALL_LABELS.index("doubt")] = 1.0  # a model that always answers doubt
    probs[0] = np.eye(9)[ALL_LABELS.index(test[0].gold)]  # except once, rightly
    s = scores(test, {"probs": probs}, ALL_LABELS)
    assert s["label_set"] == list(LABELS) and s["outside_label_set"] == 5 and s["accuracy"] == pytest.approx(1 / 6)


def test_no_epoch_is_chosen_without_validation_clips():
    with pytest.raises(TrainError, match="validation split is empty.*data.val_fraction"):
        train(_nine_label_data(val=False), ("text",), **CFGS)


def test_stage2_chooses_no_epoch_without_validation_clips(tmp_path):
    from esva.config import TuneConfig
    from esva.train.stage2 import tune

    data = _nine_label_data(val=False)
    df = to_frame([{"clip_id": c.clip_id, "video_path": "v.mp4", "root": "r", "split": c.split, "label": c.gold,
                    "dataset": "merr"} for c in data.clips])
    with pytest.raises(TrainError, match="stage 2: the validation split is empty"):
        tune(data, df, tmp_path / "stage1", tmp_path / "llm", TuneConfig())


def test_validation_labels_outside_the_training_vocabulary_are_scored_as_wrong():
    data = _nine_label_data()
    for c in data.clips:  # no training clip is doubt any more: the vocabulary loses it, the val clip keeps it
        if c.gold == "doubt" and c.split == "train":
            c.split = "unused"
    data.labels = tuple(lab for lab in data.labels if lab != "doubt")
    for c in data.clips:
        c.label = data.labels.index(c.gold) if c.gold in data.labels else -2
    res = train(data, ("text",), **CFGS)  # no crash on the -2 label in the validation loss
    val = data.split("val")
    s = scores(val, predict(res.model, val, ("text",), 8, "cpu"), data.labels)
    assert s["n"] == 9 and "doubt" in s["label_set"]
    doubt = [c for c in val if c.gold == "doubt"]
    assert scores(doubt, predict(res.model, doubt, ("text",), 8, "cpu"), data.labels)["accuracy"] == 0.0
