"""dvc.yaml agrees with params.yaml and the code; the pipeline reproduces and is then up to date."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from esva.config import Params

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("synth", "ingest", "decode", "crop", "extract@hubert", "extract@mae", "extract@videomae", "extract@eva",
          "extract@text")


def _dvc():
    with (ROOT / "dvc.yaml").open() as fh:
        return yaml.safe_load(fh)


def _key_exists(key: str) -> bool:
    node = Params().model_dump()
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_stage_is_an_esva_command_with_real_deps_and_params():
    stages = _dvc()["stages"]
    assert list(stages)[:4] == ["synth", "ingest", "decode", "crop"]
    for name, st in stages.items():
        if "foreach" in st:
            for key, item in st["foreach"].items():
                body = yaml.safe_dump(st["do"]).replace("${key}", key)
                for k, v in item.items():
                    body = body.replace("${item.%s}" % k, v)
                _check_stage(f"{name}@{key}", yaml.safe_load(body), f"esva {name} {key}")
        else:
            _check_stage(name, st, f"esva {name}")


def _check_stage(name, st, prefix):
    assert st["cmd"].startswith(prefix), name
    for dep in st["deps"]:
        if not dep.startswith("data/"):
            assert (ROOT / dep).exists(), (name, dep)
    for key in st.get("params", []):
        assert _key_exists(key), (name, key)


def test_stages_depend_on_the_code_they_import():
    """Each stage module's esva imports are listed as deps (so a code change reruns the stage)."""
    import ast

    stages = _dvc()["stages"]
    for name, st in stages.items():
        src = (ROOT / "pipeline" / "stages" / f"{name}.py").read_text()
        mods = {n.module for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom) and n.module}
        files = {m.replace(".", "/") + ".py" for m in mods if m.startswith("esva.") and m not in ("esva.config", "esva.store")}
        files = {f if (ROOT / f).exists() else f[:-3] + "/__init__.py" for f in files}
        files = {f for f in files if (ROOT / f).exists()}
        deps = set((st.get("do") or st)["deps"])
        assert files <= deps, (name, files - deps)


@pytest.fixture
def dvc_repo(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    for d in ("esva", "pipeline"):
        shutil.copytree(ROOT / d, repo / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    with (ROOT / "params.yaml").open() as fh:
        params = yaml.safe_load(fh)
    params["synth"].update(n_clips=6, workers=1, min_seconds=1.0, max_seconds=1.4, width=160, height=128)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(tmp_path / "site"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    run = lambda *a: subprocess.run([str(Path(sys.executable).parent / "dvc"), *a], cwd=repo, env=env,  # noqa: E731
                                    capture_output=True, text=True)
    assert run("init", "--no-scm", "-q").returncode == 0
    return repo, run


def test_repro_then_nothing_to_do_and_only_downstream_reruns(dvc_repo):
    repo, run = dvc_repo
    first = run("repro")
    assert first.returncode == 0, first.stdout + first.stderr
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout
        assert (repo / "metrics" / f"{stage.replace('@', '_')}.json").exists()
    second = run("repro")
    assert second.returncode == 0 and "Running stage" not in second.stdout, second.stdout
    # an encoder's own params rerun only that encoder
    text = (repo / "params.yaml").read_text()
    params = yaml.safe_load(text)
    params["features"]["mae"]["pool"] = "cls"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run("repro")
    assert third.returncode == 0, third.stdout + third.stderr
    ran = {s for s in STAGES if f"Running stage '{s}'" in third.stdout}
    assert ran == {"extract@mae"}, ran
    # a crop change reruns crop and the face encoders, never decode, the audio or the text encoder
    params["crop"]["margin"] = 0.3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fourth = run("repro")
    assert fourth.returncode == 0, fourth.stdout + fourth.stderr
    ran = {s for s in STAGES if f"Running stage '{s}'" in fourth.stdout}
    assert ran == {"crop", "extract@mae", "extract@videomae", "extract@eva"}, ran
