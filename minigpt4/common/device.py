"""Device and precision as values.

The one module that turns a device name (``cuda``, ``npu``, ``cpu``, ``auto``, optionally with an
index) into a ``torch.device``, the distributed backend it needs and the autocast dtype it runs
best in. It is the only place that imports ``torch_npu``. A CPU process also gets its thread
count here (see :func:`cpu_threads`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from minigpt4.common.errors import MiniGPT4Error

logger = logging.getLogger(__name__)

DEVICE_TYPES = ("cuda", "npu", "cpu")
BACKENDS = {"cuda": "nccl", "npu": "hccl", "cpu": "gloo"}
# How to leave the accelerator out, as each kind of entry point spells it.
CPU_HINT = (
    "to run on the CPU, pass --device cpu (demo.py, inference.py, test/benchmark.py) "
    "or --options run.device=cpu (train.py)"
)


class DeviceError(MiniGPT4Error, RuntimeError):
    """A device that this machine does not have."""


class DeviceNameError(MiniGPT4Error, ValueError):
    """A device or precision name that is not one of the supported ones."""


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
        raise DeviceNameError(f"unsupported device '{name}'; use one of: auto, {', '.join(DEVICE_TYPES)}")
    if device.type == "npu" and not npu_available():
        raise DeviceError(f"device 'npu' needs torch_npu and an Ascend NPU; neither was found ({CPU_HINT})")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device '{name}' was asked for but torch sees no CUDA GPU; {CPU_HINT}")
    if device.type != "cpu" and device.index is None and local_rank is not None:
        device = torch.device(device.type, local_rank)
    if device.index is not None:
        count = torch.get_device_module(device.type).device_count()
        if device.index >= count:
            raise DeviceError(
                f"device {device} does not exist: torch sees {count} {device.type} device(s) on this node "
                "(under torchrun the index is LOCAL_RANK: start at most that many processes per node)"
            )
    return device


def cpu_threads() -> int:
    """The default torch thread count of a CPU process: the cores this process may use divided by
    the processes torchrun starts on this node (``LOCAL_WORLD_SIZE``), at least 1. Threads that
    outnumber the cores made the tiny steps 50-80 times slower on a loaded 2-core machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


_threads = {"set": False}  # per process: the first CPU set-up decides, flags aside


def set_cpu_threads(threads: int | None = None) -> int:
    """Sets torch's thread count once per process: ``threads`` when given (a command-line flag),
    else ``OMP_NUM_THREADS`` when set (torchrun sets 1), else :func:`cpu_threads`.
    Later calls without ``threads`` keep the count. Returns the count in use."""
    if threads is not None:
        if threads < 1:
            raise DeviceNameError(f"the CPU thread count must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    elif not _threads["set"]:
        explicit = os.environ.get("OMP_NUM_THREADS", "")
        # Set even when given: torch does not always take OMP_NUM_THREADS above its own count.
        torch.set_num_threads(int(explicit) if explicit.isdigit() and int(explicit) > 0 else cpu_threads())
    _threads["set"] = True
    return torch.get_num_threads()


def init_device(device: torch.device, threads: int | None = None) -> None:
    """Per-process set-up of ``device``: make it the current device; on Ascend, use the pre-built
    binary kernels instead of compiling operators online (the Ascend port's
    ``set_compile_mode(jit_compile=False)``; dynamic text lengths would otherwise recompile). On
    CPU, the thread count is set (:func:`set_cpu_threads`; ``threads`` is a flag's value) and
    subnormal numbers are flushed to zero: vanishing attention probabilities and their gradients
    made a tiny-model training step 25 times slower, for contributions below 1e-38."""
    if device.type == "cpu":
        logger.debug("CPU threads: %d", set_cpu_threads(threads))
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
        raise DeviceNameError(f"unknown precision '{name}'; use one of: fp16, bf16, fp32")
    return table[name]


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` on ``device``; a no-op when ``dtype`` is None or fp32."""
    if dtype is None or dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def move_to_device(samples: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """A batch's tensors on ``device`` (copied without blocking from pinned memory); the rest as is."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in samples.items()}


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
