"""Stage 2: LoRA instruction tuning of the frozen base LLM on projected audio and video tokens.

The loop is written out and runs under accelerate: gradient accumulation, optional gradient
checkpointing, bf16 autocast where the hardware runs it natively. Trainable: the projectors, the
LoRA adapters, and (with `tune.train_stage1`) MSFE and the aligner; the base LLM never changes.
The loss is next-token cross-entropy on the answer only (labels are -100 on the prompt and on the
modality tokens). Each epoch is scored on the validation split (answer loss, and label accuracy of
greedy answers; `validate`: the emotion prompts run once for both); the best epoch's weights are kept and
written as soon as they are found.

Data parallel (`accelerate launch` or torchrun, unchanged command): every process builds the same model and
the same sample order; each optimizer micro-batch of `tune.batch_size` samples (the global batch) is dealt
over the processes (process r takes samples r, r + W, ...), and DDP averages the gradients. Each process's
loss is weighted by its share of the batch's answer tokens, so the gradient is the one a single process
computes on the whole batch (tests/train/test_ddp.py). Validation runs in every process (same answers);
only the main process writes checkpoints and outputs.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from esva.config import TEXT_LIMITS
from esva.data.instructions import (Instruction, eval_samples, instruction_labels, instruction_text, parse_label,
                                    training_samples)
from esva.eval.metrics import discrete_scores
from esva.encoders.base import checkpoint_identity
from esva.precision import autocast, resolve_device, weights_dtype
from esva.models.fusion import FusionClassifier
from esva.models.llm import (LlmError, PromptCodec, activation_checkpointing, add_lora, context_length, greedy_generate,
                             greedy_generate_scored, load_base, resolve_base, splice)
from esva.models.projector import EXTRA, NEEDS, Projector, stage1_streams
from esva.train.resume import Checkpointer, rng_state, set_rng_state
from esva.train.stage1 import Clip, FeatureData, TrainError, collate, load_stage1
from esva.train.stream import ByteLRU, length_of

log = logging.getLogger(__name__)

ANSWER_TOKENS = {"emotion": 8, "ov": 48}  # generation budgets; `reason` uses tune.max_new_tokens


@dataclass
class Stage2:
    """Everything generation needs: stage 1, the projector, the LoRA-wrapped LLM, tokenizer and layout."""

    stage1: FusionClassifier
    projector: Projector
    llm: torch.nn.Module
    tokenizer: object
    codec: PromptCodec
    rates: dict[str, float]
    cache: ByteLRU = field(default_factory=lambda: ByteLRU(512 << 20))  # pooled streams of a frozen stage 1
    train_stage1: bool = False
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32  # the compute (autocast) dtype; the base LLM's weights are in it too
    config: dict = field(default_factory=dict)  # the saved config.json, when loaded from a folder
    stats: dict[str, int] = field(default_factory=lambda: {"transcript_cut": 0, "answer_cut": 0})
    init_report: dict = field(default_factory=dict)  # what tune.init_from loaded

    def _batch(self, clips: list[Clip]) -> dict:
        return {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in collate(clips, NEEDS + tuple(EXTRA)).items()}

    # ---- modality tokens
    def streams(self, clips: list[Clip], grad: bool = False) -> dict[str, torch.Tensor]:
        """Pooled stage-1 streams for `clips`, batched. A frozen stage 1 computes them once per clip and
        caches them; a stage 1 that trains (`tune.train_stage1`) computes them on every call."""
        if self.train_stage1:
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                return stage1_streams(self.stage1, self._batch(clips), self.rates, *self.projector.pooled_tokens)
        have: dict[str, dict[str, torch.Tensor]] = {}
        for c in clips:
            hit = self.cache.lookup(c.clip_id)
            if hit is not None:
                have[c.clip_id] = hit
        todo = list({c.clip_id: c for c in clips if c.clip_id not in have}.values())
        for i in range(0, len(todo), 32):
            part = todo[i:i + 32]
            with torch.no_grad():
                s = stage1_streams(self.stage1, self._batch(part), self.rates, *self.projector.pooled_tokens)
            for j, c in enumerate(part):
                have[c.clip_id] = {k: v[j].detach().float().clone() for k, v in s.items()}  # own storage, not the batch's
                self.cache.put(c.clip_id, have[c.clip_id])
        return {k: torch.stack([have[c.clip_id][k] for c in clips]) for k in have[clips[0].clip_id]}

    def inputs(self, clips: list[Clip], samples: list[Instruction], with_answer: bool, grad: bool = False) -> dict:
        """The spliced batch: inputs_embeds, attention mask, position ids, labels. One code path for
        training (with_answer=True) and inference (False)."""
        enc = [self.codec.encode(s, with_answer) for s in samples]
        self.stats["transcript_cut"] += sum(e.transcript_cut for e in enc)
        self.stats["answer_cut"] += sum(e.answer_cut for e in enc)
        batch = {k: v.to(self.device) for k, v in self.codec.collate(enc).items()}
        video, feature = self.projector(self.streams(clips, grad))
        embeds = splice(self.llm.get_input_embeddings(), batch["input_ids"], batch["kinds"], video, feature)
        return {"inputs_embeds": embeds, "attention_mask": batch["attention_mask"],
                "position_ids": batch["position_ids"], "labels": batch["labels"]}

    def loss(self, clips: list[Clip], samples: list[Instruction], grad: bool = True) -> tuple[torch.Tensor, int]:
        with autocast(str(self.device), self.dtype):
            b = self.inputs(clips, samples, with_answer=True, grad=grad)
            logits = self.llm(inputs_embeds=b["inputs_embeds"], attention_mask=b["attention_mask"],
                              position_ids=b["position_ids"]).logits  # (B, T, V)
        labels = b["labels"][:, 1:]
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        return loss, int((labels != -100).sum())

    @torch.no_grad()
    def generate(self, clips: list[Clip], samples: list[Instruction], batch_size: int,
                 max_new_tokens: int | None = None, progress: Callable[[int], None] | None = None) -> list[str]:
        """Greedy answers, batched; the answer budget never exceeds the codec's max_new_tokens."""
        self.llm.eval()
        self.projector.eval()
        self.stage1.eval()
        n_new = min(max_new_tokens or self.codec.max_new_tokens, self.codec.max_new_tokens)
        out: list[str] = []
        for i in range(0, len(samples), batch_size):
            with autocast(str(self.device), self.dtype):  # generation runs in the dtype training used
                b = self.inputs(clips[i:i + batch_size], samples[i:i + batch_size], with_answer=False)
                ids = greedy_generate(self.llm, b["inputs_embeds"], b["attention_mask"], n_new, self.codec.eos_id,
                                      self.codec.pad_id)
            out += [self.tokenizer.decode(t, skip_special_tokens=True).strip() for t in ids]
            if progress:
                progress(len(ids))
        return out

    def trainable_state(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        state = {f"lora.{k}": v.detach().clone() for k, v in get_peft_model_state_dict(self.llm).items()}
        state.update({f"projector.{k}": v.detach().clone() for k, v in self.projector.state_dict().items()})
        if self.train_stage1:
            state.update({f"stage1.{k}": v.detach().clone() for k, v in self.stage1.state_dict().items()})
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.llm, {k[5:]: v for k, v in state.items() if k.startswith("lora.")})
        self.projector.load_state_dict({k[10:]: v for k, v in state.items() if k.startswith("projector.")})
        if self.train_stage1:
            self.stage1.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("stage1.")})
        self.cache.clear()


