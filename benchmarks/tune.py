"""Stage-2 throughput: LoRA training tokens/s on the tiny LLaMA (with and without gradient
checkpointing), batched versus one-at-a-time greedy generation, and a forward/backward step of the
Llama-2-7B architecture on an accelerator when one is present (skipped, with the reason, otherwise).

Weights are random (the numbers are about speed, not quality); inputs go through the project's own
code: PromptCodec-style left padding, `splice`, `greedy_generate`, peft LoRA from `tune.*`.

    python -m benchmarks.tune            # -> metrics/bench_tune.json
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from benchmarks.report import write_result

from esva.config import LlmConfig, TuneConfig
from esva.models.llm import activation_checkpointing, add_lora, greedy_generate, positions

LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)


def build(llm_cfg: dict, tune_cfg: TuneConfig, device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, **llm_cfg))
    finally:
        torch.set_default_dtype(prev)
    model.requires_grad_(False)
    return add_lora(model, tune_cfg)


def batch(b: int, lengths: list[int], hidden: int, device: str, dtype: torch.dtype, seed: int = 0):
    """Left-padded inputs_embeds (B, T, H), attention mask and labels (the last 40% of each row)."""
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    x = torch.randn(b, t, hidden, generator=g).to(device, dtype) * 0.02
    attn = torch.zeros(b, t, dtype=torch.long)
    for i, n in enumerate(lengths):
        attn[i, t - n:] = 1
    labels = torch.randint(0, 1000, (b, t), generator=g)
    labels[:, : int(t * 0.6)] = -100
    labels[attn == 0] = -100
    return x, attn.to(device), labels.to(device)


def train_step_time(model, b: int, lengths: list[int], steps: int, device: str, dtype: torch.dtype,
                    checkpointing: bool) -> dict:
    base = model.get_base_model()
    if checkpointing:
        activation_checkpointing(base)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    x, attn, labels = batch(b, lengths, base.config.hidden_size, device, dtype)
    x.requires_grad_(True)  # as the projector's output would
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def step():
        logits = model(inputs_embeds=x, attention_mask=attn, position_ids=positions(attn)).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                 labels[:, 1:].reshape(-1), ignore_index=-100)
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    sec = (time.perf_counter() - t0) / steps
    if checkpointing:
        activation_checkpointing(base, on=False)
    out = {"seconds_per_step": sec, "tokens_per_second": int(attn.sum()) / sec}
    if device.startswith("cuda"):
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def generation(model, b: int, lengths: list[int], new_tokens: int, device: str, dtype: torch.dtype) -> dict:
    """Batched greedy decoding against the same prompts one at a time; both must give the same tokens."""
    model.eval()
    hidden = model.get_base_model().config.hidden_size
    x, attn, _ = batch(b, lengths, hidden, device, dtype, seed=1)
    no_eos = -1  # decode the full budget in both paths
    t0 = time.perf_counter()
    batched = greedy_generate(model, x, attn, new_tokens, no_eos, pad_id=0)
    _sync(device)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = []
    for i, n in enumerate(lengths):
        single += greedy_generate(model, x[i:i + 1, -n:], attn[i:i + 1, -n:], new_tokens, no_eos, pad_id=0)
    _sync(device)
    t_single = time.perf_counter() - t0
    n_tok = b * new_tokens
    agree = sum(a == s for a, s in zip(batched, single)) / b
    return {"batched_tokens_per_second": n_tok / t_batched, "single_tokens_per_second": n_tok / t_single,
            "batched_speedup": t_single / t_batched, "rows_identical_batched_vs_single": agree}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--tiny-hidden", type=int, default=LlmConfig().hidden_size)
    ap.add_argument("--tiny-layers", type=int, default=LlmConfig().layers)
    ap.add_argument("--big-layers", type=int, default=32, help="layers of the 7B architecture (fewer: a slice)")
    ap.add_argument("--big-seq", type=int, default=512)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--force-big", action="store_true", help="run the 7B step even without an accelerator")
    ap.add_argument("--out", type=Path, default=Path("metrics/bench_tune.json"))
    args = ap.parse_args(argv)
    tune_cfg = TuneConfig()
    lc = LlmConfig()
    tiny = dict(vocab_size=lc.vocab_size, hidden_size=args.tiny_hidden, intermediate_size=lc.intermediate_size,
                num_hidden_layers=args.tiny_layers, num_attention_heads=lc.heads, num_key_value_heads=lc.heads,
                max_position_embeddings=lc.max_length)
    # stage-2 prompts on the synthetic corpus are about 90-110 tokens, answers up to 96
    lengths = [150 + (13 * i) % 60 for i in range(args.batch)]
    model = build(tiny, tune_cfg, args.device, torch.float32)
    plain = train_step_time(model, args.batch, lengths, args.steps, args.device, torch.float32, False)
    ckpt = train_step_time(model, args.batch, lengths, args.steps, args.device, torch.float32, True)
    gen = generation(model, args.batch, [n - 60 for n in lengths], args.new_tokens, args.device, torch.float32)
    result = {
        "device": args.device, "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "note": "random weights; speed only",
        "target": "batched greedy generation faster than one row at a time, with identical rows",
        "meets_target": bool(gen["batched_speedup"] > 1.0 and gen["rows_identical_batched_vs_single"] >= 1.0),
        "tiny": {"config": tiny, "lora_r": tune_cfg.lora_r, "batch": args.batch, "train": plain,
                 "train_grad_checkpointing": ckpt, "checkpointing_time_ratio": ckpt["seconds_per_step"] / plain["seconds_per_step"],
                 "generation": gen},
    }
    if args.device.startswith("cuda") or args.force_big:
        big = dict(LLAMA2_7B, num_hidden_layers=args.big_layers)
        dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
        model = build(big, tune_cfg, args.device, dtype)
        result["llama2_7b"] = {"config": big, "dtype": str(dtype), "batch": 1, "seq": args.big_seq,
                               "train_grad_checkpointing": train_step_time(model, 1, [args.big_seq], max(2, args.steps // 3),
                                                                           args.device, dtype, True)}
        if args.device.startswith("cuda"):
            result["llama2_7b"]["gpu"] = torch.cuda.get_device_name()
    else:
        result["llama2_7b"] = {"skipped": "no accelerator present (the 7B step only runs on one)"}
    return write_result(result, args.out)


if __name__ == "__main__":
    main()
