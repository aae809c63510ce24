"""Sources that overlap without colliding or leaking: identity, roles from params, the leakage guard,
validation carving, transcripts as the datasets ship them, defaults without a params file (issue 13)."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from esva.config import Params, load_params
from esva.data.adapters import run_adapter
from esva.data.instructions import eval_samples, training_samples
from esva.data.manifest import read_manifest, to_frame
from pipeline.cli import app
from pipeline.stages import ingest

ROOT = Path(__file__).resolve().parents[2]


def _video(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


@pytest.fixture
def corpora(tmp_path):
    """MER2023 (train + test3), MERR built from MER2023 videos, EMER v2: names overlap across sources."""
    mer = tmp_path / "mer2023"
    (mer).mkdir()
    (mer / "train-label.csv").write_text("name,discrete,valence\n" + "".join(
        f"sample_{i:08d},{lab},1.0\n" for i, lab in enumerate(["happy", "sad", "angry", "neutral"] * 3)))
    (mer / "test3-label.csv").write_text("name,discrete,valence\nsamplenew_00000001,happy,-10\nsamplenew_00000002,sad,-10\n")
    (mer / "transcription-engchi-polish.csv").write_text(
        "name,chinese,english\nsamplenew_00000001,我很开心,I am happy.\nsample_00000000,你好,Hello.\n")
    for i in range(12):
        _video(mer / "train" / f"sample_{i:08d}.mp4", f"mer-train-{i}".encode())
    for i in (1, 2):
        _video(mer / "test3" / f"samplenew_{i:08d}.mp4", f"mer-test3-{i}".encode() * 100)
    merr = tmp_path / "merr"
    merr.mkdir()
    lines = [f"sample_{i:08d} 50 {lab} -10" for i, lab in enumerate(["happy", "sad", "angry", "neutral", "happy", "sad"])]
    lines += ["samplenew_00000001 40 happy 0.5",   # an evaluated clip by name: must never train
              "sample_00000099 40 sad 0.2"]         # an evaluated clip's video under another name: by content
    (merr / "MERR_fine_grained.txt").write_text("\n".join(lines) + "\n")
    (merr / "transcription_en_all.csv").write_text("name,sentence\nsample_00000000,Hi there.\n")
    for i in range(6):
        _video(merr / "video" / f"sample_{i:08d}.mp4", f"merr-{i}".encode())
    _video(merr / "video" / "samplenew_00000001.mp4", b"merr-copy")
    shutil.copyfile(mer / "test3" / "samplenew_00000002.mp4", merr / "video" / "sample_00000099.mp4")
    emer = tmp_path / "emer"
    emer.mkdir()
    (emer / "final-EMER-reason.csv").write_text(
        "name,chinese,english\nsample_00000003,他很生气,THE REFERENCE EXPLANATION: he frowns and shouts.\n")
    _video(emer / "video" / "sample_00000003.mp4", b"mer-train-3")
    return tmp_path


def _paper(tmp_path, **data):
    tree = {"data": {"sources": [{"name": "mer2023", "adapter": "mer2023", "root": str(tmp_path / "mer2023")},
                                 {"name": "merr", "adapter": "merr", "root": str(tmp_path / "merr")},
                                 {"name": "emer", "adapter": "emer", "root": str(tmp_path / "emer")}],
                     "train": ["merr:train"], "val": [], "val_fraction": 0.34, **data},
            "evaluate": {"mer": {"source": "mer2023", "split": "test3"}, "ov": {"source": "emer", "split": "v2"},
                         "emer": {"source": "emer", "split": "v2"}}}
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(tree))
    return load_params(f)


def _ingest(tmp_path, p, tag="a"):
    out = tmp_path / f"manifest_{tag}.parquet"
    ingest.run(p.ingest, p.data.sources, out, tmp_path / f"m_{tag}", data_cfg=p.data, evaluate_cfg=p.evaluate)
    return read_manifest(out), json.loads((tmp_path / f"m_{tag}" / "ingest.json").read_text())


def test_clips_are_source_and_name_and_never_collide(corpora):
    df, rep = _ingest(corpora, _paper(corpora))
    assert df["clip_id"].is_unique
    same = df[df["name"] == "sample_00000003"]
    assert set(same["clip_id"]) == {"emer.sample_00000003", "merr.sample_00000003", "mer2023.sample_00000003"}
    assert set(df["source"]) == {"mer2023", "merr", "emer"} and rep["sources"]["emer"] == 1


def test_roles_follow_params_and_the_guard_removes_every_leak(corpora):
    df, rep = _ingest(corpora, _paper(corpora))
    role = df.set_index("clip_id")["role"]
    assert role["mer2023.samplenew_00000001"] == "eval:mer" and role["emer.sample_00000003"] == "eval:ov,eval:emer"
    assert (role[df.set_index("clip_id")["source"] == "mer2023"].isin(["unused", "eval:mer"])).all()  # not in data.train
    # MERR's copy of a test3 clip (by name) and a renamed copy of another (by content) never train
    assert role["merr.samplenew_00000001"] == "unused" and role["merr.sample_00000099"] == "unused"
    # EMER's evaluated clip is a MER2023/MERR training clip by name: removed from training too
    assert role["merr.sample_00000003"] == "unused"
    leak = rep["leak"]
    assert leak["removed"] == 3 and leak["by_name"] == 2 and leak["by_content"] == 1
    assert {c["clip_id"]: c["matches"] for c in leak["clips"]} == {
        "merr.samplenew_00000001": "mer2023.samplenew_00000001", "merr.sample_00000003": "emer.sample_00000003",
        "merr.sample_00000099": "mer2023.samplenew_00000002"}
    trained = set(df.loc[df["role"].isin(["train", "val"]), "name"])
    evaluated = set(df.loc[df["role"].str.startswith("eval"), "name"])
    assert trained and not trained & evaluated


def test_validation_is_carved_stratified_and_seeded(corpora):
    p = _paper(corpora)
    a, rep = _ingest(corpora, p, "a")
    b, _ = _ingest(corpora, p, "b")
    assert list(a["role"]) == list(b["role"])  # deterministic
    val = a[a["role"] == "val"]
    train = a[a["role"] == "train"]
    assert rep["val"]["carved_from_train"] == len(val) >= 1
    for lab in set(val["label"]):  # a label in val keeps at least one training clip
        assert (train["label"] == lab).any()
    c, _ = _ingest(corpora, _paper(corpora, seed=5), "c")
    assert len(c[c["role"] == "val"]) == len(val)


def test_transcripts_as_shipped_and_a_reference_never_reaches_a_prompt(corpora):
    df, rep = _ingest(corpora, _paper(corpora))
    t = df.set_index("clip_id")["transcript"]
    assert t["mer2023.samplenew_00000001"] == "I am happy." and t["merr.sample_00000000"] == "Hi there."
    assert rep["per_source"]["mer2023"]["transcripts"]["missing"] == 12  # counted, never silent
    row = df[df["clip_id"] == "emer.sample_00000003"]
    assert row["transcript"].item() == "" and row["reason"].item().startswith("THE REFERENCE")
    prompts = [s.transcript + " " + s.instruction for task in ("emotion", "reason", "ov")
               for s in eval_samples(df, task)] + \
              [s.transcript + " " + s.instruction for s in training_samples(df, {"emotion": 1, "reason": 1, "ov": 1}, 0, 1)]
    assert prompts and not any("REFERENCE" in p for p in prompts)
    zh = to_frame(run_adapter("mer2023", corpora / "mer2023", language="chinese").rows).set_index("clip_id")
    assert zh.loc["samplenew_00000001", "transcript"] == "我很开心"


def test_a_placeholder_valence_is_missing_not_minus_ten(corpora):
    df, rep = _ingest(corpora, _paper(corpora))
    v = df.set_index("clip_id")["valence"]
    assert pd.isna(v["mer2023.samplenew_00000001"]) and pd.isna(v["merr.sample_00000000"])
    assert v["merr.samplenew_00000001"] == 0.5
    assert rep["per_source"]["merr"]["valence_placeholders"] == 6


def test_bad_role_params_name_the_key(corpora):
    from esva.config import ConfigError

    p = _paper(corpora, train=["nosuch:train"])
    with pytest.raises(ConfigError, match="data.train names source 'nosuch'"):
        _ingest(corpora, p)
    with pytest.raises(Exception, match="source:split"):
        _ingest(corpora, _paper(corpora, train=["merr"]))


def test_every_command_runs_without_a_params_file(tmp_path, monkeypatch):
    """A user with a folder of videos and no params.yaml: ingest works, and `esva params` prints a file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vids").mkdir()
    (tmp_path / "vids" / "a.mp4").write_bytes(b"x")
    res = CliRunner().invoke(app, ["ingest", "--dataset", "folder", "--root", "vids", "--out", "m.parquet",
                                   "--metrics", "metrics"])
    assert res.exit_code == 0, res.output
    assert list(read_manifest(tmp_path / "m.parquet")["clip_id"]) == ["folder.a"]
    res = CliRunner().invoke(app, ["params", "--set", "decode.fps=10"])
    assert res.exit_code == 0
    printed = yaml.safe_load(res.stdout)  # the log line goes to stderr
    assert printed["decode"]["fps"] == 10 and printed["data"]["train"] == ["synthetic:train"]
    (tmp_path / "params.yaml").write_text(res.stdout)  # a file started from it loads as it is
    assert load_params(tmp_path / "params.yaml").decode.fps == 10
    res = CliRunner().invoke(app, ["decode", "--params", "nope.yaml"])
    assert res.exit_code == 2 and "params file not found: nope.yaml" in res.output


