import shutil
from pathlib import Path

import pandas as pd
import pytest

from esva import LABELS
from esva.data.adapters import AdapterError, run_adapter
from esva.data.manifest import COLUMNS, read_manifest, safe_id, to_frame, write_manifest
from tests.conftest import FIXTURES


def _dataset(tmp_path: Path, name: str) -> Path:
    """Copy a fixture in its real format and create the (empty) video files it lists."""
    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root, ignore=shutil.ignore_patterns("videos.txt"))
    for line in (FIXTURES / name / "videos.txt").read_text(encoding="utf-8").splitlines():
        p = root / line
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    return root


def _problems(res):
    return {(p.name, p.row): p.reason for p in res.problems}


def test_mer2023(tmp_path):
    res = run_adapter("mer2023", _dataset(tmp_path, "mer2023"))
    df = to_frame(res.rows).set_index("clip_id")
    assert sorted(df.index) == ["sample_00000001", "sample_00000002", "sample_00001001", "sample_00001002"]
    assert df.loc["sample_00000001", "split"] == "train" and df.loc["sample_00001001", "split"] == "test1"
    assert df.loc["sample_00000001", "valence"] == 2.5 and df.loc["sample_00000002", "label"] == "worried"
    assert df.loc["sample_00000001", "transcript"] == "I am so happy."
    assert df.loc["sample_00000002", "video_path"] == "train/sample_00000002.avi"
    probs = _problems(res)
    assert "unknown label 'disgust'" in probs[("sample_00000003", 4)]
    assert "duplicate id" in probs[("sample_00000001", 5)]
    assert "missing video" in probs[("sample_00000004", 6)]
    assert res.n_in == 7


def test_mer2024_discrete_and_open_vocabulary(tmp_path):
    res = run_adapter("mer2024", _dataset(tmp_path, "mer2024"))
    df = to_frame(res.rows).set_index("clip_id")
    assert df.loc["sample_00002001", "ov_labels"] == ["sad", "disappointed"]
    assert df.loc["sample_00002002", "label"] == "happy"
    assert df.loc["sample_00002003", "split"] == "ov" and pd.isna(df.loc["sample_00002003", "label"])
    assert df.loc["sample_00002003", "ov_labels"] == ["surprised", "curious", "excited"]
    # the fixture ships only a Chinese ASR transcript (transcription.csv, name,sentence): English is missing, counted
    assert df.loc["sample_00002001", "transcript"] == "" and res.notes["transcripts"]["missing"] == 3
    zh = to_frame(run_adapter("mer2024", tmp_path / "mer2024", language="chinese").rows).set_index("clip_id")
    assert zh.loc["sample_00002001", "transcript"] == "我很难过"
    assert "missing video" in _problems(res)[("sample_00002004", 4)]


def test_merr_annotations_and_captions(tmp_path):
    res = run_adapter("merr", _dataset(tmp_path, "merr"))
    df = to_frame(res.rows).set_index("clip_id")
    assert sorted(df.index) == ["sample_00000010", "sample_00000011", "sample_00000012"]
    assert df.loc["sample_00000011", "label"] == "fear"  # MERR's nine labels (Emotion-LLaMA's), not MER's six
    assert df.loc["sample_00000010", "reason"].startswith("The person smiles")  # fine wins over coarse
    assert df.loc["sample_00000012", "reason"] == "coarse caption for 12"
    assert df.loc["sample_00000012", "label"] == "worried" and df.loc["sample_00000012", "valence"] == 1.5
    probs = _problems(res)
    assert "unknown label 'furious'" in probs[("sample_00000014", 5)] and "doubt" in probs[("sample_00000014", 5)]
    # the same row through MER's six-label set is refused: fear is not a MER2023 label
    six = run_adapter("merr", tmp_path / "merr", labels=LABELS)
    assert "unknown label 'fear'" in _problems(six)[("sample_00000011", 2)]
    assert "expected `name frames label" in probs[("sample_00000013", 4)]


