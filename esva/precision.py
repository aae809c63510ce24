"""Precision and device: one place that turns `dtype` / `device` params into torch objects.

- `dtype: fp32 | bf16 | auto`. `bf16` is honoured on every device: CUDA runs it natively where the GPU
  has it, and any x86 CPU runs it (natively with AVX512-BF16 or AMX, emulated and slower elsewhere).
  `auto` is bf16 where the hardware runs it natively and fp32 elsewhere, so it differs between
  machines: the embedded default therefore says `fp32`, and its figures do not depend on the CPU.
  On a CUDA device without bf16, `auto` and `bf16` fall back to fp16 for frozen weights (see
  `weights_dtype`), which is what such a GPU runs natively.
- `device: cpu | cuda | cuda:N | auto`. `auto` is `cuda` when a CUDA device is present, else `cpu`;
  `cuda` without one is an error that names the key.
"""

from __future__ import annotations

import contextlib

import torch


class PrecisionError(ValueError):
    """A dtype or device param that this machine cannot honour. Names the key and the value."""


def cpu_supports_bf16() -> bool:
    """True where the CPU runs bf16 natively (AVX512-BF16 or AMX, as oneDNN reports it)."""
    cap = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else ""
    if "AVX512" in cap or "AMX" in cap:
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except Exception:
            return False
    return False


def cuda_supports_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_device(device: str, key: str = "device") -> str:
    """`auto` -> cuda when present, else cpu; `cuda[:N]` must exist. Returns a torch device string."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PrecisionError(f"{key} is {device!r} but this machine has no CUDA device (use cpu or auto)")
        if ":" in device and int(device.split(":", 1)[1]) >= torch.cuda.device_count():
            raise PrecisionError(f"{key} is {device!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
        return device
    if device != "cpu":
        raise PrecisionError(f"{key} must be cpu, cuda, cuda:N or auto, got {device!r}")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """The compute dtype: `fp32` and `bf16` as said; `auto` is bf16 where the hardware runs it natively
    (a CUDA device with bf16, a CPU with AVX512-BF16 or AMX), float32 elsewhere."""
    if dtype == "fp32":
        return torch.float32
    if dtype == "bf16":
        return torch.bfloat16
    if dtype != "auto":
        raise PrecisionError(f"dtype must be auto, bf16 or fp32, got {dtype!r}")
    if device.startswith("cuda"):
        return torch.bfloat16 if cuda_supports_bf16() else torch.float32
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


def weights_dtype(dtype: str, device: str) -> torch.dtype:
    """The dtype a large frozen model (the base LLM) is loaded in, which is also its compute dtype:
    the compute dtype of `resolve_dtype`, except that a CUDA device without bf16 gets fp16 (what such a
    GPU runs natively) unless `fp32` is asked for."""
    if dtype != "fp32" and device.startswith("cuda") and torch.cuda.is_available() and not cuda_supports_bf16():
        return torch.float16
    return resolve_dtype(dtype, device)


def autocast(device: str, dtype: torch.dtype):
    """Mixed precision for a block: a no-op under float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if str(device).startswith("cuda") else "cpu", dtype=dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def precision_record(requested: str, device: str, compute: torch.dtype) -> dict:
    """What every store and model records about the precision in force."""
    return {"requested": requested, "compute": dtype_name(compute), "device": device,
            "cpu_native_bf16": cpu_supports_bf16(), "torch": torch.__version__}
