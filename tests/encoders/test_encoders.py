"""Each encoder on its tiny config: shapes, padding invariance, determinism, dtype, checkpoints."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from esva.config import EvaFeatures, HubertFeatures, MaeFeatures, TextFeatures, VideoMaeFeatures
from esva.encoders import load_encoder, resolve_checkpoint
from esva.encoders.base import CheckpointError, masked_mean

CFG = {"hubert": HubertFeatures(), "mae": MaeFeatures(), "videomae": VideoMaeFeatures(), "eva": EvaFeatures(),
       "text": TextFeatures()}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


def _enc(name, models, **kw):
    cfg = CFG[name].model_copy(update=kw)
    return load_encoder(name, cfg, models)[0]


def _encode(enc, ids, items):
    b = enc.collate(ids, items)
    out = enc.encode(b)
    return out, enc.output_lengths(b)


def _audio(seconds, seed):
    return np.random.default_rng(seed).normal(0, 0.1, int(16000 * seconds)).astype(np.float32)


def _faces(n, seed):
    return np.random.default_rng(seed).integers(0, 255, (n, 224, 224, 3), dtype=np.uint8)


def test_hubert_shapes_rate_and_padding_invariance(models):
    enc = _enc("hubert", models)
    assert enc.frame_rate == 50.0 and enc.dim == 64 and enc.layers == ("last",)
    a, b = _audio(1.0, 0), _audio(2.3, 1)
    out, lens = _encode(enc, ["a", "b"], [a, b])
    assert out["last"].shape == (2, int(lens.max()), 64) and lens.tolist() == [49, 114]
    alone, alone_len = _encode(enc, ["a"], [a])
    assert alone_len.tolist() == [49]
    torch.testing.assert_close(out["last"][0, :49], alone["last"][0], atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(masked_mean(out["last"], lens)[0], masked_mean(alone["last"], alone_len)[0],
                               atol=1e-4, rtol=1e-3)


def test_layer_selection(models):
    enc = _enc("hubert", models, layers=[0, 2, -1])
    out, _ = _encode(enc, ["a"], [_audio(0.5, 0)])
    assert set(out) == {"L0", "L2", "L-1"}
    enc4 = _enc("hubert", models, layers="last4sum")
    out4, _ = _encode(enc4, ["a"], [_audio(0.5, 0)])
    assert set(out4) == {"last4sum"} and not torch.allclose(out4["last4sum"], out["L-1"])


def test_mae_fixed_patch_order_and_per_frame_vectors(models):
    enc = _enc("mae", models, pool="cls")
    frames = _faces(5, 0)
    out1, lens = _encode(enc, ["a"], [frames])
    out2, _ = _encode(enc, ["a"], [frames])
    assert out1["last"].shape == (1, 5, 64) and lens.tolist() == [5]
    torch.testing.assert_close(out1["last"], out2["last"])
    px = enc.collate(["a"], [frames]).inputs["pixel_values"]
    noise = torch.arange(enc.n_patches, dtype=torch.float32).expand(len(px), -1)
    with torch.inference_mode():
        res = enc.model(px, noise=noise)
    assert torch.equal(res.ids_restore[0], torch.arange(enc.n_patches))  # identity: no shuffle
    # frames are independent: a clip's vectors do not depend on its batch mates
    both, blens = _encode(enc, ["a", "b"], [frames, _faces(3, 1)])
    torch.testing.assert_close(both["last"][0, :5], out1["last"][0], atol=1e-5, rtol=1e-4)
    stride = _enc("mae", models, frame_stride=2)
    assert _encode(stride, ["a"], [frames])[1].tolist() == [3]


def test_videomae_windows_and_padding(models):
    enc = _enc("videomae", models)
    assert enc.window == 16 and enc.tubelet == 2
    short, long = _faces(9, 0), _faces(40, 1)
    out, lens = _encode(enc, ["s", "l"], [short, long])
    assert lens.tolist() == [5, 20]  # ceil(9/2), ceil(40/2): slots of padding frames dropped
    alone, _ = _encode(enc, ["s"], [short])
    torch.testing.assert_close(out["last"][0, :5], alone["last"][0, :5], atol=1e-5, rtol=1e-4)
    assert enc.cost(40) == 3 and enc.cost(9) == 1


def test_eva_one_vector_from_the_peak_frame(models):
    from esva.encoders.eva import pick_frame

    enc = _enc("eva", models)
    frames = np.full((6, 224, 224, 3), 120, np.uint8)
    frames[4] = 250  # the most different frame
    assert pick_frame(frames, "peak") == 4 and pick_frame(frames, "middle") == 3 and pick_frame(frames, "first") == 0
    b = enc.collate(["a"], [frames])
    assert b.extra["frame_index"] == [4]
    out = enc.encode(b)
    assert out["last"].shape == (1, 1, 64)
    bigger = _enc("eva", models, image_size=84)  # another resolution: position embeddings interpolated
    assert bigger.encode(bigger.collate(["a"], [frames]))["last"].shape == (1, 1, 64)


def test_text_minilm_is_real_and_padding_free(models):
    enc = _enc("text", models)
    assert enc.dim == 384
    out, lens = _encode(enc, ["a", "b"], ["I am happy.", "The meeting was moved to Thursday afternoon, sadly."])
    alone, alone_len = _encode(enc, ["a"], ["I am happy."])
    torch.testing.assert_close(masked_mean(out["last"], lens)[0], masked_mean(alone["last"], alone_len)[0],
                               atol=1e-5, rtol=1e-4)
    # real weights: paraphrases are closer than unrelated sentences
    sents = ["I am so happy today.", "Today I feel very glad.", "The train leaves at nine."]
    o, l = _encode(enc, list("xyz"), sents)
    v = torch.nn.functional.normalize(masked_mean(o["last"], l), dim=-1)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2


def test_bf16_autocast_matches_float32(models):
    fp32 = _enc("hubert", models, dtype="fp32")
    bf16 = _enc("hubert", models, dtype="bf16")
    assert bf16.dtype == torch.bfloat16
    a = [_audio(1.5, 7)]
    x, lx = _encode(fp32, ["a"], a)
    y, _ = _encode(bf16, ["a"], a)
    cos = torch.nn.functional.cosine_similarity(x["last"][0], y["last"][0], dim=-1)
    assert float(cos.min()) >= 0.999, float(cos.min())


def test_tiny_checkpoint_goes_through_save_and_from_pretrained(models):
    loc, prov = resolve_checkpoint("hubert", CFG["hubert"], models)
    assert (loc.path / "config.json").exists() and (loc.path / "model.safetensors").exists()
    assert prov["weights"].startswith("random")
    again, prov2 = resolve_checkpoint("hubert", CFG["hubert"], models)
    assert prov2["identity"] == prov["identity"]  # built once, reused
    other, prov3 = resolve_checkpoint("hubert", CFG["hubert"].model_copy(update={"seed": 1}), models / "s1")
    assert prov3["identity"] != prov["identity"]


def test_bad_checkpoints_are_clear_errors(models, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nowhere"):
        load_encoder("hubert", CFG["hubert"].model_copy(update={"checkpoint": str(tmp_path / "nowhere")}), models)
    mae_dir = str(resolve_checkpoint("mae", CFG["mae"], models)[0].path)
    with pytest.raises(CheckpointError, match="is a 'vit_mae' model; expected model_type in \\['hubert'\\]"):
        load_encoder("hubert", CFG["hubert"].model_copy(update={"checkpoint": mae_dir}), models)
    pick = tmp_path / "pickled"
    shutil.copytree(mae_dir, pick)
    (pick / "model.safetensors").rename(pick / "weights.pt")
    with pytest.raises(CheckpointError, match="has no weights: expected model.safetensors.*found \\['weights.pt'\\]"):
        load_encoder("mae", CFG["mae"].model_copy(update={"checkpoint": str(pick)}), models)
    (pick / "weights.pt").rename(pick / "pytorch_model.bin")  # safetensors bytes under a pickle's name
    with pytest.raises(CheckpointError, match="cannot load the mae checkpoint .*pickled \\(pytorch_model.bin\\)"):
        load_encoder("mae", CFG["mae"].model_copy(update={"checkpoint": str(pick)}), models)


def test_minilm_hash_is_checked(monkeypatch, models):
    from esva.encoders import text

    monkeypatch.setattr(text, "MINILM_SHA256", "0" * 64)
    with pytest.raises(CheckpointError, match="refusing to use it"):
        load_encoder("text", CFG["text"], models)


def test_videomae_rejects_strides_that_leave_gaps(models):
    with pytest.raises(ValueError, match="window_stride \\(32\\) must be <="):
        _enc("videomae", models, window_stride=32)


def test_eva_stores_emotion_llamas_visual_tokens(models):
    """features.eva.tokens: every patch token and the CLS of the last layer's output through a LayerNorm
    without affine (MiniGPT-v2's ln_vision), beside BLIP-2's post-layernorm CLS (`last`)."""
    enc = _enc("eva", models, frame="first")
    assert enc.layers == ("last", "cls", "patches") and enc.fixed_lengths == {"patches": 16}
    b = enc.collate(["a", "b"], [_faces(3, 1), _faces(2, 2)])
    out = enc.encode(b)
    assert out["patches"].shape == (2, 16, 64) and out["cls"].shape == (2, 1, 64) and out["last"].shape == (2, 1, 64)
    with torch.inference_mode():
        hs = enc.model(b.inputs["pixel_values"], output_hidden_states=True).hidden_states[-1]
    want = torch.nn.functional.layer_norm(hs, (64,), eps=1e-5)
    torch.testing.assert_close(out["patches"], want[:, 1:])
    torch.testing.assert_close(out["cls"], want[:, :1])
    assert not torch.allclose(out["cls"], out["last"])  # not BLIP-2's trained post_layernorm
    assert _enc("eva", models, tokens=False).layers == ("last",)


@pytest.mark.parametrize("name", ["hubert", "mae", "videomae", "eva"])
def test_bf16_weights_stored_once_give_autocasts_features(name, tmp_path):
    """Under bf16 the Linear/Conv weights are stored in bf16 once (autocast would recast frozen fp32 weights at
    every call): the features are autocast's own, bit for bit (EVA within 2e-6: its qkv bias is built per call)."""
    import torch

    from esva.config import Params
    from esva.encoders import load_encoder
    from esva.encoders.base import cast_matmul_weights

    rng = np.random.default_rng(0)
    cfg = getattr(Params().features, name).model_copy(update={"dtype": "fp32"})
    enc, _ = load_encoder(name, cfg, tmp_path)
    item = (rng.normal(0, 0.1, 16000).astype(np.float32) if name == "hubert"
            else rng.integers(0, 255, (16, 64, 64, 3), dtype=np.uint8))
    batch = enc.collate(["a"], [item])
    enc.dtype = torch.bfloat16  # autocast over the fp32 weights
    ref = {k: v.clone() for k, v in enc.encode(batch).items()}
    assert cast_matmul_weights(enc.model, torch.bfloat16) > 0
    assert {p.dtype for p in enc.model.parameters()} == {torch.float32, torch.bfloat16}  # norms stay fp32
    got = enc.encode(batch)
    for k in ref:
        diff = float((ref[k] - got[k]).abs().max())
        assert diff <= (2e-6 if name == "eva" else 0.0), (k, diff)
    bf16, _ = load_encoder(name, getattr(Params().features, name).model_copy(update={"dtype": "bf16"}), tmp_path)
    assert any(p.dtype == torch.bfloat16 for p in bf16.model.parameters())  # what load_frozen does under bf16