def stream_dims(data: FeatureData, stage1: FusionClassifier) -> dict[str, int]:
    """Feature sizes the projections are built for; `eva_patches` is the number of EVA patch tokens."""
    video = stage1.align_video or "mae"
    if not data.clips:
        raise TrainError("stage 2: no clip has features in every store it reads")
    return {"hubert": data.dims["hubert"], "video": data.dims[video], "eva": data.dims["eva"],
            "eva_patches": length_of(data.clips[0].feats, "eva_patches"), "mae": data.dims["mae"],
            "videomae": data.dims["videomae"]}


def text_limits(cfg) -> tuple[int, int]:
    """(max_new_tokens, answer_tokens): the params where set, else the preset's (Emotion-LLaMA's)."""
    return (cfg.max_new_tokens or TEXT_LIMITS["max_new_tokens"], cfg.answer_tokens or TEXT_LIMITS["answer_tokens"])


def check_dims(m: Stage2, data: FeatureData) -> None:
    """Feature stores must have the sizes the projectors were trained on; an error names both."""
    have = stream_dims(data, m.stage1)
    bad = {k: (m.projector.dims[k], have[k]) for k in m.projector.dims if have[k] != m.projector.dims[k]}
    if bad:
        raise LlmError("the feature stores do not fit the stage-2 projectors: " + ", ".join(
            f"{k} has dim {h} but was trained with {w}" for k, (w, h) in bad.items()))


