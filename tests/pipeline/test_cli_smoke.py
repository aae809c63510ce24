"""Stage smoke tests through the real CLI on a handful of synthetic clips."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from esva.store import open as open_store
from pipeline.cli import app
from tests.conftest import hold_out_for_validation

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def esva(*args: str, cwd: Path | None = None):
    res = runner.invoke(app, list(args), catch_exceptions=False)
    return res


def test_help_lists_every_stage():
    res = esva("--help")
    assert res.exit_code == 0
    for cmd in ("synth", "ingest", "decode", "crop", "extract", "train", "lm", "tune", "evaluate", "predict"):
        assert cmd in res.output
        sub = esva(cmd, "--help")
        assert sub.exit_code == 0 and "--params" in sub.output and "--set" in sub.output


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "esva"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0.1.0"


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    p = str(ROOT / "params.yaml")
    small = ["--set", "synth.n_clips=6", "--set", "synth.conditions={}", "--set", "synth.workers=1", "--set", "synth.min_seconds=1.0",
             "--set", "synth.max_seconds=1.4"]
    results = {
        "synth": esva("synth", "--params", p, *small, "--out", str(d / "raw"), "--metrics", str(d / "m")),
        "ingest": esva("ingest", "--params", p, "--dataset", "synthetic", "--root", str(d / "raw"), "--out",
                       str(d / "manifest.parquet"), "--metrics", str(d / "m")),
    }
    hold_out_for_validation(d / "manifest.parquet")  # one clip validates (tests/conftest.py)
    results |= {
        "decode": esva("decode", "--params", p, "--manifest", str(d / "manifest.parquet"), "--out",
                       str(d / "decoded.zarr"), "--metrics", str(d / "m")),
        "crop": esva("crop", "--params", p, "--decoded", str(d / "decoded.zarr"), "--out", str(d / "faces.zarr"),
                     "--metrics", str(d / "m")),
    }
    return d, results


def test_chain_runs_and_reports(chain):
    d, results = chain
    for stage, res in results.items():
        assert res.exit_code == 0, (stage, res.output)
        rep = json.loads((d / "m" / f"{stage}.json").read_text())
        assert rep["corpus"] == "synthetic" and rep["clips_in"] == 6 and rep["done"] == 6 and rep["seconds"] >= 0
    crop = json.loads((d / "m" / "crop.json").read_text())
    assert crop["face_detection_rate"] >= 0.95
    faces = open_store(d / "faces.zarr")
    assert faces.read(faces.ids()[0])["faces"].shape[1:] == (224, 224, 3)
    assert faces.attrs["backend"] == "haar" and faces.attrs["corpus"] == "synthetic"
    dec = open_store(d / "decoded.zarr")
    assert {"params_hash", "code_version", "fps", "sample_rate", "fingerprint"} <= set(dec.attrs)


def test_rerun_resumes_and_changed_config_rebuilds(chain):
    d, _ = chain
    res = esva("decode", "--manifest", str(d / "manifest.parquet"), "--out", str(d / "decoded.zarr"),
               "--metrics", str(d / "m2"), "--params", str(ROOT / "params.yaml"))
    assert res.exit_code == 0
    assert json.loads((d / "m2" / "decode.json").read_text())["resumed"] == 6
    res = esva("crop", "--decoded", str(d / "decoded.zarr"), "--out", str(d / "faces.zarr"), "--metrics",
               str(d / "m2"), "--params", str(ROOT / "params.yaml"), "--set", "crop.size=112")
    assert res.exit_code == 0
    rep = json.loads((d / "m2" / "crop.json").read_text())
    assert rep["resumed"] == 0 and rep["done"] == 6
    assert open_store(d / "faces.zarr").attrs["size"] == 112


def test_bad_input_gives_one_clear_line_not_a_traceback(tmp_path):
    res = runner.invoke(app, ["decode", "--params", str(ROOT / "params.yaml"), "--manifest", str(tmp_path / "none.parquet")])
    assert res.exit_code == 2 and "manifest not found" in res.output
    assert isinstance(res.exception, SystemExit)  # a clean exit, not an escaped exception
    res = runner.invoke(app, ["crop", "--params", str(ROOT / "params.yaml"), "--set", "crop.sizee=3"])
    assert res.exit_code == 2 and "crop.sizee" in res.output
    res = runner.invoke(app, ["ingest", "--params", str(ROOT / "params.yaml"), "--dataset", "mer2023", "--root",
                              str(tmp_path)])
    assert res.exit_code == 2 and "no MER2023 label file" in res.output
    res = runner.invoke(app, ["crop", "--params", str(ROOT / "params.yaml"), "--decoded", str(tmp_path / "x.zarr")])
    assert res.exit_code == 2 and "store not found" in res.output


@pytest.mark.parametrize("encoder", ["hubert", "mae", "videomae", "eva", "text"])
def test_extract_through_the_cli(chain, encoder):
    d, _ = chain
    res = esva("extract", encoder, "--params", str(ROOT / "params.yaml"), "--out", str(d / f"{encoder}.zarr"),
               "--decoded", str(d / "decoded.zarr"), "--faces", str(d / "faces.zarr"), "--manifest",
               str(d / "manifest.parquet"), "--models", str(d / "models"), "--metrics", str(d / "m"))
    assert res.exit_code == 0, res.output
    rep = json.loads((d / "m" / f"extract_{encoder}.json").read_text())
    assert rep["done"] == 6 and rep["corpus"] == "synthetic" and rep["encoder"] == encoder
    store = open_store(d / f"{encoder}.zarr")
    assert len(store.ids()) == 6 and store.attrs["checkpoint"]["checkpoint"] in ("tiny", "minilm")
    assert rep["tensors_loaded"] == rep["tensors_expected"] == store.attrs["checkpoint"]["tensors_expected"] > 10
    assert len(rep["weights_sha256"]) == 64


def test_eva_by_hub_id_from_a_full_blip2_repo_through_the_cli(chain, tmp_path, monkeypatch):
    """features.eva.checkpoint: Salesforce/blip2-opt-2.7b, resolved offline from the HF cache: the stored
    vectors are those of the repo's own vision tower."""
    import numpy as np
    import torch

    from esva.encoders.eva import pick_frame
    from esva.encoders.base import to_float_image
    from tests.encoders.test_checkpoints import _full_blip2
    from tests.hubcache import put_repo

    d, _ = chain
    full = _full_blip2(seed=11)
    full.save_pretrained(tmp_path / "blip2", max_shard_size="200KB")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    put_repo(tmp_path / "hf", "Salesforce/blip2-opt-2.7b", tmp_path / "blip2")
    res = esva("extract", "eva", "--params", str(ROOT / "params.yaml"), "--set",
               "features.eva.checkpoint=Salesforce/blip2-opt-2.7b", "--out", str(tmp_path / "eva.zarr"),
               "--faces", str(d / "faces.zarr"), "--models", str(tmp_path / "models"), "--metrics", str(tmp_path / "m"))
    assert res.exit_code == 0, res.output
    store, faces = open_store(tmp_path / "eva.zarr"), open_store(d / "faces.zarr")
    assert store.attrs["checkpoint"]["hub"] and store.attrs["checkpoint"]["checkpoint_tensors_ignored"] > 0
    cid = store.ids()[0]
    frames = faces.read(cid)["faces"]
    img = frames[pick_frame(frames, "peak")][None]
    px = to_float_image(img, 56, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    with torch.inference_mode():
        want = full.vision_model(px).pooler_output[0].numpy()
    got = np.asarray(store.read(cid)["last"], dtype=np.float32).reshape(-1)
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=2e-3)  # float16 storage


