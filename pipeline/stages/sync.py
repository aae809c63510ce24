"""`esva sync-baseline`: the alignment evaluation's reference row (plain cross-correlation of raw
audio energy and mouth-region motion) -> metrics/alignment_reference.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from esva.data.roles import stage_split
from esva.provenance import atomic_write_json
from esva.data.manifest import corpus_of, read_manifest
from esva.eval.sync import audio_energy, mouth_motion, offset_errors, xcorr_offset
from esva.store import open as open_store
from pipeline.common import log

PARAMS = ("align.max_shift",)  # the params keys this stage reads (pipeline/deps.py; dvc.yaml lists exactly these)


def run(max_shift: int, decoded: Path, faces: Path, manifest: Path, out: Path) -> dict:
    df = read_manifest(manifest)
    if "offset_ms" not in df.columns or df["offset_ms"].isna().all():
        result = {"corpus": corpus_of(df["dataset"]), "note": "no ground-truth offsets in the manifest", "test": None}
    else:
        dec, fac = open_store(decoded), open_store(faces)
        fps = float(fac.attrs.get("fps") or 25.0)
        sr = int(dec.attrs["sample_rate"])
        rows = {}
        for r, split in zip(df.itertuples(index=False), map(stage_split, df["role"])):
            if r.clip_id not in fac or r.clip_id not in dec or np.isnan(r.offset_ms):
                continue
            audio = dec.read(r.clip_id, ["audio"])["audio"]
            crops = fac.read(r.clip_id, ["faces"])["faces"]
            tau = xcorr_offset(audio_energy(audio, sr, fps, len(crops)), mouth_motion(crops), max_shift)
            rows[r.clip_id] = (str(split), float(r.offset_ms), tau * 1000.0 / fps)
        frame_ms = 1000.0 / fps

        def summary(split):
            picked = [(gt, est) for s, gt, est in rows.values() if split in (None, s)]
            return offset_errors([g for g, _ in picked], [e for _, e in picked], frame_ms)

        result = {"corpus": corpus_of(df["dataset"]), "method": "normalised cross-correlation of audio RMS energy "
                  "and mouth-region motion, argmax over [-K, K] frames, parabola-refined",
                  "max_shift_frames": max_shift, "test": summary("test"), "all": summary(None)}
    atomic_write_json(Path(out), result)
    log.info("sync-baseline: %s", result.get("test"))
    return result
