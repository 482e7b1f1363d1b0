"""Device and precision as values.

The one module that turns a device name (``cuda``, ``npu``, ``cpu``, ``auto``, optionally with an
index) into a ``torch.device``, the distributed backend it needs and the autocast dtype it runs
best in. It is the only place that imports ``torch_npu``.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

import torch

DEVICE_TYPES = ("cuda", "npu", "cpu")
BACKENDS = {"cuda": "nccl", "npu": "hccl", "cpu": "gloo"}


def npu_available() -> bool:
    """True when torch_npu is installed and sees at least one NPU (imports it on first call)."""
    try:
        importlib.import_module("torch_npu")
    except ImportError:
        return False
    return bool(torch.npu.is_available())


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """``"auto"`` picks cuda, then npu, then cpu. ``local_rank`` picks the index when none is given."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "npu" if npu_available() else "cpu"
    device = torch.device(name)
    if device.type not in DEVICE_TYPES:
        raise ValueError(f"unsupported device '{name}'; use one of: auto, {', '.join(DEVICE_TYPES)}")
    if device.type == "npu" and not npu_available():
        raise RuntimeError("device 'npu' needs torch_npu and an Ascend NPU; neither was found")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA GPU")
    if device.type != "cpu" and device.index is None and local_rank is not None:
        device = torch.device(device.type, local_rank)
    if device.index is not None:
        count = torch.get_device_module(device.type).device_count()
        if device.index >= count:
            raise RuntimeError(
                f"device {device} does not exist: torch sees {count} {device.type} device(s) on this node "
                "(under torchrun the index is LOCAL_RANK: start at most that many processes per node)"
            )
    return device


def init_device(device: torch.device) -> None:
    """Per-process set-up of ``device``: make it the current device; on Ascend, use the pre-built
    binary kernels instead of compiling operators online (the Ascend port's
    ``set_compile_mode(jit_compile=False)``; dynamic text lengths would otherwise recompile). On
    CPU, subnormal numbers are flushed to zero: vanishing attention probabilities and their
    gradients made a tiny-model training step 25 times slower, for contributions below 1e-38."""
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    elif device.index is not None:  # a bare "cuda"/"npu" keeps the current device
        torch.get_device_module(device.type).set_device(device)
    if device.type == "npu":
        torch.npu.set_compile_mode(jit_compile=False)


def dist_backend(device: torch.device) -> str:
    return BACKENDS[device.type]


def supports_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "npu":
        return bool(getattr(torch.npu, "is_bf16_supported", lambda: False)())
    return True


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype for this device: bf16 where supported, else fp16; None on CPU."""
    if device.type == "cpu":
        return None
    return torch.bfloat16 if supports_bf16(device) else torch.float16


def parse_dtype(name: str) -> torch.dtype:
    """``"fp16"``/``"bf16"``/``"fp32"`` (and the torch spellings) to a dtype."""
    table = {
        "fp16": torch.float16,
        "float16": torch.float16,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }
    if name not in table:
        raise ValueError(f"unknown precision '{name}'; use one of: fp16, bf16, fp32")
    return table[name]


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` on ``device``; a no-op when ``dtype`` is None or fp32."""
    if dtype is None or dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize(device)


def accelerator_name(device: torch.device) -> str | None:
    """The accelerator's model name as its runtime reports it (None on a CPU)."""
    if device.type == "cpu":
        return None
    return torch.get_device_module(device.type).get_device_name(device)


def max_memory_allocated(device: torch.device) -> int:
    """Peak bytes allocated on the device since start (0 on CPU, where torch does not track it)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    if device.type == "npu":
        return torch.npu.max_memory_allocated(device)
    return 0