def build(stage1_dir: Path, lm_dir: Path, data: FeatureData, cfg, quantize: str = "none") -> Stage2:
    """A fresh stage 2 for training: stage 1 loaded, base LLM frozen (in the weights dtype of `tune.dtype`,
    or quantized) and wrapped with LoRA (fp32), new projectors (fp32)."""
    stage1, _ = load_stage1(stage1_dir)
    missing = [n for n in NEEDS if n not in data.dims]
    if missing:
        raise TrainError(f"stage 2 needs the feature stores {list(NEEDS)}; {missing} not loaded")
    source, revision, remote = resolve_base(lm_dir)
    device = resolve_device(cfg.device, "tune.device")
    wdt = weights_dtype(cfg.dtype, device)
    base, tok = load_base(source, revision, remote, dtype=wdt, quantize=quantize, device=device)
    ctx = context_length(base)
    max_len = cfg.max_length or ctx
    if max_len > ctx:
        raise LlmError(f"tune.max_length={max_len} exceeds the base LLM's context of {ctx} tokens ({source})")
    if cfg.grad_checkpointing:
        activation_checkpointing(base)
    llm = add_lora(base, cfg)
    projector = Projector(cfg.layout, stream_dims(data, stage1), base.config.hidden_size, cfg.audio_tokens,
                          cfg.video_tokens)
    stage1.requires_grad_(cfg.train_stage1)
    new, answer = text_limits(cfg)
    codec = PromptCodec(tok, projector.n_video, projector.n_feature, max_len, new, answer)
    codec.encode(Instruction("", "emotion", "", instruction_text("emotion", 0), ""), False)  # limits fit, or say so now
    m = Stage2(stage1, projector, llm, tok, codec, data.rates, cache=ByteLRU(cfg.feature_cache_mb << 20),
               train_stage1=cfg.train_stage1, dtype=wdt)
    if cfg.init_from:
        m.init_report = init_from(m, Path(cfg.init_from))
    return m


# Emotion-LLaMA / MiniGPT-v2 checkpoints: torch.save({"model": state, ...}) of the trainable parameters only
EL_LLM_PREFIX = "llama_model."  # + peft's own key: base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight
EL_PROJECTIONS = ("llama_proj", "feats_llama_proj1", "feats_llama_proj2", "feats_llama_proj3", "cls_tk_llama_proj")
# saved by Emotion-LLaMA but not part of its forward pass (an unused fusion block), or recomputed buffers
EL_IGNORED = (r"attention\.", r".*rotary_emb\.inv_freq$")


