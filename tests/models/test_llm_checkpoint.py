"""The base LLM by hub id in Llama-2-7b-chat-hf's layout (sharded safetensors + index + tokenizer), from a
temporary offline HF cache: loads completely; a missing tensor is refused by name."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from esva.models.llm import LlmError, load_base, train_tokenizer
from tests.hubcache import put_repo


@pytest.fixture
def llama_repo(tmp_path, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = tmp_path / "llama"
    tok = train_tokenizer(["the person in the video is happy", "sad angry neutral surprise worried"] * 20, 300, d)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(d, max_shard_size="40KB")
    assert (d / "model.safetensors.index.json").exists()
    return d, model


def test_llama_by_hub_id_loads_completely(llama_repo, tmp_path):
    d, model = llama_repo
    put_repo(tmp_path / "hf", "meta-llama/Llama-2-7b-chat-hf", d)
    base, tok = load_base("meta-llama/Llama-2-7b-chat-hf")
    rep = base.esva_load_report
    assert rep["format"] == "safetensors" and len(rep["files"]) > 1
    assert rep["tensors_loaded"] == rep["tensors_expected"] == len(model.state_dict())
    assert all(torch.equal(base.state_dict()[k], v) for k, v in model.state_dict().items())
    assert all(len(f["sha256"]) == 64 for f in rep["files"])  # read from the cache's blob names


def test_llama_with_a_tensor_removed_is_refused_by_name(llama_repo):
    d, _ = llama_repo
    index = json.loads((d / "model.safetensors.index.json").read_text())
    key = "model.layers.1.mlp.down_proj.weight"
    shard = d / index["weight_map"][key]
    state = load_file(str(shard))
    del state[key]
    save_file(state, str(shard), metadata={"format": "pt"})
    del index["weight_map"][key]
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(LlmError, match="not in the checkpoint: model.layers.1.mlp.down_proj.weight"):
        load_base(str(d))
