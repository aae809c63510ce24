"""`esva evaluate`: generation on each configured evaluation split, scored as the benchmarks define it.

Writes metrics/mer2023.json (discrete labels), metrics/mer2024_ov.json (open vocabulary),
metrics/emer.json (explanations; offline proxies unless a judge is configured), each stating its
corpus and split; the predictions as parquet under data/predictions/; the MER confusion matrix as a
DVC plot (metrics/plots/confusion_mer2023.csv) and a PNG. With `--predictions FILE --task T`, scores an
existing predictions file (columns clip_id, answer) instead of generating.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from esva import ALL_LABELS, LABELS, __version__, label_set_of
from esva.config import EvalSplit, Params
from esva.data.instructions import eval_samples, instruction_labels, lenient_label, parse_label, parse_ov
from esva.data.manifest import corpus_of, read_manifest
from esva.eval.metrics import EvalError, clue_overlap_proxy, discrete_scores, label_overlap_proxy, match_ids, ov_scores
from esva.eval.official_ov import PerSampleGrouping, load_official, official_ov_scores
from esva.eval.stats import INVALID
from esva.eval.synonyms import load_grouping, offline
from esva.models.projector import EXTRA, NEEDS
from esva.train.stage1 import load_features
from esva.train.stage2 import ANSWER_TOKENS, check_dims, load
from pipeline.common import log

PARAMS = ("evaluate", "tune.device", "tune.feature_cache_mb")  # the params keys this stage reads (pipeline/deps.py)

TASKS = {"mer": ("emotion", "mer2023"), "ov": ("ov", "mer2024_ov"), "emer": ("reason", "emer")}


def split_rows(df: pd.DataFrame, role: str, where: EvalSplit) -> pd.DataFrame:
    """The clips of one evaluation role that have something to score; an empty split is an error naming it."""
    rows = df[(df["source"] == where.source) & (df["split"].astype(str) == where.split)]
    if role == "mer":
        rows = rows[rows["label"].notna() & (rows["label"].astype(str) != "")]
    elif role == "ov":
        rows = rows[rows["ov_labels"].map(len) > 0]
    else:
        rows = rows[rows["reason"].astype(str).str.strip() != ""]
    if rows.empty:
        have = sorted(df.loc[df["source"] == where.source, "split"].astype(str).unique())
        raise EvalError(f"evaluate.{role}: split {where.source}:{where.split} is empty (no clip with "
                        f"{'a label' if role == 'mer' else 'open-vocabulary labels' if role == 'ov' else 'a reason'}); "
                        f"splits of {where.source!r}: {have}")
    return rows


def score(role: str, preds: pd.DataFrame, gold: pd.DataFrame, grouping, embed=None, judge=None) -> dict:
    """Metrics for one role from a predictions frame (clip_id, answer) and the gold manifest rows."""
    match_ids(preds["clip_id"], gold["clip_id"], f"evaluate.{role}")
    p = preds.set_index("clip_id").loc[list(gold["clip_id"])]
    answers = [str(a) for a in p["answer"]]
    if role == "mer":  # the official rule: scored on the split's own label set (MER2023: six); any other answer is wrong
        vp = p["valence"].tolist() if "valence" in p.columns else None
        labels = label_set_of(gold["label"])
        parsed = [parse_label(a, ALL_LABELS) for a in answers]
        res = discrete_scores(list(gold["label"]), parsed, labels, list(gold["valence"]) if vp is not None else None, vp)
        # per clip, for the tables' paired tests between stage-2 runs on the same clips (esva.eval.tables); one
        # tuning: the key "run" (a file with several seeds would key them by seed)
        res["predictions"] = {"clip_ids": list(gold["clip_id"]), "gold": list(gold["label"]),
                              "by_seed": {"run": [q if q is not None else INVALID for q in parsed]}}
        lenient = discrete_scores(list(gold["label"]), [lenient_label(a, labels) for a in answers], labels)
        res["emotion_llama_lenient"] = {
            "rule": "Emotion-LLaMA's parse: the answer's last space-separated token if it is a label, else neutral "
                    "(for comparison with its published figures; the strict parse above is esva's figure)",
            **{k: lenient[k] for k in ("weighted_f1", "macro_f1", "accuracy", "n")}}
        return res
    if role == "ov":
        if isinstance(grouping, PerSampleGrouping):  # the official per-sample groupings, keyed by the dataset's names
            return official_ov_scores(list(gold["name"]), [list(v) for v in gold["ov_labels"]],
                                      [parse_ov(a) for a in answers], grouping)
        return ov_scores([list(v) for v in gold["ov_labels"]], [parse_ov(a) for a in answers], grouping)
    if isinstance(grouping, PerSampleGrouping):  # EMER's lexicon proxy needs one table: the offline one
        grouping = offline()
    refs = [str(r) for r in gold["reason"]]
    gold_labels = [list(v) + ([lab] if isinstance(lab, str) and lab else []) for v, lab in zip(gold["ov_labels"], gold["label"])]
    labelled = [i for i, g in enumerate(gold_labels) if g]  # EMER v2 ships no labels: no label proxy, not a 0
    out = {"label_overlap_proxy": label_overlap_proxy([gold_labels[i] for i in labelled], [answers[i] for i in labelled],
                                                      grouping)["label_overlap_proxy"] if labelled else None,
           "label_overlap_proxy_n": len(labelled),
           "clue_overlap_proxy": clue_overlap_proxy(refs, answers, embed)["clue_overlap_proxy"] if embed else None,
           "proxy_note": "offline proxies, not EMER's ChatGPT judge: label overlap from emotion words "
                         f"({grouping.name} lexicon), clue overlap = 10 x cosine of all-MiniLM-L6-v2 embeddings",
           "n": len(gold), "empty_explanations": sum(not a.strip() for a in answers)}
    if embed and len(refs) > 1:  # what the proxy gives a fluent but unrelated explanation: each reference vs the next
        out["clue_overlap_proxy_mismatched"] = clue_overlap_proxy(refs, refs[1:] + refs[:1], embed)["clue_overlap_proxy"]
    from esva.eval.metrics import emer_calibration  # the proxies' floor and ceiling on this split's own references

    out["calibration"] = emer_calibration(refs, answers, gold_labels, grouping, embed,
                                          [lab if isinstance(lab, str) and lab else None for lab in gold["label"]])
    if not labelled:
        out["calibration"]["label_overlap_proxy"] = None
    if judge is not None:
        from esva.eval.judge import JudgeError

        scores, failed = [], 0
        for ref, ans in zip(refs, answers):
            try:
                scores.append(judge.score(ref, ans))
            except JudgeError as exc:  # counted, left out of the means; the run goes on
                failed += 1
                log.warning("judge: %s", exc)
        if scores:  # EMER's two official scores, 1-10, each a mean over the judged samples
            out["clue_overlap_judge"] = sum(s.clue for s in scores) / len(scores)
            out["label_overlap_judge"] = sum(s.label for s in scores) / len(scores)
        out.update(judge_model=judge.model, judge_procedure=judge.procedure, judge_scale="1-10",
                   judge_n=len(scores), judge_failed=failed)
    return out


def read_predictions(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={"clip_id": str}, keep_default_na=False)
    missing = [c for c in ("clip_id", "answer") if c not in df.columns]
    if missing:
        raise EvalError(f"{path}: predictions need the columns clip_id and answer; missing {missing}")
    df["clip_id"] = df["clip_id"].astype(str)
    df["answer"] = df["answer"].fillna("").astype(str)
    return df


def run(p: Params, manifest: Path, features_dir: Path, model_dir: Path, lm_dir: Path, out: Path = Path("metrics"),
        predictions_dir: Path = Path("data/predictions"), roles: tuple[str, ...] = ("mer", "ov", "emer"),
        predictions: Path | None = None, controller: str | None = None, controller_weights: Path | None = None) -> dict:
    """`controller`: run stage 1's aligner with this alignment controller instead of the model's own
    (esva/models/controllers.py; `neural` needs `controller_weights`, a file `esva adaptive` writes)."""
    cfg = p.evaluate
    df = read_manifest(manifest)
    if cfg.grouping and Path(cfg.grouping).is_dir():
        grouping = load_official(cfg.grouping)  # a folder of <name>.npy: the official per-sample groupings
    else:
        grouping = load_grouping(cfg.grouping) if cfg.grouping else offline()
    judge = None
    if cfg.judge.base_url and cfg.judge.model:
        from esva.eval.judge import Judge

        judge = Judge.from_endpoint(cfg.judge.base_url, cfg.judge.model, cfg.judge.api_key_env, cfg.judge.timeout_s)
    gold = {r: split_rows(df, r, getattr(cfg, r)) for r in roles}
    embed = None
    if "emer" in roles:
        from esva.eval.embed import SentenceEmbedder

        embed = SentenceEmbedder()
    preds: dict[str, pd.DataFrame] = {}
    if predictions is not None:
        if len(roles) != 1:
            raise EvalError("--predictions scores one task at a time: give --task mer, ov or emer")
        preds[roles[0]] = read_predictions(predictions)
    else:
        try:
            preds = generate(p, df, gold, features_dir, model_dir, lm_dir, controller, controller_weights)
        except NoAligner as exc:  # e.g. dvc exp run -S align.enabled=false: recorded, not an error
            out = Path(out)
            out.mkdir(parents=True, exist_ok=True)
            Path(predictions_dir).mkdir(parents=True, exist_ok=True)
            rec = {"controller": controller, "skipped": str(exc)}
            (out / "skipped.json").write_text(json.dumps(rec, indent=2) + "\n", encoding="utf-8")
            log.warning("evaluate --controller %s: skipped: %s", controller, exc)
            return {"skipped": str(exc)}
        predictions_dir = Path(predictions_dir)
        predictions_dir.mkdir(parents=True, exist_ok=True)
        for role, frame in preds.items():
            frame.to_parquet(predictions_dir / f"{TASKS[role][1]}.parquet", index=False)
    if "ov" in roles and cfg.ov_grouping_llm.base_url:  # write the official per-sample groupings, then score with them
        grouping = llm_groupings(cfg.ov_grouping_llm, gold["ov"], preds["ov"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for role in roles:
        where = getattr(cfg, role)
        res = score(role, preds[role], gold[role], grouping, embed, judge)
        if "truncated_transcripts" in preds[role].attrs:
            res["truncated_transcripts"] = preds[role].attrs["truncated_transcripts"]
        corpus = corpus_of(gold[role]["dataset"])
        res = {"corpus": corpus, "split": f"{where.source}:{where.split}",
               "note": "synthetic corpus: not a result on the real benchmark" if corpus == "synthetic" else None,
               "benchmark": {"mer": "MER2023 discrete (weighted F1 official)", "ov": "MER2024-OV",
                             "emer": "EMER"}[role],
               "source": "generated by esva evaluate" if predictions is None else f"file {predictions}",
               "controller": controller,
               "code_version": __version__, **res}
        if role == "ov":
            res["grouping"] = grouping.name
        name = TASKS[role][1]
        with (out / f"{name}.json").open("w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=2)
            fh.write("\n")
        if role == "mer":
            confusion_outputs(gold[role], preds[role], res["confusion"], out)
        results[role] = res
        log.info("evaluate %s on %s (%s): %s", name, res["split"], corpus,
                 ", ".join(f"{k}={v:.4f}" for k, v in res.items() if isinstance(v, float)))
    return results


def llm_groupings(llm, gold: pd.DataFrame, preds: pd.DataFrame) -> PerSampleGrouping:
    """`evaluate.ov_grouping_llm`: the LLM's synonym grouping for each OV sample not yet in `llm.out`
    (official MER2024-OV procedure), then that folder loaded as the grouping OV is scored with."""
    from esva.eval.chat import chat_post
    from esva.eval.official_ov import write_groupings

    match_ids(preds["clip_id"], gold["clip_id"], "evaluate.ov")
    answers = preds.set_index("clip_id").loc[list(gold["clip_id"]), "answer"]
    done = write_groupings(list(gold["name"]), [list(v) for v in gold["ov_labels"]], [parse_ov(str(a)) for a in answers],
                           llm.out, chat_post(llm.base_url, llm.model, llm.api_key_env, llm.timeout_s, max_tokens=1000))
    log.info("ov grouping LLM: %d written, %d already in %s", done["written"], done["skipped_existing"], llm.out)
    return load_official(llm.out)


class NoAligner(EvalError):
    """--controller on a model without an aligner: the run records a skip."""


def controller_for(name: str, weights: Path | None):
    """An alignment controller by name; `neural` loads its network from `weights` (`esva adaptive`'s file)."""
    from esva.models.controllers import make

    ctrl = make(name)
    if name == "neural":
        if weights is None or not Path(weights).is_file():
            raise EvalError(f"--controller neural needs --controller-weights, the trained network "
                            f"(data/models/adaptive/neural_seed0.safetensors from `esva adaptive`); got {weights}")
        from safetensors.torch import load_file

        ctrl.load_state_dict(load_file(str(weights)))
    elif weights is not None:
        raise EvalError(f"--controller-weights is for --controller neural, not {name!r}")
    return ctrl.eval()


def generate(p: Params, df: pd.DataFrame, gold: dict[str, pd.DataFrame], features_dir: Path, model_dir: Path,
             lm_dir: Path, controller: str | None = None, controller_weights: Path | None = None) -> dict[str, pd.DataFrame]:
    m = load(model_dir, lm_dir, p.tune.device, cache_mb=p.tune.feature_cache_mb)
    if controller is not None:
        if m.stage1.aligner is None:
            raise NoAligner(f"the stage-2 model in {model_dir} has no aligner (its stage 1 ran without alignment): "
                            f"no controller to evaluate")
        device = next(m.stage1.parameters()).device
        m.stage1.aligner.controller = controller_for(controller, controller_weights).to(device)
    ids = sorted(set().union(*[set(g["clip_id"]) for g in gold.values()]))
    sub = df[df["clip_id"].isin(ids)].copy()
    sub["role"] = "predict"  # every evaluated clip is read (the training roles map only eval:mer to a split)
    data = load_features(sub, {n: Path(features_dir) / f"{n}.zarr" for n in NEEDS}, NEEDS, labelled_only=False,
                          extra=EXTRA, labels=tuple(m.config.get("labels") or LABELS))
    check_dims(m, data)
    by_id = {c.clip_id: c for c in data.clips}
    out = {}
    for role, rows in gold.items():
        task = TASKS[role][0]
        samples = eval_samples(rows, task, instruction_labels(m.config.get("labels") or LABELS), with_targets=False)
        lost = [s.clip_id for s in samples if s.clip_id not in by_id]
        if lost:
            raise EvalError(f"evaluate.{role}: {len(lost)} clips have no features ({lost[:10]}); run `dvc repro`")
        m.stats.update(transcript_cut=0)
        answers = m.generate([by_id[s.clip_id] for s in samples], samples, p.evaluate.batch_size, ANSWER_TOKENS.get(task))
        frame = pd.DataFrame({"clip_id": [s.clip_id for s in samples], "task": task,
                              "instruction": [s.instruction for s in samples], "answer": answers})
        frame.attrs["truncated_transcripts"] = m.stats["transcript_cut"]  # prompts cut to fit the context
        if task == "emotion":
            frame["predicted_label"] = [parse_label(a, ALL_LABELS) for a in answers]  # the gold: the manifest's label
        elif task == "ov":
            frame["predicted_ov_labels"] = [parse_ov(a) for a in answers]
        out[role] = frame
    return out


def confusion_outputs(gold: pd.DataFrame, preds: pd.DataFrame, confusion: dict, out: Path) -> None:
    """metrics/plots/confusion_mer2023.csv (actual, predicted; DVC's confusion template) and a PNG of the
    metric's own confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    answers = preds.set_index("clip_id").loc[list(gold["clip_id"]), "answer"]
    (out / "plots").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"actual": list(gold["label"]), "predicted": [parse_label(str(a), ALL_LABELS) or "invalid" for a in answers]}).to_csv(
        out / "plots" / "confusion_mer2023.csv", index=False)
    mat, cols = np.array(confusion["matrix"]), list(confusion["columns"])
    if not mat[:, -1].any():  # no invalid answers: no empty column
        mat, cols = mat[:, :-1], cols[:-1]
    rows = cols[: mat.shape[0]]  # the scored label set (the columns add "invalid")
    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 2, 1.1 * len(rows) + 1.5))
    ax.imshow(mat, cmap="Blues")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i, j in np.ndindex(mat.shape):
        ax.text(j, i, str(mat[i, j]), ha="center", va="center", color="white" if mat[i, j] > mat.max() / 2 else "black")
    corpus = corpus_of(gold["dataset"])
    ax.set_xlabel("predicted (parsed answer)")
    ax.set_ylabel("actual")
    ax.set_title(f"stage-2 labels, {corpus} corpus" + (" (synthetic, not MER2023)" if corpus == "synthetic" else ""))
    fig.tight_layout()
    fig.savefig(out / "confusion_mer2023.png", dpi=110)
    plt.close(fig)
