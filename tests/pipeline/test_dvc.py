"""dvc.yaml agrees with params.yaml and the code; the pipeline reproduces and is then up to date."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from esva.config import Params

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("synth", "ingest-source@0", "ingest", "decode", "crop", "extract@hubert", "extract@mae", "extract@videomae", "extract@eva",
          "extract@text", "sync-baseline", "train", "lm", "tune", "evaluate", "report")


def _dvc():
    with (ROOT / "dvc.yaml").open() as fh:
        return yaml.safe_load(fh)


def _foreach_items(st) -> dict:
    """A foreach stage's items by key, as DVC names them: a mapping's keys, a list of strings' values, the
    indices of a list of mappings (`${data.sources}`, resolved from params.yaml)."""
    items = st["foreach"]
    if isinstance(items, str):  # ${a.b}: a params.yaml value
        with (ROOT / "params.yaml").open() as fh:
            node = yaml.safe_load(fh)
        for part in items.strip("${}").split("."):
            node = node[part]
        items = node
    if isinstance(items, dict):
        return items
    return {str(i): v for i, v in enumerate(items)} if any(isinstance(v, dict) for v in items) else {i: i for i in items}


def _key_exists(key: str) -> bool:
    node = Params().model_dump()
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_stage_is_an_esva_command_with_real_deps_and_params():
    stages = _dvc()["stages"]
    assert list(stages)[:5] == ["synth", "ingest-source", "ingest", "decode", "crop"]
    assert {"extract", "sync-baseline", "train", "lm", "tune", "evaluate", "report", "ablate"} <= set(stages)
    for name, st in stages.items():
        if "foreach" in st:
            for key, item in _foreach_items(st).items():
                body = yaml.safe_dump(st["do"]).replace("${key}", key)
                if isinstance(item, dict):
                    for k, v in item.items():
                        body = body.replace("${item.%s}" % k, v)
                else:
                    body = body.replace("${item}", item)
                prefix = {"extract": f"esva extract {key}", "ablate": "esva train --variant",
                          "ingest-source": f"esva ingest-source {item.get('name') if isinstance(item, dict) else ''}",
                          "tune_ablation": "esva tune --stage1 data/models/ablation/",
                          "evaluate_controller": f"esva evaluate --controller {key}"}[name]
                _check_stage(f"{name}@{key}", yaml.safe_load(body), prefix)
        else:
            _check_stage(name, st, f"esva {name}")


def _check_stage(name, st, prefix):
    cmds = st["cmd"] if isinstance(st["cmd"], list) else [st["cmd"]]
    assert cmds[0].startswith(prefix) and all(c.startswith("esva ") for c in cmds), name
    for dep in st["deps"]:
        if not dep.startswith(("data/", "metrics/")):  # outputs of other stages
            assert (ROOT / dep).exists(), (name, dep)
    for key in st.get("params", []):
        assert _key_exists(key), (name, key)


def _stage_entries(with_items: bool = False):
    """(dvc stage name, foreach key or None, its body[, the foreach item]) for every stage and every item."""
    for name, st in _dvc()["stages"].items():
        if "foreach" in st:
            for key, item in _foreach_items(st).items():
                yield (name, key, st["do"], item) if with_items else (name, key, st["do"])
        else:
            yield (name, None, st, None) if with_items else (name, None, st)


def test_stages_list_exactly_the_code_they_import_and_the_params_they_read():
    """Code deps: the project modules each stage's modules import, transitively, including imports inside
    functions (pipeline/deps.py reads the import graph); params: exactly the keys the stage declares, which
    the CLI holds it to (esva.config.restrict)."""
    from pipeline.deps import code_deps, params_keys

    for name, key, st, item in _stage_entries(with_items=True):
        listed = {d for d in st["deps"] if d.startswith(("esva/", "pipeline/"))}
        assert listed == set(code_deps(name)), (name, "missing", set(code_deps(name)) - listed, "extra",
                                                 listed - set(code_deps(name)))
        params = [p.replace("${key}", key) if key else p for p in st.get("params", [])]
        if isinstance(item, dict):  # ${item.FIELD}: what this item reads (ablate's msfe_params)
            params = [item[p[len("${item."):-1]] if p.startswith("${item.") else p for p in params]
        params = list(dict.fromkeys(params))  # DVC reads a key listed twice once
        assert sorted(params) == sorted(params_keys(name, key)), (name, key, params, params_keys(name, key))


def test_the_import_graph_sees_indirect_and_function_level_imports():
    from pipeline.deps import closure, code_deps

    train = set(code_deps("train"))
    # what the old, direct-imports-only check missed (issue 12)
    assert {"esva/store/ragged.py", "esva/eval/sync.py", "esva/__init__.py"} <= train
    assert {"esva/losses.py", "esva/eval/metrics.py"} <= set(code_deps("tune"))
    # the CLI only parses: it is no stage's dep, and importing a stage never pulls it in
    assert not any("pipeline/cli.py" == f for name in ("decode", "train", "tune") for f in code_deps(name))
    assert "pipeline.stages.decode" in closure(("pipeline.stages.decode",)) and \
        "esva.media.decode" in closure(("pipeline.stages.decode",))


def test_a_stage_cannot_read_a_params_key_it_does_not_declare():
    from esva.config import ConfigError, Params, restrict
    from pipeline.stages import evaluate, lm

    p = restrict(Params(), evaluate.PARAMS, "evaluate")
    assert p.tune.device == "cpu" and p.evaluate.batch_size >= 1
    with pytest.raises(ConfigError, match=r"stage 'evaluate' reads params key 'tune.lr'"):
        p.tune.lr
    with pytest.raises(ConfigError, match=r"reads params key 'train'"):
        p.train
    llm = restrict(Params(), lm.PARAMS, "lm").llm
    assert "quantize" not in llm.model_dump() and llm.hidden_size > 0
    with pytest.raises(ConfigError, match="llm.quantize"):
        llm.quantize


@pytest.fixture
def dvc_repo(tmp_path, monkeypatch):
    """The project's pipeline in a scratch git + DVC repo, on six tiny clips and a short training."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for d in ("esva", "pipeline"):
        shutil.copytree(ROOT / d, repo / d, ignore=shutil.ignore_patterns("__pycache__"))
    with (ROOT / "dvc.yaml").open() as fh:
        dag = yaml.safe_load(fh)
    dag["stages"].pop("ablate")  # 17 more trainings: covered by their own smoke test
    dag["stages"].pop("tune_ablation")  # 4 more stage-2 runs over the ablation's models: the same code as tune/evaluate
    dag["stages"]["report"]["deps"] = [d for d in dag["stages"]["report"]["deps"]
                                       if not d.startswith(("metrics/ablation/", "metrics/stage2_ablation/"))]
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dag, sort_keys=False))
    with (ROOT / "params.yaml").open() as fh:
        params = yaml.safe_load(fh)
    # 18 clips, 3 per label: one each for train, val (both stages choose epochs on it) and test
    params["synth"].update(n_clips=18, workers=1, min_seconds=1.0, max_seconds=1.4, width=160, height=128,
                           split={"train": 0.34, "val": 0.33, "test": 0.33}, conditions={"drift": 2, "missing": 2})
    params["data"]["robust"] = ["synthetic:drift", "synthetic:missing"]  # the adaptive stage's condition splits
    params["adaptive"].update(seeds=1)
    params["train"].update(epochs=2, patience=1, batch_size=4)
    params["align"].update(warmup_epochs=1, max_shift=4, window=4, hop=2, neural_steps=5)
    params["msfe"].update(scales=2)
    params["llm"].update(vocab_size=320, hidden_size=32, layers=1, heads=2, intermediate_size=64, epochs=1, block=32)
    params["tune"].update(epochs=1, lora_r=4, audio_tokens=2, video_tokens=2, max_new_tokens=16)
    params["mechanism"].update(seeds=1, train_per_class=4, val_per_class=2, test_per_class=2, epochs=1, warmup_epochs=1,
                               msfe_seconds=1.0, align_seconds=2.0, align_events=2)
    # the default roles: train on synthetic:train, validate on synthetic:val, evaluate on synthetic:test
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / ".gitignore").write_text("/data/\n__pycache__/\n/.venv\n")
    env = dict(run_env(repo), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    dvc = str(Path(sys.executable).parent / "dvc")
    run = lambda *a: subprocess.run([dvc, *a], cwd=repo, env=env, capture_output=True, text=True)  # noqa: E731
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, env=env, capture_output=True, text=True, check=True)  # noqa: E731
    git("init", "-q")
    assert run("init", "-q").returncode == 0
    git("add", "-A")
    git("commit", "-qm", "init")
    return repo, run, git, params


