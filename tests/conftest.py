"""Shared fixtures: tiny media files built with ffmpeg at test time, tiny synthetic corpora."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIXTURES = Path(__file__).parent / "fixtures"


def ffmpeg(*args: str) -> None:
    from esva.media.ffmpeg import ffmpeg_binary

    subprocess.run([ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="session")
def tiny_synth_cfg():
    from esva.config import SynthConfig

    return SynthConfig(n_clips=6, workers=1, min_seconds=1.0, max_seconds=1.6, width=160, height=128)


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory, tiny_synth_cfg):
    """Six synthetic clips (one per label), generated once per session."""
    from pipeline.stages import synth

    out = tmp_path_factory.mktemp("synth")
    synth.run(tiny_synth_cfg, out / "raw", out / "metrics")
    return out / "raw"


def hold_out_for_validation(manifest: Path, n: int = 1) -> None:
    """Give the first `n` rows of a small test manifest the role `val`: both stages choose epochs on
    validation clips only, and six clips, one per label, leave nothing for ingest's stratified carving."""
    from esva.data.manifest import read_manifest, write_manifest

    df = read_manifest(manifest)
    df.loc[df.index[:n], "role"] = "val"
    write_manifest(df, manifest)


@pytest.fixture(scope="session")
def synth_decoded(tmp_path_factory, synth_corpus):
    """The session's six synthetic clips through ingest and decode, once per session: a folder with
    m.parquet (the manifest) and decoded.zarr. Tests that write next to them copy nothing: they write
    their own stores elsewhere."""
    from esva.config import DecodeConfig, IngestConfig, Source
    from pipeline.stages import decode, ingest

    d = tmp_path_factory.mktemp("decoded")
    ingest.run(IngestConfig(), (Source(name="synthetic", adapter="synthetic", root=str(synth_corpus)),),
               d / "m.parquet", None)
    decode.run(DecodeConfig(workers=1), d / "m.parquet", d / "decoded.zarr", None)
    return d