def init_from(m: Stage2, path: Path) -> dict:
    """Start the LoRA adapters and the projections from Emotion-LLaMA's or MiniGPT-v2's released checkpoint
    (`tune.init_from`), read with torch's weights_only loader. Every checkpoint key must map onto a tensor of
    the same shape here or be a known unused part; anything else is an error naming the keys. Tensors with
    no counterpart in the checkpoint (MiniGPT-v2 has no feature projections; esva's `video_proj`) stay fresh
    and are listed in the report."""
    import re

    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    from esva.checkpoints import file_sha256

    path = Path(path)
    if not path.is_file():
        raise LlmError(f"tune.init_from: {path} is not a file")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise LlmError(f"tune.init_from: {path} is not a checkpoint that torch's weights_only loader accepts "
                       f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    state = obj.get("model") if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise LlmError(f"tune.init_from: {path} holds no state dict of tensors (expected {{'model': {{...}}}})")
    ours_lora = get_peft_model_state_dict(m.llm)
    ours_proj = m.projector.state_dict()
    lora, proj, ignored, unknown, shapes = {}, {}, [], [], []
    for k, v in state.items():
        if k.startswith(EL_LLM_PREFIX) and k[len(EL_LLM_PREFIX):] in ours_lora:
            target, key, into = ours_lora, k[len(EL_LLM_PREFIX):], lora
        elif k.split(".")[0] in EL_PROJECTIONS and k in ours_proj:
            target, key, into = ours_proj, k, proj
        elif any(re.match(p, k) for p in EL_IGNORED):
            ignored.append(k)
            continue
        else:
            unknown.append(k)
            continue
        if tuple(target[key].shape) != tuple(v.shape):
            shapes.append(f"{k} (checkpoint {tuple(v.shape)}, here {tuple(target[key].shape)})")
        else:
            into[key] = v.to(target[key].dtype)
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} keys map onto nothing here (other LoRA targets or rank, another "
                        f"model?): {', '.join(sorted(unknown)[:6])}{' ...' if len(unknown) > 6 else ''}")
    if shapes:
        problems.append(f"{len(shapes)} keys have other shapes (tune.lora_r, the LLM's hidden size, the feature "
                        f"sizes): {', '.join(shapes[:4])}{' ...' if len(shapes) > 4 else ''}")
    if not lora and not proj and not problems:
        problems.append("no key of Emotion-LLaMA's layout (llama_model.*lora*, llama_proj, feats_llama_proj1-3, "
                        "cls_tk_llama_proj)")
    if problems:
        raise LlmError(f"tune.init_from {path}: " + "; ".join(problems))
    res = set_peft_model_state_dict(m.llm, lora)
    if getattr(res, "unexpected_keys", None):
        raise LlmError(f"tune.init_from {path}: peft did not place {list(res.unexpected_keys)[:4]}")
    m.projector.load_state_dict(proj, strict=False)
    fresh = sorted([f"lora:{k}" for k in ours_lora if k not in lora] + [f"projector:{k}" for k in ours_proj if k not in proj])
    report = {"path": str(path.resolve()), "sha256": file_sha256(path), "loaded": len(lora) + len(proj),
              "lora_tensors": len(lora), "projection_tensors": len(proj),
              "projections": sorted({k.split(".")[0] for k in proj}), "ignored": len(ignored), "fresh": fresh}
    log.info("tune.init_from: %d tensors from %s (%d LoRA, projections %s); %d left fresh", report["loaded"], path,
             len(lora), report["projections"], len(fresh))
    return report


def to_device(m: Stage2, device: str | torch.device) -> Stage2:
    m.device = torch.device(device)
    for part in (m.stage1, m.projector) + (() if _quantized(m.llm) else (m.llm,)):  # bitsandbytes places its own
        part.to(m.device)
    m.cache.clear()
    return m


def _quantized(model) -> bool:
    return bool(getattr(model, "is_quantized", False) or getattr(getattr(model, "base_model", None), "is_quantized", False)
                or getattr(getattr(model, "config", None), "quantization_config", None))


