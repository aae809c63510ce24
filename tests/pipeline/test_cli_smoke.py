"""Stage smoke tests through the real CLI on a handful of synthetic clips."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from esva.store import open as open_store
from pipeline.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def esva(*args: str, cwd: Path | None = None):
    res = runner.invoke(app, list(args), catch_exceptions=False)
    return res


def test_help_lists_every_stage():
    res = esva("--help")
    assert res.exit_code == 0
    for cmd in ("synth", "ingest", "decode", "crop", "extract"):
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
    small = ["--set", "synth.n_clips=6", "--set", "synth.workers=1", "--set", "synth.min_seconds=1.0",
             "--set", "synth.max_seconds=1.4"]
    results = {
        "synth": esva("synth", "--params", p, *small, "--out", str(d / "raw"), "--metrics", str(d / "m")),
        "ingest": esva("ingest", "--params", p, "--dataset", "synthetic", "--root", str(d / "raw"), "--out",
                       str(d / "manifest.parquet"), "--metrics", str(d / "m")),
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
    assert summary["corpus"] == "synthetic" and summary["clips"]["train"] == 6
    assert json.loads((d / "m" / "alignment.json").read_text())["corpus"] == "synthetic"
    assert (d / "stage1" / "model.safetensors").exists()
    cfg = json.loads((d / "stage1" / "config.json").read_text())
    assert cfg["msfe"]["scales"] == 3 and cfg["use"] == ["hubert", "mae", "videomae", "eva", "text"]
    res = esva("train", "--variant", "no_align", "--out", str(d / "abl"), *common)
    assert res.exit_code == 0, res.output
    row = json.loads((d / "m" / "ablation" / "no_align.json").read_text())
    assert row["variant"] == "no_align" and row["align"] is False and row["corpus"] == "synthetic"
    res = esva("train", "--variant", "nope", "--out", str(d / "x"), *common)
    assert res.exit_code == 2 and "unknown variant 'nope'" in res.output
