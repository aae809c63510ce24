"""`esva sync-baseline`: the alignment evaluation's reference rows -> metrics/alignment_reference.json.

No learning: `test` (and `all`) is the primary reference, the cross-correlation of audio energy with mouth
*opening*; `rows` puts it beside predict-zero, the oracle and the motion cross-correlation on the same test
clips (`rows_all`: on every clip with a ground-truth offset). See esva/eval/sync.py for the measures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from esva.data.roles import stage_split
from esva.provenance import atomic_write_json
from esva.data.manifest import corpus_of, read_manifest
from esva.eval.sync import MOUTH_BOX, offset_errors, reference_estimates
from esva.store import open as open_store
from pipeline.common import log

PARAMS = ("align.max_shift",)  # the params keys this stage reads (pipeline/deps.py; dvc.yaml lists exactly these)

ROWS = ("predict_zero", "oracle", "xcorr_opening", "xcorr_motion")
METHODS = {
    "predict_zero": "estimate 0 ms for every clip (error = mean |offset|)",
    "oracle": "the true offset (error 0): the table's lower bound",
    "xcorr_opening": "normalised cross-correlation of audio RMS energy (one frame's window centred on each video "
                     "frame) and mouth opening (darkness of the mouth region of the face crop relative to the "
                     f"clip's median, rows/cols {list(MOUTH_BOX)} of the crop, robust z-score), argmax over "
                     "[-K, K] frames, parabola-refined",
    "xcorr_motion": "the previous reference, unchanged: audio RMS energy (windows [i, i+1) frames) against "
                    "mouth-region motion (mean absolute difference of consecutive crops); motion follows the "
                    "opening's derivative, so its peak sits off the true offset",
}


def run(max_shift: int, decoded: Path, faces: Path, manifest: Path, out: Path) -> dict:
    df = read_manifest(manifest)
    if "offset_ms" not in df.columns or df["offset_ms"].isna().all():
        result = {"corpus": corpus_of(df["dataset"]), "note": "no ground-truth offsets in the manifest", "test": None}
    else:
        dec, fac = open_store(decoded), open_store(faces)
        fps = float(fac.attrs.get("fps") or 25.0)
        sr = int(dec.attrs["sample_rate"])
        rows = []  # (split, truth ms, {row: estimate ms})
        for r, split in zip(df.itertuples(index=False), map(stage_split, df["role"])):
            if r.clip_id not in fac or r.clip_id not in dec or np.isnan(r.offset_ms):
                continue
            audio = dec.read(r.clip_id, ["audio"])["audio"]
            crops = fac.read(r.clip_id, ["faces"])["faces"]
            est = reference_estimates(audio, sr, fps, crops, max_shift)
            est["oracle"] = float(r.offset_ms)
            rows.append((str(split), float(r.offset_ms), est))
        frame_ms = 1000.0 / fps

        def summary(split, row="xcorr_opening"):
            picked = [(gt, est[row]) for s, gt, est in rows if split in (None, s)]
            return offset_errors([g for g, _ in picked], [e for _, e in picked], frame_ms)

        result = {"corpus": corpus_of(df["dataset"]), "method": METHODS["xcorr_opening"],
                  "max_shift_frames": max_shift, "test": summary("test"), "all": summary(None),
                  "rows": {k: summary("test", k) for k in ROWS}, "rows_all": {k: summary(None, k) for k in ROWS},
                  "row_methods": METHODS}
    atomic_write_json(Path(out), result)
    log.info("sync-baseline: %s", result.get("test"))
    return result