def lr_factor(cfg, n_train: int) -> Callable[[int], float]:
    """`tune.lr_schedule`: constant, or linear warm-up over `tune.warmup_ratio` of the expected optimizer
    updates followed by cosine decay to zero (the expected count: clips x task mix / batch / accumulation)."""
    per_epoch = math.ceil(math.ceil(n_train * sum(cfg.tasks.values()) / cfg.batch_size) / cfg.grad_accum)
    total = max(1, per_epoch * cfg.epochs)
    warm = max(1, int(cfg.warmup_ratio * total))

    def factor(update: int) -> float:
        if cfg.lr_schedule == "constant":
            return 1.0
        if update < warm:
            return (update + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (update - warm) / max(1, total - warm))))

    return factor


@dataclass
class TuneResult:
    model: Stage2
    history: list[dict]
    best_epoch: int
    steps: int
    tokens: int
    val_answers: list[dict]  # the best epoch's greedy answers on the validation split (emotion task)


def _val_samples(df: pd.DataFrame, labels: tuple[str, ...]) -> list[Instruction]:
    return eval_samples(df, "emotion", labels) + [s for s in eval_samples(df, "reason", labels) if s.target]


class _Trainable(torch.nn.Module):
    """The modules stage 2 trains, as one module for DDP: its forward is `Stage2.loss`. The Stage2 keeps its
    own (unwrapped) modules, so generation, saving and attribute access never see the DDP wrapper."""

    def __init__(self, m: "Stage2") -> None:
        super().__init__()
        self.llm, self.projector, self.stage1 = m.llm, m.projector, m.stage1
        self._m = [m]  # not a submodule
        for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit"):  # accelerate must not move a quantised model
            setattr(self, flag, bool(getattr(m.llm, flag, False)))

    def forward(self, clips, samples):  # noqa: D401 - the training loss
        return self._m[0].loss(clips, samples)


