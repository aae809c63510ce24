"""benchmarks/rerun.py: reading DVC's output and dvc.lock (fast), and (slow) the whole benchmark at the smoke
size: a full `dvc repro`, then `dvc exp run -S msfe.scales=4`, which must rerun no media stage. No wall-clock
assertions."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _in_git_repo() -> bool:
    if shutil.which("git") is None:
        return False
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--git-dir"], capture_output=True).returncode == 0


NEEDS_GIT = pytest.mark.skipif(not _in_git_repo(), reason="needs git and the project as a git checkout: the benchmark "
                               "copies the working tree with `git ls-files` and `dvc exp run` needs a git repository")


def test_stage_lines_give_what_ran_and_for_how_long():
    from benchmarks.rerun import read_stages

    lines = [(0.5, "Reproducing experiment 'x-y'"), (1.0, "Stage 'decode' didn't change, skipping"),
             (2.0, "Running stage 'train':"), (2.1, "> esva train --out data/models/stage1"),
             (9.0, "Updating lock file 'dvc.lock'"), (9.1, ""), (10.0, "Running stage 'ablate@full':"),
             (15.0, "Updating lock file 'dvc.lock'"),
             (16.0, "Stage 'lm' is cached - skipping run, checking out outputs"),
             (17.0, "Running stage 'report':"), (18.0, "Ran experiment(s): x-y")]
    got = read_stages({"lines": lines, "seconds": 20.0})
    assert got["stages"] == {"train": 7.0, "ablate@full": 5.0, "report": 3.0}  # no lock line: to the end
    assert got["skipped"] == ["decode"] and got["restored_from_run_cache"] == ["lm"]
    assert got["experiment"] == "x-y" and got["stages_s"] == 15.0 and got["dvc_outside_stages_s"] == 5.0


def test_the_causes_come_from_the_two_lock_files():
    from benchmarks.rerun import why_rerun

    before = {"train": {"params": {"params.yaml": {"msfe": {"scales": 3}, "train": {"seed": 0}}},
                        "deps": [{"path": "data/f.zarr", "md5": "a"}], "outs": [{"path": "m", "md5": "1"}]},
              "tune": {"deps": [{"path": "m", "md5": "1"}], "outs": [{"path": "t", "md5": "2"}]}}
    after = {"train": {"params": {"params.yaml": {"msfe": {"scales": 4}, "train": {"seed": 0}}},
                       "deps": [{"path": "data/f.zarr", "md5": "a"}], "outs": [{"path": "m", "md5": "3"}]},
             "tune": {"deps": [{"path": "m", "md5": "3"}], "outs": [{"path": "t", "md5": "2"}]}}
    got = why_rerun(before, after, ["train", "tune"])
    assert got["train"] == {"params": ["msfe"], "deps": [], "outputs_changed": ["m"]}
    assert got["tune"] == {"params": [], "deps": ["m"], "outputs_changed": []}


def test_the_corpus_changes_are_listed_key_by_key():
    import yaml

    from benchmarks.rerun import apply_changes, params_changes

    with (ROOT / "params.yaml").open() as fh:
        params = yaml.safe_load(fh)
    assert apply_changes(params, params_changes(params, None, None, None, [])) == []  # the demo as committed
    n0 = params["synth"]["n_clips"]
    changed = apply_changes(params, params_changes(params, n0 // 4, None, None, ["train.epochs=3"]))
    keys = [c["key"] for c in changed]
    assert keys[0] == "synth.n_clips" and changed[0] == {"key": "synth.n_clips", "committed": n0, "used": n0 // 4}
    assert "train.epochs" in keys and params["train"]["epochs"] == 3
    assert all(v >= 2 for v in params["synth"]["conditions"].values())
    with pytest.raises(SystemExit, match="not in params.yaml"):
        apply_changes(params, params_changes(params, None, None, None, ["train.nope=1"]))


def test_a_dropped_stage_takes_its_outputs_out_of_the_other_stages_deps(tmp_path):
    import yaml

    from benchmarks.rerun import drop_stages

    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    removed = drop_stages(tmp_path, ["ablate", "tune_ablation"])
    stages = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]
    assert "ablate" not in stages and "tune_ablation" not in stages and "train" in stages
    assert "report: metrics/ablation/full.json" in removed and "report: metrics/stage2_ablation/no_msfe" in removed
    deps = stages["report"]["deps"]
    assert not any("ablation" in d for d in deps) and "metrics/train.json" in deps
    with pytest.raises(SystemExit, match="no such stage"):
        drop_stages(tmp_path, ["nope"])


@pytest.mark.slow
@pytest.mark.bench
@NEEDS_GIT
def test_an_msfe_experiment_reruns_no_media_stage(tmp_path):
    """About 7 minutes on 2 CPU cores: the smoke size, without the ablation stages (17 + 4 more trainings, the
    same commands as train, tune and evaluate), so the experiment reruns train, tune, adaptive, mechanism and what
    reads them."""
    from benchmarks.rerun import MEDIA, main

    out = tmp_path / "bench_rerun.json"
    res = main(["--preset", "tiny", "--drop-stage", "ablate", "--drop-stage", "tune_ablation", "--work",
                str(tmp_path / "work"), "--out", str(out), "--quiet"])
    assert "error" not in res, res.get("error")
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    for key in ("benchmark", "command", "environment", "target", "corpus", "params_changed", "full_s", "exp_s", "ratio",
                "stages_rerun", "stage_s", "rerun_causes", "analysis", "meets_target"):
        assert key in res, key
    assert res["benchmark"] == "rerun" and res["corpus"] == "synthetic" and not res["demo_as_committed"]
    assert res["stages_dropped"] == ["ablate", "tune_ablation"] and res["params_changed"]
    assert set(res["meets_target"]) == {"ratio_ok", "no_media_rerun", "overall"}
    assert res["ratio"] == pytest.approx(res["exp_s"] / res["full_s"], abs=1e-3)
    # the full repro ran every media stage; the experiment none, and said so stage by stage
    assert {"synth", "decode", "crop", "extract@hubert", "extract@text"} <= set(res["stages_full"])
    assert res["media_stages_rerun"] == [] and res["meets_target"]["no_media_rerun"] is True
    assert not any(MEDIA.match(s) for s in res["stages_rerun"])
    assert {"decode", "crop", "extract@hubert", "extract@mae"} <= set(res["media_stages_skipped"])
    assert {"train", "tune", "evaluate", "mechanism", "report"} <= set(res["stages_rerun"])
    causes = res["rerun_causes"]
    assert "msfe" in causes["train"]["params"] and "data/models/stage1" in causes["tune"]["deps"]
    assert set(res["stage_s"]["exp"]) == set(res["stages_rerun"])
    assert all(s >= 0 for s in res["stage_s"]["exp"].values())
    assert res["noop_repro"]["stages_ran"] == [] and "error" not in res["analysis"] and res["analysis"]["facts"]