def _ran(out: str) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in out}


@pytest.mark.slow  # the whole demo DAG twice (13-15 min on 2 cores): the slow tier, which CI runs (.ci/run)
def test_repro_then_nothing_to_do_and_only_downstream_reruns(dvc_repo):
    repo, run, git, params = dvc_repo
    first = run("repro")
    assert first.returncode == 0, first.stdout + first.stderr
    assert _ran(first.stdout) == set(STAGES)
    for stage in STAGES:
        if stage not in ("sync-baseline", "evaluate", "report", "ingest-source@0"):
            assert (repo / "metrics" / f"{stage.replace('@', '_')}.json").exists(), stage
    assert (repo / "metrics" / "ingest" / "synthetic.json").exists()  # ingest-source@0's report
    assert json.loads((repo / "metrics" / "train.json").read_text())["corpus"] == "synthetic"
    assert json.loads((repo / "metrics" / "alignment.json").read_text())["corpus"] == "synthetic"
    assert json.loads((repo / "metrics" / "tune.json").read_text())["corpus"] == "synthetic"
    assert (repo / "data" / "models" / "stage2" / "adapter_model.safetensors").exists()
    for name in ("mer2023", "mer2024_ov", "emer"):
        assert json.loads((repo / "metrics" / f"{name}.json").read_text())["corpus"] == "synthetic"
    assert "synthetic" in (repo / "metrics" / "tables.md").read_text()
    shown = run("metrics", "show", "--json")
    assert shown.returncode == 0 and "mer2024_ov.json" in shown.stdout, shown.stdout + shown.stderr
    second = run("repro")
    assert second.returncode == 0 and _ran(second.stdout) == set(), second.stdout
    git("add", "-A")
    git("commit", "-qm", "repro")
    # an ablation through dvc exp: an msfe change reruns training only, never decode/crop/extract
    exp = run("exp", "run", "-S", "msfe.scales=1")
    assert exp.returncode == 0, exp.stdout + exp.stderr
    assert _ran(exp.stdout) == {"train", "tune", "evaluate", "report"}, exp.stdout
    shown = run("exp", "show", "--json")
    assert shown.returncode == 0
    scales = list(_find(json.loads(shown.stdout), "msfe"))
    assert {m.get("scales") for m in scales} >= {1, 2}  # the experiment beside the committed baseline
    mer = [m["data"] for m in _find(json.loads(shown.stdout), "metrics/mer2023.json") if "data" in m]
    assert len(mer) >= 2 and all("weighted_f1" in m for m in mer)  # its benchmark metrics side by side
    git("checkout", "-q", "--", ".")  # back to the committed workspace
    # the README's commands after `make demo`, verbatim, in this project with the suite's .venv as its own
    block = _readme_block("After `make demo`, the commands live in `.venv`:")
    assert "dvc exp run -S msfe.scales=4" in block and "source .venv/bin/activate" in block
    (repo / ".venv").symlink_to(Path(sys.executable).parent.parent, target_is_directory=True)
    readme = subprocess.run(["bash", "-e", "-c", block], cwd=repo, capture_output=True, text=True,
                            env={k: v for k, v in run_env(repo).items() if k != "VIRTUAL_ENV"})
    assert readme.returncode == 0, readme.stdout + readme.stderr
    shown = run("exp", "show", "--json")  # the README's experiment, beside the others
    assert 4 in {m.get("scales") for m in _find(json.loads(shown.stdout), "msfe")}, shown.stdout[:2000]
    assert (repo / "metrics" / "tables.md").exists()
    git("checkout", "-q", "--", ".")
    # an encoder's own params rerun that encoder and what reads it
    params["features"]["mae"]["pool"] = "cls"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run("repro")
    assert third.returncode == 0, third.stdout + third.stderr
    assert _ran(third.stdout) == {"extract@mae", "train", "tune", "evaluate", "report"}
    # a crop change reruns crop and what reads faces, never decode, the audio or the text encoder
    params["crop"]["margin"] = 0.3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fourth = run("repro")
    assert fourth.returncode == 0, fourth.stdout + fourth.stderr
    assert _ran(fourth.stdout) == {"crop", "extract@mae", "extract@videomae", "extract@eva", "sync-baseline", "train",
                                   "tune", "evaluate", "report"}


