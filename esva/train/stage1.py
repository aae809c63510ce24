"""Stage 1: MSFE + alignment + fusion classifier trained jointly on cached features (eq. 7).

The loop is written out: seeded shuffling, AdamW, gradient clipping, a NaN guard that stops with the
step and the batch's clip ids, early stopping on the validation weighted F1, the best weights kept.
It runs under accelerate, so the same code uses a GPU when one is configured.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score

from esva import ALL_LABELS, LABELS, label_set_of, vocabulary
from esva.losses import supervised_contrastive, total_loss
from esva.data.manifest import corpus_of
from esva.data.roles import roles_of, stage_split
from esva.eval.sync import offset_errors
from esva.models.align import window_starts
from esva.models.fusion import FRAME_LEVEL, FusionClassifier
from esva.models.msfe import receptive_field
from esva.store import open as open_store
from esva.train.resume import Checkpointer, rng_state, set_rng_state
from esva.train.stream import ByteLRU, StoreFeatures, bound_heap, length_of, prefetch_batches
from esva.precision import autocast, resolve_device, resolve_dtype

log = logging.getLogger(__name__)


class TrainError(RuntimeError):
    """A config or data problem found before training, or a NaN loss during it. Names the keys."""


@dataclass
class Clip:
    clip_id: str
    label: int
    split: str
    offset_ms: float | None
    feats: Mapping[str, np.ndarray]  # a dict, or StoreFeatures streaming from the stores
    gold: str | None = None  # the label's name (also where it is outside the run's vocabulary: label -2)


@dataclass
class FeatureData:
    clips: list[Clip]
    dims: dict[str, int]
    rates: dict[str, float]
    corpus: str
    skipped: dict[str, str] = field(default_factory=dict)
    cache: ByteLRU | None = None  # the stores' read cache, when the features are streamed
    labels: tuple[str, ...] = LABELS  # the run's classes, in index order (esva.vocabulary of its training rows)

    def split(self, name: str) -> list[Clip]:
        return [c for c in self.clips if c.split == name]


def load_features(manifest: pd.DataFrame, stores: dict[str, Path], use: tuple[str, ...],
                  labelled_only: bool = True, cache_mb: int = 512,
                  extra: dict[str, tuple[str, str]] | None = None,
                  labels: tuple[str, ...] | None = None) -> FeatureData:
    """Every labelled clip present in all the used stores; frame-level fields for hubert/mae/videomae
    (streamed from the stores through a cache of `cache_mb` MiB shared by all clips), the utterance vector
    for eva and text (read in one pass). With labelled_only=False, unlabelled clips come too (label -1).
    `extra` adds named fields of a used store, {name: (store, field)}: a field ending in `_utt` is held, any
    other is streamed (stage 2's EVA tokens: {"eva_patches": ("eva", "patches"), "eva_cls": ("eva", "cls_utt")}).
    The classes are `labels` (a trained model's), else the vocabulary of the manifest's training rows; a
    gold label outside them (a class the run never saw) is kept by name and scored as wrong (label -2)."""
    readers = {}
    for name in use:
        path = Path(stores[name])
        if not path.exists():
            raise TrainError(f"features.use lists {name!r} but its store {path} does not exist (run `esva extract {name}`)")
        readers[name] = open_store(path)
    dims = {n: int(r.attrs["dim"]) for n, r in readers.items()}
    rates = {n: float(r.attrs.get("frame_rate") or 0.0) for n, r in readers.items()}
    layer = {n: r.attrs["layers"][0] for n, r in readers.items()}
    fields = {n: layer[n] if n in FRAME_LEVEL else f"{layer[n]}_utt" for n in use}
    frame_level = {n for n in use if n in FRAME_LEVEL}
    for name, (store, fld) in (extra or {}).items():
        if store not in readers:
            raise TrainError(f"field {name!r} needs the {store!r} store, which is not loaded")
        have = list(readers[store].attrs.get("layers", []))
        if (fld[:-4] if fld.endswith("_utt") else fld) not in have:
            raise TrainError(f"{stores[store]} has no field {fld!r} (its layers: {list(have)}): re-run "
                             f"`esva extract {store}` with features.{store}.tokens: true")
        readers[name], fields[name], dims[name] = readers[store], fld, dims[store]
        if not fld.endswith("_utt"):
            frame_level.add(name)
    bound_heap()  # the passes over these clips free what they allocate back to the OS (memory bounded at corpus size)
    utt = {n: readers[n].read_all(fields[n]) for n in fields if n not in frame_level}
    cache = ByteLRU(cache_mb << 20)
    clips, skipped = [], {}
    has_offset = "offset_ms" in manifest.columns
    # train / val / test (the MER evaluation rows) from each row's role; other roles are not read here
    splits = [stage_split(r) for r in roles_of(manifest)]
    if labels is None:
        try:
            labels = vocabulary(lab for lab, s in zip(manifest["label"], splits) if s == "train")
        except ValueError as exc:
            raise TrainError(f"manifest: {exc}") from None
    labels = tuple(labels)
    lab_index = {lab: i for i, lab in enumerate(labels)}
    for row, split in zip(manifest.itertuples(index=False), splits):
        if split is None:
            continue
        cid = row.clip_id
        unlabelled = row.label is None or (isinstance(row.label, float) and math.isnan(row.label))
        if unlabelled and labelled_only:
            skipped[cid] = "no_label"
            continue
        missing = [n for n in use if cid not in readers[n]]  # (extra fields live in the used stores)
        if missing:
            skipped[cid] = f"no_features:{','.join(missing)}"
            continue
        feats = StoreFeatures(cid, readers, fields, frame_level,
                              {n: utt[n][cid].astype(np.float32).reshape(-1) for n in utt}, cache)
        off = float(row.offset_ms) if has_offset and row.offset_ms is not None and not pd.isna(row.offset_ms) else None
        idx = -1 if unlabelled else lab_index.get(row.label, -2)
        clips.append(Clip(cid, idx, split, off, feats, None if unlabelled else str(row.label)))
    return FeatureData(clips, dims, rates, corpus_of(manifest["dataset"]), skipped, cache, labels)


def scored_on(df: pd.DataFrame, data: FeatureData) -> dict[str, list[str]]:
    """{train|val|test: the manifest's `source:split` pairs whose clips that split of the run holds}."""
    where = dict(zip(df["clip_id"], df["source"].astype(str) + ":" + df["split"].astype(str))) \
        if "source" in df.columns else dict(zip(df["clip_id"], df["split"].astype(str)))
    return {s: sorted({where[c.clip_id] for c in data.split(s) if c.clip_id in where}) for s in ("train", "val", "test")}


def check_config(data: FeatureData, use, msfe_cfg, align_cfg) -> None:
    """Sizes that do not fit together are errors naming both keys, before any step."""
    train = data.split("train")
    if not train:
        raise TrainError("the training split is empty (no clip with split 'train' has features and a label)")
    present = {c.label for c in train}
    for i, lab in enumerate(data.labels):
        if i not in present:
            raise TrainError(f"class {lab!r} has no clip in the training split")
    if not data.split("val"):
        raise TrainError("the validation split is empty: epochs are chosen on validation clips only, never on "
                         "training or test ones; list validation splits in data.val, or set data.val: [] and "
                         "data.val_fraction > 0 to carve a share of the training rows")
    if "hubert" in use and msfe_cfg.enabled:
        rf = receptive_field(msfe_cfg)
        shortest = min(length_of(c.feats, "hubert") for c in data.clips)
        if rf > shortest:
            raise TrainError(f"msfe.kernels/msfe.scales give a receptive field of {rf} frames (with msfe.dilation="
                             f"{msfe_cfg.dilation}), longer than the shortest clip ({shortest} HuBERT frames)")
    if align_cfg.enabled and "hubert" in use and align_cfg.video in use:
        rate_v = data.rates[align_cfg.video]
        shortest = min(min(length_of(c.feats, "hubert") * align_cfg.rate / data.rates["hubert"],
                           length_of(c.feats, align_cfg.video) * align_cfg.rate / rate_v) for c in data.clips)
        if 2 * align_cfg.max_shift + 1 > shortest:
            raise TrainError(f"align.max_shift={align_cfg.max_shift} needs clips of at least {2 * align_cfg.max_shift + 1} "
                             f"frames at align.rate={align_cfg.rate}, the shortest has {shortest:.0f}")
        if align_cfg.window > shortest:
            raise TrainError(f"align.window={align_cfg.window} frames is longer than the shortest clip "
                             f"({shortest:.0f} frames at align.rate={align_cfg.rate})")


def collate(clips: list[Clip], use: tuple[str, ...]) -> dict:
    batch: dict = {"label": torch.tensor([c.label for c in clips]), "clip_ids": [c.clip_id for c in clips]}
    for n in use:
        arrs = [c.feats[n] for c in clips]
        if np.ndim(arrs[0]) == 2:  # frame-level (T, D); utterance vectors are (D,)
            lens = torch.tensor([len(a) for a in arrs])
            x = torch.zeros(len(arrs), int(lens.max()), arrs[0].shape[-1])
            for i, a in enumerate(arrs):
                x[i, : len(a)] = torch.from_numpy(a)
            batch[n], batch[f"{n}_len"] = x, lens
        else:
            batch[n] = torch.from_numpy(np.stack(arrs))
    return batch


def _to(batch: dict, device) -> dict:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def compute_losses(model: FusionClassifier, out: dict, batch: dict, cfgs) -> dict[str, torch.Tensor]:
    msfe_cfg, contrast_cfg, align_cfg, train_cfg = cfgs
    y = batch["label"]
    l_emo = F.cross_entropy(out["logits"], y)
    aux = [F.cross_entropy(out[k], y) for k in ("audio_logits", "video_logits") if k in out]
    if aux:
        l_emo = l_emo + train_cfg.aux_weight * sum(aux) / len(aux)
    zero = out["logits"].sum() * 0.0
    l_con = supervised_contrastive(out["z_audio"], y, contrast_cfg.tau) if "z_audio" in out else zero
    if "align" in out:
        al = out["align"]
        l_align = model.aligner.expected_objective(al)
        l_align = l_align + align_cfg.contrast_weight * model.aligner.cross_clip_contrastive(
            al, al["ma"], al["mv"], align_cfg.contrast_tau)
    else:
        l_align = zero
    total = total_loss(l_align, l_emo, l_con, train_cfg.lam, contrast_cfg.gamma)
    return {"loss": total, "emo": l_emo, "align": l_align, "contrast": l_con}


def _batches(clips: list[Clip], batch_size: int) -> list[list[Clip]]:
    return [clips[i:i + batch_size] for i in range(0, len(clips), batch_size)]


def _warm(clip: Clip) -> None:
    if isinstance(clip.feats, StoreFeatures):
        clip.feats.warm()


@torch.no_grad()
def predict(model: FusionClassifier, clips: list[Clip], use, batch_size: int, device=None,
            dtype: torch.dtype = torch.float32) -> dict:
    """Probabilities (fused, audio-only, video-only) and tau* for `clips`, on the model's device by default."""
    model.eval()
    device = device or next(model.parameters()).device
    probs, aprobs, vprobs, taus, tracks, ids = [], [], [], [], [], []
    for part in prefetch_batches(_batches(clips, batch_size), _warm):
        with autocast(str(device), dtype):
            out = model(_to(collate(part, use), device))
        probs.append(out["logits"].float().softmax(-1).cpu())
        if "audio_logits" in out:
            aprobs.append(out["audio_logits"].float().softmax(-1).cpu())
        if "video_logits" in out:
            vprobs.append(out["video_logits"].float().softmax(-1).cpu())
        if "align" in out:
            al = out["align"]
            taus.append(al["tau_star"].float().cpu())
            aligner = model.aligner
            for i in range(len(part)):  # the windows inside each clip's own frames (eq. 4: tau*(t))
                n = window_starts(int(al["ma"][i].sum()), aligner.window, aligner.hop)
                tracks.append(al["tau_track"][i, :n].float().cpu().numpy())
        ids += [c.clip_id for c in part]
    n_classes = model.head[-1].out_features
    res = {"clip_ids": ids, "probs": torch.cat(probs).numpy() if probs else np.zeros((0, n_classes))}
    if aprobs:
        res["audio_probs"] = torch.cat(aprobs).numpy()
    if vprobs:
        res["video_probs"] = torch.cat(vprobs).numpy()
    if taus:
        res["tau_frames"] = torch.cat(taus).numpy()
        res["tau_tracks"] = tracks  # per clip: the offset of each window (frames at align.rate), window-hop apart
    return res


def scores(clips: list[Clip], pred: dict, labels: tuple[str, ...] = LABELS) -> dict | None:
    """Weighted and macro F1 and accuracy of the argmax over the run's classes `labels`, on the label set
    of the clips' gold labels (esva.label_set_of: MER2023's six where they suffice). A predicted class
    outside that set is wrong, and counted in `outside_label_set`."""
    if not clips:
        return None
    gold = [c.gold if c.gold is not None else labels[c.label] for c in clips]
    yhat = [labels[i] for i in pred["probs"].argmax(-1)]
    scored = list(label_set_of(gold))
    present = [lab for lab in scored if lab in set(gold)]
    out = [p if p in scored else "<outside>" for p in yhat]
    return {"weighted_f1": float(f1_score(gold, out, average="weighted", labels=scored, zero_division=0)),
            "macro_f1": float(f1_score(gold, out, average="macro", labels=present, zero_division=0)),
            "accuracy": float(accuracy_score(gold, out)), "n": int(len(gold)), "label_set": scored,
            "outside_label_set": int(sum(p == "<outside>" for p in out))}


def alignment_scores(clips: list[Clip], pred: dict, rate: float, fps: float) -> dict | None:
    if "tau_frames" not in pred:
        return None
    pairs = [(c.offset_ms, t * 1000.0 / rate) for c, t in zip(clips, pred["tau_frames"]) if c.offset_ms is not None]
    return offset_errors([g for g, _ in pairs], [e for _, e in pairs], 1000.0 / fps)


@torch.no_grad()
def _validate(model: FusionClassifier, clips: list[Clip], use, batch_size: int, device, cfgs,
              dtype: torch.dtype = torch.float32) -> tuple[dict, float]:
    """Validation scores and loss from one forward pass per batch."""
    model.eval()
    probs, losses = [], []
    for part in prefetch_batches(_batches(clips, batch_size), _warm):
        batch = _to(collate(part, use), device)
        with autocast(str(device), dtype):
            out = model(batch)
            # contrast needs a pair; a clip whose label no training clip has (-2) is scored, as wrong, but has no loss
            loss = compute_losses(model, out, batch, cfgs)["loss"] \
                if len(part) >= 2 and all(c.label >= 0 for c in part) else None
        probs.append(out["logits"].float().softmax(-1).cpu())
        if loss is not None:
            losses.append(loss.item())
    val = scores(clips, {"probs": torch.cat(probs).numpy()}, model.labels) or {"weighted_f1": 0.0, "accuracy": 0.0}
    return val, float(np.mean(losses)) if losses else float("nan")


@dataclass
class TrainResult:
    model: FusionClassifier
    history: list[dict]
    best_epoch: int
    stopped_early: bool
    dtype: torch.dtype = torch.float32  # the autocast dtype in force


def train(data: FeatureData, use: tuple[str, ...], msfe_cfg, contrast_cfg, align_cfg, train_cfg,
          on_epoch: Callable[[dict], None] | None = None, checkpoint: Callable[[FusionClassifier, int], None] | None = None,
          resume: Checkpointer | None = None) -> TrainResult:
    """The loop. With `resume`, the whole loop state is saved every `resume.every` steps and at every epoch's
    end, and a run that finds its own checkpoint continues from it (same batches, same random draws)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    check_config(data, use, msfe_cfg, align_cfg)
    set_seed(train_cfg.seed)
    device = resolve_device(train_cfg.device, "train.device")
    dtype = resolve_dtype(train_cfg.dtype, device)
    # mixed precision is our autocast (esva.precision), never accelerate's process-wide state, so stages
    # of different precision can run in one process
    accel = Accelerator(cpu=device == "cpu", mixed_precision="no")
    # accelerate's gradient state is process-wide: a stage-2 tuning earlier in this process (gradient
    # accumulation) can leave it mid-accumulation, and the prepared optimizer would then skip every step
    accel.sync_gradients = True
    model = FusionClassifier(data.dims, data.rates, use, len(data.labels), msfe_cfg, align_cfg, train_cfg)
    model.labels = data.labels
    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    model, opt = accel.prepare(model, opt)
    cfgs = (msfe_cfg, contrast_cfg, align_cfg, train_cfg)
    tr, va = data.split("train"), data.split("val")
    gen = torch.Generator().manual_seed(train_cfg.seed)
    best, best_state, best_epoch, bad, history, step = -1.0, None, 0, 0, [], 0
    stopped = False
    warmup = align_cfg.warmup_epochs if accel.unwrap_model(model).aligner is not None else 0
    start_epoch, start_batch, order, sums, n_batches = 1, 0, None, {}, 0
    saved = resume.load() if resume is not None else None
    if saved is not None:
        accel.unwrap_model(model).load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        best, best_state, best_epoch, bad = saved["best"], saved["best_state"], saved["best_epoch"], saved["bad"]
        history, step, stopped = list(saved["history"]), saved["step"], saved["stopped"]
        start_epoch, start_batch, order = saved["epoch"], saved["batch"], saved["order"]
        sums, n_batches = dict(saved["sums"]), saved["n_batches"]
        set_rng_state(saved["rng"], gen)
        for rec in history:  # the curves of the epochs done before the interruption, again
            if on_epoch:
                on_epoch(rec)

    def state(epoch: int, batch: int, order_now) -> dict:
        return {"model": accel.unwrap_model(model).state_dict(), "opt": opt.state_dict(), "best": best,
                "best_state": best_state, "best_epoch": best_epoch, "bad": bad, "history": history, "step": step,
                "stopped": stopped, "epoch": epoch, "batch": batch, "order": order_now, "sums": sums,
                "n_batches": n_batches, "rng": rng_state(gen)}

    for epoch in range(start_epoch, warmup + train_cfg.epochs + 1):
        if stopped:
            break
        model.train()
        warming = epoch <= warmup
        if order is None:  # a resumed epoch keeps the order it drew
            order = torch.randperm(len(tr), generator=gen).tolist()
            sums, n_batches = {}, 0
        parts = [p for p in _batches([tr[j] for j in order], train_cfg.batch_size) if len(p) >= 2]
        for b, part in enumerate(prefetch_batches(parts[start_batch:], _warm), start=start_batch):
            batch = _to(collate(part, use), accel.device)
            with autocast(str(accel.device), dtype):
                out = model(batch)
                losses = compute_losses(accel.unwrap_model(model), out, batch, cfgs)
            if not torch.isfinite(losses["loss"]):
                raise TrainError(f"non-finite loss at epoch {epoch}, step {step} "
                                 f"({ {k: float(v) for k, v in losses.items()} }); batch clips: {batch['clip_ids']}. "
                                 f"The last good checkpoint (epoch {best_epoch}) is kept")
            opt.zero_grad()
            accel.backward(losses["align"] if warming else losses["loss"])
            accel.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            opt.step()
            step += 1
            n_batches += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if resume is not None and resume.due(step) and b + 1 < len(parts):
                resume.save(state(epoch, b + 1, order))
        start_batch = 0
        val, val_loss = _validate(accel.unwrap_model(model), va, use, train_cfg.batch_size, accel.device, cfgs, dtype)
        rec = {"epoch": epoch, **{f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()},
               "val_loss": val_loss, "val_weighted_f1": val["weighted_f1"],
               "val_accuracy": val["accuracy"]}
        rec["phase"] = "align_warmup" if warming else "joint"
        history.append(rec)
        if on_epoch:
            on_epoch(rec)
        order = None
        if not warming:
            if val["weighted_f1"] > best + 1e-9:
                best, best_epoch, bad = val["weighted_f1"], epoch, 0
                best_state = copy.deepcopy(accel.unwrap_model(model).state_dict())
                if checkpoint:
                    checkpoint(accel.unwrap_model(model), epoch)
            else:
                bad += 1
                stopped = bad >= train_cfg.patience
        if resume is not None and resume.every > 0:  # the epoch is done: a resumed run starts the next one
            resume.save(state(epoch + 1, 0, None))
    final = accel.unwrap_model(model)
    if best_state is not None:
        final.load_state_dict(best_state)
    if final.aligner is not None and final.aligner.controller_name == "neural":  # its network, on the trained aligner
        from esva.train.controllers import fit_neural_controller

        fit_neural_controller(final, data.split("train"), use, train_cfg.batch_size, train_cfg.seed,
                              align_cfg.neural_steps, align_cfg.neural_lr, ctrl=final.aligner.controller)
        final.eval()
    return TrainResult(final, history, best_epoch, stopped, dtype)


def load_stage1(model_dir: Path) -> tuple[FusionClassifier, dict]:
    """The trained stage-1 model from its folder (model.safetensors + the resolved config.json)."""
    import json

    from safetensors.torch import load_file

    from esva.config import AlignConfig, MsfeConfig, TrainConfig

    model_dir = Path(model_dir)
    cfg_path, weights = model_dir / "config.json", model_dir / "model.safetensors"
    for f in (cfg_path, weights):
        if not f.exists():
            raise TrainError(f"{f} not found: {model_dir} is not a stage-1 model folder (run `esva train`)")
    with cfg_path.open("r", encoding="utf-8") as fh:
        cfg = json.load(fh)
    labels = tuple(cfg.get("labels") or ())
    if not labels or not set(labels) <= set(ALL_LABELS):
        raise TrainError(f"{cfg_path}: labels {cfg.get('labels')!r} are not a list of supported labels {list(ALL_LABELS)}")
    model = FusionClassifier(cfg["dims"], cfg["rates"], tuple(cfg["use"]), len(labels),
                             MsfeConfig.model_validate(cfg["msfe"]), AlignConfig.model_validate(cfg["align"]),
                             TrainConfig.model_validate(cfg["train"]))
    model.load_state_dict(load_file(str(weights)))
    model.labels = labels
    model.eval()
    return model, cfg
