"""`esva featurize`: raw videos to the decoded, face and feature stores in one pass.

Worker processes (`esva.media.worker`) decode each clip and crop its faces (the CPU work of `esva decode`
and `esva crop`); their results come back in manifest order through a bounded window (at most
`2 x workers` clips in flight). A loader thread writes the decoded and face stores as they arrive and hands the audio and the crops on
through a bounded queue to the encoders, which run in this process (on the GPU when configured) while
the workers decode the next clips; a writer thread writes the feature stores (`esva.encoders.engine.
run_streamed`). So the accelerator computes while the CPUs decode, where the DVC stages run one after
the other.

The stores are those of the stage commands: same fields, attrs, recipes and per-clip digests, and the
decoded and face stores equal clip for clip. The features equal those of `esva extract` up to float
rounding (the batches are packed from the clips that have arrived, not from the whole corpus). Hence
`esva decode`, `esva crop` and `esva extract` (or `dvc repro`) after `esva featurize` find every clip done
and recompute nothing. A clip that any of the stores lacks is decoded (and cropped) again from its
video, so an interrupted run resumes: the clips already in every store are not touched.

Skips are those of the stages (a video ffmpeg cannot use, a clip without a usable face, an input too
short for an encoder), recorded in each store; each stage's max_skip_ratio applies. The report,
metrics/featurize.json, has each stage's report and where the time went (worker seconds against the
wall: above 1.0 the stages overlapped).
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from esva.data.manifest import corpus_of, read_manifest, video_file
from esva.encoders import REGISTRY
from esva.encoders.engine import Job, Skip, run_streamed
from esva.media import worker
from esva.media.worker import WorkerFailed
from esva.provenance import atomic_write_json, clip_digest
from esva.store import RaggedWriter, StoreError
from esva.store.ragged import MEDIA_FLUSH_BYTES
from esva.train.stream import bound_heap
from pipeline.common import Rate, StageFailed, StageReport, log, ordered_map, progress
from pipeline.stages import crop as crop_stage
from pipeline.stages import decode as decode_stage
from pipeline.stages import extract as extract_stage

ENCODERS = ("hubert", "mae", "videomae", "eva")  # the encoders of decoded media (text reads the manifest)
PARAMS = ("decode", "crop", "features", "compute")


def run(params, encoders: list[str], manifest: Path = Path("data/manifest.parquet"),
        decoded: Path = Path("data/interim/decoded.zarr"), faces: Path = Path("data/interim/faces.zarr"),
        features: Path = Path("data/features"), models_dir: Path = Path("data/models/encoders"),
        metrics_dir: Path | None = Path("metrics"), workers: int | None = None) -> dict:
    """Decode, crop and extract `encoders` (a subset of hubert, mae, videomae, eva) in one pass.
    `workers`: decode-and-crop processes (default: the larger of decode.workers and crop.workers)."""
    bad = [e for e in encoders if e not in ENCODERS] or (["(none)"] if not encoders else [])
    if bad or len(set(encoders)) != len(encoders):
        raise ValueError(f"esva featurize takes distinct encoders of {list(ENCODERS)} (text: `esva extract text`), "
                         f"got {encoders}")
    dcfg, ccfg = params.decode, params.crop
    workers = workers or max(dcfg.workers, ccfg.workers)
    started = time.perf_counter()
    df = read_manifest(manifest)
    unused = int((df["role"] == "unused").sum())
    df = df[df["role"] != "unused"]  # as decode: no stage reads them
    corpus = corpus_of(df["dataset"])
    rows = {r["clip_id"]: r for r in df.to_dict("records")}
    if "hubert" in encoders:
        rate = REGISTRY["hubert"].module.SAMPLE_RATE
        if dcfg.sample_rate != rate:
            raise StoreError(f"decode.sample_rate is {dcfg.sample_rate} Hz; HuBERT needs {rate} Hz "
                             f"(set decode.sample_rate: {rate})")

    # every store's recipe and per-clip digests, as its stage computes them, before any clip is decoded
    dec_digests = decode_stage.clip_digests(dcfg, rows)
    backend = crop_stage.make_detector(ccfg.backend, ccfg.device).name  # fails early if unusable
    crop_fp = crop_stage.recipe(ccfg, backend)
    crop_digests = {c: clip_digest(recipe=crop_fp, input=d) for c, d in dec_digests.items()}
    runs = []
    for name in encoders:
        audio = REGISTRY[name].modality == "audio"
        inputs = dec_digests if audio else crop_digests
        read = (corpus, {c: 1 for c in rows}, inputs, float(dcfg.sample_rate if audio else dcfg.fps), None)
        runs.append(extract_stage._setup(name, getattr(params.features, name), features / f"{name}.zarr", decoded,
                                         faces, manifest, models_dir, None, None, read))
    dec_report = StageReport("decode", corpus=corpus, clips_in=len(rows))
    dec_report.extra["unused_not_decoded"] = unused
    crop_report = StageReport("crop", corpus=corpus)
    gpu = extract_stage.GpuUtilisation(runs[0].encoder.device)
    worker_s = [0.0]
    bound_heap()
    with contextlib.ExitStack() as stack:
        dw = stack.enter_context(RaggedWriter(decoded, decode_stage.FIELDS, decode_stage.store_attrs(dcfg, corpus, manifest),
                                              decode_stage.recipe(dcfg), digests=dec_digests,
                                              flush_bytes=MEDIA_FLUSH_BYTES))
        fw = stack.enter_context(RaggedWriter(faces, crop_stage.fields(ccfg),
                                              crop_stage.store_attrs(ccfg, backend, corpus, dcfg.fps, decoded),
                                              crop_fp, digests=crop_digests, flush_bytes=MEDIA_FLUSH_BYTES))
        writers = [stack.enter_context(extract_stage._writer(r)) for r in runs]
        dec_report.resumed, crop_report.resumed = len(dw.reused), len(fw.reused)
        dec_todo, crop_todo = set(dw.todo()), set(fw.todo())
        vision = [REGISTRY[r.name].modality == "faces" for r in runs]
        feat_todo, known_feat = [], []
        for w in writers:  # an input an encoder skipped before (too short): reported again, not decoded again
            known_feat.append({c: w.known_skip(c) for c in w.todo() if w.known_skip(c)})
            feat_todo.append({c for c in w.todo() if c not in known_feat[-1]})
        dec_skips: dict[str, dict] = {}
        crop_skips: dict[str, dict] = {}
        tasks = []
        for cid, row in rows.items():
            known = dw.known_skip(cid)
            if known:  # the same video failed before: reported again, not retried
                dec_report.skip(cid, str(video_file(row)), known["reason"], known.get("detail", ""))
                dec_skips[cid] = known
                continue
            known_crop = fw.known_skip(cid)
            if known_crop:
                crop_report.skip(cid, str(row["video_path"]), known_crop["reason"], known_crop.get("detail", ""))
                crop_skips[cid] = known_crop
            want_crop = not known_crop and (cid in crop_todo or any(v and cid in t for v, t in zip(vision, feat_todo)))
            if cid in dec_todo or want_crop or any(not v and cid in t for v, t in zip(vision, feat_todo)):
                tasks.append((cid, want_crop))
        for r, w in zip(runs, writers):
            r.report.resumed = len(w.reused)

        with progress("featurize") as bar:
            task = bar.add_task("featurize " + "+".join(encoders), total=len(rows),
                                completed=len(rows) - len(tasks), rate="0.00")
            tick = Rate()
            jobs = [Job(r.encoder, {c: 1 for c in t}, w, r.cfg.short_policy, timings=r.timings,
                        skips=[Skip(c, k["reason"], k.get("detail", "")) for c, k in known.items()])
                    for r, w, t, known in zip(runs, writers, feat_todo, known_feat)]

            def stream():
                ctx = get_context("spawn")  # no fork of a process that runs torch threads
                d_plain, c_plain = worker.plain(dcfg), worker.plain(ccfg)
                with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=worker.init) as pool:
                    args = [(str(video_file(rows[c])), d_plain, c_plain, backend, want) for c, want in tasks]
                    done = ordered_map(worker.decode_and_crop, args, workers, executor=pool)
                    for (cid, _), (_, res) in zip(tasks, done):
                        bar.update(task, advance=1, rate=tick.tick())
                        row = rows[cid]
                        if isinstance(res, BaseException):
                            # the worker catches every failure of the clip itself, so this is the process (killed,
                            # out of memory, a result that would not pickle): not the video's fault, so not a skip
                            # that a rerun would trust; the run stops, and a rerun resumes from what was committed
                            raise WorkerFailed(f"featurize: the worker process decoding {video_file(row)} failed "
                                               f"({res.__class__.__name__}: {res}); nothing was recorded for this "
                                               f"clip, and the clips finished before it are kept: run again to resume")
                        worker_s[0] += res["seconds"]
                        if res["decode_skip"] is not None:
                            reason, detail = res["decode_skip"]
                            dec_report.skip(cid, str(video_file(row)), reason, detail)
                            dec_skips[cid] = {"reason": reason, "detail": detail}
                            continue
                        dec = res["decoded"]
                        if cid in dec_todo:
                            dw.add(cid, {"audio": dec.audio, "frames": dec.frames}, decode_stage.clip_meta(dec, row))
                            for note in dec.meta["notes"]:
                                log.warning("%s: %s", video_file(row), note)
                        crops = None
                        if res["crop_skip"] is not None:
                            reason, detail = res["crop_skip"]
                            crop_report.skip(cid, str(row["video_path"]), reason, detail)
                            crop_skips[cid] = {"reason": reason, "detail": detail}
                        elif res["crop"] is not None:
                            crops, boxes, detected, meta = res["crop"]
                            if cid in crop_todo:
                                fw.add(cid, {"faces": crops, "boxes": boxes, "detected": detected}, meta)
                        yield cid, {"audio": dec.audio, "faces": crops}

            clips = stream()
            try:
                with gpu:
                    run_streamed(jobs, clips)
            finally:
                clips.close()  # the loader thread has stopped: the pool shuts down here, also after an error
        dw.record_skips(dec_skips)
        fw.record_skips(crop_skips)
        dec_report.extra["clips"], crop_report.extra["clips"] = dw.counts(), fw.counts()
        for r, w, job in zip(runs, writers, jobs):
            extract_stage._close(r, w, job.skips)
    dec_report.done = len(decode_stage.open_store(decoded))
    crop_report.clips_in = dec_report.done
    crop_report.done = len(decode_stage.open_store(faces))
    reports, failed = [dec_report, crop_report], []
    for r, v in zip(runs, vision):
        # as `esva extract`: the clips in its input store (the vision encoders see the clips that have faces)
        r.report.clips_in = crop_report.done if v else dec_report.done
        try:
            reports.append(extract_stage._finish(r, None, gpu))
        except StageFailed as exc:
            failed.append(exc)
    wall = time.perf_counter() - started
    forward = sum(r.timings.forward_s for r in runs)
    result = {
        "stage": "featurize", "corpus": corpus, "encoders": list(encoders), "workers": workers,
        "clips_in": len(rows), "clips_processed": len(tasks),
        "done": min(len(decode_stage.open_store(r.out)) for r in runs),  # clips with every asked-for encoder's features
        "seconds": round(wall, 2),
        "worker_seconds": round(worker_s[0], 2), "encoder_forward_seconds": round(forward, 2),
        # above 1.0: decode/crop and the encoders ran at the same time (the sum of their busy seconds over the wall)
        "overlap": round((worker_s[0] + forward) / wall, 3) if wall else 0.0,
        "gpu_utilisation": gpu.summary(),
        "stages": {rep.stage: rep.as_dict() for rep in reports},
    }
    if metrics_dir is not None:
        atomic_write_json(Path(metrics_dir) / "featurize.json", result)
    log.info("featurize: %d clips (%d processed) in %.1f s; workers busy %.1f s, encoders %.1f s",
             len(rows), len(tasks), wall, worker_s[0], forward)
    dec_report.check(dcfg.max_skip_ratio)
    crop_report.check(ccfg.max_skip_ratio)
    if failed:
        raise failed[0]
    return result