def _readme_block(after: str) -> str:
    """The first ```bash block after the line `after` in README.md."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rest = text[text.index(after):]
    start = rest.index("```bash\n") + len("```bash\n")
    return rest[start:rest.index("```", start)]


def run_env(repo: Path) -> dict[str, str]:
    """What the project's dvc commands run with in these tests (no analytics, a private site cache)."""
    return dict(os.environ, DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(repo.parent / "site"),
                GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")


def test_ablation_stage_lists_every_variant():
    from pipeline.stages.train import VARIANTS

    assert list(_dvc()["stages"]["ablate"]["foreach"]) == list(VARIANTS)


def test_only_the_ablation_rows_with_an_msfe_declare_msfe():
    """`dvc exp run -S msfe.scales=4` reruns the rows whose models hold an MSFE and no other (issue 16): a
    variant with MSFE off, or without HuBERT, reads nothing under `msfe`, and gets the same params whatever
    msfe.* says."""
    from esva.config import Params, apply_overrides, restrict
    from pipeline.stages.train import ABLATE_PARAMS, VARIANTS, variant_has_msfe, variant_keys, variant_params

    items = _dvc()["stages"]["ablate"]["foreach"]
    with_msfe = {v for v, item in items.items() if item["msfe_params"] == "msfe"}
    assert with_msfe == {"full", "no_align", "enc_msfe_hubert_mae_videomae_eva"}
    assert with_msfe == {v for v in VARIANTS if variant_has_msfe(v)}
    base = Params()
    wider = Params.model_validate(apply_overrides(base.model_dump(mode="python"), ["msfe.scales=4", "msfe.hidden=32"]))
    for v in VARIANTS:
        a, b = variant_params(restrict(base, variant_keys(v), "ablate"), v), variant_params(wider, v)
        if v in with_msfe:
            assert (a.msfe.scales, b.msfe.scales) == (3, 4), v
        else:
            assert a.msfe.model_dump() == b.msfe.model_dump() and not a.msfe.enabled, v
            assert a.model_dump(mode="json") == b.model_dump(mode="json"), v
            assert "msfe" not in variant_keys(v) and set(variant_keys(v)) < set(ABLATE_PARAMS), v


def _find(node, key):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and isinstance(v, dict):
                yield v
            yield from _find(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _find(v, key)


# what a run measures about itself rather than computes: wall clocks, the extract engine's per-lane busy seconds
# and the share of the run the encoder was computing (esva.encoders.engine.Timings), and NVML samples. The
# engine's batch, clip, unit and padding counts stay in the comparison: they are the same on every run.
TIMING_KEYS = {"seconds", "train_seconds", "generate_seconds", "started",
               "load_s", "forward_s", "write_s", "wait_s", "wall_s", "forward_share_of_wall", "gpu_utilisation"}


def _metrics_without_timing(repo: Path) -> dict[str, object]:
    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in TIMING_KEYS}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    out = {}
    for f in sorted((repo / "metrics").rglob("*.json")):
        out[str(f.relative_to(repo))] = strip(json.loads(f.read_text()))
    return out


def _outs(repo: Path) -> dict[str, str]:
    """Every cached output's hash in dvc.lock (stores, models, predictions)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {o["path"]: o.get("md5") for st in lock["stages"].values() for o in st.get("outs", [])
            if not o["path"].startswith("metrics")}


@pytest.mark.slow
def test_a_lab_shares_one_remote_and_two_repros_are_identical(dvc_repo, tmp_path):
    """dvc push to a shared remote, a fresh clone, dvc pull, and dvc repro has nothing to do; a second,
    independent full repro from the same commit gives identical metrics (timings aside) and identical stores."""
    repo, run, git, _ = dvc_repo
    first = run("repro")
    assert first.returncode == 0, first.stdout + first.stderr
    remote = tmp_path / "lab-remote"
    assert run("remote", "add", "-d", "lab", str(remote)).returncode == 0
    push = run("push")
    assert push.returncode == 0, push.stdout + push.stderr
    git("add", "-A")
    git("commit", "-qm", "results")
    env = dict(os.environ, DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(tmp_path / "site2"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    dvc = str(Path(sys.executable).parent / "dvc")
    for name in ("colleague", "rerun"):
        subprocess.run(["git", "clone", "-q", str(repo), str(tmp_path / name)], check=True, env=env)
    # a colleague pulls the shared results: nothing needs to run
    colleague = tmp_path / "colleague"
    pull = subprocess.run([dvc, "pull"], cwd=colleague, env=env, capture_output=True, text=True)
    assert pull.returncode == 0, pull.stdout + pull.stderr
    again = subprocess.run([dvc, "repro"], cwd=colleague, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and _ran(again.stdout) == set(), again.stdout + again.stderr
    assert (colleague / "data" / "models" / "stage2" / "adapter_model.safetensors").exists()
    # an independent full repro of the same commit, from nothing: the same numbers and the same stores
    rerun = tmp_path / "rerun"
    full = subprocess.run([dvc, "repro", "--force"], cwd=rerun, env=env, capture_output=True, text=True)
    assert full.returncode == 0, full.stdout + full.stderr
    assert _metrics_without_timing(rerun) == _metrics_without_timing(repo)
    a, b = _outs(repo), _outs(rerun)
    same = {k for k in a if a[k] == b.get(k)}
    for store in ("data/interim/decoded.zarr", "data/interim/faces.zarr", "data/features/hubert.zarr",
                  "data/features/mae.zarr", "data/models/stage1"):
        assert store in same, (store, a.get(store), b.get(store))
