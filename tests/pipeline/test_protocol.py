"""The paper's protocol (instruction-tune on MERR; test on MER2023 test3, MER2024-OV, EMER v2) on a tiny copy of
the four corpora in their published formats (tests/protocol_corpus.py), through DVC: one ingest stage per source
and a merge (issue 13: DVC knows every source), sources that overlap without colliding or leaking, and a change
to one dataset's files that reruns exactly its own stage and the merge."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from esva.config import load_params
from esva.data.adapters import run_adapter
from pipeline.common import StageFailed
from pipeline.stages import ingest
from tests.protocol_corpus import MERR, MERR_FINE, MERR_LABELS, build, paper_params

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("merr", "mer2023", "mer2024", "emer")  # data.sources' order: ingest-source@0 .. @3
PER_SOURCE = {f"ingest-source@{i}" for i in range(len(SOURCES))}


def _project(base: Path, corpus: Path, keep: tuple[str, ...], tweak=None):
    """The project's pipeline (only the stages `keep`) in a scratch DVC project under the paper's protocol."""
    repo = base / "repo"
    repo.mkdir()
    for d in ("esva", "pipeline"):
        shutil.copytree(ROOT / d, repo / d, ignore=shutil.ignore_patterns("__pycache__"))
    with (ROOT / "dvc.yaml").open() as fh:
        dag = yaml.safe_load(fh)
    dag["stages"] = {k: v for k, v in dag["stages"].items() if k in keep}
    if "report" in dag["stages"]:
        dag["stages"]["report"]["deps"] = [d for d in dag["stages"]["report"]["deps"]
                                           if not d.startswith(("metrics/ablation/", "metrics/stage2_ablation/"))
                                           and (d != "metrics/mechanism.json" or "mechanism" in keep)]
    if "downstream" in keep:  # a stand-in for decode: reads the manifest, so it reruns only when the manifest changes
        dag["stages"]["downstream"] = {"cmd": "cp data/manifest.parquet data/downstream.parquet",
                                       "deps": ["data/manifest.parquet"], "outs": ["data/downstream.parquet"]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dag, sort_keys=False))
    with (ROOT / "params.yaml").open() as fh:
        params = yaml.safe_load(fh)
    params.update(paper_params(corpus))
    if tweak:
        tweak(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(base / "site"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    dvc = str(Path(sys.executable).parent / "dvc")
    run = lambda *a: subprocess.run([dvc, *a], cwd=repo, env=env, capture_output=True, text=True)  # noqa: E731
    assert run("init", "--no-scm", "-q").returncode == 0
    return repo, run, params


def _ran(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}


def _changed(run) -> set[str]:
    res = run("status", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    return set(json.loads(res.stdout or "{}"))


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    """The corpus outside the project (dataset roots are absolute paths, as on a lab's disk), ingested once by
    `dvc repro` through the per-source stages, the merge and a downstream stand-in."""
    base = tmp_path_factory.mktemp("protocol")
    corpus = build(base / "corpus")
    repo, run, params = _project(base, corpus, ("ingest-source", "ingest", "downstream"))
    first = run("repro")
    assert first.returncode == 0, first.stdout + first.stderr
    return repo, run, params, corpus, first.stdout


def test_every_source_is_a_stage_and_the_paper_protocol_ingests_without_collision_or_leak(protocol):
    repo, run, params, corpus, out = protocol
    assert _ran(out) == PER_SOURCE | {"ingest", "downstream"}
    assert _changed(run) == set()  # up to date
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    for i, name in enumerate(SOURCES):  # each stage depends on its own dataset root, and nothing of the others'
        deps = lock["stages"][f"ingest-source@{i}"]["deps"]
        roots = [d["path"] for d in deps if not d["path"].startswith(("esva/", "pipeline/"))]
        assert roots == [str(corpus / name)]
        assert lock["stages"][f"ingest-source@{i}"]["params"]["params.yaml"] == {"data.transcript_language": "english"}
    assert "data/sources" in [d["path"] for d in lock["stages"]["ingest"]["deps"]]

    df = pd.read_parquet(repo / "data" / "manifest.parquet")
    rep = json.loads((repo / "metrics" / "ingest.json").read_text())
    # identity: one name in four datasets is four clips, never a collision
    assert df["clip_id"].is_unique and set(df["source"]) == set(SOURCES)
    assert set(df.loc[df["name"] == "sample_00000003", "clip_id"]) == {f"{s}.sample_00000003" for s in SOURCES}
    assert rep["sources"] == {"merr": len(MERR), "mer2023": 9, "mer2024": 5, "emer": 4}
    assert set(rep["per_source"]) == set(SOURCES) and rep["per_source"]["mer2023"]["transcripts"]["missing"] == 1
    # roles from params alone
    role = df.set_index("clip_id")["role"]
    assert sorted(role[role == "eval:mer"].index) == [f"mer2023.samplenew_0000000{i}" for i in (1, 2, 3)]
    assert sorted(role[role == "eval:ov"].index) == ["mer2024.sample_00000003", "mer2024.sample_00001001",
                                                     "mer2024.samplenew_00000003"]
    assert sorted(role[role == "eval:emer"].index) == ["emer.sample_00000003", "emer.sample_00001001",
                                                       "emer.samplenew_00000003"]
    assert set(df.loc[df["role"].isin(["train", "val"]), "source"]) == {"merr"}
    assert role["emer.sample_00000002"] == "unused" and df.set_index("clip_id").loc["emer.sample_00000002", "split"] == "v1"
    assert rep["roles"]["val"] >= 1 and rep["val"]["carved_from_train"] == rep["roles"]["val"]
    # MERR's nine labels reach the manifest (the fine-grained caption wins over the coarse one)
    merr = df[df["source"] == "merr"].set_index("name")
    assert set(merr["label"]) == set(MERR_LABELS)
    assert merr.loc["samplenew_00000102", "reason"].startswith("Fine:")
    assert merr.loc["samplenew_00000101", "reason"].startswith("Coarse:")
    # the leakage guard, by name and by content, from the content keys the per-source stages stored
    leak = rep["leak"]
    assert (leak["removed"], leak["by_name"], leak["by_content"]) == (3, 2, 1)
    assert {c["clip_id"]: (c["matches"], c["by"]) for c in leak["clips"]} == {
        "merr.sample_00000003": ("mer2024.sample_00000003", "name"),
        "merr.samplenew_00000001": ("mer2023.samplenew_00000001", "name"),
        "merr.samplenew_00009002": ("mer2023.samplenew_00000002", "content")}
    trained = set(df.loc[df["role"].isin(["train", "val"]), "name"])
    assert trained and not trained & set(df.loc[df["role"].str.startswith("eval"), "name"])
    # transcripts as shipped, a reference explanation only ever a reason
    t = df.set_index("clip_id")["transcript"]
    assert t["mer2023.samplenew_00000001"] == "Great, we won!" and t["emer.sample_00000003"] == "How dare you do this to me!"
    assert df.set_index("clip_id").loc["emer.sample_00000003", "reason"].startswith("He frowns")
    # per-source outputs: content keys, reports as DVC metrics
    for name in SOURCES:
        part = pd.read_parquet(repo / "data" / "sources" / f"{name}.parquet")
        assert part["content_key"].str.len().eq(64).all() and (part["source"] == name).all()
        m = json.loads((repo / "metrics" / "ingest" / f"{name}.json").read_text())
        assert m["stage"] == f"ingest/{name}" and m["source"]["root"] == str(corpus / name) and m["done"] == len(part)
    shown = run("metrics", "show", "--json")
    assert shown.returncode == 0 and "metrics/ingest/merr.json" in shown.stdout, shown.stdout + shown.stderr
    # `esva ingest` in one go (no DVC) is the same code path and gives the same manifest
    p = load_params(repo / "params.yaml")
    one_go = ingest.run(p.ingest, p.data.sources, repo / "one_go.parquet", None, data_cfg=p.data, evaluate_cfg=p.evaluate)
    pd.testing.assert_frame_equal(pd.read_parquet(repo / "one_go.parquet"), df)
    assert len(one_go) == len(df)


def test_a_change_to_one_source_reruns_its_stage_and_the_merge_only(protocol):
    repo, run, params, corpus, _ = protocol
    # an edit that changes nothing ingest reads (EMER v1's row of a clip that v2 has): its stage reruns, gives
    # the same file, and DVC stops there
    gt = corpus / "emer" / "gt-eng.csv"
    gt.write_text(gt.read_text(encoding="utf-8").replace("A frown and a loud voice.", "A frown."), encoding="utf-8")
    assert _changed(run) == {"ingest-source@3"}
    res = run("repro")
    assert res.returncode == 0 and _ran(res.stdout) == {"ingest-source@3"}, res.stdout + res.stderr
    # a row of EMER v1 without a video: a skipped row, the same manifest -> the downstream stage does not rerun
    with (corpus / "emer" / "gt-eng.csv").open("a", encoding="utf-8") as fh:
        fh.write("sample_00000777,happy,Hi.,A smile.\n")
    assert _changed(run) == {"ingest-source@3"}
    res = run("repro")
    assert res.returncode == 0, res.stdout + res.stderr
    assert _ran(res.stdout) == {"ingest-source@3", "ingest"}, res.stdout
    assert "sample_00000777" in (repo / "metrics" / "skips" / "ingest.csv").read_text()
    # a label of MER2024 changes: its stage, the merge and what reads the manifest
    disdim = corpus / "mer2024" / "label-disdim.csv"
    disdim.write_text(disdim.read_text().replace("sample_00002002,sad", "sample_00002002,angry"))
    assert _changed(run) == {"ingest-source@2"}
    res = run("repro")
    assert _ran(res.stdout) == {"ingest-source@2", "ingest", "downstream"}, res.stdout + res.stderr
    # the transcript language is every source's
    params["data"]["transcript_language"] = "chinese"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _changed(run) == PER_SOURCE | {"ingest"}  # the merge checks each file was read in it
    params["data"]["transcript_language"] = "english"
    # roles are the merge's alone: a data.train change never re-reads a dataset; a source removed from
    # data.sources: its stage is gone, its stale file in data/sources ignored
    params["data"]["train"] = ["merr:train", "mer2024:train"]
    params["data"]["sources"] = [s for s in params["data"]["sources"] if s["name"] != "emer"]
    params["evaluate"]["emer"] = {"source": "mer2024", "split": "ov"}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _changed(run) == {"ingest"}
    res = run("repro")
    assert res.returncode == 0 and _ran(res.stdout) == {"ingest", "downstream"}, res.stdout + res.stderr
    df = pd.read_parquet(repo / "data" / "manifest.parquet")
    assert "mer2024.sample_00002002" in set(df.loc[df["role"].isin(["train", "val"]), "clip_id"])
    assert (repo / "data" / "sources" / "emer.parquet").exists() and "emer" not in set(df["source"])


def test_the_merge_reads_the_listed_sources_files_and_checks_how_each_was_made(tmp_path):
    corpus = build(tmp_path / "corpus")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(paper_params(corpus)))
    p = load_params(tmp_path / "params.yaml")
    folder = tmp_path / "sources"
    for src in p.data.sources:
        ingest.run_source(src, "english", folder / f"{src.name}.parquet", tmp_path / "metrics")
    shutil.copyfile(folder / "emer.parquet", folder / "old.parquet")  # a source no longer listed: ignored
    df = ingest.run_merge(p.ingest, folder, tmp_path / "m.parquet", tmp_path / "metrics", p.data, p.evaluate)
    in_memory = ingest.run(p.ingest, p.data.sources, tmp_path / "m2.parquet", None, p.data, p.evaluate)
    pd.testing.assert_frame_equal(df, in_memory)
    # written under other settings than params give now: an error naming the file and the setting
    zh = load_params(tmp_path / "params.yaml", ["data.transcript_language=chinese"])
    with pytest.raises(StageFailed, match=r"merr\.parquet was written under other settings.*transcript_language 'english'"):
        ingest.run_merge(zh.ingest, folder, tmp_path / "m.parquet", None, zh.data, zh.evaluate)
    moved = paper_params(tmp_path / "elsewhere")
    (tmp_path / "moved.yaml").write_text(yaml.safe_dump(moved))
    q = load_params(tmp_path / "moved.yaml")
    with pytest.raises(StageFailed, match=r"merr\.parquet .*root"):
        ingest.run_merge(q.ingest, folder, tmp_path / "m.parquet", None, q.data, q.evaluate)
    # a listed source without its file: an error naming it
    (folder / "mer2024.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"mer2024\.parquet is missing: source 'mer2024'"):
        ingest.run_merge(p.ingest, folder, tmp_path / "m.parquet", None, p.data, p.evaluate)
    # the command line says it in one line
    from typer.testing import CliRunner

    from pipeline.cli import app

    res = CliRunner().invoke(app, ["ingest", "--params", str(tmp_path / "params.yaml"), "--from", str(folder),
                                   "--out", str(tmp_path / "m3.parquet"), "--metrics", str(tmp_path / "m3")])
    assert res.exit_code == 2 and "mer2024.parquet is missing" in res.output
    res = CliRunner().invoke(app, ["ingest-source", "mer2024", "--params", str(tmp_path / "params.yaml"),
                                   "--out", str(folder / "mer2024.parquet"), "--metrics", str(tmp_path / "m3")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m3" / "ingest" / "mer2024.json").read_text())["done"] == 5


def test_the_corpus_reads_in_both_languages():
    """Chinese transcripts where the datasets ship them; EMER v1's Chinese file with Chinese emotion words."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        corpus = build(Path(d))
        zh = {n: run_adapter(n, corpus / n, language="chinese") for n in SOURCES}
        text = {r["source_name"]: r["transcript"] for r in zh["mer2023"].rows}
        assert text["samplenew_00000001"] == "太好了，我们赢了！"
        v1 = {r["source_name"]: r for r in zh["emer"].rows if r["split"] == "v1"}
        assert v1["sample_00000002"]["label"] == "sad" and v1["sample_00000002"]["transcript"] == "我又失败了。"
        assert zh["merr"].notes["transcripts"]["missing"] == len(MERR)  # MERR ships English transcripts only


def test_a_clip_in_both_merr_files_is_one_row_and_no_problem(tmp_path):
    res = run_adapter("merr", build(tmp_path) / "merr")
    assert len(res.rows) == len(MERR) and not res.problems, [str(p) for p in res.problems][:len(MERR_FINE)]
    assert res.notes["in_several_files"] == len(MERR_FINE)
    # the same clip with another label in the fine file is a problem naming both places
    fine = tmp_path / "merr" / "MERR_fine_grained.txt"
    lines = fine.read_text().splitlines()
    name, frames, label = lines[0].split()[:3]
    other = next(x for x in ("happy", "sad") if x != label.lower())
    fine.write_text("\n".join([f"{name} {frames} {other}"] + lines[1:]) + "\n")
    res = run_adapter("merr", tmp_path / "merr")
    assert [p.reason for p in res.problems] == [f"label {other!r} here but {label!r} in MERR_coarse_grained.txt:"
                                                 f"{[r['source_name'] for r in res.rows].index(name) + 1}"]


@pytest.mark.slow
def test_the_paper_protocol_runs_end_to_end(tmp_path, synth_corpus):
    """`dvc repro` of the whole pipeline (bar the ablations) with the tiny encoders on the four corpora: every
    benchmark metric is computed on its own source and split, and none says synthetic."""
    pool = sorted((synth_corpus / "videos").glob("*.mp4"))
    corpus = build(tmp_path / "corpus", pool)

    def tiny(params):
        params["train"].update(epochs=2, patience=1, batch_size=4)
        params["align"].update(warmup_epochs=1, max_shift=4, window=4)
        params["msfe"].update(scales=2)
        params["llm"].update(vocab_size=320, hidden_size=32, layers=1, heads=2, intermediate_size=64, epochs=1, block=32)
        params["tune"].update(epochs=1, lora_r=4, audio_tokens=2, video_tokens=2, max_new_tokens=16)

    keep = ("ingest-source", "ingest", "decode", "crop", "extract", "sync-baseline", "train", "lm", "tune", "evaluate",
            "adaptive", "evaluate_controller", "report")
    repo, run, _ = _project(tmp_path, corpus, keep, tiny)
    res = run("repro")
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-6000:]
    assert PER_SOURCE <= _ran(res.stdout)
    m = repo / "metrics"
    splits = {"mer2023.json": "mer2023:test3", "mer2024_ov.json": "mer2024:ov", "emer.json": "emer:v2"}
    for f, split in splits.items():
        d = json.loads((m / f).read_text())
        assert d["split"] == split and d["corpus"] != "synthetic" and d["corpus"].split(",") == [split.split(":")[0]], (f, d)
    assert json.loads((m / "ingest.json").read_text())["corpus"] == "emer,mer2023,mer2024,merr"
    for f in ("train.json", "tune.json"):
        assert "synthetic" not in json.loads((m / f).read_text())["corpus"], f
    for f in sorted(m.rglob("*.json")):
        assert "synthetic" not in f.read_text(encoding="utf-8").lower(), f
    tables = (m / "tables.md").read_text(encoding="utf-8")
    assert "mer2023" in tables and "This run's corpus: synthetic" not in tables
    # the controllers on a real corpus: no offset tracks, so tracking is skipped with its reason; F1 is scored, and
    # Table 7's paper layout comes from the stage-2 LLM under each controller
    ad, rb = json.loads((m / "adaptive.json").read_text()), json.loads((m / "robustness.json").read_text())
    assert "no ground-truth offset track" in ad["tracking"]["clean"]["skipped"] and set(ad["splits"]) == {"clean"}, ad
    assert set(rb["f1"]["clean"]) >= {"fixed", "fuzzy", "neural", "backstepping"}
    for c in ("fixed", "fuzzy", "neural", "backstepping"):
        assert json.loads((m / "controllers" / c / "mer2023.json").read_text())["controller"] == c


def test_the_readmes_protocol_block_is_valid_params_as_written():
    """The README's block for the real benchmarks, merged into params.yaml as a user would, validates (every key
    exists, every value has its type); the protocol tests above run its `data` and `evaluate` sections."""
    from esva.config import Params
    from tests.protocol_corpus import readme_protocol_block

    def merge(a: dict, b: dict) -> dict:
        for k, v in b.items():
            a[k] = merge(dict(a[k]), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a

    with (ROOT / "params.yaml").open() as fh:
        block = readme_protocol_block()
        p = Params.model_validate(merge(yaml.safe_load(fh), block))
    assert [s.name for s in p.data.sources] == ["merr", "mer2023", "mer2024", "emer"] and not p.data.val
    assert p.features.hubert.checkpoint == "TencentGameMate/chinese-hubert-large" and p.features.hubert.device == "cuda"
    assert p.llm.checkpoint == "meta-llama/Llama-2-7b-chat-hf" and p.evaluate.mer.split == "test3"