def tune(data: FeatureData, df: pd.DataFrame, stage1_dir: Path, lm_dir: Path, cfg, quantize: str = "none",
         on_step: Callable[[dict], None] | None = None, on_epoch: Callable[[dict], None] | None = None,
         checkpoint: Callable[[Stage2, int], None] | None = None, resume: Checkpointer | None = None) -> TuneResult:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    set_seed(cfg.seed)
    by_id = {c.clip_id: c for c in data.clips}
    train_df = df[df["clip_id"].isin([c.clip_id for c in data.split("train")])]
    val_df = df[df["clip_id"].isin([c.clip_id for c in data.split("val")])]
    if train_df.empty:
        raise TrainError("stage 2: the training split is empty (no clip with split 'train' has features)")
    if val_df.empty:  # never choose the epoch on training (or test) clips
        raise TrainError("stage 2: the validation split is empty (no clip with role 'val' has features); list "
                         "validation splits in data.val, or set data.val: [] and data.val_fraction > 0")
    vocab = tuple(data.labels)
    s1_labels = tuple(json.loads((Path(stage1_dir) / "config.json").read_text(encoding="utf-8")).get("labels") or ())
    if s1_labels != vocab:
        raise TrainError(f"stage 2: the stage-1 model in {stage1_dir} was trained on the labels {list(s1_labels)}, but "
                         f"this manifest's training rows have {list(vocab)}: re-run `esva train` on this manifest")
    listed = instruction_labels(vocab)
    device = resolve_device(cfg.device, "tune.device")
    # mixed precision is our autocast (esva.precision, Stage2.dtype), never accelerate's process-wide state
    # (under several processes, a batch may leave a module unused, e.g. no video tokens: DDP must not wait for it)
    accel = Accelerator(cpu=device == "cpu", mixed_precision="no", gradient_accumulation_steps=cfg.grad_accum,
                        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    world, rank, main = accel.num_processes, accel.process_index, accel.is_main_process
    m = build(stage1_dir, lm_dir, data, cfg, quantize)
    params = [p for p in m.llm.parameters() if p.requires_grad] + list(m.projector.parameters())
    if cfg.train_stage1:
        params += [p for p in m.stage1.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, len(train_df)))
    trainable, opt = accel.prepare(_Trainable(m), opt)
    to_device(m, accel.device)  # stage 1, the batches and the cached streams follow the prepared models
    val_emotion = eval_samples(val_df, "emotion", listed)
    val_others = [s for s in _val_samples(val_df, listed) if s.task != "emotion"]  # the reason answers (loss only)
    history, best, best_state, best_epoch, step, tokens, best_answers = [], None, None, 0, 0, 0, []
    start_epoch, start_i, losses, step_losses = 1, 0, [], []
    saved = resume.load() if resume is not None else None
    if saved is not None:
        m.load_trainable_state(saved["trainable"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        history, best_epoch, step, tokens = list(saved["history"]), saved["best_epoch"], saved["step"], saved["tokens"]
        best = tuple(saved["best"]) if saved["best"] is not None else None
        best_state, best_answers = saved["best_state"], list(saved["best_answers"])
        start_epoch, start_i, losses = saved["epoch"], saved["i"], list(saved["losses"])
        step_losses = list(saved["step_losses"])
        m.stats.update(saved["stats"])
        set_rng_state(saved["rng"])
        for k, v in enumerate(step_losses, start=1):  # the curves of the steps done before the interruption
            if on_step:
                on_step({"step": k, "train_loss": v})
        for rec in history:
            if on_epoch:
                on_epoch(rec)

    def state(epoch: int, i: int) -> dict:
        return {"trainable": m.trainable_state(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "history": history, "best": list(best) if best is not None else None, "best_epoch": best_epoch,
                "best_state": best_state, "best_answers": best_answers, "step": step, "tokens": tokens,
                "epoch": epoch, "i": i, "losses": losses, "step_losses": step_losses, "stats": dict(m.stats),
                "rng": rng_state()}

    for epoch in range(start_epoch, cfg.epochs + 1):
        m.llm.train()
        m.projector.train()
        m.stage1.train(cfg.train_stage1)
        samples = training_samples(train_df, cfg.tasks, cfg.seed, epoch, listed)
        if epoch != start_epoch or saved is None:
            losses = []
        for i in range(start_i if epoch == start_epoch else 0, len(samples), cfg.batch_size):
            part = samples[i:i + cfg.batch_size]
            mine = part[rank::world]  # this process's share of the global batch (all of it in one process)
            with accel.accumulate(trainable):
                # a process with no sample this step still runs one, weighted 0, so that DDP's reduction happens
                loss, n_tok = trainable([by_id[s.clip_id] for s in (mine or part[:1])], mine or part[:1])
                n_tok = n_tok if mine else 0
                if not torch.isfinite(loss):
                    raise TrainError(f"stage 2: non-finite loss at epoch {epoch}, step {step}; batch clips "
                                     f"{[s.clip_id for s in part]}. The last good checkpoint (epoch {best_epoch}) is kept")
                if world > 1:  # weight by this process's share of the batch's answer tokens (DDP averages over W)
                    local = float(n_tok)
                    counts = accel.reduce(torch.tensor([local, float(loss.detach()) * local], device=accel.device), "sum")
                    total = max(float(counts[0]), 1.0)
                    batch_loss, n_tok = float(counts[1]) / total, int(counts[0])
                    loss = loss * (world * local / total)
                else:
                    batch_loss = float(loss.detach())
                accel.backward(loss)
                if accel.sync_gradients:
                    accel.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                opt.zero_grad()
                if accel.sync_gradients:
                    sched.step()
            step += 1
            tokens += n_tok
            losses.append(batch_loss)
            step_losses.append(losses[-1])
            if on_step:
                on_step({"step": step, "train_loss": losses[-1]})
            # only where the accumulated gradients were applied: nothing half-accumulated is lost
            if (main and resume is not None and resume.due(step) and accel.sync_gradients
                    and i + cfg.batch_size < len(samples)):
                resume.save(state(epoch, i + cfg.batch_size))
        val_loss, answers = validate(m, by_id, val_emotion, val_others, cfg.eval_batch_size, ANSWER_TOKENS["emotion"])
        gold = [s.target for s in val_emotion]  # a validation label outside the vocabulary is scored, as wrong
        val = discrete_scores(gold, [parse_label(a, vocab) for a in answers], vocab + tuple(sorted(set(gold) - set(vocab))))
        rec = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
               "val_accuracy": val["accuracy"], "val_unparseable_share": val["invalid"] / val["n"]}
        history.append(rec)
        if on_epoch:
            on_epoch(rec)
        key = (val["accuracy"], -val_loss)
        if best is None or key > best:
            best, best_epoch, best_state = key, epoch, m.trainable_state()
            best_answers = [{"clip_id": s.clip_id, "task": s.task, "instruction": s.instruction, "answer": a,
                             "target": s.target} for s, a in zip(val_emotion, answers)]
            if checkpoint and main:
                checkpoint(m, epoch)
        if main and resume is not None and resume.every > 0:  # the epoch is done: a resumed run starts the next one
            resume.save(state(epoch + 1, 0))
    if best_state is not None:
        m.load_trainable_state(best_state)
    accel.sync_gradients = True  # the process-wide gradient state, left as found: no accumulation under way
    return TuneResult(m, history, best_epoch, step, tokens, best_answers)


@torch.no_grad()
def validate(m: Stage2, by_id: dict[str, Clip], emotion: list[Instruction], others: list[Instruction],
             batch_size: int, n_new: int) -> tuple[float, list[str]]:
    """The epoch's validation: the answer loss over `emotion` + `others` (token-weighted, one mean, as training
    computes it) and the greedy answers to `emotion` (at most n_new tokens). The emotion prompts are run once
    for both: generation and the teacher-forced loss of the gold answers share the prompts' pass and KV cache
    (`greedy_generate_scored`); before, the loss pass and generation each ran over every prompt. `others` (the
    reason answers) are scored as in training."""
    m.llm.eval()
    m.projector.eval()
    m.stage1.eval()
    n_new = min(n_new, m.codec.max_new_tokens)
    total, count, answers = 0.0, 0, []
    for i in range(0, len(emotion), batch_size):
        part = emotion[i:i + batch_size]
        gold = []
        for s in part:  # the answer tokens training scores (cut to tune.answer_tokens, then the end token)
            e = m.codec.encode(s, with_answer=True)
            gold.append(e.ids[e.n_prompt:])
        with autocast(str(m.device), m.dtype):
            b = m.inputs([by_id[s.clip_id] for s in part], part, with_answer=False)
            ids, nll, n = greedy_generate_scored(m.llm, b["inputs_embeds"], b["attention_mask"], n_new,
                                                 m.codec.eos_id, m.codec.pad_id, gold)
        answers += [m.tokenizer.decode(t, skip_special_tokens=True).strip() for t in ids]
        total, count = total + nll, count + n
    for i in range(0, len(others), batch_size):
        part = others[i:i + batch_size]
        loss, n = m.loss([by_id[s.clip_id] for s in part], part, grad=False)
        total, count = total + float(loss) * n, count + n
    return total / max(count, 1), answers


# ----------------------------------------------------------------------------- save / load

def save(m: Stage2, out: Path, resolved: dict, stage1_dir: Path) -> None:
    """The peft adapter (adapter_config.json + adapter_model.safetensors), projector.safetensors, the
    stage-1 model it reads (stage1/), and the resolved config, into `out`: written whole into a sibling
    folder that then replaces `out`, so a run killed while saving never leaves a mixed or torn model."""
    final = Path(out)
    out = final.with_name(final.name + ".partial")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    _write_model(m, out, resolved, stage1_dir)
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    out.rename(final)
    if old.exists():
        shutil.rmtree(old)


def _write_model(m: Stage2, out: Path, resolved: dict, stage1_dir: Path) -> None:
    from safetensors.torch import save_file

    m.llm.save_pretrained(str(out))
    (out / "README.md").unlink(missing_ok=True)  # peft's model-card stub; config.json says how it was made
    save_file({k: v.detach().cpu().contiguous() for k, v in m.projector.state_dict().items()},
              str(out / "projector.safetensors"))
    s1 = out / "stage1"
    s1.mkdir(exist_ok=True)
    with (Path(stage1_dir) / "config.json").open("r", encoding="utf-8") as fh:
        s1_cfg = json.load(fh)
    if m.train_stage1:
        save_file({k: v.detach().cpu().contiguous() for k, v in m.stage1.state_dict().items()},
                  str(s1 / "model.safetensors"))
    else:
        shutil.copyfile(Path(stage1_dir) / "model.safetensors", s1 / "model.safetensors")
    with (s1 / "config.json").open("w", encoding="utf-8") as fh:
        json.dump(s1_cfg, fh, indent=2)
    cfg = {**resolved, "hidden_size": m.projector.hidden_size, "projector": m.projector.config(),
           "rates": m.rates, "max_length": m.codec.max_length, "max_new_tokens": m.codec.max_new_tokens,
           "answer_tokens": m.codec.answer_tokens}
    if m.init_report:
        cfg["init_from"] = m.init_report
    with (out / "config.json").open("w", encoding="utf-8") as fh:
        json.dump(cfg, fh, indent=2, default=str)


def load(model_dir: Path, lm_dir: Path, device: str = "cpu", dtype: str | None = None, quantize: str | None = None,
         cache_mb: int = 512) -> Stage2:
    """A saved stage 2 for generation, in a fresh process: base LLM from `lm_dir` (in the dtype and
    quantization it was tuned with, unless given), the adapter through `PeftModel.from_pretrained`, the
    projectors and stage 1 from `model_dir`."""
    from peft import PeftModel
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    for f in (cfg_path, model_dir / "adapter_config.json", model_dir / "projector.safetensors"):
        if not f.exists():
            raise TrainError(f"{f} not found: {model_dir} is not a stage-2 model folder (run `esva tune`)")
    with cfg_path.open("r", encoding="utf-8") as fh:
        cfg = json.load(fh)
    source, revision, remote = resolve_base(lm_dir)
    device = resolve_device(device, "tune.device")
    dtype = dtype or cfg.get("tune", {}).get("dtype", "fp32")
    quantize = quantize or cfg.get("precision", {}).get("quantize", "none")
    wdt = weights_dtype(dtype, device)
    base, tok = load_base(source, revision, remote, dtype=wdt, quantize=quantize, device=device)
    if "projector" not in cfg:
        raise TrainError(f"{cfg_path} was written by an older esva (no projector layout): re-run `esva tune`")
    proj_state = load_file(str(model_dir / "projector.safetensors"))
    saved = int(proj_state["cls_tk_llama_proj.weight"].shape[0])
    have = int(base.config.hidden_size)
    if have != saved or have != int(cfg["hidden_size"]):
        raise LlmError(f"the base LLM {source!r} has hidden size {have}, but the projectors in {model_dir} were "
                       f"trained for hidden size {saved}; use the base model the adapter was tuned on "
                       f"({cfg.get('base', {}).get('checkpoint')!r})")
    ident = checkpoint_identity(source, revision)
    want = cfg.get("base", {}).get("identity")
    if want and ident != want:
        log.warning("the base LLM %s (identity %s) differs from the one the adapter was tuned on (%s)", source, ident, want)
    llm = PeftModel.from_pretrained(base, str(model_dir))
    llm.eval()
    pc = cfg["projector"]
    projector = Projector(pc["layout"], pc["dims"], have, pc["audio_tokens"], pc["video_tokens"])
    projector.load_state_dict(proj_state)
    projector.eval()
    stage1, _ = load_stage1(model_dir / "stage1")
    codec = PromptCodec(tok, projector.n_video, projector.n_feature, cfg["max_length"], cfg["max_new_tokens"],
                        cfg.get("answer_tokens"))
    return to_device(Stage2(stage1, projector, llm, tok, codec, cfg["rates"], cache=ByteLRU(cache_mb << 20),
                            config=cfg, dtype=wdt), device)

