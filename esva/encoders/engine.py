"""The extraction engine: length-bucketed batches under a budget, frozen forward passes, checks,
and a resumable Zarr feature store (commits on batch boundaries).

Per clip and configured layer it stores the frame-level sequence (T x D, float16) and the utterance
mean (1 x D, float32) computed over the valid frames only, so padding never leaks into either.

Short input (documented policy, `features.<enc>.short_policy`): a clip shorter than the encoder's
minimum (HuBERT: its conv receptive field, 400 samples) is padded to the minimum (audio with zeros,
frames by repeating the last one) and the clip's meta records `padded_from`; with `skip` it is
skipped with reason `too_short_for_encoder`. An empty input (no audio, no frames) is always
skipped (`empty_input`). A NaN or Inf in a feature stops the run with an error naming the clip;
the clips finished before it stay in the store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch

from esva.encoders.base import masked_mean
from esva.store import FieldSpec

log = logging.getLogger(__name__)


class FeatureError(RuntimeError):
    """A non-finite feature: names the clip and the layer."""


@dataclass
class Skip:
    clip_id: str
    reason: str
    detail: str


def feature_fields(layers: Iterable[str], dim: int) -> dict[str, FieldSpec]:
    rows = max(256, (1 << 20) // (2 * dim))  # ~1 MiB float16 chunks, 64 chunks a shard
    fields = {}
    for name in layers:
        fields[name] = FieldSpec("float16", inner=(dim,), chunk_rows=rows, shard_chunks=64)
        fields[f"{name}_utt"] = FieldSpec("float32", inner=(dim,), chunk_rows=1024, shard_chunks=16)
    return fields


def plan_batches(costs: dict[str, int], budget: int, single: bool = False, max_padding: float = 0.1) -> list[list[str]]:
    """Length bucketing: clips sorted by cost (longest first), packed while the padded batch cost
    (batch size x longest item) stays within the budget and no item is padded by more than
    `max_padding` of the longest. A clip over budget gets a batch alone."""
    order = sorted(costs, key=lambda c: (-costs[c], c))
    batches: list[list[str]] = []
    cur: list[str] = []
    for cid in order:
        if cur:
            longest = costs[cur[0]]
            full = longest * (len(cur) + 1) > budget
            ragged = costs[cid] < (1.0 - max_padding) * longest
            if single or full or ragged:
                batches.append(cur)
                cur = []
        cur.append(cid)
    if cur:
        batches.append(cur)
    return batches


def _pad_to(item: Any, modality: str, n: int) -> Any:
    if modality == "audio":
        return np.pad(np.asarray(item, np.float32), (0, n - len(item)))
    idx = np.minimum(np.arange(n), len(item) - 1)
    return np.asarray(item)[idx]


def run_extraction(encoder, lengths: dict[str, int], load: Callable[[str], Any], writer, short_policy: str,
                   on_done: Callable[[int], None] | None = None, max_padding: float = 0.1) -> tuple[int, list[Skip]]:
    """Encode every clip in `lengths` (raw input length: samples, frames or characters), writing
    to `writer` (a RaggedWriter with feature_fields). Returns (clips written, skips)."""
    skips: list[Skip] = []
    costs: dict[str, int] = {}
    for cid, n in lengths.items():
        if n <= 0 and encoder.modality != "text":
            skips.append(Skip(cid, "empty_input", f"no {encoder.modality} input"))
        elif n < encoder.min_length and short_policy == "skip":
            skips.append(Skip(cid, "too_short_for_encoder", f"{n} < {encoder.min_length} input units for {encoder.name}"))
        else:
            costs[cid] = encoder.cost(max(n, encoder.min_length))
    budget = getattr(encoder, "budget", None) or 1
    done = 0
    for batch_ids in plan_batches(costs, budget, single=getattr(encoder, "single", False), max_padding=max_padding):
        items, metas = [], []
        for cid in batch_ids:
            item = load(cid)
            meta: dict[str, Any] = {}
            n = len(item) if encoder.modality != "text" else len(item or "")
            if encoder.modality != "text" and n < encoder.min_length:
                meta["padded_from"] = int(n)
                log.warning("%s: %s input of %d units padded to the minimum %d", cid, encoder.name, n, encoder.min_length)
                item = _pad_to(item, encoder.modality, encoder.min_length)
            items.append(item)
            metas.append(meta)
        batch = encoder.collate(batch_ids, items)
        out = {k: v.float().cpu() for k, v in encoder.encode(batch).items()}  # features leave the device here
        out_len = encoder.output_lengths(batch).cpu()
        fixed = getattr(encoder, "fixed_lengths", {})  # fields of their own length (EVA's patch tokens)
        lens = {name: torch.full_like(out_len, fixed[name]) if name in fixed else out_len for name in out}
        utt = {name: masked_mean(x, lens[name]) for name, x in out.items()}
        for i, cid in enumerate(batch_ids):
            t = int(out_len[i])
            arrays = {}
            for name, x in out.items():
                seq = x[i, :int(lens[name][i])]
                if not torch.isfinite(seq).all():
                    bad = int((~torch.isfinite(seq)).sum())
                    raise FeatureError(f"clip {cid!r}: {bad} non-finite values (NaN/Inf) in {encoder.name} layer {name!r}")
                seq16 = seq.to(torch.float16)
                if not torch.isfinite(seq16).all():
                    raise FeatureError(f"clip {cid!r}: {encoder.name} layer {name!r} overflows float16 "
                                       f"(max |x| = {float(seq.abs().max()):.3g})")
                arrays[name] = seq16.cpu().numpy()
                arrays[f"{name}_utt"] = utt[name][i:i + 1].cpu().numpy().astype(np.float32)
            meta = {**metas[i], "frames": t}
            if "frame_index" in batch.extra:
                meta["frame_index"] = int(batch.extra["frame_index"][i])
            writer.add(cid, arrays, meta, defer=True)
            done += 1
            if on_done:
                on_done(1)
        # commits fall on batch boundaries: after a crash the store holds whole batches of the plan, so the
        # resumed run packs the rest into the same batches as an uninterrupted one (bit-identical features)
        writer.maybe_commit()
    return done, skips