def test_robust_splits_are_evaluated_never_trained_and_guarded():
    """data.robust (esva adaptive's condition splits): role `robust`, decoded like evaluation rows, and a
    training row with a robust clip's name is removed like any leak."""
    import pandas as pd

    from esva.config import DataConfig, EvaluateConfig
    from esva.data.roles import assign_roles, stage_split

    df = pd.DataFrame({"clip_id": [f"synthetic.c{i}" for i in range(5)], "name": ["a", "b", "c", "d", "c"],
                       "source": "synthetic", "split": ["train", "val", "test", "drift", "train"],
                       "label": "sad", "root": "/nowhere", "video_path": [f"{i}.mp4" for i in range(5)]})
    df.loc[3, "name"] = "c2"
    df.loc[4, "name"] = "c2"  # a training copy of the drift clip
    cfg = DataConfig(robust=("synthetic:drift",))
    out, rep = assign_roles(df, cfg, EvaluateConfig(), hash_contents=False)
    roles = dict(zip(out["clip_id"], out["role"]))
    assert roles == {"synthetic.c0": "train", "synthetic.c1": "val", "synthetic.c2": "eval:mer,eval:ov,eval:emer",
                     "synthetic.c3": "robust", "synthetic.c4": "unused"}
    assert rep["leak"]["clips"] == [{"clip_id": "synthetic.c4", "was": "train", "matches": "synthetic.c3", "by": "name"}]
    assert stage_split("robust") is None  # the training stages never read it
    with pytest.raises(ValueError, match="data.robust names source 'other'"):
        assign_roles(df, DataConfig(robust=("other:drift",)), EvaluateConfig(), hash_contents=False)
