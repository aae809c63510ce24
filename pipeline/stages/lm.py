"""`esva lm`: the base LLM of stage 2 -> data/models/llm (+ metrics/lm.json, per-epoch curves).

`llm.checkpoint: tiny` trains a tokenizer on the training split's text, builds a small LLaMA from
`llm.*` and pretrains it as a plain language model (DESIGN.md section 4). Any other checkpoint (a
local directory or a hub id, e.g. the paper's meta-llama/Llama-2-7b-chat-hf) is checked and recorded;
stage 2 then loads it from where it is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from esva import __version__
from esva.config import LlmConfig, except_keys
from esva.data.roles import roles_of
from esva.data.manifest import corpus_of, read_manifest
from esva.encoders.base import checkpoint_identity
from esva.models.llm import LlmError, tiny_llama_config, tokenizer_corpus, train_tokenizer
from esva.train.lm import documents, pretrain
from pipeline.common import log

# every llm key but llm.quantize, which only changes how stage 2 loads the base (pipeline/deps.py; dvc.yaml)
PARAMS = except_keys("llm", LlmConfig, ("quantize",))


def run(cfg: LlmConfig, manifest: Path, out: Path, metrics_dir: Path | None = Path("metrics")) -> dict:
    out = Path(out)
    if out.exists() and not (out / "source.json").exists() and any(out.iterdir()):
        raise LlmError(f"{out} exists and is not the output of `esva lm`; refusing to overwrite it")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    df = read_manifest(manifest)
    corpus = corpus_of(df["dataset"])
    report: dict = {"stage": "lm", "corpus": corpus, "checkpoint": cfg.checkpoint, "code_version": __version__}
    if cfg.checkpoint == "tiny":
        role = roles_of(df)
        train_df, val_df = df[role == "train"], df[role == "val"]
        if train_df.empty:
            raise LlmError(f"{manifest}: no clip with role 'train' (data.train) to pretrain the tiny LLM on")
        report.update(_tiny(cfg, train_df, val_df, out, metrics_dir))
    else:
        from esva.checkpoints import CheckpointError, locate

        try:  # the folder or the hub id's cached snapshot, with its config and weight files, before anything else
            loc = locate(cfg.checkpoint, cfg.revision, "llm")
        except CheckpointError as exc:
            raise LlmError(str(exc)) from None
        report.update(identity=checkpoint_identity(loc.path), path=str(loc.path), format=loc.format,
                      files=[f.name for f in loc.files])
    with (out / "source.json").open("w", encoding="utf-8") as fh:
        json.dump({"checkpoint": cfg.checkpoint, "revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code,
                   "params": cfg.model_dump(mode="json"), "corpus": corpus, "code_version": __version__}, fh, indent=2)
    if metrics_dir is not None:
        Path(metrics_dir).mkdir(parents=True, exist_ok=True)
        with (Path(metrics_dir) / "lm.json").open("w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
            fh.write("\n")
    return report


def _tiny(cfg: LlmConfig, train_df, val_df, out: Path, metrics_dir: Path | None) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    tok = train_tokenizer(tokenizer_corpus(train_df), cfg.vocab_size, out)
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(tiny_llama_config(cfg, tok))
    live = None
    if metrics_dir is not None:
        from dvclive import Live

        live = Live(dir=str(Path(metrics_dir) / "lm"), save_dvc_exp=False, dvcyaml=None, report=None)

    def on_epoch(rec):
        if live is not None:
            for k, v in rec.items():
                if k != "epoch":
                    live.log_metric(k, float(v))
            live.next_step()
        log.info("lm epoch %d: %s", rec["epoch"], ", ".join(f"{k}={v:.4f}" for k, v in rec.items() if k != "epoch"))

    res = pretrain(model, tok, documents(train_df), documents(val_df), cfg, on_epoch=on_epoch)
    if live is not None:
        live.end()
    model.save_pretrained(str(out))
    n_params = sum(p.numel() for p in model.parameters())
    log.info("lm: tiny LLaMA (%.2fM parameters, vocab %d), validation perplexity %.2f -> %.2f", n_params / 1e6,
             len(tok), res.initial_val_perplexity or float("nan"), res.val_perplexity or float("nan"))
    return {"parameters": n_params, "vocab_size": len(tok), "precision": res.precision, "tokens_per_epoch": res.tokens_per_epoch,
            "epochs": cfg.epochs, "val_perplexity_initial": res.initial_val_perplexity,
            "val_perplexity": res.val_perplexity, "final_train_loss": res.history[-1]["train_loss"],
            "identity": checkpoint_identity(out)}
