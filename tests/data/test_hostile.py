"""A corpus of hostile inputs: each gets a clear error naming the file (and row), or a recorded skip with
its reason; nothing runs, nothing outside the dataset root is read (issue 12)."""

import ast
import csv
import io
from pathlib import Path

import pandas as pd
import pytest

from esva.data.adapters import AdapterError, run_adapter
from esva.data.manifest import ManifestError, read_manifest, to_frame, write_manifest
from esva.media.ffmpeg import local_input
from pipeline.common import StageReport

ROOT = Path(__file__).resolve().parents[2]


def _folder(tmp_path: Path, labels: bytes | None = None, videos=("ok.mp4",)) -> Path:
    root = tmp_path / "corpus"
    (root / "v").mkdir(parents=True)
    for v in videos:
        (root / "v" / v).write_bytes(b"\0" * 16)
    if labels is not None:
        (root / "labels.csv").write_bytes(labels)
    return root


def test_formula_names_are_recorded_skips_and_never_reach_a_spreadsheet_live(tmp_path):
    root = _folder(tmp_path, videos=("ok.mp4", "=cmd|' calc'!A0.mp4", "@SUM(1+1).mp4"))
    res = run_adapter("folder", root, labels=("happy", "sad"))
    assert [r["clip_id"] for r in res.rows] == ["ok"]
    reasons = {p.name: p.reason for p in res.problems}
    assert set(reasons) == {"=cmd|' calc'!A0", "@SUM(1+1)"} and all("formula" in r for r in reasons.values())
    report = StageReport("ingest", clips_in=3)
    for p in res.problems:
        report.skip(p.name, str(p), "invalid_row", p.reason)
    report.write(tmp_path / "m")
    cells = [c for row in csv.reader(io.StringIO((tmp_path / "m" / "skips" / "ingest.csv").read_text())) for c in row]
    assert "'=cmd|' calc'!A0" in cells and not any(c.startswith(("=", "@", "+")) for c in cells)


@pytest.mark.parametrize("content, message", [
    (b"name,label\nok,happy\nbad\0row,sad\n", r"labels.csv:3: a NUL byte in a field"),
    ("name,label\nok,happy\n".encode() + "caf\xe9,sad\n".encode("latin-1"), r"labels.csv: not UTF-8 text"),
    (b"name,label\nok,happy\nbig,\"" + b"x" * 200_000 + b"\"\n", r"labels.csv:\d+: malformed CSV \(field larger than field limit"),
    (b"name,label\nok,happy,extra\n", r"labels.csv:2: more fields than the header"),
])
def test_broken_label_files_are_errors_naming_file_and_line(tmp_path, content, message):
    root = _folder(tmp_path, content)
    with pytest.raises(AdapterError, match=message):
        run_adapter("folder", root, labels=("happy", "sad"))


def _manifest(tmp_path: Path, rel: str, root: Path) -> Path:
    df = to_frame([{"clip_id": "a", "video_path": "v/ok.mp4", "root": str(root), "split": "train", "label": "happy",
                    "dataset": "x"},
                   {"clip_id": "b", "video_path": rel, "root": str(root), "split": "train", "label": "sad",
                    "dataset": "x"}])
    write_manifest(df, tmp_path / "m.parquet")
    return tmp_path / "m.parquet"


@pytest.mark.parametrize("rel, why", [("../../etc/passwd", r"climbs out"), ("/etc/passwd", "is absolute"),
                                      ("v/../../secret.mp4", "climbs out"), ("link.mp4", "leads outside")])
def test_manifest_paths_are_confined_to_the_dataset_root(tmp_path, rel, why):
    root = _folder(tmp_path)
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"x")
    (root / "link.mp4").symlink_to(outside)
    m = _manifest(tmp_path, rel, root)
    with pytest.raises(ManifestError, match=rf"m.parquet: row 2 \(clip 'b'\): .*{why}"):
        read_manifest(m)
    assert len(read_manifest(_manifest(tmp_path, "v/ok.mp4", root))) == 2


def test_a_symlink_out_of_the_root_is_a_recorded_skip_at_ingest(tmp_path):
    root = _folder(tmp_path)
    outside = tmp_path / "elsewhere.mp4"
    outside.write_bytes(b"x")
    (root / "v" / "sneaky.mp4").symlink_to(outside)
    res = run_adapter("folder", root, labels=("happy",))
    assert [r["clip_id"] for r in res.rows] == ["ok"]
    assert len(res.problems) == 1 and "leads outside the dataset root" in res.problems[0].reason


def test_a_file_that_is_not_a_manifest_is_an_error_naming_it(tmp_path):
    (tmp_path / "m.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ManifestError, match="m.parquet: not a readable parquet manifest"):
        read_manifest(tmp_path / "m.parquet")
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "n.parquet")
    with pytest.raises(ManifestError, match="missing columns"):
        read_manifest(tmp_path / "n.parquet")


def test_ffmpeg_never_reads_a_file_name_as_an_option_or_a_protocol(tmp_path):
    for name in ("-i evil.mp4", "concat:a.mp4|b.mp4", "http:x.mp4"):
        arg = local_input(tmp_path / name)
        assert arg.startswith("file:/") and arg.endswith(name)
    from esva.media.ffmpeg import MediaError, probe

    (tmp_path / "concat:a|b.mp4").write_bytes(b"not a video")
    with pytest.raises(MediaError) as err:
        probe(tmp_path / "concat:a|b.mp4")
    assert err.value.reason == "unreadable"


def test_no_shell_anywhere_and_no_remote_code_by_default():
    """No subprocess with shell=True, no os.system / os.popen, in the library or the stages; every
    trust_remote_code defaults to false."""
    for path in [*ROOT.glob("esva/**/*.py"), *ROOT.glob("pipeline/**/*.py")]:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                owner = getattr(getattr(f, "value", None), "id", "")
                assert not (owner == "os" and name in ("system", "popen")), (path, node.lineno)
                for kw in node.keywords:
                    assert not (kw.arg == "shell" and getattr(kw.value, "value", False) is True), (path, node.lineno)
    from esva.config import Params

    p = Params()
    assert p.llm.trust_remote_code is False
    assert all(getattr(p.features, n).trust_remote_code is False for n in ("hubert", "mae", "videomae", "eva", "text"))
