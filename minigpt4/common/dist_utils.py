"""Distributed training helpers: torchrun's environment to a process group, and rank queries.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
``init_distributed_mode`` joins the process group with the backend the device needs (nccl, hccl,
gloo; ``common/device.py`` decides). Without torchrun one process trains alone, whatever
``run.distributed`` says. Nothing here mutates the config: the rank and the device are returned
or queried.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.distributed as dist

from minigpt4.common.device import dist_backend, init_device, resolve_device

logger = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed_mode(device_name: str, dist_url: str = "env://") -> torch.device:
    """Join torchrun's process group (the first call) and return this process's device.

    ``device_name`` is ``run.device`` (cuda, npu, cpu, auto); under torchrun the device index is
    ``LOCAL_RANK``, so each process of a node takes its own accelerator."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if launched_by_torchrun() else None
    device = resolve_device(device_name, local_rank)
    init_device(device)
    if local_rank is None:
        return device
    if not is_dist_avail_and_initialized():
        backend = dist_backend(device)
        dist.init_process_group(backend=backend, init_method=dist_url)
        logger.info(
            "distributed: rank %d of %d, local rank %d, backend %s, master %s:%s",
            dist.get_rank(),
            dist.get_world_size(),
            local_rank,
            backend,
            os.environ.get("MASTER_ADDR", "?"),
            os.environ.get("MASTER_PORT", "?"),
        )
    return device


def barrier() -> None:
    if is_dist_avail_and_initialized():
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (for example the job id, so that all ranks agree)."""
    if not is_dist_avail_and_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_dist_avail_and_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """In place over all ranks (sum by default); returns ``tensor``. One process: unchanged."""
    if is_dist_avail_and_initialized():
        dist.all_reduce(tensor, op=op)
    return tensor


def destroy_process_group() -> None:
    if is_dist_avail_and_initialized():
        dist.destroy_process_group()


__all__ = [
    "all_gather_object",
    "all_reduce",
    "barrier",
    "broadcast_object",
    "destroy_process_group",
    "get_rank",
    "get_world_size",
    "init_distributed_mode",
    "is_dist_avail_and_initialized",
    "is_main_process",
    "launched_by_torchrun",
]
