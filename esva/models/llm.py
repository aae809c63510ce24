"""The base LLM of stage 2: loading, the prompt layout, splicing of modality tokens, greedy decoding.

- The embedded default is a tiny LLaMA (`LlamaConfig` from `llm.*`, random weights) with a
  byte-level BPE tokenizer trained on the corpus text with `tokenizers`. Both are saved with
  save_pretrained and always loaded back through `AutoModelForCausalLM` / `AutoTokenizer`, the
  same code path as the paper preset (`meta-llama/Llama-2-7b-chat-hf` or any local directory).
- One prompt layout serves training and inference (`PromptCodec`): the template's text is
  tokenised piece by piece around the `<VideoHere>` / `<FeatureHere>` slots, whose positions hold
  a pad id and are overwritten with projected modality tokens by `splice`. Training appends the
  answer; inference stops before it. Nothing else differs, and tests/models/test_llm.py checks it.
- Batches are left-padded with position ids counted from the attention mask, so a prompt sees the
  same positions alone or in a batch, in training and in generation.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from esva.data.instructions import (EMOTION_LLAMA_LABELS, FEATURE_SLOT, PHRASINGS, TASKS, TEMPLATE, VIDEO_SLOT,
                                    Instruction)

log = logging.getLogger(__name__)

SPECIAL = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
CHAT_OPEN, CHAT_CLOSE = "[INST] ", " [/INST]"  # Llama-2-chat's turn markers, as Emotion-LLaMA uses them
TEXT, VIDEO, FEATURE = 0, 1, 2  # slot kinds per position


class LlmError(ValueError):
    """A base model or tokenizer that does not fit the saved stage-2 parts. Names both sides."""


# ----------------------------------------------------------------------------- tiny preset

def train_tokenizer(texts: Iterable[str], vocab_size: int, out: Path):
    """A byte-level BPE tokenizer trained on `texts`, saved with save_pretrained; returns it loaded back."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=10**6, **SPECIAL)
    fast.save_pretrained(str(out))
    return AutoTokenizer.from_pretrained(str(out))


def tokenizer_corpus(df) -> list[str]:
    """The text a tiny tokenizer learns from: transcripts, reasons, open-vocabulary words, label words,
    and the template's fixed text with every instruction phrasing."""
    from esva import LABELS

    texts = [str(t) for t in df["transcript"]] + [str(r) for r in df["reason"]]
    texts += [", ".join(v) for v in df["ov_labels"]] + list(LABELS) + list(EMOTION_LLAMA_LABELS)
    fixed = TEMPLATE.replace(VIDEO_SLOT, " ").replace(FEATURE_SLOT, " ")
    texts += [CHAT_OPEN + fixed.format(transcript="", task=t, instruction=p.format(
        labels=", ".join(EMOTION_LLAMA_LABELS))) + CHAT_CLOSE for t in TASKS for p in PHRASINGS[t]]
    return texts


def tiny_llama_config(cfg, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )


# ----------------------------------------------------------------------------- loading

def resolve_base(lm_dir: Path) -> tuple[str, str | None, bool]:
    """Where `esva lm` says the base model is: (path or hub id, revision, trust_remote_code)."""
    lm_dir = Path(lm_dir)
    marker = lm_dir / "source.json"
    if not marker.exists():
        raise LlmError(f"{lm_dir} is not the output of `esva lm` (no source.json); run `esva lm` first")
    with marker.open("r", encoding="utf-8") as fh:
        src = json.load(fh)
    where = str(lm_dir) if src["checkpoint"] == "tiny" else src["checkpoint"]
    return where, src.get("revision"), bool(src.get("trust_remote_code", False))


def context_length(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 4096))


def quantization_config(quantize: str, compute: torch.dtype):
    """transformers' BitsAndBytesConfig for `llm.quantize` (8bit, or 4bit NF4 with double quantization and
    the compute dtype in force); an error naming the key when bitsandbytes is not installed."""
    if quantize == "none":
        return None
    if quantize not in ("8bit", "4bit"):
        raise LlmError(f"llm.quantize must be none, 8bit or 4bit, got {quantize!r}")
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise LlmError(f"llm.quantize={quantize} needs bitsandbytes, which is not installed here "
                       "(pip install bitsandbytes, on a machine with a CUDA GPU); or set llm.quantize: none")
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16 if compute == torch.float32 else compute)


