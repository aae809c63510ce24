"""The stage-1 loop on small in-memory features: determinism, early stopping, checks, NaN guard."""

import numpy as np
import pytest

from esva import LABELS
from esva.config import AlignConfig, ContrastConfig, MsfeConfig, TrainConfig
from esva.train.stage1 import Clip, FeatureData, TrainError, check_config, predict, scores, train

USE = ("hubert", "mae", "text")


def _data(n_per_class=4, seed=0, t_audio=(60, 90)):
    rng = np.random.default_rng(seed)
    clips = []
    for lab in range(len(LABELS)):
        for k in range(n_per_class):
            ta = int(rng.integers(*t_audio))
            tv = ta // 2
            feats = {"hubert": rng.normal(lab * 0.3, 1, (ta, 16)).astype(np.float32),
                     "mae": rng.normal(0, 1, (tv, 8)).astype(np.float32),
                     "text": rng.normal(lab * 0.2, 1, 12).astype(np.float32)}
            split = "train" if k < n_per_class - 1 else "val"
            clips.append(Clip(f"c{lab}_{k}", lab, split, float(rng.uniform(-100, 100)), feats))
    return FeatureData(clips, {"hubert": 16, "mae": 8, "text": 12}, {"hubert": 50.0, "mae": 25.0, "text": 0.0}, "synthetic")


CFGS = dict(msfe_cfg=MsfeConfig(hidden=8), contrast_cfg=ContrastConfig(),
            align_cfg=AlignConfig(dim=8, max_shift=4, window=4, warmup_epochs=2),
            train_cfg=TrainConfig(epochs=4, batch_size=8, hidden=16, patience=2))


def test_same_seed_same_metrics():
    data = _data()
    r1 = train(data, USE, **CFGS)
    r2 = train(data, USE, **CFGS)
    assert r1.history == r2.history
    p1 = predict(r1.model, data.clips, USE, 8, "cpu")
    p2 = predict(r2.model, data.clips, USE, 8, "cpu")
    np.testing.assert_array_equal(p1["probs"], p2["probs"])
    np.testing.assert_array_equal(p1["tau_frames"], p2["tau_frames"])
    r3 = train(data, USE, **{**CFGS, "train_cfg": CFGS["train_cfg"].model_copy(update={"seed": 1})})
    assert r3.history != r1.history


def test_warmup_then_joint_and_early_stopping():
    data = _data()
    cfg = CFGS["train_cfg"].model_copy(update={"epochs": 50, "patience": 1, "lr": 1e-6})
    res = train(data, USE, **{**CFGS, "train_cfg": cfg})
    phases = [h["phase"] for h in res.history]
    assert phases[:2] == ["align_warmup"] * 2 and set(phases[2:]) == {"joint"}
    assert res.stopped_early and len(res.history) < 52
    s = scores(data.split("val"), predict(res.model, data.split("val"), USE, 8, "cpu"))
    assert 0 <= s["weighted_f1"] <= 1 and s["n"] == 6


def test_config_checks_name_both_keys():
    data = _data(t_audio=(20, 24))
    with pytest.raises(TrainError, match=r"msfe.kernels/msfe.scales.*receptive field of 31.*shortest clip \(20"):
        check_config(data, USE, MsfeConfig(scales=4), AlignConfig())
    with pytest.raises(TrainError, match=r"align.max_shift=8 needs clips of at least 17 frames.*shortest has 10"):
        check_config(data, USE, MsfeConfig(scales=1), AlignConfig(max_shift=8))
    one = _data()
    one.clips = [c for c in one.clips if not (c.label == 2 and c.split == "train")]
    with pytest.raises(TrainError, match="class 'happy' has no clip in the training split"):
        check_config(one, USE, MsfeConfig(), AlignConfig(max_shift=4, window=4))


def test_nan_loss_stops_with_step_and_clip_ids_and_keeps_the_checkpoint():
    data = _data()
    bad = next(c for c in data.clips if c.split == "train")
    saved = []

    def poison(rec):  # the features go bad after the first (good) epoch
        bad.feats["hubert"][:] = np.nan

    cfg = CFGS["align_cfg"].model_copy(update={"warmup_epochs": 0})
    with pytest.raises(TrainError, match=rf"non-finite loss at epoch 2, step \d+.*{bad.clip_id}.*checkpoint \(epoch 1\) is kept"):
        train(data, USE, **{**CFGS, "align_cfg": cfg}, on_epoch=poison, checkpoint=lambda m, e: saved.append(e))
    assert saved == [1]  # epoch 1's weights were written before the failure


def test_store_missing_for_a_used_encoder(tmp_path):
    import pandas as pd

    from esva.train.stage1 import load_features

    df = pd.DataFrame({"clip_id": ["a"], "label": ["happy"], "split": ["train"], "dataset": ["synthetic"]})
    with pytest.raises(TrainError, match=r"features.use lists 'eva' but its store .*eva.zarr does not exist"):
        load_features(df, {"eva": tmp_path / "eva.zarr"}, ("eva",))


def test_training_steps_even_after_an_accumulating_run_left_accelerates_state_mid_way():
    """accelerate's GradientState is one per process. A stage-2 tuning with gradient accumulation left it at
    sync_gradients False, and every later stage-1 training in the process then skipped all optimizer steps
    (a model at chance, silently: found by running the mechanism tests after the stage-2 tests). train() now
    sets it; the run equals one in a fresh state."""
    from accelerate.state import GradientState

    data = _data()
    fresh = train(data, USE, **CFGS)
    state = GradientState()
    state._set_sync_gradients(False)  # as an accumulation left it mid-way
    state.plugin_kwargs = {"num_steps": 2}
    after = train(data, USE, **CFGS)
    assert after.history == fresh.history and after.history[0]["train_loss"] != after.history[-1]["train_loss"]


def test_a_neural_controller_is_trained_after_stage_1_and_travels_with_the_model(tmp_path):
    """align.controller=neural: the network is fitted (not left at its untrained zero output, which would silently
    be `fixed`) and saved in the model's weights; load_stage1 gives the same offset tracks. With
    train.reliability, the running statistics travel too."""
    import json

    from safetensors.torch import save_file

    from esva.train.stage1 import load_stage1, predict

    data = _data()
    cfg = dict(CFGS, align_cfg=CFGS["align_cfg"].model_copy(update={"controller": "neural", "neural_steps": 20}),
               train_cfg=CFGS["train_cfg"].model_copy(update={"reliability": True}))
    res = train(data, ("hubert", "mae", "text"), **cfg)
    net = res.model.aligner.controller.net
    assert net[-1].weight.abs().sum() > 0  # trained: the last layer started at zero
    assert int(res.model.reliability["hubert"].seen) > 0
    out = tmp_path / "m"
    out.mkdir()
    save_file({k: v.detach().contiguous() for k, v in res.model.state_dict().items()}, str(out / "model.safetensors"))
    json.dump({"labels": list(LABELS), "dims": data.dims, "rates": data.rates, "use": ["hubert", "mae", "text"],
               "msfe": cfg["msfe_cfg"].model_dump(mode="json"), "align": cfg["align_cfg"].model_dump(mode="json"),
               "train": cfg["train_cfg"].model_dump(mode="json")}, (out / "config.json").open("w"))
    loaded, _ = load_stage1(out)
    clips = data.split("val")
    a, b = predict(res.model, clips, ("hubert", "mae", "text"), 8), predict(loaded, clips, ("hubert", "mae", "text"), 8)
    for x, y in zip(a["tau_tracks"], b["tau_tracks"]):
        np.testing.assert_allclose(x, y, atol=1e-5)
    np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-5)
