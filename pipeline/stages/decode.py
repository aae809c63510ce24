"""`esva decode`: manifest -> data/interim/decoded.zarr (16 kHz mono audio, RGB frames at decode.fps)."""

from __future__ import annotations

from pathlib import Path

from esva import __version__
from esva.config import DecodeConfig, config_hash
from esva.data.manifest import corpus_of, read_manifest, video_file
from esva.media.decode import decode_clip
from esva.media.ffmpeg import MediaError, ffmpeg_binary, ffmpeg_identity
from esva.provenance import clip_digest, code_digest, file_digest
from esva.store import FieldSpec, RaggedWriter
from esva.store.ragged import MEDIA_FLUSH_BYTES
from esva.train.stream import bound_heap
from esva.store import open as open_store
from pipeline.common import Rate, StageReport, log, ordered_map, progress

PARAMS = ("decode",)  # the params keys this stage reads (pipeline/deps.py; dvc.yaml lists exactly these)

FIELDS = {
    "audio": FieldSpec("float32", inner=(), chunk_rows=1 << 20, shard_chunks=16),
    "frames": FieldSpec("uint8", inner=None, chunk_rows=1 << 22, shard_chunks=16),
}
OUTPUT_KEYS = ("fps", "sample_rate", "max_side", "min_seconds", "max_seconds", "require_audio", "require_video")
PRODUCER = ("esva.media.decode", "esva.media.ffmpeg")  # the code that computes a decoded clip


def recipe(cfg: DecodeConfig) -> str:
    """The store-wide part of every clip's digest: output params, producing code, the ffmpeg binary."""
    return config_hash("decode", {k: getattr(cfg, k) for k in OUTPUT_KEYS}, code_digest(PRODUCER), ffmpeg_identity())


def input_digest(path: Path, mode: str) -> str:
    try:
        return file_digest(path, mode)
    except OSError as exc:  # the clip fails in decode with its own reason; the digest says it was unreadable
        return f"unreadable:{exc.__class__.__name__}"


def clip_digests(cfg: DecodeConfig, rows: dict[str, dict]) -> dict[str, str]:
    """Each manifest row's clip digest (the recipe and its video's content), hashed on `cfg.workers` threads."""
    fp = recipe(cfg)
    digests = {}
    with progress(f"decode: hashing inputs ({cfg.input_hash})") as bar:
        task = bar.add_task("hash", total=len(rows), rate="0.00")
        rate = Rate()
        for cid, d in ordered_map(lambda c: input_digest(video_file(rows[c]), cfg.input_hash), list(rows), cfg.workers):
            digests[cid] = clip_digest(recipe=fp, input=d)
            bar.update(task, advance=1, rate=rate.tick())
    return digests


def store_attrs(cfg: DecodeConfig, corpus: str, manifest: Path) -> dict:
    return {"stage": "decode", "corpus": corpus, "fps": cfg.fps, "sample_rate": cfg.sample_rate,
            "max_side": cfg.max_side, "audio_dtype": "float32", "frames_dtype": "uint8", "frames_layout": "NHWC RGB",
            "params": cfg.model_dump(mode="json"), "params_hash": config_hash(cfg), "code_version": __version__,
            "code_digest": code_digest(PRODUCER), "input_hash": cfg.input_hash,
            "ffmpeg": ffmpeg_binary(), "manifest": str(manifest)}


def clip_meta(res, row: dict) -> dict:
    """A decoded clip's meta in the store: the decoder's, where it came from, its dataset."""
    return {**res.meta, "video_path": str(row["video_path"]), "dataset": str(row["dataset"])}


def run(cfg: DecodeConfig, manifest: Path, out: Path, metrics_dir: Path | None = Path("metrics")) -> StageReport:
    df = read_manifest(manifest)
    unused = int((df["role"] == "unused").sum())
    df = df[df["role"] != "unused"]  # no stage reads them (esva.data.roles)
    corpus = corpus_of(df["dataset"])
    report = StageReport("decode", corpus=corpus, clips_in=len(df))
    report.extra["unused_not_decoded"] = unused
    rows = {r["clip_id"]: r for r in df.to_dict("records")}
    digests = clip_digests(cfg, rows)
    attrs = store_attrs(cfg, corpus, manifest)
    bound_heap()  # large per-clip arrays from worker threads: mapped and given back, not left as heap holes
    # commits every 64 MiB: a commit holds its block twice (concatenated, then encoded), so this bounds memory
    with RaggedWriter(out, FIELDS, attrs, recipe(cfg), digests=digests, flush_bytes=MEDIA_FLUSH_BYTES) as writer:
        todo = writer.todo()
        report.resumed = len(writer.reused)
        skips = {}
        with progress("decode") as bar:
            task = bar.add_task("decode", total=len(df), completed=report.resumed, rate="0.00")
            fresh = []
            for cid in todo:
                known = writer.known_skip(cid)
                if known:  # the same input failed before: report it again, do not retry
                    report.skip(cid, str(video_file(rows[cid])), known["reason"], known.get("detail", ""))
                    skips[cid] = known
                    bar.update(task, advance=1)
                else:
                    fresh.append(rows[cid])
            rate = Rate()
            for row, res in ordered_map(lambda r: decode_clip(str(video_file(r)), cfg), fresh, cfg.workers):
                path = str(video_file(row))
                if isinstance(res, MediaError):
                    report.skip(row["clip_id"], path, res.reason, res.detail)
                    skips[row["clip_id"]] = {"reason": res.reason, "detail": res.detail}
                elif isinstance(res, BaseException):
                    detail = f"{res.__class__.__name__}: {res}"
                    report.skip(row["clip_id"], path, "decode_error", detail)
                    skips[row["clip_id"]] = {"reason": "decode_error", "detail": detail}
                else:
                    writer.add(row["clip_id"], {"audio": res.audio, "frames": res.frames}, clip_meta(res, row))
                    for note in res.meta["notes"]:
                        log.warning("%s: %s", path, note)
                bar.update(task, advance=1, rate=rate.tick())
        writer.record_skips(skips)
        report.extra["clips"] = writer.counts()
    store = open_store(out)
    report.done = len(store)
    log.info("decode: %s", report.extra["clips"])
    report.extra["truncated"] = sum(any("truncated" in n for n in store.meta(c)["notes"]) for c in store.ids())
    report.extra["frames"] = int(sum(store.meta(c)["n_frames"] for c in store.ids()))
    report.extra["audio_seconds"] = round(sum(store.meta(c)["n_samples"] for c in store.ids()) / cfg.sample_rate, 1)
    if metrics_dir is not None:
        report.write(metrics_dir)
    report.check(cfg.max_skip_ratio)
    return report