LLM_ALLOW_UNEXPECTED = (r".*\.rotary_emb\.inv_freq$",)  # a buffer older checkpoints saved; recomputed from the config


def load_base(source: str, revision: str | None = None, trust_remote_code: bool = False,
              dtype: torch.dtype = torch.float32, quantize: str = "none", device: str = "cpu"):
    """The frozen base LLM and its tokenizer, complete or an error (esva.checkpoints: a local folder or a hub
    id's cached snapshot, safetensors or weights_only `.bin`), its weights in `dtype` (bf16 for the
    paper preset: a 7B model is 13.5 GB instead of 27) or quantized with bitsandbytes (`llm.quantize`),
    then placed on `device`. A pad id is set when the tokenizer has none (Llama-2 has none): it only
    fills masked positions."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from esva.checkpoints import CheckpointError, load_complete, locate

    qcfg = quantization_config(quantize, dtype)
    extra = {"quantization_config": qcfg, "device_map": {"": device}} if qcfg is not None else {}
    try:
        loc = locate(source, revision, "base LLM")
        tok = AutoTokenizer.from_pretrained(str(loc.path), trust_remote_code=trust_remote_code)
        model, report = load_complete(AutoModelForCausalLM, loc, "base LLM", allow_unexpected=LLM_ALLOW_UNEXPECTED,
                                      digest=False, hash_files=False, trust_remote_code=trust_remote_code, dtype=dtype,
                                      **extra)
    except CheckpointError as exc:
        raise LlmError(str(exc)) from None
    except (OSError, ValueError, ImportError) as exc:
        raise LlmError(f"cannot load the base LLM {source!r}: {exc}") from None
    model.esva_load_report = report
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    model.requires_grad_(False)
    model.eval()
    return model, tok


def activation_checkpointing(model, on: bool = True) -> None:
    """Recompute activations in the backward pass (transformers 5 renamed gradient checkpointing)."""
    if on:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.activation_checkpointing_disable()


def add_lora(model, tune_cfg):
    """Wrap the frozen base with peft LoRA adapters (r, alpha, dropout, target modules from `tune.*`)."""
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in tune_cfg.lora_targets if t not in names]
    if missing:
        raise LlmError(f"tune.lora_targets {missing} name no module of the base model "
                       f"({type(model).__name__}); e.g. {sorted(n for n in names if 'proj' in n)[:8]}")
    lcfg = LoraConfig(r=tune_cfg.lora_r, lora_alpha=tune_cfg.lora_alpha, lora_dropout=tune_cfg.lora_dropout,
                      target_modules=list(tune_cfg.lora_targets), task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, lcfg)


# ----------------------------------------------------------------------------- prompt layout

@dataclass
class Encoded:
    ids: list[int]        # prompt (+ answer) token ids; slot positions hold the pad id
    kinds: list[int]      # TEXT, VIDEO or FEATURE per position
    n_prompt: int         # positions before the answer
    transcript_cut: bool  # the transcript was shortened to fit the context
    answer_cut: bool      # the training answer was shortened (longer than max_new_tokens)


class PromptCodec:
    """Tokenises instructions into one layout for training and inference.

    Layout (Emotion-LLaMA's training prompt): <s> [INST] <video>{video slot}</video> <feature>{feature slot}</feature>
    The person in video says: {transcript}.  [{task}] {instruction}  [/INST] {answer}</s>

    The context budget is fixed: max_length = prompt + max(max_new_tokens, answer_tokens). When a prompt does not fit, the
    transcript (and only the transcript) is shortened, the same way in training and at inference."""

    def __init__(self, tokenizer, n_video: int, n_feature: int, max_length: int, max_new_tokens: int,
                 answer_tokens: int | None = None) -> None:
        self.tok = tokenizer
        self.n_video, self.n_feature = n_video, n_feature
        self.max_length, self.max_new_tokens = max_length, max_new_tokens
        self.answer_tokens = answer_tokens or max_new_tokens  # training answers are cut to this many tokens
        self.pad_id = tokenizer.pad_token_id
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.eos_id = tokenizer.eos_token_id
        head, rest = TEMPLATE.split(VIDEO_SLOT)
        mid, tail = rest.split(FEATURE_SLOT)
        says, after = tail.split("{transcript}")
        self._head = self._ids(CHAT_OPEN + head)
        self._mid = self._ids(mid)
        self._says = self._ids(says.rstrip(" "))  # the space before the transcript goes with its first word
        self._after = after  # ". [{task}] {instruction}"

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"]) if text else []

    def encode(self, ins: Instruction, with_answer: bool) -> Encoded:
        tail = self._ids(self._after.format(task=ins.task, instruction=ins.instruction) + CHAT_CLOSE)
        fixed = (len(self.bos) + len(self._head) + self.n_video + len(self._mid) + self.n_feature + len(self._says)
                 + len(tail))
        answer_room = max(self.max_new_tokens, self.answer_tokens)
        budget = self.max_length - answer_room - fixed
        if budget < 0:
            raise LlmError(f"the prompt without its transcript needs {fixed} tokens ({self.n_video} video + "
                           f"{self.n_feature} feature tokens) and the answer up to {answer_room}, more than "
                           f"the context of {self.max_length}: lower tune.max_new_tokens / tune.answer_tokens or the "
                           f"token counts")
        words = self._ids(" " + ins.transcript.strip())  # " ." when there is none, as the template reads
        cut = len(words) > budget
        words = words[:budget]
        ids = (self.bos + self._head + [self.pad_id] * self.n_video + self._mid + [self.pad_id] * self.n_feature
               + self._says + words + tail)
        kinds = ([TEXT] * (len(self.bos) + len(self._head)) + [VIDEO] * self.n_video + [TEXT] * len(self._mid)
                 + [FEATURE] * self.n_feature + [TEXT] * (len(self._says) + len(words) + len(tail)))
        n_prompt, answer_cut = len(ids), False
        if with_answer:
            answer = self._ids(" " + ins.target.strip())
            if len(answer) + 1 > self.answer_tokens:
                answer, answer_cut = answer[: self.answer_tokens - 1], True
            answer = answer + [self.eos_id]
            ids, kinds = ids + answer, kinds + [TEXT] * len(answer)
        return Encoded(ids, kinds, n_prompt, cut, answer_cut)

    def collate(self, encoded: list[Encoded]) -> dict[str, torch.Tensor]:
        """Left-padded batch: ids, kinds, attention mask, position ids, labels (-100 except the answer)."""
        b, t = len(encoded), max(len(e.ids) for e in encoded)
        ids = torch.full((b, t), self.pad_id, dtype=torch.long)
        kinds = torch.zeros((b, t), dtype=torch.long)
        attn = torch.zeros((b, t), dtype=torch.long)
        labels = torch.full((b, t), -100, dtype=torch.long)
        for i, e in enumerate(encoded):
            off = t - len(e.ids)
            ids[i, off:] = torch.tensor(e.ids)
            kinds[i, off:] = torch.tensor(e.kinds)
            attn[i, off:] = 1
            labels[i, off + e.n_prompt:] = torch.tensor(e.ids[e.n_prompt:], dtype=torch.long)
        return {"input_ids": ids, "kinds": kinds, "attention_mask": attn, "position_ids": positions(attn),
                "labels": labels}


def positions(attn: torch.Tensor) -> torch.Tensor:
    return (attn.cumsum(-1) - 1).clamp_min(0)


def splice(embed: nn.Module, ids: torch.Tensor, kinds: torch.Tensor, video: torch.Tensor,
           feature: torch.Tensor) -> torch.Tensor:
    """Token embeddings with the slot positions replaced by projected modality tokens.

    ids, kinds: (B, T); video: (B, Nv, H); feature: (B, Nf, H) -> (B, T, H). Each row holds exactly Nv
    VIDEO and Nf FEATURE positions, filled in order."""
    x = embed(ids)  # (B, T, H)
    for kind, tokens in ((VIDEO, video), (FEATURE, feature)):
        mask = kinds == kind
        counts = mask.sum(1)
        if not bool((counts == tokens.shape[1]).all()):
            raise LlmError(f"slot {kind}: {counts.tolist()} positions per row for {tokens.shape[1]} tokens")
        x = x.masked_scatter(mask[..., None], tokens.to(x.dtype))
    return x


# ----------------------------------------------------------------------------- decoding

@torch.no_grad()
def greedy_generate(model, embeds: torch.Tensor, attn: torch.Tensor, max_new_tokens: int, eos_id: int,
                    pad_id: int) -> list[list[int]]:
    """Batched greedy decoding from `inputs_embeds` (B, T, H), left-padded, with a KV cache. Returns the
    new token ids per row, without the end-of-sequence token."""
    first, cache, pos = _prefill(model, embeds, attn)
    return _greedy(model, first, cache, attn, pos, max_new_tokens, eos_id, pad_id)


@torch.no_grad()
def greedy_generate_scored(model, embeds: torch.Tensor, attn: torch.Tensor, max_new_tokens: int, eos_id: int,
                           pad_id: int, answers: list[list[int]]) -> tuple[list[list[int]], float, int]:
    """greedy_generate, and the cross-entropy of given `answers` (token ids after each row's prompt, e.g. the gold
    answer and its end token) from the same pass over the prompts: the prefill's last logits score each answer's
    first token, and the answers fed through the prompts' KV cache (cut back to the prompts after decoding)
    score the rest. Returns (generated ids as greedy_generate, summed negative log-likelihood, scored tokens):
    the teacher-forced loss of prompt + answer in one sequence, without a second pass over the prompts."""
    first, cache, pos = _prefill(model, embeds, attn)
    gen = _greedy(model, first, cache, attn, pos, max_new_tokens, eos_id, pad_id)
    b, n_prompt = attn.shape
    a = max((len(x) for x in answers), default=0)
    if a == 0:
        return gen, 0.0, 0
    ids = torch.full((b, a), pad_id, dtype=torch.long, device=attn.device)
    mask = torch.zeros((b, a), dtype=attn.dtype, device=attn.device)
    for i, x in enumerate(answers):
        ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    nll = F.cross_entropy(first.float(), labels[:, 0], ignore_index=-100, reduction="sum")
    if a > 1:  # answer tokens 0..a-2 after the prompt predict tokens 1..a-1; padding at the end is never attended
        extra = cache.get_seq_length() - n_prompt  # the decoded tokens
        if extra > 0:
            cache.crop(-extra)  # a negative count removes that many (the form old and new transformers share)
        steps = torch.arange(1, a, device=attn.device)[None]
        out = model(inputs_embeds=model.get_input_embeddings()(ids[:, :-1]), attention_mask=torch.cat([attn, mask[:, :-1]], 1),
                    position_ids=pos[:, -1:] + steps, cache=cache, use_cache=True)
        logits = out.logits.float()
        nll = nll + F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100,
                                    reduction="sum")
    return gen, float(nll), int(mask.sum())


def _prefill(model, embeds: torch.Tensor, attn: torch.Tensor):
    """The prompts' pass: the last position's logits (B, V), the KV cache and the position ids."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    pos = positions(attn)
    out = model(inputs_embeds=embeds, attention_mask=attn, position_ids=pos, cache=cache, use_cache=True,
                logits_to_keep=1)  # only the last position's logits are used
    return out.logits[:, -1], cache, pos


def _greedy(model, first: torch.Tensor, cache, attn: torch.Tensor, pos: torch.Tensor, max_new_tokens: int, eos_id: int,
            pad_id: int) -> list[list[int]]:
    emb = model.get_input_embeddings()
    nxt = first.argmax(-1)  # (B,)
    done = torch.zeros_like(nxt, dtype=torch.bool)
    steps: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        steps.append(torch.where(done, torch.full_like(nxt, pad_id), nxt))
        done = done | (nxt == eos_id)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], 1)
        pos = pos[:, -1:] + 1
        out = model(inputs_embeds=emb(nxt[:, None]), attention_mask=attn, position_ids=pos, cache=cache,
                    use_cache=True)
        nxt = out.logits[:, -1].argmax(-1)
    seqs = torch.stack(steps, 1).tolist() if steps else [[] for _ in range(first.shape[0])]
    return [[t for t in row[: row.index(eos_id)] if t != pad_id] if eos_id in row else [t for t in row if t != pad_id]
            for row in seqs]
