"""Benchmark: stage 2's per-epoch validation, the former way against `esva.train.stage2.validate`, side by side
in one process on the same model and validation clips.

- former: the answer loss over every validation sample (emotion and reason, teacher forced, in batches of
  tune.eval_batch_size), then greedy generation of every emotion answer (ANSWER_TOKENS["emotion"] tokens):
  two passes over every emotion prompt;
- current (`validate`): one pass over the emotion prompts gives both the greedy answers and the gold answers'
  loss (`greedy_generate_scored`: the answers are scored through the prompts' KV cache); the reason answers
  are scored as before.
Reported: seconds of each (median of --repeats, alternated), the ratio, one training epoch's seconds (forward
and backward of that epoch's samples, no update) and validation's share of an epoch both ways, and how the two
agree (identical answers, loss difference). Features, stage 1 and base LLM of a run (defaults: data/...),
or the tiny world the stage-2 tests build (`--tiny`). Writes metrics/bench_tune_validation.json.

    python -m benchmarks.tune_validation                 # after `make demo` (data/ present)
    python -m benchmarks.tune_validation --tiny          # a quick, self-contained run
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.report import cpu_name, write_result

from esva.data.instructions import eval_samples, instruction_labels, training_samples
from esva.train import stage2


def former(m: stage2.Stage2, by_id, emotion, others, batch_size: int, n_new: int) -> tuple[float, list[str]]:
    """The validation as it was: the loss over all samples, then generation of every emotion answer."""
    m.llm.eval()
    m.projector.eval()
    total, count = 0.0, 0
    samples = emotion + others
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            part = samples[i:i + batch_size]
            loss, n = m.loss([by_id[s.clip_id] for s in part], part, grad=False)
            total, count = total + float(loss) * n, count + n
    answers = m.generate([by_id[s.clip_id] for s in emotion], emotion, batch_size, n_new)
    return total / max(count, 1), answers


def train_epoch_seconds(m: stage2.Stage2, by_id, df, cfg, labels) -> float:
    """Forward and backward of one epoch's training samples (no optimizer step: the weights do not move)."""
    samples = training_samples(df, cfg.tasks, cfg.seed, 1, labels)
    m.llm.train()
    m.projector.train()
    t = time.perf_counter()
    for i in range(0, len(samples), cfg.batch_size):
        part = samples[i:i + cfg.batch_size]
        loss, _ = m.loss([by_id[s.clip_id] for s in part], part)
        loss.backward()
    for p in list(m.llm.parameters()) + list(m.projector.parameters()):
        p.grad = None
    return time.perf_counter() - t


def tiny_world(tmp: Path):
    from tests.models.test_stage2 import TUNE, _features, _lm, _manifest, _save_stage1

    df = _manifest(24)
    df.loc[df["split"] == "test", "split"] = "val"
    data = _features(df)
    return df, data, _save_stage1(tmp / "stage1"), _lm(tmp, df), TUNE


def run_world(features: Path, manifest: Path, stage1_dir: Path, lm_dir: Path, params: Path):
    from esva.config import load_params
    from esva.data.manifest import read_manifest
    from esva.models.projector import EXTRA, NEEDS
    from esva.train.stage1 import load_features

    p = load_params(params if params.exists() else None, [])
    df = read_manifest(manifest)
    data = load_features(df, {n: Path(features) / f"{n}.zarr" for n in NEEDS}, NEEDS, extra=EXTRA)
    return df, data, stage1_dir, lm_dir, p.tune


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="the stage-2 tests' tiny world instead of a run's outputs")
    ap.add_argument("--features", type=Path, default=Path("data/features"))
    ap.add_argument("--manifest", type=Path, default=Path("data/manifest.parquet"))
    ap.add_argument("--stage1", type=Path, default=Path("data/models/stage1"))
    ap.add_argument("--lm", type=Path, default=Path("data/models/llm"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("metrics/bench_tune_validation.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            df, data, stage1_dir, lm_dir, cfg = tiny_world(Path(tmp))
        else:
            df, data, stage1_dir, lm_dir, cfg = run_world(args.features, args.manifest, args.stage1, args.lm, args.params)
        torch.manual_seed(cfg.seed)
        m = stage2.build(stage1_dir, lm_dir, data, cfg)
        by_id = {c.clip_id: c for c in data.clips}
        labels = instruction_labels(tuple(data.labels))
        val_df = df[df["clip_id"].isin([c.clip_id for c in data.split("val")])]
        train_df = df[df["clip_id"].isin([c.clip_id for c in data.split("train")])]
        emotion = eval_samples(val_df, "emotion", labels)
        others = [s for s in eval_samples(val_df, "reason", labels) if s.target]
        n_new, bs = stage2.ANSWER_TOKENS["emotion"], cfg.eval_batch_size
        former(m, by_id, emotion, others, bs, n_new)  # warm: the stage-1 streams' cache, first calls
        old, new = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            loss_old, ans_old = former(m, by_id, emotion, others, bs, n_new)
            old.append(time.perf_counter() - t)
            t = time.perf_counter()
            loss_new, ans_new = stage2.validate(m, by_id, emotion, others, bs, n_new)
            new.append(time.perf_counter() - t)
        epoch = train_epoch_seconds(m, by_id, train_df, cfg, labels)
    mo, mn = statistics.median(old), statistics.median(new)
    result = {
        "cpu": cpu_name(), "machine": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "world": "tiny (tests)" if args.tiny else {"features": str(args.features), "stage1": str(args.stage1),
                                                   "lm": str(args.lm)},
        "val_samples": {"emotion": len(emotion), "reason": len(others)}, "eval_batch_size": bs, "answer_tokens": n_new,
        "former_seconds": [round(x, 3) for x in old], "current_seconds": [round(x, 3) for x in new],
        "speedup": round(mo / mn, 3), "train_epoch_seconds": round(epoch, 3),
        "validation_share_of_an_epoch": {"former": round(mo / (mo + epoch), 4), "current": round(mn / (mn + epoch), 4)},
        "agreement": {"identical_answers_share": sum(a == b for a, b in zip(ans_old, ans_new)) / max(len(ans_old), 1),
                      "val_loss_former": loss_old, "val_loss_current": loss_new,
                      "relative_loss_difference": abs(loss_old - loss_new) / max(abs(loss_old), 1e-12)},
        "note": "one process, alternated; the training epoch has no optimizer step (an estimate of its cost)",
        "target": "the current validation faster than the former (speedup > 1) with the same greedy answers",
        "meets_target": bool(mo / mn > 1.0 and all(a == b for a, b in zip(ans_old, ans_new))),
    }
    return write_result(result, args.out)


if __name__ == "__main__":
    main()
