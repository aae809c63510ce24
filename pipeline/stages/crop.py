"""`esva crop`: decoded.zarr -> data/interim/faces.zarr (aligned face crops, boxes, detection flags)."""

from __future__ import annotations

import threading
from pathlib import Path

from esva import __version__
from esva.config import CropConfig, config_hash
from esva.provenance import clip_digest, code_digest
from esva.media.faces import NoFace, crop_clip, make_detector
from esva.store import FieldSpec, RaggedWriter
from esva.store.ragged import MEDIA_FLUSH_BYTES
from esva.train.stream import bound_heap
from esva.store import open as open_store
from pipeline.common import Rate, StageReport, log, ordered_map, progress

PARAMS = ("crop",)  # the params keys this stage reads (pipeline/deps.py; dvc.yaml lists exactly these)

OUTPUT_KEYS = ("size", "margin", "smooth", "detect_every", "min_face_ratio", "skip_if_no_face")
PRODUCER = ("esva.media.faces",)  # the code that computes a clip's crops (the stage's own glue below too)


def fields(cfg: CropConfig) -> dict[str, FieldSpec]:
    return {
        "faces": FieldSpec("uint8", inner=(cfg.size, cfg.size, 3), chunk_rows=32, shard_chunks=16),
        "boxes": FieldSpec("float32", inner=(4,), chunk_rows=1 << 14, shard_chunks=8),
        "detected": FieldSpec("uint8", inner=(), chunk_rows=1 << 16, shard_chunks=8),
    }


def recipe(cfg: CropConfig, backend: str) -> str:
    """The store-wide part of every clip's digest: output params, detector backend, producing code."""
    return config_hash("crop", {k: getattr(cfg, k) for k in OUTPUT_KEYS}, backend, code_digest((*PRODUCER, __name__)))


def store_attrs(cfg: CropConfig, backend: str, corpus: str, fps, decoded: Path) -> dict:
    return {"stage": "crop", "corpus": corpus, "backend": backend, "size": cfg.size, "margin": cfg.margin,
            "fps": fps, "layout": "NHWC RGB", "params": cfg.model_dump(mode="json"),
            "params_hash": config_hash(cfg), "code_version": __version__,
            "code_digest": code_digest((*PRODUCER, __name__)), "decoded": str(decoded),
            "no_face_policy": "nearest earlier box, else nearest later box, else centre crop",
            "detect_every": cfg.detect_every,
            "tracking": "detector on every detect_every-th frame and the last; boxes linearly interpolated between "
                        "two keyframes with a face (IoU >= 0.5), else per-frame detection between them"}


def run(cfg: CropConfig, decoded: Path, out: Path, metrics_dir: Path | None = Path("metrics")) -> StageReport:
    src = open_store(decoded)
    corpus = src.attrs.get("corpus", "unknown")
    report = StageReport("crop", corpus=corpus, clips_in=len(src))
    probe_det = make_detector(cfg.backend, cfg.device)  # fails early, before any clip, if unusable
    backend = probe_det.name
    fp = recipe(cfg, backend)
    # a clip's digest: this recipe and the decoded clip's own digest (so a changed video reaches its crops)
    digests = {c: clip_digest(recipe=fp, input=src.digest(c)) for c in src.ids()}
    attrs = store_attrs(cfg, backend, corpus, src.attrs.get("fps"), decoded)
    local = threading.local()
    workers = 1 if backend == "face_alignment" else cfg.workers

    def detector():
        if not hasattr(local, "det"):
            local.det = make_detector(backend, cfg.device)
        return local.det

    def one(cid: str):
        return crop_clip(detector(), src.read(cid, ["frames"])["frames"], cfg, src.meta(cid).get("fps"))

    bound_heap()  # as decode: per-clip frame arrays mapped and given back
    with RaggedWriter(out, fields(cfg), attrs, fp, digests=digests, flush_bytes=MEDIA_FLUSH_BYTES) as writer:
        todo = writer.todo()
        report.resumed = len(writer.reused)
        skips: dict[str, dict] = {}
        rate = Rate()
        with progress("crop") as bar:
            task = bar.add_task("crop", total=len(digests), completed=report.resumed, rate="0.00")
            fresh = []
            for cid in todo:
                known = writer.known_skip(cid)
                if known:  # the same decoded clip had no usable face before: report it again, do not retry
                    report.skip(cid, str(src.meta(cid).get("video_path", cid)), known["reason"], known.get("detail", ""))
                    skips[cid] = known
                    bar.update(task, advance=1)
                else:
                    fresh.append(cid)
            for cid, res in ordered_map(one, fresh, workers):
                path = str(src.meta(cid).get("video_path", cid))
                if isinstance(res, NoFace):
                    report.skip(cid, path, res.reason, res.detail)
                    skips[cid] = {"reason": res.reason, "detail": res.detail}
                elif isinstance(res, BaseException):
                    detail = f"{res.__class__.__name__}: {res}"
                    report.skip(cid, path, "crop_error", detail)
                    skips[cid] = {"reason": "crop_error", "detail": detail}
                else:
                    crops, boxes, detected, meta = res
                    writer.add(cid, {"faces": crops, "boxes": boxes, "detected": detected}, meta)
                bar.update(task, advance=1, rate=rate.tick())
        writer.record_skips(skips)
        report.extra["clips"] = writer.counts()
    store = open_store(out)
    report.done = len(store)
    log.info("crop: %s", report.extra["clips"])
    metas = [store.meta(c) for c in store.ids()]
    frames = sum(m["n_frames"] for m in metas)
    det = sum(m["detected"] for m in metas)
    report.extra.update({
        "backend": backend, "frames": frames, "frames_with_face": det,
        "face_detection_rate": round(det / frames, 4) if frames else 0.0,
        "frames_filled_from_neighbours": sum(m["filled"] for m in metas) - sum(m["n_frames"] for m in metas if m["centre_crop"]),
        "clips_centre_cropped": sum(bool(m["centre_crop"]) for m in metas),
        "detect_every": cfg.detect_every,
        "frames_interpolated": sum(int(m.get("interpolated", 0)) for m in metas),
    })
    log.info("crop: face detection rate %.3f over %d frames (%s)", report.extra["face_detection_rate"], frames, backend)
    if metrics_dir is not None:
        report.write(metrics_dir)
    report.check(cfg.max_skip_ratio)
    return report
