"""Many processes for `esva extract`: one shard per process under torchrun or `accelerate launch`.

Each process extracts shard RANK of WORLD_SIZE (`pipeline.stages.extract.shard_of`) on its own device
(cuda:LOCAL_RANK where the encoder runs on a GPU) into its own shard store; then every process says whether
its shard finished, and rank 0 merges the shards into the output store if all did (else it names the
shards that failed; each process's own error is raised in that process, so the launcher reports it).
The processes talk only for that (gloo: the same on a CPU and on GPUs); the features never leave their
process but through the shard stores. `relaunch` starts `esva extract` again under torchrun with the
same arguments (params `compute.launcher: multi-gpu`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.common import StageFailed, log


class ShardFailed(StageFailed):
    """Another process's shard did not finish: names the shards."""


def rank_info() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) as torchrun and accelerate launch set them."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))


def sharded_extract(stage, encoder: str, cfg, out: Path, models: Path, metrics: Path | None, where: dict) -> None:
    import torch
    import torch.distributed as dist

    from esva.encoders import resolve_checkpoint

    rank, world, local = rank_info()
    if str(cfg.device) in ("cuda", "auto") and torch.cuda.is_available():
        torch.cuda.set_device(local % torch.cuda.device_count())  # `cuda` is then this process's own GPU
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo")
    try:
        if rank == 0:  # a tiny checkpoint or a cache folder is written by one process, before any reads it
            resolve_checkpoint(encoder, cfg, models)
        dist.barrier()
        error: BaseException | None = None
        try:
            stage.run(encoder, cfg, out, models_dir=models, metrics_dir=None, shard=(rank, world), **where)
        except Exception as exc:  # noqa: BLE001 - reported to rank 0, then raised here
            error = exc
        flags = [None] * world
        dist.all_gather_object(flags, error is None)
        if error is not None:
            raise error
        failed = [i for i, ok in enumerate(flags) if not ok]
        if rank == 0:
            if failed:
                raise ShardFailed(f"extract {encoder}: shard(s) {failed} of {world} failed (see those processes' "
                                  f"errors); the finished shards are kept in {out}.shards/ and resume on the next run")
            log.info("extract %s: %d shards done, merging into %s", encoder, world, out)
            stage.merge(encoder, cfg, out, world, metrics_dir=metrics, **where)
    finally:
        if own_group:
            dist.destroy_process_group()


def relaunch(processes: int) -> None:
    """This `esva` command again under torchrun with `processes` processes on this machine."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
           "-m", "pipeline.cli", *sys.argv[1:]]
    log.info("compute.launcher=multi-gpu: %s", " ".join(cmd))
    rc = subprocess.call(cmd)
    if rc != 0:
        raise ShardFailed(f"torchrun with {processes} processes exited with status {rc}: {' '.join(cmd)}")
