"""Checkpoints in the layouts their hub repos really ship, resolved offline from a temporary HF cache:
complete or refused by name, .bin read weights_only, EVA exactly the vision tower of a full BLIP-2."""

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from esva.checkpoints import CheckpointError, convert, locate, state_digest
from esva.config import EvaFeatures, HubertFeatures, MaeFeatures, VideoMaeFeatures
from esva.encoders import load_encoder
from tests.hubcache import put_repo


@pytest.fixture
def hub(tmp_path, monkeypatch):
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def _faces(n, seed):
    return np.random.default_rng(seed).integers(0, 255, (n, 224, 224, 3), dtype=np.uint8)


def _audio(seconds, seed):
    return np.random.default_rng(seed).normal(0, 0.1, int(16000 * seconds)).astype(np.float32)


def _features(enc, items):
    b = enc.collate([f"c{i}" for i in range(len(items))], items)
    return enc.encode(b)["last"]


def _full_blip2(seed=3):
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2QFormerConfig, OPTConfig

    from esva.encoders.eva import tiny_config

    cfg = Blip2Config(vision_config=tiny_config().to_dict(),
                      qformer_config=Blip2QFormerConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                        intermediate_size=64, encoder_hidden_size=64).to_dict(),
                      text_config=OPTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64,
                                            vocab_size=100, word_embed_proj_dim=32).to_dict(),
                      num_query_tokens=4)
    torch.manual_seed(seed)
    return Blip2ForConditionalGeneration(cfg).eval()


@pytest.mark.parametrize("where", ["hub_sharded", "folder"])
def test_full_blip2_repo_gives_exactly_its_vision_tower(where, tmp_path, hub):
    from transformers import Blip2VisionModel

    full = _full_blip2()
    folder = tmp_path / "blip2"
    # the hub repo is sharded (model-0000k-of-0000n.safetensors + index), as Salesforce/blip2-opt-2.7b ships
    full.save_pretrained(folder, max_shard_size="200KB" if where == "hub_sharded" else "10GB")
    if where == "hub_sharded":
        assert (folder / "model.safetensors.index.json").exists()
        put_repo(hub, "Salesforce/blip2-opt-2.7b", folder)
        ck = "Salesforce/blip2-opt-2.7b"
    else:
        ck = str(folder)
    enc, prov = load_encoder("eva", EvaFeatures(checkpoint=ck, frame="first"), tmp_path / "models")
    want = full.vision_model.state_dict()
    got = enc.model.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert prov["tensors_loaded"] == prov["tensors_expected"] == len(want)
    assert prov["checkpoint_tensors_ignored"] > 0  # the Q-Former and the OPT model, allow-listed
    assert prov["weights_sha256"] == state_digest(full.vision_model)
    b = enc.collate(["a"], [_faces(2, 0)])
    with torch.inference_mode():
        ref = full.vision_model(b.inputs["pixel_values"]).pooler_output
    torch.testing.assert_close(enc.encode(b)["last"][:, 0], ref, atol=1e-5, rtol=1e-4)
    # what plain from_pretrained on the same repo does: the tower initialised at random (the defect guarded against)
    naive = Blip2VisionModel.from_pretrained(str(locate(ck, None, "eva").path)).state_dict()
    assert not all(torch.equal(naive[k], want[k]) for k in want)


def _hubert_bin_repo(tmp_path):
    """chinese-hubert-large's layout: config.json, preprocessor_config.json and pytorch_model.bin only, the
    conv position embedding in the old weight_g / weight_v names."""
    from esva.encoders import hubert

    st = tmp_path / "hubert_st"
    hubert.save_tiny(st, seed=5)
    binary = tmp_path / "hubert_bin"
    binary.mkdir()
    for f in ("config.json", "preprocessor_config.json"):
        shutil.copyfile(st / f, binary / f)
    state = load_file(str(st / "model.safetensors"))
    old = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                                "weight_v"): v for k, v in state.items()}
    assert any(k.endswith("weight_g") for k in old)
    torch.save(old, binary / "pytorch_model.bin")
    return st, binary


def test_bin_only_hubert_equals_its_safetensors_copy_and_converts(tmp_path, hub):
    st, binary = _hubert_bin_repo(tmp_path)
    put_repo(hub, "TencentGameMate/chinese-hubert-large", binary)
    ref, ref_prov = load_encoder("hubert", HubertFeatures(checkpoint=str(st)), tmp_path / "m")
    enc, prov = load_encoder("hubert", HubertFeatures(checkpoint="TencentGameMate/chinese-hubert-large"), tmp_path / "m")
    assert prov["format"] == "bin" and ref_prov["format"] == "safetensors"
    assert prov["hub"] and prov["revision"] == "main"
    assert prov["tensors_loaded"] == prov["tensors_expected"] == ref_prov["tensors_expected"]
    assert prov["weights_sha256"] == ref_prov["weights_sha256"]
    a = [_audio(1.0, 1), _audio(0.6, 2)]
    torch.testing.assert_close(_features(enc, a), _features(ref, a), atol=0, rtol=0)
    # the hub cache's blob name is the LFS sha256 of the file
    import hashlib
    assert prov["files"][0]["sha256"] == hashlib.sha256((binary / "pytorch_model.bin").read_bytes()).hexdigest()
    # esva convert: safetensors once, equal tensors
    report = convert("TencentGameMate/chinese-hubert-large", tmp_path / "converted")
    assert report["files"] == ["model.safetensors"] and (tmp_path / "converted" / "config.json").exists()
    conv, conv_prov = load_encoder("hubert", HubertFeatures(checkpoint=str(tmp_path / "converted")), tmp_path / "m")
    assert conv_prov["format"] == "safetensors" and conv_prov["weights_sha256"] == ref_prov["weights_sha256"]
    with pytest.raises(CheckpointError, match="already ships safetensors"):
        convert(str(st), tmp_path / "again")


