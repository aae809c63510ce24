"""`esva synth`: generate the embedded synthetic corpus."""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from esva import __version__
from esva.config import SynthConfig, config_hash
from esva.data.synthetic import _worker, clip_jobs, gt_columns, ov_to_mer2024
from pipeline.common import Rate, StageReport, log, ordered_map, progress

PARAMS = ("synth",)  # the params keys this stage reads (pipeline/deps.py; dvc.yaml lists exactly these)

LABEL_COLUMNS = ["name", "split", "discrete", "valence", "transcript", "reason", "openset"]


def run(cfg: SynthConfig, out: Path, metrics_dir: Path | None = Path("metrics")) -> StageReport:
    out = Path(out)
    videos = out / "videos"
    if videos.exists():
        shutil.rmtree(videos)
    videos.mkdir(parents=True)
    report = StageReport("synth", corpus="synthetic")
    jobs = clip_jobs(cfg, str(out))
    report.clips_in = len(jobs)
    rows: list[dict] = []
    executor = None
    if cfg.workers > 1:
        executor = ProcessPoolExecutor(max_workers=cfg.workers, mp_context=mp.get_context("spawn"))
    try:
        rate = Rate()
        with progress("synth") as bar:
            task = bar.add_task("synth", total=len(jobs), rate="0.00")
            mapper = ordered_map(_worker, jobs, cfg.workers, executor=executor) if executor else (
                (j, _safe(_worker, j)) for j in jobs)
            for job, res in mapper:
                if isinstance(res, BaseException):
                    report.skip(f"syn_{job[0]:05d}", str(videos / f"syn_{job[0]:05d}.mp4"), "generation_error", repr(res))
                else:
                    rows.append(res)
                    report.done += 1
                bar.update(task, advance=1, rate=rate.tick())
    finally:
        if executor:
            executor.shutdown(wait=True, cancel_futures=True)
    with (out / "labels.csv").open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=LABEL_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({"name": r["clip_id"], "split": r["split"], "discrete": r["label"], "valence": r["valence"],
                        "transcript": r["transcript"], "reason": r["reason"],
                        "openset": ov_to_mer2024(json.loads(r["ov_labels"]))})
    with (out / "ground_truth.csv").open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=gt_columns())
        w.writeheader()
        w.writerows(rows)
    with (out / "synth.json").open("w", encoding="utf-8") as fh:
        json.dump({"corpus": "synthetic", "params": cfg.model_dump(mode="json"), "params_hash": config_hash(cfg),
                   "code_version": __version__, "clips": len(rows),
                   "offset_convention": "offset_ms > 0: the video lags the audio"}, fh, indent=2)
    report.extra["clips_per_label"] = {lab: sum(r["label"] == lab for r in rows) for lab in sorted({r["label"] for r in rows})}
    if metrics_dir is not None:
        report.write(metrics_dir)
    log.info("synth: %d clips in %s", len(rows), out)
    report.check(0.0)
    return report


def _safe(fn, arg):
    try:
        return fn(arg)
    except Exception as exc:  # recorded as a skip
        return exc
