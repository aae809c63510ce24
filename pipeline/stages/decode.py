"""`esva decode`: manifest -> data/interim/decoded.zarr (16 kHz mono audio, RGB frames at decode.fps)."""

from __future__ import annotations

from pathlib import Path

from esva import __version__
from esva.config import DecodeConfig, config_hash
from esva.data.manifest import corpus_of, manifest_fingerprint, read_manifest, video_file
from esva.media.decode import decode_clip
from esva.media.ffmpeg import MediaError, ffmpeg_binary
from esva.store import FieldSpec, RaggedWriter
from esva.store import open as open_store
from pipeline.common import Rate, StageReport, log, ordered_map, progress

FIELDS = {
    "audio": FieldSpec("float32", inner=(), chunk_rows=1 << 20, shard_chunks=16),
    "frames": FieldSpec("uint8", inner=None, chunk_rows=1 << 22, shard_chunks=16),
}
OUTPUT_KEYS = ("fps", "sample_rate", "max_side", "min_seconds", "max_seconds", "require_audio", "require_video")


def fingerprint(cfg: DecodeConfig, manifest_fp: str) -> str:
    return config_hash({k: getattr(cfg, k) for k in OUTPUT_KEYS}, manifest_fp)


def run(cfg: DecodeConfig, manifest: Path, out: Path, metrics_dir: Path | None = Path("metrics")) -> StageReport:
    df = read_manifest(manifest)
    corpus = corpus_of(df["dataset"])
    report = StageReport("decode", corpus=corpus, clips_in=len(df))
    fp = fingerprint(cfg, manifest_fingerprint(df))
    attrs = {"stage": "decode", "corpus": corpus, "fps": cfg.fps, "sample_rate": cfg.sample_rate,
             "max_side": cfg.max_side, "audio_dtype": "float32", "frames_dtype": "uint8", "frames_layout": "NHWC RGB",
             "params": cfg.model_dump(mode="json"), "params_hash": config_hash(cfg), "code_version": __version__,
             "ffmpeg": ffmpeg_binary(), "manifest": str(manifest)}
    with RaggedWriter(out, FIELDS, attrs, fp) as writer:
        done = writer.done_ids()
        report.resumed = len(done & set(df["clip_id"]))
        todo = [r for r in df.to_dict("records") if r["clip_id"] not in done]
        if report.resumed:
            log.info("decode: resuming, %d of %d clips already in %s", report.resumed, len(df), out)
        rate = Rate()
        with progress("decode") as bar:
            task = bar.add_task("decode", total=len(df), completed=report.resumed, rate="0.00")
            for row, res in ordered_map(lambda r: decode_clip(str(video_file(r)), cfg), todo, cfg.workers):
                path = str(video_file(row))
                if isinstance(res, MediaError):
                    report.skip(row["clip_id"], path, res.reason, res.detail)
                elif isinstance(res, BaseException):
                    report.skip(row["clip_id"], path, "decode_error", f"{res.__class__.__name__}: {res}")
                else:
                    meta = {**res.meta, "video_path": str(row["video_path"]), "dataset": str(row["dataset"])}
                    writer.add(row["clip_id"], {"audio": res.audio, "frames": res.frames}, meta)
                    report.done += 1
                    for note in res.meta["notes"]:
                        log.warning("%s: %s", path, note)
                bar.update(task, advance=1, rate=rate.tick())
        report.done += report.resumed
        writer.update_attrs(skipped={s["clip_id"]: s["reason"] for s in report.skips})
    store = open_store(out)
    report.extra["truncated"] = sum(any("truncated" in n for n in store.meta(c)["notes"]) for c in store.ids())
    report.extra["frames"] = int(sum(store.meta(c)["n_frames"] for c in store.ids()))
    report.extra["audio_seconds"] = round(sum(store.meta(c)["n_samples"] for c in store.ids()) / cfg.sample_rate, 1)
    if metrics_dir is not None:
        report.write(metrics_dir)
    report.check(cfg.max_skip_ratio)
    return report
