"""The fp32 embedded default on another instruction set: stage-1 training with every library's float32
kernels held to AVX2 (what a CI machine without AVX-512 runs) against this machine's own kernels, in
fresh processes. Tolerance: probabilities within 1e-4 and the same predicted classes; the committed
demo's own comparison is `python -m benchmarks.portability` (metrics/bench_portability.json)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
SNIPPET = """
import json, torch
from tests.models.test_stage1 import _data, CFGS, USE
from esva.train.stage1 import train, predict
data = _data()
res = train(data, USE, **CFGS)
p = predict(res.model, data.clips, USE, 8, dtype=res.dtype)
print(json.dumps({"cap": torch.backends.cpu.get_cpu_capability(), "history": res.history, "probs": p["probs"].tolist()}))
"""


def _run(env_extra: dict) -> dict:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", SNIPPET], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_fp32_stage1_does_not_depend_on_the_cpu_instruction_set():
    native, avx2 = _run({}), _run(AVX2)
    assert avx2["cap"] == "AVX2"
    a, b = np.array(native["probs"]), np.array(avx2["probs"])
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
    assert (a.argmax(-1) == b.argmax(-1)).all()
    for x, y in zip(native["history"], avx2["history"]):
        assert abs(x["train_loss"] - y["train_loss"]) <= 1e-4 * max(1.0, abs(x["train_loss"]))
