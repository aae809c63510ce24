"""The benchmarks run (tiny size) and their two paths agree; no wall-clock assertions here."""

import json


def test_extract_benchmark_smoke(tmp_path):
    from benchmarks.extract import main

    out = tmp_path / "bench.json"
    res = main(["--size", "tiny", "--clips", "3", "--max-seconds", "3", "--vision-clips", "2", "--frames", "4",
                "--dtype", "bf16", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == res and set(res["encoders"]) == {"hubert", "mae", "videomae", "eva"}
    assert {"device", "cores", "cpu_flags", "torch_threads"} <= set(res["environment"])
    assert res["command"].startswith("python -m benchmarks.extract --size tiny")
    for name, r in res["encoders"].items():
        assert r["loop_seconds"] > 0 and r["engine_seconds"] > 0 and r["flop_total"] > 0, name
        assert r["engine_compute_dtype"] == "bfloat16"  # forced: the bf16 path runs on every machine
        assert r["min_frame_cosine_vs_loop_fp32"] >= 0.999, name  # the engine computes the same features
        assert r["engine_pipeline"]["clips"] == r["clips"] and r["engine_pipeline"]["forward_s"] > 0
        rounding = r["speedup"] * (5e-4 / r["loop_seconds"] + 5e-4 / r["engine_seconds"]) + 1e-3  # seconds to 3 digits
        assert abs(r["speedup"] - r["loop_seconds"] / r["engine_seconds"]) <= rounding
        assert r["meets_target"]["cosine"] is True
        assert r["meets_target"]["overall"] == (r["meets_target"]["speedup"] and r["meets_target"]["cosine"])
    assert res["meets_target"]["overall"] == all(r["meets_target"]["overall"] for r in res["encoders"].values())


def test_flop_count_matches_a_hand_count():
    from transformers import HubertConfig

    from benchmarks.extract import hubert_flops

    c = HubertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                     conv_dim=(4,), conv_stride=(5,), conv_kernel=(10,), num_conv_pos_embeddings=4,
                     num_conv_pos_embedding_groups=2)
    # 100 samples -> (100 - 10) // 5 + 1 = 19 frames; conv 19*4*1*10 = 760 MACs; projection 19*4*8 = 608;
    # pos conv 19*8*8*4/2 = 2432; layer 19*(4*64 + 2*8*16) + 2*19*19*8 = 19*512 + 5776 = 15504
    assert hubert_flops(c, 100) == 2 * (760 + 608 + 2432 + 15504)


def test_tune_benchmark_smoke(tmp_path):
    """Tiny sizes, plus one layer of the 7B architecture on the CPU so its code path runs here too."""
    from benchmarks.tune import main

    out = tmp_path / "bench.json"
    res = main(["--steps", "1", "--batch", "3", "--new-tokens", "4", "--tiny-hidden", "32", "--tiny-layers", "1",
                "--force-big", "--big-layers", "1", "--big-seq", "8", "--device", "cpu", "--out", str(out)])
    assert json.loads(out.read_text()) == res
    tiny = res["tiny"]
    assert tiny["train"]["tokens_per_second"] > 0 and tiny["train_grad_checkpointing"]["tokens_per_second"] > 0
    # batched left-padded decoding gives each row what it gets alone
    assert tiny["generation"]["rows_identical_batched_vs_single"] == 1.0
    big = res["llama2_7b"]
    assert big["config"]["hidden_size"] == 4096 and big["train_grad_checkpointing"]["seconds_per_step"] > 0


def test_featurize_benchmark_smoke(tmp_path):
    """Both paths write the same stores, and the verdict follows from the figures it reports."""
    from benchmarks.featurize import main

    out = tmp_path / "bench.json"
    res = main(["--clips", "3", "--repeats", "1", "--workers", "1", "--set", "synth.max_seconds=1.2",
                "--set", "synth.min_seconds=1.0", "--set", "crop.size=64", "--out", str(out)])
    assert json.loads(out.read_text()) == res
    assert res["same_stores"]["media_equal"] and res["same_stores"]["feature_digests_equal"]
    assert set(res["same_stores"]["feature_max_abs_diff"]) == {"hubert", "mae", "videomae", "eva"}
    assert res["stages"]["seconds"] > 0 and res["featurize"]["seconds"] > 0 and len(res["featurize"]["overlap_runs"]) == 1
    ratio = res["stages"]["seconds"] / res["featurize"]["seconds"]
    assert abs(res["ratio"] - ratio) <= 0.01 * ratio + 1e-3
    assert res["meets_target"] == (res["ratio"] >= 1.0)
