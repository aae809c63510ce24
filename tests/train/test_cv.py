"""The ablation rows' statistics (esva/train/cv.py): seeds on the run's split, and repeated stratified k-fold
cross-validation."""

from collections import Counter

import numpy as np
import pytest

from esva import LABELS
from esva.config import AlignConfig, ContrastConfig, MsfeConfig, TrainConfig
from esva.train.cv import carve_val, cross_validate, fold_ids, repeat_seeds, views
from esva.train.stage1 import Clip, FeatureData, TrainError


def _data(per_label=7, seed=0):
    rng = np.random.default_rng(seed)
    clips = []
    for lab in range(len(LABELS)):
        for k in range(per_label):
            split = "val" if k == 0 else "train"
            clips.append(Clip(f"{LABELS[lab]}_{k:02d}", lab, split, None,
                              {"text": rng.normal(lab * 0.8, 1, 12).astype(np.float32)}, LABELS[lab]))
        clips.append(Clip(f"test_{lab}", lab, "test", None, {"text": rng.normal(0, 1, 12).astype(np.float32)},
                          LABELS[lab]))
    return FeatureData(clips, {"text": 12}, {"text": 0.0}, "synthetic", labels=LABELS)


def test_folds_are_stratified_seeded_and_independent_of_order():
    labels = [i % 3 for i in range(30)]
    ids = [f"c{i:02d}" for i in range(30)]
    f = fold_ids(labels, ids, 5, seed=0)
    for k in range(5):  # 10 clips per label over 5 folds: exactly 2 of each label per fold
        assert Counter(labels[i] for i in np.flatnonzero(f == k)) == {0: 2, 1: 2, 2: 2}
    perm = np.random.default_rng(1).permutation(30)
    g = fold_ids([labels[i] for i in perm], [ids[i] for i in perm], 5, seed=0)
    assert {ids[i]: int(x) for i, x in zip(perm, g)} == {c: int(x) for c, x in zip(ids, f)}
    assert not np.array_equal(fold_ids(labels, ids, 5, seed=1), f)  # another seed, other folds
    with pytest.raises(TrainError, match="at least 2 folds"):
        fold_ids(labels, ids, 1, 0)


def test_val_share_is_stratified():
    labels = [0] * 10 + [1] * 2 + [2]
    mask = carve_val(labels, [f"c{i:02d}" for i in range(13)], 0.2, seed=0)
    assert mask[:10].sum() == 2 and mask[10:12].sum() == 1 and not mask[12]


def test_views_partition_the_training_clips_and_never_touch_evaluation_clips():
    data = _data()
    seen = Counter()
    for k, view in views(data, 3, seed=0, val_fraction=0.2):
        assert {c.split for c in view.clips} == {"train", "val", "test"}
        assert not any(c.clip_id.startswith("test_") for c in view.clips)  # the evaluation rows stay out
        assert {c.label for c in view.split("train")} == set(range(len(LABELS)))
        seen.update(c.clip_id for c in view.split("test"))
    assert len(seen) == 42 and set(seen.values()) == {1}  # each training clip held out exactly once


def test_too_few_clips_of_a_label_for_the_folds_is_an_error_naming_it():
    with pytest.raises(TrainError, match=r"at least 8 clips of each label.*lower ablate.folds"):
        next(views(_data(), 8, 0, 0.2))


def test_cross_validation_predicts_every_training_clip_once_per_seed():
    cfgs = dict(msfe_cfg=MsfeConfig(hidden=8), contrast_cfg=ContrastConfig(), align_cfg=AlignConfig(enabled=False),
                train_cfg=TrainConfig(epochs=2, batch_size=8, hidden=16, patience=2))
    runs = []
    res = cross_validate(_data(), ("text",), **cfgs, seeds=[0, 1], folds=3, val_fraction=0.2, on_run=runs.append)
    assert len(res["runs"]) == len(runs) == 6 and res["design"]["n_predictions"] == 84
    p = res["predictions"]
    assert len(p["clip_ids"]) == 42 and set(p["by_seed"]) == {"0", "1"}
    assert all(len(v) == 42 and set(v) <= set(LABELS) for v in p["by_seed"].values())
    assert p["gold"][p["clip_ids"].index("sad_03")] == "sad"
    assert all(r["n_train"] + r["n_val"] + r["test"]["n"] == 42 for r in res["runs"])


def test_seeds_on_the_runs_split_predict_the_same_test_clips_and_reuse_the_first_run():
    from esva.train.stage1 import predict, train

    cfgs = dict(msfe_cfg=MsfeConfig(hidden=8), contrast_cfg=ContrastConfig(), align_cfg=AlignConfig(enabled=False),
                train_cfg=TrainConfig(epochs=2, batch_size=8, hidden=16, patience=2))
    data = _data()
    first = train(data, ("text",), **cfgs)
    runs = []
    res = repeat_seeds(data, ("text",), **cfgs, seeds=[0, 3], first=first, on_run=runs.append)
    assert res["design"]["kind"] == "seeds" and res["design"]["n_predictions"] == 12 and len(runs) == 2
    p = res["predictions"]
    assert p["clip_ids"] == sorted(f"test_{i}" for i in range(6)) and p["gold"][p["clip_ids"].index("test_2")] == LABELS[2]
    test = sorted(data.split("test"), key=lambda c: c.clip_id)
    again = predict(first.model, test, ("text",), 8)["probs"].argmax(-1)
    assert p["by_seed"]["0"] == [LABELS[i] for i in again]  # seed 0 is the run it was given, not a retraining
    assert [r["seed"] for r in res["runs"]] == [0, 3] and all(r["test"]["n"] == 6 for r in res["runs"])
    with pytest.raises(TrainError, match="no labelled test clips"):
        repeat_seeds(FeatureData([c for c in data.clips if c.split != "test"], data.dims, data.rates, "synthetic",
                                 labels=LABELS), ("text",), **cfgs, seeds=[0])