def test_emer(tmp_path):
    res = run_adapter("emer", _dataset(tmp_path, "emer"))
    df = to_frame(res.rows).set_index("clip_id")
    assert df.loc["sample_00003001", "label"] == "worried"
    assert df.loc["sample_00003001", "ov_labels"] == ["anxious", "worried"]
    assert df.loc["sample_00003001", "transcript"] == "I really do not know what to do."
    assert df.loc["sample_00003002", "transcript"] == "What? Really?"
    assert "furrowed brows" in df.loc["sample_00003001", "reason"]
    assert "missing video" in _problems(res)[("sample_00003003", 4)]


def test_folder_with_unicode_and_spaces(tmp_path):
    res = run_adapter("folder", _dataset(tmp_path, "folder"))
    df = to_frame(res.rows)
    assert len(df) == 3 and not res.problems
    by_path = df.set_index("video_path")
    assert by_path.loc["clip one.mp4", "label"] == "happy"
    assert pd.isna(by_path.loc["sub/other.mov", "label"])
    cid = by_path.loc["sub/ünïcode clip.mkv", "clip_id"]
    assert cid.isascii() and " " not in cid and cid == safe_id("ünïcode clip")


def test_synthetic_adapter(synth_corpus):
    res = run_adapter("synthetic", synth_corpus)
    df = to_frame(res.rows)
    assert len(df) == 6 and not res.problems
    assert {"offset_ms", "gt_f0_hz", "gt_snr_db"} <= set(df.columns)
    assert df["reason"].str.len().min() > 20 and (df["dataset"] == "synthetic").all()


def test_bad_roots_are_named(tmp_path):
    with pytest.raises(AdapterError, match="not a directory"):
        run_adapter("mer2023", tmp_path / "nope")
    with pytest.raises(AdapterError, match="no MER2023 label file"):
        run_adapter("mer2023", tmp_path)
    with pytest.raises(AdapterError, match="unknown dataset adapter 'voxceleb'"):
        run_adapter("voxceleb", tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "train-label.csv").write_text("name,label\na,happy\n")
    with pytest.raises(AdapterError, match=r"train-label.csv: missing columns \['discrete'\]"):
        run_adapter("mer2023", tmp_path / "x")


def test_manifest_roundtrip(tmp_path, synth_corpus):
    df = to_frame(run_adapter("synthetic", synth_corpus).rows)
    write_manifest(df, tmp_path / "m.parquet")
    back = read_manifest(tmp_path / "m.parquet")
    assert list(back.columns[: len(COLUMNS)]) == COLUMNS
    assert back["ov_labels"].map(list).tolist() == df["ov_labels"].tolist()
    assert back["clip_id"].is_unique


def test_safe_id():
    assert safe_id("sample_00000001") == "sample_00000001"
    a, b = safe_id("ça va"), safe_id("ca va")
    assert a != b and a.isascii() and b.isascii()
    assert safe_id("日本語") != safe_id("中文") and safe_id("日本語").startswith("clip-")


def test_malformed_files_are_named(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    (root / "train-label.csv").write_text("name,discrete,valence\na,happy,1.0\nb,sad,-1,extra, field\n")
    with pytest.raises(AdapterError, match=r"train-label.csv:3: more fields than the header"):
        run_adapter("mer2023", root)
    (root / "train-label.csv").write_bytes("name,discrete\nä,happy\n".encode("latin-1"))
    with pytest.raises(AdapterError, match="train-label.csv: not UTF-8"):
        run_adapter("mer2023", root)


def test_names_with_dots_find_their_video(tmp_path):
    root = tmp_path / "f"
    (root / "train").mkdir(parents=True)
    (root / "train" / "clip.v2.mp4").write_bytes(b"")
    (root / "train-label.csv").write_text("name,discrete,valence\nclip.v2,happy,1\n")
    res = run_adapter("mer2023", root)
    assert not res.problems and res.rows[0]["video_path"] == "train/clip.v2.mp4"
