"""benchmarks/paper_scale.py: the paper's architectures at their published sizes, failure handling, and
(slow) the whole chain at one layer per model. No wall-clock assertions."""

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_paper_configs_have_the_published_sizes():
    """At full depth the configs give the real models' parameter counts (built on the meta device: no memory)."""
    from transformers import Blip2VisionModel, HubertModel, LlamaConfig, LlamaForCausalLM, ViTMAEModel, VideoMAEModel

    from benchmarks.paper_scale import FULL_DEPTH, LLAMA2_7B, encoder_config

    want = {"hubert": (HubertModel, 315_437_696), "mae": (ViTMAEModel, 303_301_632),
            "videomae": (VideoMAEModel, 303_860_736), "eva": (Blip2VisionModel, 985_952_256)}
    for name, (cls, n) in want.items():
        with torch.device("meta"):
            model = cls(encoder_config(name, FULL_DEPTH[name]))
        assert sum(p.numel() for p in model.parameters()) == n, name
        assert model.config.hidden_size == (1408 if name == "eva" else 1024)
    with torch.device("meta"):
        llm = LlamaForCausalLM(LlamaConfig(**LLAMA2_7B, tie_word_embeddings=False))
    assert sum(p.numel() for p in llm.parameters()) == 6_738_415_616  # Llama-2-7B
    assert encoder_config("hubert", 3).num_hidden_layers == 3 and encoder_config("eva", 39).qkv_bias


def test_a_failing_step_is_recorded_and_its_dependents_skipped():
    from benchmarks.paper_scale import Runner

    r = Runner(cuda=False)
    r.run("a", lambda: {"x": 1})
    r.run("b", lambda: 1 / 0)
    r.run("c", lambda: {"y": 2}, needs=("a", "b"))
    assert r.steps["a"]["status"] == "ok" and r.steps["a"]["x"] == 1
    assert r.steps["b"]["status"] == "failed" and r.steps["b"]["error"].startswith("ZeroDivisionError")
    where = r.steps["b"]["where"]
    assert where["project"].startswith("benchmarks/paper_scale.py:") and "test_bench_paper_scale.py:" in where["innermost"]
    assert r.steps["c"]["status"] == "skipped" and "['b']" in r.steps["c"]["error"]


def test_a_cli_error_keeps_its_message_and_origin(tmp_path):
    from benchmarks.paper_scale import esva

    with pytest.raises(Exception, match="manifest not found"):
        esva(["decode", "--params", str(ROOT / "params.yaml"), "--manifest", str(tmp_path / "none.parquet"),
              "--out", str(tmp_path / "d.zarr"), "--metrics", str(tmp_path / "m")])


@pytest.mark.slow
def test_the_chain_at_paper_width_with_one_layer(tmp_path):
    """About 3 minutes on 2 CPU cores: every model at full width, one layer, through the real CLI."""
    from benchmarks.paper_scale import main

    out = tmp_path / "bench.json"
    res = main(["--layers", "1", "--work", str(tmp_path / "work"), "--out", str(out)])
    assert json.loads(out.read_text()) == res
    assert res["ok"] and res["failed"] == [], {k: v.get("error") for k, v in res["steps"].items()}
    assert res["depth"] == {"hubert": 1, "mae": 1, "videomae": 1, "eva": 1, "llm": 1} and res["truncated"]
    assert not (tmp_path / "work").exists()  # removed without --keep
    steps = res["steps"]
    dims = {"hubert": 1024, "mae": 1024, "videomae": 1024, "eva": 1408, "text": 384}
    cpu = res["device"] == "cpu"
    for enc, dim in dims.items():
        s = steps[f"extract_{enc}"]
        assert s["model"]["hidden_size"] == dim and s["features"]["dim"] == dim
        frames, d = s["features"]["arrays"]["last"]
        assert d == dim and frames == s["features"]["frames_of_one_clip"] >= 1
        want = {"last": "float16", "last_utt": "float32"}
        if enc == "eva":  # stage 2's EVA tokens too (Emotion-LLaMA's layout): CLS and the patch tokens
            want |= {"cls": "float16", "cls_utt": "float32", "patches": "float16", "patches_utt": "float32"}
        assert s["features"]["arrays_dtype"] == want
        assert s["precision"]["device"] == res["device"] and s["stored_dtype"] == "float16"
        if cpu:
            assert s["dtype"] == "fp32"
        if enc != "text":
            assert s["model"]["layers"] == 1
    assert steps["extract_eva"]["features"]["frames_of_one_clip"] == 1  # one CLS vector per clip
    assert steps["extract_hubert"]["features"]["frame_rate"] == 50.0
    assert steps["train"]["model"]["input_dims"] == dims
    base = steps["tune"]["model"]["base"]
    assert (base["hidden_size"], base["intermediate_size"], base["heads"], base["vocab_size"]) == (4096, 11008, 32, 32000)
    assert base["weights_dtype"] == "bfloat16" and base["tokenizer_entries"] < 32000
    assert base["parameters"] == 2 * 32000 * 4096 + 4096 + (4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096)  # one layer
    tune = steps["tune"]["precision"]
    if cpu:
        assert tune["compute"] == "bf16" and tune["base_weights"] == "bf16"
    assert tune["trainable"] == "fp32" and tune["grad_checkpointing"] is True
    assert steps["tune"]["report"]["steps"] >= 1 and steps["tune"]["val_generations"] >= 1
    assert steps["evaluate"]["report"]["mer2023"]["n"] == res["clips"]
    assert steps["predict"]["clips"] == 1 and steps["predict"]["errors"] == []
    for name, s in steps.items():
        assert s["seconds"] >= 0 and s["peak_rss_gib_process"] > 0 and s["command"], name
