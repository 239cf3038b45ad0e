"""Where and in what precision a model runs: the one `DevicePlan` resolver (SPEC §11).

`plan_device(device, dtype)` resolves the CLI's `--device` / `--dtype`:

- device `auto`: CUDA when visible, else Apple MPS when available, else CPU;
  `cpu`, `cuda`, `cuda:N` and `mps` are taken as given but checked (a device
  that is not there, or a name torch does not know such as `tpu9`, is one
  `InputError` line, raised before anything loads);
- dtype `auto` / None: bfloat16 on a GPU that supports it (float16 otherwise),
  float32 on CPU and MPS (MPS bf16 kernels are incomplete; float32 is exact);
- `device_map="auto"` only when plain `cuda` is asked for and several GPUs are
  visible, so transformers shards the model over them.

Evaluation, unlearning and certification all resolve devices here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from mansu_audit.errors import InputError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
DEVICE_FORMS = "auto, cpu, cuda, cuda:N or mps"
_DEVICE = re.compile(r"^(cpu|mps|cuda)(:\d+)?$")


@dataclass(frozen=True)
class DevicePlan:
    """Where and in what precision a model runs; `device_map` set only when sharding across GPUs."""

    device: str
    dtype: torch.dtype
    device_map: str | None = None

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def describe(self) -> str:
        shard = f", device_map={self.device_map} over {torch.cuda.device_count()} GPUs" if self.device_map else ""
        return f"{self.device} {str(self.dtype).replace('torch.', '')}{shard}"


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return backend is not None and backend.is_available()


def resolve_device_name(device: str | torch.device | None) -> str:
    """`auto`/None -> cuda, mps or cpu (first available); anything else checked and returned as text."""
    dev = "auto" if device is None else str(device).strip()
    if dev == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if not _DEVICE.match(dev):
        raise InputError(f"unknown device '{dev}' (use {DEVICE_FORMS})")
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device '{dev}' requested but no CUDA GPU is visible")
        index = int(dev.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise InputError(f"device '{dev}' requested but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    if dev.startswith("mps") and not mps_available():
        raise InputError(f"device '{dev}' requested but Apple MPS is not available")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if str(dtype) in DTYPES:
        return DTYPES[str(dtype)]
    raise InputError(f"unknown dtype '{dtype}' (use auto, float32, bfloat16 or float16)")


def plan_device(device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = "auto") -> DevicePlan:
    """Resolve `--device`/`--dtype` into a `DevicePlan` (see the module docstring for the rules)."""
    dev = resolve_device_name(device)
    device_map = "auto" if dev == "cuda" and torch.cuda.device_count() > 1 else None
    return DevicePlan(dev, resolve_dtype(dtype, dev), device_map)


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of the input embeddings (where input ids must go, also when sharded)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device