def test_a_revision_resolves_its_own_snapshot(tmp_path, hub):
    st, binary = _hubert_bin_repo(tmp_path)
    put_repo(hub, "TencentGameMate/chinese-hubert-large", binary)
    put_repo(hub, "TencentGameMate/chinese-hubert-large", st, revision="refs/pr/1", commit="1" * 40)
    loc = locate("TencentGameMate/chinese-hubert-large", "refs/pr/1", "hubert")
    assert loc.format == "safetensors" and loc.path.name == "1" * 40
    assert locate("TencentGameMate/chinese-hubert-large", None, "hubert").format == "bin"
    with pytest.raises(CheckpointError, match="'TencentGameMate/chinese-hubert-large' \\(revision v9\\) is not in "
                                              "the Hugging Face cache .*HF_HUB_OFFLINE=1"):
        locate("TencentGameMate/chinese-hubert-large", "v9", "hubert")
    with pytest.raises(CheckpointError, match="'nobody/nothing'"):
        load_encoder("hubert", HubertFeatures(checkpoint="nobody/nothing"), tmp_path / "m")


@pytest.mark.parametrize("damage", ["missing", "unexpected", "shape"])
def test_an_incomplete_or_foreign_checkpoint_is_refused_by_name(damage, tmp_path):
    from esva.encoders import hubert

    d = tmp_path / "hubert"
    hubert.save_tiny(d, seed=0)
    state = load_file(str(d / "model.safetensors"))
    key = "encoder.layers.1.attention.k_proj.weight"
    assert key in state
    if damage == "missing":
        del state[key]
        pattern = "1 tensors of the model are not in the checkpoint: encoder.layers.1.attention.k_proj.weight"
    elif damage == "unexpected":
        state["encoder.layers.9.attention.k_proj.weight"] = state[key].clone()
        pattern = "have no place in the model: encoder.layers.9.attention.k_proj.weight"
    else:
        state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] + 1)
        pattern = "1 tensors have other shapes: encoder.layers.1.attention.k_proj.weight \\(checkpoint \\(64, 65\\), model \\(64, 64\\)\\)"
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=pattern):
        load_encoder("hubert", HubertFeatures(checkpoint=str(d)), tmp_path / "m")


class _Exploit:
    """Unpickling this runs `os.system`: what a hostile .bin can do to an unsafe loader."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_pickle_is_never_unpickled(tmp_path):
    from esva.encoders import hubert

    d = tmp_path / "evil"
    hubert.save_tiny(d, seed=0)
    (d / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    with (d / "pytorch_model.bin").open("wb") as fh:
        pickle.dump({"encoder.layers.0.attention.k_proj.weight": _Exploit(marker)}, fh)
    with pytest.raises(CheckpointError, match="hubert.*evil.*pytorch_model.bin"):
        load_encoder("hubert", HubertFeatures(checkpoint=str(d)), tmp_path / "m")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: not a plain tensor state dict"):
        convert(str(d), tmp_path / "out")
    assert not marker.exists()


def test_mae_and_videomae_pretraining_repos_load_their_encoders(tmp_path, hub):
    """facebook/vit-mae-large ships ViTMAEForPreTraining as pytorch_model.bin; MCG-NJU/videomae-large ships
    VideoMAEForPreTraining as safetensors. The decoders are allow-listed, the encoders complete."""
    from transformers import ViTMAEForPreTraining, VideoMAEForPreTraining

    from esva.encoders import mae, videomae

    torch.manual_seed(0)
    m = ViTMAEForPreTraining(mae.tiny_config())
    d = tmp_path / "mae"
    m.save_pretrained(d)
    torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    put_repo(hub, "facebook/vit-mae-large", d)
    enc, prov = load_encoder("mae", MaeFeatures(checkpoint="facebook/vit-mae-large"), tmp_path / "m")
    assert prov["format"] == "bin" and prov["tensors_loaded"] == prov["tensors_expected"]
    assert prov["checkpoint_tensors_ignored"] > 0
    assert state_digest(enc.model) == state_digest(m.vit)
    v = VideoMAEForPreTraining(videomae.tiny_config())
    d = tmp_path / "videomae"
    v.save_pretrained(d)
    put_repo(hub, "MCG-NJU/videomae-large", d)
    enc, prov = load_encoder("videomae", VideoMaeFeatures(checkpoint="MCG-NJU/videomae-large"), tmp_path / "m")
    assert prov["format"] == "safetensors" and prov["tensors_loaded"] == prov["tensors_expected"]
    assert state_digest(enc.model) == state_digest(v.videomae)


def test_minilm_loads_completely():
    from esva.config import TextFeatures

    enc, prov = load_encoder("text", TextFeatures(), Path("/nonexistent-unused"))
    assert prov["tensors_loaded"] == prov["tensors_expected"] > 50
