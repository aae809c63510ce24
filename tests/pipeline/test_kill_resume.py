"""SIGKILL in the middle of decode, crop, extract, train and tune, then the same command again: it
completes, and the result equals an uninterrupted run (bit for bit for the stores, within a stated
tolerance for training). Real subprocesses, real signals (issue 12)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from esva.store import open as open_store
from esva.store import verify
from esva.store.ragged import INDEX

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ESVA = str(Path(sys.executable).parent / "esva")
P = ["--params", str(ROOT / "params.yaml")]
SMALL_LM = ["--set", "llm.vocab_size=320", "--set", "llm.hidden_size=32", "--set", "llm.layers=1", "--set", "llm.heads=2",
            "--set", "llm.intermediate_size=64", "--set", "llm.epochs=1", "--set", "llm.block=32"]
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1"}


def run(*args: str) -> None:
    res = subprocess.run([ESVA, *args], env=ENV, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]


def kill_when(args: list[str], ready, timeout: float = 600) -> float:
    """Start `esva ARGS`, SIGKILL it as soon as `ready()` holds; the seconds it ran. Fails if it finished first
    (then the test would prove nothing)."""
    proc = subprocess.Popen([ESVA, *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - t0 < timeout:
            if ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return time.monotonic() - t0
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pytest.fail(f"`esva {' '.join(args[:2])}` finished (rc {proc.returncode}) before it could be killed")


def committed(store: Path) -> int:
    try:
        return len(json.loads((store / INDEX).read_text())["index"])
    except (OSError, ValueError, KeyError):
        return 0


def same_store(a: Path, b: Path) -> int:
    ra, rb = open_store(a), open_store(b)
    assert sorted(ra.ids()) == sorted(rb.ids())
    for cid in ra.ids():
        assert ra.digest(cid) == rb.digest(cid) and ra.meta(cid) == rb.meta(cid), cid
        xa, xb = ra.read(cid), rb.read(cid)
        for k in xa:
            assert xa[k].dtype == xb[k].dtype and np.array_equal(xa[k], xb[k]), (cid, k)
    assert verify(b)["bad"] == {} and verify(b)["store"] == []
    return len(ra.ids())


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """An uninterrupted chain on 24 clips: the reference every killed run must reproduce."""
    d = tmp_path_factory.mktemp("killref")
    run("synth", *P, "--set", "synth.n_clips=24", "--set", "synth.conditions={}", "--set", "synth.workers=1", "--set", "synth.min_seconds=1.0",
        "--set", "synth.max_seconds=1.4", "--set", "synth.width=160", "--set", "synth.height=128",
        "--out", str(d / "raw"), "--metrics", str(d / "m"))
    run("ingest", *P, "--dataset", "synthetic", "--root", str(d / "raw"), "--out", str(d / "manifest.parquet"),
        "--metrics", str(d / "m"))
    run("decode", *P, "--set", "decode.workers=1", "--manifest", str(d / "manifest.parquet"), "--out",
        str(d / "decoded.zarr"), "--metrics", str(d / "m"))
    run("crop", *P, "--set", "crop.workers=1", "--decoded", str(d / "decoded.zarr"), "--out", str(d / "faces.zarr"),
        "--metrics", str(d / "m"))
    (d / "features").mkdir()
    for enc in ("hubert", "mae", "videomae", "eva", "text"):
        run("extract", enc, *P, *EXTRACT_SET.get(enc, []), "--out", str(d / "features" / f"{enc}.zarr"),
            "--decoded", str(d / "decoded.zarr"), "--faces", str(d / "faces.zarr"), "--manifest",
            str(d / "manifest.parquet"), "--models", str(d / "models"), "--metrics", str(d / "m"))
    return d


EXTRACT_SET = {"hubert": ["--set", "features.hubert.batch_budget=40000"],  # two clips a batch: several commits
               "mae": ["--set", "features.mae.batch_budget=64"]}


def test_decode_killed_after_its_first_commit_resumes_to_the_same_store(ref, tmp_path):
    out = tmp_path / "decoded.zarr"
    args = ["decode", *P, "--set", "decode.workers=1", "--manifest", str(ref / "manifest.parquet"), "--out", str(out),
            "--metrics", str(tmp_path / "m")]
    kill_when(args, lambda: 0 < committed(out) < 24)
    partial = committed(out)
    run(*args)
    assert same_store(ref / "decoded.zarr", out) == 24
    rep = json.loads((tmp_path / "m" / "decode.json").read_text())
    assert rep["clips"]["reused"] == partial and rep["clips"]["new"] == 24 - partial


def test_decode_killed_at_any_moment_never_leaves_a_store_that_reads_wrong(ref, tmp_path):
    """Kills at increasing delays from the start, resuming each time from what the last one left."""
    out = tmp_path / "decoded.zarr"
    args = ["decode", *P, "--set", "decode.workers=1", "--manifest", str(ref / "manifest.parquet"), "--out", str(out),
            "--metrics", str(tmp_path / "m")]
    kills = 0
    for delay in (0.5, 1.5, 2.5, 3.5):
        t0 = time.monotonic()
        proc = subprocess.Popen([ESVA, *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and time.monotonic() - t0 < delay:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if out.exists() and (out / "zarr.json").exists():  # whatever is there reads right, or says it is incomplete
            rep = verify(out)
            assert rep["bad"] == {}, rep
    run(*args)
    assert kills >= 1 and same_store(ref / "decoded.zarr", out) == 24


def test_crop_killed_resumes_to_the_same_store(ref, tmp_path):
    out = tmp_path / "faces.zarr"
    args = ["crop", *P, "--set", "crop.workers=1", "--decoded", str(ref / "decoded.zarr"), "--out", str(out),
            "--metrics", str(tmp_path / "m")]
    kill_when(args, lambda: 0 < committed(out) < 24)
    run(*args)
    assert same_store(ref / "faces.zarr", out) == 24


@pytest.mark.parametrize("enc", ["hubert", "mae"])
def test_extract_killed_resumes_to_the_same_features_bit_for_bit(ref, tmp_path, enc):
    out = tmp_path / f"{enc}.zarr"
    args = ["extract", enc, *P, *EXTRACT_SET[enc], "--out", str(out), "--decoded", str(ref / "decoded.zarr"),
            "--faces", str(ref / "faces.zarr"), "--models", str(ref / "models"), "--metrics", str(tmp_path / "m")]
    kill_when(args, lambda: 0 < committed(out) < 24)
    run(*args)
    assert same_store(ref / "features" / f"{enc}.zarr", out) == 24


TRAIN_SET = ["--set", "train.epochs=4", "--set", "align.warmup_epochs=1", "--set", "train.batch_size=4",
             "--set", "train.checkpoint_every=1", "--set", "train.patience=10"]


def _train(ref: Path, out: Path, m: Path) -> list[str]:
    return ["train", *P, *TRAIN_SET, "--manifest", str(ref / "manifest.parquet"), "--features", str(ref / "features"),
            "--out", str(out), "--metrics", str(m), "--reference", str(ref / "none.json")]


def test_train_killed_mid_epoch_resumes_optimizer_and_rng_to_the_same_model(ref, tmp_path):
    run(*_train(ref, tmp_path / "a", tmp_path / "ma"))
    state = tmp_path / "b.resume" / "state.pt"
    assert not (tmp_path / "a.resume" / "state.pt").exists()  # cleared after a complete run

    def mid_epoch():
        if not state.exists():
            return False
        import torch

        try:
            s = torch.load(state, weights_only=True)
        except Exception:
            return False
        return s["epoch"] >= 2 and s["batch"] > 0  # inside the second epoch, after the warm-up

    kill_when(_train(ref, tmp_path / "b", tmp_path / "mb"), mid_epoch)
    run(*_train(ref, tmp_path / "b", tmp_path / "mb"))
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    worst = max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)
    assert worst <= 1e-5, worst  # tolerance: the same steps on the same batches and random draws
    ja, jb = (json.loads((tmp_path / x / "train.json").read_text()) for x in ("ma", "mb"))
    assert ja["test"] == jb["test"] and ja["best_epoch"] == jb["best_epoch"] and ja["epochs_run"] == jb["epochs_run"]
    assert not state.exists()


def test_a_checkpoint_of_another_run_is_never_resumed_from(ref, tmp_path):
    import torch

    state = tmp_path / "b.resume" / "state.pt"
    state.parent.mkdir()
    torch.save({"key": "another run", "epoch": 3, "step": 9}, state)
    run(*_train(ref, tmp_path / "b", tmp_path / "mb"))
    run(*_train(ref, tmp_path / "a", tmp_path / "ma"))
    assert json.loads((tmp_path / "mb" / "train.json").read_text())["test"] == \
        json.loads((tmp_path / "ma" / "train.json").read_text())["test"]


def test_tune_killed_mid_epoch_resumes_to_the_same_adapter(ref, tmp_path):
    run("lm", *P, *SMALL_LM, "--out", str(tmp_path / "llm"), "--manifest", str(ref / "manifest.parquet"),
        "--metrics", str(tmp_path / "m"))
    run(*_train(ref, tmp_path / "stage1", tmp_path / "m"))
    common = [*P, "--set", "tune.epochs=2", "--set", "tune.lora_r=4", "--set", "tune.max_new_tokens=8",
              "--set", "tune.batch_size=4", "--set", "tune.grad_accum=2", "--set", "tune.checkpoint_every=1",
              "--set", "tune.tasks={emotion: 1.0}", "--manifest", str(ref / "manifest.parquet"),
              "--features", str(ref / "features"), "--stage1", str(tmp_path / "stage1"), "--llm", str(tmp_path / "llm")]
    run("tune", *common, "--out", str(tmp_path / "a"), "--metrics", str(tmp_path / "ma"))
    state = tmp_path / "b.resume" / "state.pt"

    def mid_epoch():
        if not state.exists():
            return False
        import torch

        try:
            return torch.load(state, weights_only=True)["i"] > 0
        except Exception:
            return False

    kill_when(["tune", *common, "--out", str(tmp_path / "b"), "--metrics", str(tmp_path / "mb")], mid_epoch)
    run("tune", *common, "--out", str(tmp_path / "b"), "--metrics", str(tmp_path / "mb"))
    for f in ("adapter_model.safetensors", "projector.safetensors"):
        wa, wb = load_file(str(tmp_path / "a" / f)), load_file(str(tmp_path / "b" / f))
        worst = max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)
        assert wa.keys() == wb.keys() and worst <= 1e-5, (f, worst)
    ja, jb = (json.loads((tmp_path / x / "tune.json").read_text()) for x in ("ma", "mb"))
    assert (ja["val_accuracy"], ja["best_epoch"], ja["steps"]) == (jb["val_accuracy"], jb["best_epoch"], jb["steps"])
    assert [round(h["train_loss"], 5) for h in ja["history"]] == [round(h["train_loss"], 5) for h in jb["history"]]
    assert not state.exists() and not (tmp_path / "b.partial").exists()
