"""Resumable training: the whole loop state on disk every N steps, so a killed run continues where it was.

A checkpoint holds the model, the optimizer (and scheduler, where there is one), the loop counters and
history, the best weights so far, and every random state the loop draws from (torch's CPU and CUDA
generators and the loop's own shuffling generator). It is written atomically (a temporary file, fsync,
rename), read back only through torch's `weights_only` loader, and carries a key: the hash of everything
that made the run (params, the manifest, the feature stores' indexes). A checkpoint with another key
belongs to another run and is ignored (with a warning), never resumed from.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def file_key(*paths: Path | str) -> str:
    """A digest of files' bytes (manifests, store indexes), for a run's key."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        h.update(str(p.name).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def resume_path(out: Path | str) -> Path:
    """Where a run's resumable state lives: `<out>.resume/state.pt`, beside the output folder (which DVC
    clears before it reruns a stage)."""
    out = Path(out)
    return out.with_name(out.name + ".resume") / "state.pt"


def rng_state(gen: torch.Generator | None = None) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if gen is not None:
        state["gen"] = gen.get_state()
    return state


def set_rng_state(state: dict[str, Any], gen: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if gen is not None and "gen" in state:
        gen.set_state(state["gen"])


class Checkpointer:
    """`path` is the checkpoint file; `key` the run's identity; `every` the steps between saves (0: never)."""

    def __init__(self, path: Path | str | None, key: str, every: int) -> None:
        self.path = Path(path) if path else None
        self.key = key
        self.every = int(every)
        self.saves = 0

    def load(self) -> dict[str, Any] | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn file cannot happen (atomic rename); anything else: start over, loudly
            log.warning("%s: unreadable training checkpoint (%s: %s); starting from scratch", self.path,
                        exc.__class__.__name__, exc)
            return None
        if state.get("key") != self.key:
            log.warning("%s: checkpoint of another run (key %s, this run %s); starting from scratch",
                        self.path, state.get("key"), self.key)
            return None
        log.info("%s: resuming at epoch %d, step %d", self.path, state["epoch"], state["step"])
        return state

    def due(self, step: int) -> bool:
        return self.path is not None and self.every > 0 and step % self.every == 0

    def save(self, state: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as fh:
            torch.save({**state, "key": self.key}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self.saves += 1

    def clear(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()
