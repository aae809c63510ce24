"""One stage-2 epoch on the tiny world of tests/models/test_stage2.py, for tests/train/test_ddp.py: run as
`python -m tests.train.ddp_tune STAGE1 LM OUT` (one process) or under torchrun (several); the main process
writes the trained weights and the loss curve to OUT (safetensors + json)."""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from esva.train import stage2
from tests.models.test_stage2 import TUNE, _features, _manifest


def main(stage1: str, lm: str, out: str) -> None:
    torch.set_num_threads(1)
    df = _manifest()
    cfg = TUNE.model_copy(update={"epochs": 1, "batch_size": 4, "grad_accum": 1, "lora_dropout": 0.0})
    steps, seen = [], []
    real = stage2.Stage2.loss

    def counted(self, clips, samples, grad=True):  # what this process trained on
        if grad:  # training (validation scores with grad=False, in every process)
            seen.append(len(samples))
        return real(self, clips, samples, grad)

    stage2.Stage2.loss = counted
    res = stage2.tune(_features(df), df, Path(stage1), Path(lm), cfg, on_step=steps.append)
    stage2.Stage2.loss = real
    import os

    Path(out).with_suffix(f".rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps({"samples": seen}))
    if int(os.environ.get("RANK", "0")) == 0:
        save_file({k: v.detach().cpu().contiguous() for k, v in res.model.trainable_state().items()}, out)
        Path(out).with_suffix(".json").write_text(json.dumps({"steps": steps, "tokens": res.tokens,
                                                              "history": res.history}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
