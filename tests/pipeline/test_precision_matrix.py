"""Every stage through the real CLI under fp32 and under bf16 forced on the CPU, on six tiny synthetic
clips. bf16 runs on any x86 CPU (natively with AVX512-BF16, emulated elsewhere), so CI covers the path
whatever its hardware. decode and crop compute nothing in floating point that a dtype changes (ffmpeg,
OpenCV), so they have no dtype param; the matrix starts at extract.

Tolerances: encoder features per frame within cosine 0.99 of fp32; a training stage's first-epoch loss
within 5% of fp32 (same seed, same data); every output records the precision it ran in."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from esva.store import open as open_store
from pipeline.cli import app
from tests.conftest import hold_out_for_validation

ROOT = Path(__file__).resolve().parents[2]
ENCODERS = ("hubert", "mae", "videomae", "eva", "text")
runner = CliRunner()


def esva(*args: str):
    res = runner.invoke(app, list(args), catch_exceptions=False)
    assert res.exit_code == 0, (args[:2], res.output)
    return res


def forced(dtype: str) -> list[str]:
    keys = [f"features.{e}.dtype" for e in ENCODERS] + ["train.dtype", "llm.dtype", "tune.dtype"]
    return [x for k in keys for x in ("--set", f"{k}={dtype}")]


SMALL_LM = [x for kv in ("llm.vocab_size=320", "llm.hidden_size=32", "llm.layers=1", "llm.heads=2",
                         "llm.intermediate_size=64", "llm.epochs=1", "llm.block=32") for x in ("--set", kv)]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("matrix")
    p = ["--params", str(ROOT / "params.yaml")]
    esva("synth", *p, "--set", "synth.n_clips=6", "--set", "synth.conditions={}", "--set", "synth.workers=1", "--set", "synth.min_seconds=1.0",
         "--set", "synth.max_seconds=1.4", "--out", str(d / "raw"), "--metrics", str(d / "m"))
    esva("ingest", *p, "--dataset", "synthetic", "--root", str(d / "raw"), "--out", str(d / "manifest.parquet"),
         "--metrics", str(d / "m"))
    hold_out_for_validation(d / "manifest.parquet")  # one clip validates (tests/conftest.py)
    esva("decode", *p, "--manifest", str(d / "manifest.parquet"), "--out", str(d / "decoded.zarr"), "--metrics", str(d / "m"))
    esva("crop", *p, "--decoded", str(d / "decoded.zarr"), "--out", str(d / "faces.zarr"), "--metrics", str(d / "m"))
    return d


@pytest.fixture(scope="module")
def runs(media):
    """The chain from extract to evaluate, once in fp32 and once in forced bf16."""
    d = media
    p = ["--params", str(ROOT / "params.yaml")]
    out = {}
    for dtype in ("fp32", "bf16"):
        r = d / dtype
        feats = r / "features"
        for enc in ENCODERS:
            esva("extract", enc, *p, *forced(dtype), "--out", str(feats / f"{enc}.zarr"), "--decoded",
                 str(d / "decoded.zarr"), "--faces", str(d / "faces.zarr"), "--manifest", str(d / "manifest.parquet"),
                 "--models", str(d / "models"), "--metrics", str(r / "m"))
        common = [*p, *forced(dtype), "--manifest", str(d / "manifest.parquet"), "--features", str(feats),
                  "--metrics", str(r / "m")]
        esva("train", *common, "--set", "train.epochs=2", "--set", "align.warmup_epochs=1", "--reference",
             str(d / "none.json"), "--out", str(r / "stage1"))
        esva("lm", *p, *forced(dtype), *SMALL_LM, "--manifest", str(d / "manifest.parquet"), "--out", str(r / "llm"),
             "--metrics", str(r / "m"))
        esva("tune", *common, "--set", "tune.epochs=1", "--set", "tune.lora_r=4", "--set", "tune.max_new_tokens=16",
             "--stage1", str(r / "stage1"), "--llm", str(r / "llm"), "--out", str(r / "stage2"))
        on_train = [x for role in ("mer", "ov", "emer") for x in ("--set", f"evaluate.{role}.split=train")]
        esva("evaluate", *p, *forced(dtype), *on_train, "--manifest", str(d / "manifest.parquet"), "--features",
             str(feats), "--model", str(r / "stage2"), "--llm", str(r / "llm"), "--predictions-dir", str(r / "pred"),
             "--out", str(r / "m"))
        out[dtype] = r
    return out


@pytest.mark.parametrize("encoder", ENCODERS)
def test_extract_bf16_features_match_fp32_and_say_so(runs, encoder):
    a, b = open_store(runs["fp32"] / "features" / f"{encoder}.zarr"), open_store(runs["bf16"] / "features" / f"{encoder}.zarr")
    assert a.attrs["precision"]["compute"] == "fp32" and b.attrs["precision"]["compute"] == "bf16"
    assert b.attrs["precision"]["requested"] == "bf16" and b.attrs["fingerprint"] != a.attrs["fingerprint"]
    assert sorted(a.ids()) == sorted(b.ids()) and len(a.ids()) == 6
    for cid in a.ids():
        x, y = a.read(cid, ["last"])["last"].astype(np.float32), b.read(cid, ["last"])["last"].astype(np.float32)
        assert x.shape == y.shape
        cos = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1) + 1e-12)
        assert cos.min() >= 0.99, (encoder, cid, float(cos.min()))
    rep = json.loads((runs["bf16"] / "m" / f"extract_{encoder}.json").read_text())
    assert rep["precision"]["compute"] == "bf16"


def _first_loss(path: Path, key: str = "train_loss") -> float:
    return json.loads(path.read_text())["history"][0][key]


def test_train_lm_and_tune_run_in_bf16_close_to_fp32_and_record_it(runs):
    s32, s16 = (json.loads((runs[d] / "m" / "train.json").read_text()) for d in ("fp32", "bf16"))
    assert s16["precision"]["compute"] == "bf16" and s32["precision"]["compute"] == "fp32"
    cfg16 = json.loads((runs["bf16"] / "stage1" / "config.json").read_text())
    assert cfg16["precision"]["compute"] == "bf16"
    assert s16["val"] is not None or s16["clips"]["train"] == 6
    lm32, lm16 = (json.loads((runs[d] / "m" / "lm.json").read_text()) for d in ("fp32", "bf16"))
    assert lm16["precision"] == "bf16" and lm32["precision"] == "fp32"
    assert abs(lm16["final_train_loss"] - lm32["final_train_loss"]) <= 0.05 * lm32["final_train_loss"]
    t32, t16 = (runs[d] / "m" / "tune.json" for d in ("fp32", "bf16"))
    tune16 = json.loads(t16.read_text())
    assert tune16["precision"]["compute"] == "bf16" and tune16["precision"]["base_weights"] == "bf16"
    assert tune16["precision"]["trainable"] == "fp32"
    assert json.loads((runs["bf16"] / "stage2" / "config.json").read_text())["precision"]["compute"] == "bf16"
    l32, l16 = _first_loss(t32), _first_loss(t16)
    assert abs(l16 - l32) <= 0.05 * l32, (l16, l32)


def test_evaluate_generates_in_the_dtype_it_was_tuned_in(runs):
    for dtype in ("fp32", "bf16"):
        mer = json.loads((runs[dtype] / "m" / "mer2023.json").read_text())
        assert mer["n"] == 6 and 0 <= mer["weighted_f1"] <= 1
    from esva.train import stage2

    m = stage2.load(runs["bf16"] / "stage2", runs["bf16"] / "llm")
    import torch

    assert m.dtype == torch.bfloat16
    assert {p.dtype for n, p in m.llm.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    assert {p.dtype for n, p in m.llm.named_parameters() if "lora_" in n} == {torch.float32}


@pytest.mark.gpu
def test_the_whole_chain_on_a_cuda_device(media):
    """The same chain with every stage on `cuda` (auto precision: bf16 on every recent GPU)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    d, r = media, media / "cuda"
    p = ["--params", str(ROOT / "params.yaml")]
    dev = [x for k in [f"features.{e}.device" for e in ENCODERS] + ["crop.device", "train.device", "llm.device", "tune.device"]
           for x in ("--set", f"{k}=cuda")] + forced("auto")
    for enc in ENCODERS:
        esva("extract", enc, *p, *dev, "--out", str(r / "features" / f"{enc}.zarr"), "--decoded", str(d / "decoded.zarr"),
             "--faces", str(d / "faces.zarr"), "--manifest", str(d / "manifest.parquet"), "--models", str(d / "models"),
             "--metrics", str(r / "m"))
    common = [*p, *dev, "--manifest", str(d / "manifest.parquet"), "--features", str(r / "features"), "--metrics", str(r / "m")]
    esva("train", *common, "--set", "train.epochs=2", "--set", "align.warmup_epochs=1", "--reference",
         str(d / "none.json"), "--out", str(r / "stage1"))
    esva("lm", *p, *dev, *SMALL_LM, "--manifest", str(d / "manifest.parquet"), "--out", str(r / "llm"), "--metrics", str(r / "m"))
    esva("tune", *common, "--set", "tune.epochs=1", "--set", "tune.lora_r=4", "--stage1", str(r / "stage1"),
         "--llm", str(r / "llm"), "--out", str(r / "stage2"))
    assert json.loads((r / "m" / "tune.json").read_text())["precision"]["device"].startswith("cuda")
    assert json.loads((r / "m" / "train.json").read_text())["precision"]["device"].startswith("cuda")
