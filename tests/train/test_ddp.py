"""Stage 2 under two processes (torchrun, gloo on this CPU) against one process with the same global batch:
the same loss curve and the same trained weights, within float tolerance."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.models.test_stage2 import world  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_two_process_tune_matches_one_process(world, tmp_path):  # noqa: F811
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    args = [str(world["stage1"]), str(world["lm"])]
    one = subprocess.run([sys.executable, "-m", "tests.train.ddp_tune", *args, str(tmp_path / "one.safetensors")],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          "-m", "tests.train.ddp_tune", *args, str(tmp_path / "two.safetensors")],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(str(tmp_path / "one.safetensors")), load_file(str(tmp_path / "two.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    ra, rb = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert ra["tokens"] == rb["tokens"] > 0  # every answer token of every global batch was trained on, once
    la, lb = [s["train_loss"] for s in ra["steps"]], [s["train_loss"] for s in rb["steps"]]
    assert len(la) == len(lb) >= 3
    for x, y in zip(la, lb):
        assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (la, lb)
    # each process trained on its half of every global batch, not on the whole batch twice
    n1 = json.loads((tmp_path / "one.rank0.json").read_text())["samples"]
    halves = [json.loads((tmp_path / f"two.rank{r}.json").read_text())["samples"] for r in (0, 1)]
    assert len(n1) == len(halves[0]) == len(halves[1])
    assert [x + y for x, y in zip(*halves)] == n1 and max(halves[0]) < max(n1)
    # the same weights up to the reduction order: AdamW normalises each weight's update by its own gradient
    # history, so where a gradient is ~0 a rounding difference can flip that weight's step (measured: 26 of
    # 3,584 weights off by more than 1e-4, at most 2e-3, after 4 steps at lr 1e-3); the whole set agrees to 6e-4 relative
    import torch

    num = sum(((a[k].float() - b[k].float()) ** 2).sum() for k in a) ** 0.5
    den = sum((a[k].float() ** 2).sum() for k in a) ** 0.5
    assert float(num / den) <= 1.2e-3, float(num / den)  # unweighted per-process means: 2.4e-3 (measured)
    off = sum(int(((a[k].float() - b[k].float()).abs() > 1e-4).sum()) for k in a)
    total = sum(a[k].numel() for k in a)
    assert off <= 0.02 * total, (off, total)
    assert any((a[k] != 0).any() for k in a)