def test_convert_writes_safetensors_through_the_cli(tmp_path):
    from tests.encoders.test_checkpoints import _hubert_bin_repo

    _, binary = _hubert_bin_repo(tmp_path)
    res = esva("convert", str(binary), str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    assert "tensors in model.safetensors" in res.output and (tmp_path / "out" / "model.safetensors").exists()
    res = esva("convert", str(tmp_path / "out"), str(tmp_path / "again"))
    assert res.exit_code == 2 and "already ships safetensors" in res.output


def test_extract_rejects_unknown_encoders_and_checkpoints(tmp_path):
    res = runner.invoke(app, ["extract", "wav2vec", "--params", str(ROOT / "params.yaml")])
    assert res.exit_code == 2 and "ENCODER must be one of" in res.output
    res = runner.invoke(app, ["extract", "hubert", "--params", str(ROOT / "params.yaml"), "--decoded",
                              str(tmp_path / "none.zarr")])
    assert res.exit_code == 2 and "store not found" in res.output


def test_train_and_an_ablation_through_the_cli(chain):
    d, _ = chain
    for enc in ("hubert", "mae", "videomae", "eva", "text"):
        if not (d / f"{enc}.zarr").exists():
            test_extract_through_the_cli(chain, enc)
    feats = d / "features"
    feats.mkdir(exist_ok=True)
    for enc in ("hubert", "mae", "videomae", "eva", "text"):
        if not (feats / f"{enc}.zarr").exists():
            (feats / f"{enc}.zarr").symlink_to(d / f"{enc}.zarr")
    common = ["--params", str(ROOT / "params.yaml"), "--manifest", str(d / "manifest.parquet"), "--features", str(feats),
              "--metrics", str(d / "m"), "--set", "train.epochs=2", "--set", "align.warmup_epochs=1",
              "--reference", str(d / "none.json")]
    res = esva("train", "--out", str(d / "stage1"), *common)
    assert res.exit_code == 0, res.output
    summary = json.loads((d / "m" / "train.json").read_text())
    assert summary["corpus"] == "synthetic" and summary["clips"]["train"] == 5 and summary["clips"]["val"] == 1
    assert len(summary["labels"]) == 5  # the training rows' vocabulary: the validation clip's label is not in it
    assert summary["scored_on"]["val"] == ["synthetic:train"] and summary["scored_on"]["train"] == ["synthetic:train"]
    assert json.loads((d / "m" / "alignment.json").read_text())["corpus"] == "synthetic"
    assert (d / "stage1" / "model.safetensors").exists()
    cfg = json.loads((d / "stage1" / "config.json").read_text())
    assert cfg["msfe"]["scales"] == 3 and cfg["use"] == ["hubert", "mae", "videomae", "eva", "text"]
    # six clips, one per label, cannot be cross-validated: the error says so, and ablate.folds=0 runs the one split
    res = esva("train", "--variant", "no_align", "--out", str(d / "abl"), *common, "--set", "ablate.folds=5")
    assert res.exit_code == 2 and "lower ablate.folds" in res.output
    # ablate.folds 0 (the default): seeds on the manifest's split, each predicting the same test clips; these
    # six clips have no test split, so the row is the one run, and says why (tests/train/test_cv.py: the seeds)
    res = esva("train", "--variant", "no_align", "--out", str(d / "abl"), *common, "--set", "ablate.seeds=2")
    assert res.exit_code == 0, res.output
    row = json.loads((d / "m" / "ablation" / "no_align.json").read_text())
    assert row["variant"] == "no_align" and row["align"] is False and row["corpus"] == "synthetic"
    assert "design" not in row and "predictions" not in row and "no labelled test clips" in row["seeds_skipped"]
    res = esva("train", "--variant", "nope", "--out", str(d / "x"), *common)
    assert res.exit_code == 2 and "unknown variant 'nope'" in res.output


def test_lm_tune_and_predict_on_good_and_bad_files(chain, tmp_path):
    """The stage-2 commands end to end, then `esva predict` on a fresh synthetic clip (in no manifest)
    beside files with no audio, no video, no face, no file at all and not a video: each bad file gets
    its own message, and the good one still gets its label, explanation and evidence."""
    from tests.conftest import ffmpeg

    d, _ = chain
    if not (d / "stage1" / "model.safetensors").exists():
        test_train_and_an_ablation_through_the_cli(chain)
    p = ["--params", str(ROOT / "params.yaml")]
    small_lm = ["--set", "llm.vocab_size=320", "--set", "llm.hidden_size=32", "--set", "llm.layers=1", "--set",
                "llm.heads=2", "--set", "llm.intermediate_size=64", "--set", "llm.epochs=1", "--set", "llm.block=32"]
    res = esva("lm", *p, *small_lm, "--out", str(d / "llm"), "--manifest", str(d / "manifest.parquet"),
               "--metrics", str(d / "m"))
    assert res.exit_code == 0, res.output
    assert json.loads((d / "m" / "lm.json").read_text())["corpus"] == "synthetic"
    res = esva("tune", *p, "--set", "tune.epochs=1", "--set", "tune.lora_r=4", "--set", "tune.max_new_tokens=16",
               "--out", str(d / "stage2"), "--manifest", str(d / "manifest.parquet"), "--features", str(d / "features"),
               "--stage1", str(d / "stage1"), "--llm", str(d / "llm"), "--metrics", str(d / "m"))
    assert res.exit_code == 0, res.output
    summary = json.loads((d / "m" / "tune.json").read_text())
    assert summary["corpus"] == "synthetic" and summary["clips"]["train"] == 5 and summary["clips"]["val"] == 1
    assert len(summary["labels"]) == 5  # the training rows' vocabulary: the validation clip's label is not in it
    assert summary["scored_on"]["val"] == ["synthetic:train"] and summary["scored_on"]["train"] == ["synthetic:train"]
    assert {"adapter_config.json", "adapter_model.safetensors", "projector.safetensors"} <= \
        {f.name for f in (d / "stage2").iterdir()}

    # evaluate on the training split (the six clips have no test split), then the report
    on_train = [x for r in ("mer", "ov", "emer") for x in ("--set", f"evaluate.{r}.split=train")]
    ev = ["--manifest", str(d / "manifest.parquet"), "--features", str(d / "features"), "--model", str(d / "stage2"),
          "--llm", str(d / "llm"), "--predictions-dir", str(d / "pred")]
    res = esva("evaluate", *p, *on_train, *ev, "--out", str(d / "m"))
    assert res.exit_code == 0, res.output
    mer = json.loads((d / "m" / "mer2023.json").read_text())
    assert mer["corpus"] == "synthetic" and mer["split"] == "synthetic:train" and mer["n"] == 6
    assert 0 <= mer["weighted_f1"] <= 1 and 0 <= mer["invalid"] <= 6
    ov = json.loads((d / "m" / "mer2024_ov.json").read_text())
    assert ov["grouping"] == "esva-offline-v1" and 0 <= ov["avg"] <= 1
    emer = json.loads((d / "m" / "emer.json").read_text())
    assert 0 <= emer["clue_overlap_proxy"] <= 10 and 0 <= emer["label_overlap_proxy"] <= 10
    assert (d / "m" / "confusion_mer2023.png").stat().st_size > 0
    import pandas as pd

    preds = pd.read_parquet(d / "pred" / "mer2023.parquet")
    assert len(preds) == 6 and {"clip_id", "answer", "predicted_label"} <= set(preds.columns)
    res = esva("evaluate", *p, *ev, "--out", str(d / "m2"))  # the default test split is empty here
    assert res.exit_code == 2 and "split synthetic:test is empty" in res.output, res.output
    preds.iloc[1:].assign(clip_id=lambda f: f["clip_id"].where(f.index != 2, "nope")).to_csv(d / "bad.csv", index=False)
    res = esva("evaluate", *p, *on_train, *ev, "--out", str(d / "m2"), "--predictions", str(d / "bad.csv"), "--task", "mer")
    assert res.exit_code == 2 and "missing 2" in res.output and "extra 1: ['nope']" in res.output, res.output
    preds.to_csv(d / "good.csv", index=False)
    res = esva("evaluate", *p, *on_train, *ev, "--out", str(d / "m2"), "--predictions", str(d / "good.csv"), "--task", "mer")
    assert res.exit_code == 0, res.output
    assert json.loads((d / "m2" / "mer2023.json").read_text())["weighted_f1"] == mer["weighted_f1"]
    res = esva("report", "--metrics", str(d / "m"), "--out", str(d / "m" / "tables.md"))
    assert res.exit_code == 0, res.output
    tables = (d / "m" / "tables.md").read_text()
    for t in range(2, 8):
        assert f"## Table {t}:" in tables
    assert "synthetic" in tables and "0.9074" in tables  # this run's corpus, and the paper's column

    from pipeline.stages import synth
    from esva.config import SynthConfig

    synth.run(SynthConfig(n_clips=6, seed=99, workers=1, min_seconds=1.2, max_seconds=1.4, width=160, height=128),
              tmp_path / "fresh", tmp_path / "fm")
    good = sorted((tmp_path / "fresh" / "videos").glob("*.mp4"))[0]
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x128:rate=25", "-t", "1.5", "-pix_fmt", "yuv420p",
           str(tmp_path / "no_audio.mp4"))
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=220:sample_rate=16000", "-t", "1.5", str(tmp_path / "audio_only.m4a"))
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:size=160x128:rate=25", "-f", "lavfi", "-i",
           "sine=frequency=220:sample_rate=16000", "-t", "1.5", "-pix_fmt", "yuv420p", "-shortest",
           str(tmp_path / "no_face.mp4"))
    (tmp_path / "garbage.mp4").write_text("not a video")
    files = [good, tmp_path / "no_audio.mp4", tmp_path / "audio_only.m4a", tmp_path / "no_face.mp4",
             tmp_path / "missing.mp4", tmp_path / "garbage.mp4"]
    enc_before = {f: f.read_bytes() for f in (d / "models").rglob("*") if f.is_file()}
    res = esva("predict", *map(str, files), "--json", *p, "--model", str(d / "stage2"), "--llm", str(d / "llm"),
               "--encoders", str(d / "models"), "--transcript", f"{good.name}=I did not expect that at all.")
    assert res.exit_code == 0, res.output
    assert {f: f.read_bytes() for f in (d / "models").rglob("*") if f.is_file()} == enc_before  # never rewritten
    out = {Path(r["file"]).name: r for r in json.loads(res.stdout)}
    ok = out[good.name]
    assert "error" not in ok and set(ok) >= {"label", "answer", "explanation", "ov_labels", "evidence"}
    assert ok["label"] is None or ok["label"] in ("neutral", "angry", "happy", "sad", "worried", "surprise")
    assert ok["transcript"] == "I did not expect that at all."
    ev = ok["evidence"]
    for head in ("fused", "audio_only", "video_only"):
        assert abs(sum(ev[head].values()) - 1.0) < 1e-3
    assert isinstance(ev["offset_ms"], float) and abs(ev["offset_ms"]) <= 1000.0
    assert "no audio stream" in out["no_audio.mp4"]["error"]
    assert "no video stream" in out["audio_only.m4a"]["error"]
    assert "no face" in out["no_face.mp4"]["error"]
    assert "file not found" in out["missing.mp4"]["error"]
    assert "cannot read" in out["garbage.mp4"]["error"]
    # the human-readable form names the label and the evidence; a stage-2 folder that is not one is a clear error
    res = esva("predict", str(good), *p, "--model", str(d / "stage2"), "--llm", str(d / "llm"), "--encoders",
               str(d / "models"))
    assert res.exit_code == 0 and "audio-only" in res.output and "audio-video offset" in res.output, res.output
    res = esva("predict", str(good), *p, "--model", str(d / "stage2"), "--llm", str(d / "llm"), "--encoders",
               str(tmp_path / "no_encoders"))
    assert res.exit_code == 2 and "encoder the models were trained with is missing" in res.output, res.output
    res = esva("predict", str(good), *p, "--model", str(tmp_path), "--llm", str(d / "llm"))
    assert res.exit_code == 2 and "not a stage-2 model folder" in res.output
