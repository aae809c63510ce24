"""The embedded default's base LLM: a tiny LLaMA pretrained as a plain language model on corpus text.

A LoRA on a frozen, randomly initialised LLM can learn little (DESIGN.md section 4), so this stands in
for Llama-2's pretraining: next-token prediction on the training split's transcripts, reasons and
open-vocabulary words, packed into fixed blocks. Held-out text (the validation split) gives perplexity.
The template and the answers of the instruction tasks are not in this text; stage 2 learns them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from esva.precision import autocast, dtype_name, resolve_device, resolve_dtype

log = logging.getLogger(__name__)


def documents(df: pd.DataFrame) -> list[str]:
    """One document per clip: what the person says, the reasoning text, and the emotion words."""
    docs = []
    for row in df.itertuples(index=False):
        parts = []
        if str(row.transcript).strip():
            parts.append(f"The person says: {str(row.transcript).strip()}")
        if str(row.reason).strip():
            parts.append(str(row.reason).strip())
        ov = list(row.ov_labels) if row.ov_labels is not None else []
        if ov:
            parts.append("Emotion words: " + ", ".join(ov) + ".")
        if parts:
            docs.append(" ".join(parts))
    return docs


def pack(tokenizer, docs: list[str], block: int) -> torch.Tensor:
    """<s> doc </s> <s> doc </s> ... cut into (N, block) rows; the tail that does not fill a row is dropped
    (at least one row is kept, padded with eos)."""
    ids: list[int] = []
    for d in docs:
        ids += [tokenizer.bos_token_id] + list(tokenizer(d, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    n = max(1, len(ids) // block)
    ids = ids[: n * block] + [tokenizer.eos_token_id] * max(0, n * block - len(ids))
    return torch.tensor(ids, dtype=torch.long).view(n, block)


@torch.no_grad()
def perplexity(model, rows: torch.Tensor, batch_size: int, dtype: torch.dtype = torch.float32) -> float:
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        x = rows[i:i + batch_size].to(device)
        with autocast(str(device), dtype):
            logits = model(input_ids=x).logits.float()
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        total, count = total + float(loss), count + x[:, 1:].numel()
    return math.exp(total / max(count, 1))


@dataclass
class LmResult:
    history: list[dict]
    val_perplexity: float | None
    initial_val_perplexity: float | None
    tokens_per_epoch: int
    precision: str = "fp32"  # the autocast dtype the pretraining ran in


def pretrain(model, tokenizer, train_docs: list[str], val_docs: list[str], cfg,
             on_epoch: Callable[[dict], None] | None = None) -> LmResult:
    """Next-token training of every weight of `model` (it is the tiny stand-in, not the frozen LLM)."""
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    rows = pack(tokenizer, train_docs, cfg.block)
    val = pack(tokenizer, val_docs, cfg.block) if val_docs else None
    device = torch.device(resolve_device(cfg.device, "llm.device"))
    dtype = resolve_dtype(cfg.dtype, str(device))  # autocast; the weights and AdamW stay fp32
    model.to(device)
    start_ppl = perplexity(model, val, cfg.batch_size, dtype) if val is not None else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, total // 20)) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(rows), generator=gen)
        losses = []
        for i in range(0, len(rows), cfg.batch_size):
            x = rows[order[i:i + cfg.batch_size]].to(device)
            with autocast(str(device), dtype):
                logits = model(input_ids=x).logits
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"llm pretraining: non-finite loss at epoch {epoch}")
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        rec = {"epoch": epoch, "train_loss": float(np.mean(losses))}
        if val is not None:
            rec["val_perplexity"] = perplexity(model, val, cfg.batch_size, dtype)
        history.append(rec)
        if on_epoch:
            on_epoch(rec)
    model.cpu().eval()
    return LmResult(history, history[-1].get("val_perplexity"), start_ppl, int(rows.numel()), dtype_name(dtype))
