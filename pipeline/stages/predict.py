"""`esva predict VIDEO...`: the whole chain on raw videos that are in no manifest.

decode -> crop -> extract (every encoder stage 1 and stage 2 read) -> stage 1 (fused, audio-only and
video-only probabilities, the audio-video offset) -> stage 2 (label, explanation, open-vocabulary
labels). The stages are the pipeline's own run() functions, with the pipeline's params, writing into a
temporary folder (or `--keep DIR`). A file that cannot be used (missing, no audio, no video, no
face, unreadable) gets its own message; the other files still get their answers.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from esva.config import ConfigError, Params
from esva.data.instructions import Instruction, clip_phrasing, instruction_labels, instruction_text, parse_label, parse_ov
from esva.data.manifest import safe_id, to_frame, write_manifest
from esva.models.projector import EXTRA, NEEDS
from esva.train.stage1 import load_features
from esva.train.stage1 import predict as stage1_predict
from esva.train.stage2 import ANSWER_TOKENS, check_dims, load
from pipeline.stages import crop, decode, extract

REASONS = {
    "no_audio_stream": "the file has no audio stream (the model needs the voice)",
    "no_video_stream": "the file has no video stream",
    "no_face": "no face was found in any frame",
    "empty_file": "the file is empty",
    "unreadable": "ffmpeg cannot read the file",
    "too_short": "the clip is too short",
    "empty_input": "nothing to encode",
}


def parse_transcripts(items: list[str] | None, videos: list[Path]) -> dict[str, str]:
    """`FILE=TEXT` pairs (FILE as given on the command line, or its file name), or one bare TEXT when
    there is a single video."""
    out: dict[str, str] = {}
    names = {str(v): str(v) for v in videos} | {Path(v).name: str(v) for v in videos}
    for item in items or []:
        key, sep, text = item.partition("=")
        if sep and key in names:
            out[names[key]] = text
        elif len(videos) == 1:
            out[str(videos[0])] = item
        else:
            raise ConfigError(f"--transcript {item!r}: give FILE=TEXT with FILE one of {sorted(set(names))}")
    return out


def check_features(p: Params, trained: dict, names) -> None:
    """The encoders must be configured as they were when stage 2 was trained."""
    for n in names:
        want = trained.get(n)
        if want is None:
            continue
        have = extract.output_params(getattr(p.features, n).model_dump(mode="json"))
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        if diff:
            raise ConfigError(f"features.{n} differs from the config the models were trained with at keys {diff} "
                              f"(trained: { {k: want.get(k) for k in diff} }, now: { {k: have.get(k) for k in diff} })")


def run(p: Params, videos: list[Path], model_dir: Path, lm_dir: Path, encoders_dir: Path,
        transcripts: dict[str, str] | None = None, workdir: Path | None = None) -> list[dict]:
    transcripts = transcripts or {}
    m = load(model_dir, lm_dir, p.tune.device, cache_mb=p.tune.feature_cache_mb)  # a missing or mismatched model is an error before any video is touched
    names = tuple(dict.fromkeys(tuple(m.stage1.use) + NEEDS))
    labels = tuple(m.stage1.labels)  # the classes the models were trained on
    check_features(p, m.config.get("features", {}), names)
    results: list[dict] = []
    rows, seen = [], set()
    for v in videos:
        v = Path(v)
        cid = safe_id(v.stem)
        while cid in seen:
            cid = f"{cid}_"
        seen.add(cid)
        res = {"file": str(v), "clip_id": cid}
        results.append(res)
        if not v.is_file():
            res["error"] = f"{v}: file not found"
            continue
        real = v.resolve()  # the user named this file: its own folder is its root
        rows.append({"clip_id": cid, "video_path": real.name, "root": str(real.parent), "split": "predict", "role": "predict", "label": None,
                     "transcript": transcripts.get(str(v), ""), "dataset": "predict"})
    if not rows:
        return results
    with tempfile.TemporaryDirectory(prefix="esva-predict-") as tmp:
        work = Path(workdir) if workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        metrics = work / "metrics"
        df = to_frame(rows)
        write_manifest(df, work / "manifest.parquet")
        _check_tiny_encoders(p, names, Path(encoders_dir))
        lenient = {"max_skip_ratio": 1.0}
        reports = [decode.run(p.decode.model_copy(update=lenient), work / "manifest.parquet", work / "decoded.zarr",
                              metrics),
                   crop.run(p.crop.model_copy(update=lenient), work / "decoded.zarr", work / "faces.zarr", metrics)]
        for n in names:  # the pipeline's encoder folders are read, never written: provenance goes to the work folder
            reports.append(extract.run(n, getattr(p.features, n).model_copy(update=lenient), work / "features" / f"{n}.zarr",
                                       decoded=work / "decoded.zarr", faces=work / "faces.zarr",
                                       manifest=work / "manifest.parquet", models_dir=encoders_dir, metrics_dir=metrics,
                                       provenance_dir=work / "provenance" / n))
        problems: dict[str, tuple[str, str, str]] = {}  # clip id -> the first stage that skipped it, and why
        for rep in reports:
            for sk in rep.skips:
                problems.setdefault(sk["clip_id"], (rep.stage, sk["reason"], sk["detail"]))
        data = load_features(df, {n: work / "features" / f"{n}.zarr" for n in names}, names, labelled_only=False, extra=EXTRA,
                             labels=labels)
        clips = data.clips
        answers: dict[str, dict[str, str]] = {c.clip_id: {} for c in clips}
        s1 = {}
        if clips:
            check_dims(m, data)
            s1 = stage1_predict(m.stage1, clips, m.stage1.use, p.evaluate.batch_size, m.device)
            said = dict(zip(df["clip_id"], df["transcript"]))
            for task in ("emotion", "reason", "ov"):
                samples = [Instruction(c.clip_id, task, said[c.clip_id],
                                       instruction_text(task, clip_phrasing(c.clip_id), instruction_labels(labels)))
                           for c in clips]
                for c, a in zip(clips, m.generate(clips, samples, p.evaluate.batch_size, ANSWER_TOKENS.get(task))):
                    answers[c.clip_id][task] = a
    index = {c.clip_id: i for i, c in enumerate(clips)}
    rate = float(m.stage1.align_rate)
    for res in results:
        cid = res["clip_id"]
        if "error" in res:
            continue
        if cid not in index:
            stage, reason, detail = problems.get(cid, ("", "missing_features", ""))
            res["error"] = f"{res['file']}: {REASONS.get(reason, reason)}" + (f" ({detail})" if detail else "") + \
                (f" [{stage}]" if stage else "")
            continue
        i, a = index[cid], answers[cid]
        label = parse_label(a["emotion"], labels)
        res.update({
            "label": label, "answer": a["emotion"], "parsed": label is not None,
            "explanation": a["reason"], "ov_labels": parse_ov(a["ov"]),
            "evidence": {
                "stage1_label": labels[int(s1["probs"][i].argmax())],
                "fused": _probs(s1["probs"][i], labels),
                "audio_only": _probs(s1["audio_probs"][i], labels) if "audio_probs" in s1 else None,
                "video_only": _probs(s1["video_probs"][i], labels) if "video_probs" in s1 else None,
                "offset_ms": round(float(s1["tau_frames"][i]) * 1000.0 / rate, 1) if "tau_frames" in s1 else None,
                "offset_convention": "> 0: the video lags the audio",
            },
            "transcript": transcripts.get(res["file"], ""),
        })
    return results


def _check_tiny_encoders(p: Params, names, encoders_dir: Path) -> None:
    """Tiny encoders must be the very weights the models were trained on: missing ones are an error, never
    rebuilt (a rebuild would also write into the pipeline's DVC-tracked folder)."""
    for n in names:
        src = encoders_dir / n
        if getattr(p.features, n).checkpoint == "tiny" and not (src / "esva_tiny.json").exists():
            raise ConfigError(f"{src}: the tiny {n} encoder the models were trained with is missing "
                              f"(run `dvc repro` or pass --encoders)")


def _probs(p, labels) -> dict[str, float]:
    return {lab: round(float(x), 4) for lab, x in zip(labels, p)}


def show(results: list[dict], console) -> None:
    from rich.table import Table

    for r in results:
        if r.get("error"):
            console.print(f"[bold red]{r['file']}[/]: {r['error'].removeprefix(r['file'] + ': ')}", highlight=False)
            continue
        ev = r["evidence"]
        label = r["label"] or f"(unparseable answer: {r['answer']!r})"
        console.print(f"[bold]{r['file']}[/]: [bold green]{label}[/]", highlight=False)
        console.print(f"  explanation: {r['explanation']}", highlight=False)
        if r["ov_labels"]:
            console.print(f"  open-vocabulary: {', '.join(r['ov_labels'])}", highlight=False)
        labels = list(ev["fused"])  # the model's classes
        t = Table("evidence", *labels, show_edge=False)
        for name in ("fused", "audio_only", "video_only"):
            if ev.get(name):
                t.add_row(name.replace("_", "-"), *[f"{ev[name][lab]:.2f}" for lab in labels])
        console.print(t)
        if ev.get("offset_ms") is not None:
            console.print(f"  audio-video offset: {ev['offset_ms']:+.0f} ms ({ev['offset_convention']})", highlight=False)
