"""The learning-rate schedules named by ``run.lr_sched``, with the reference's formulas.

The runner calls ``step(cur_epoch, cur_step)`` before every iteration; the schedule is a pure
function of the global step ``t = cur_epoch * iters_per_epoch + cur_step`` and sets the learning
rate of every parameter group, so a warmup longer than one epoch keeps warming up in the next one.

Both schedules take one keyword set (``optimizer, max_epoch, iters_per_epoch, min_lr, init_lr,
decay_rate, warmup_start_lr, warmup_steps``) and ignore what they do not use, so that one call
builds either.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from omegaconf import DictConfig

from minigpt4.common.registry import registry


def warmup_lr(step: int, max_step: int, init_lr: float, max_lr: float) -> float:
    """Linear from ``init_lr`` at step 0 towards ``max_lr`` at ``max_step``, capped at ``max_lr``."""
    return min(max_lr, init_lr + (max_lr - init_lr) * step / max(max_step, 1))


def cosine_lr(epoch: int, max_epoch: int, init_lr: float, min_lr: float) -> float:
    """Half a cosine from ``init_lr`` at 0 down to ``min_lr`` at ``max_epoch``."""
    return (init_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * epoch / max_epoch)) + min_lr


def step_lr(epoch: int, init_lr: float, min_lr: float, decay_rate: float) -> float:
    """``init_lr`` multiplied by ``decay_rate`` once per epoch, not below ``min_lr``."""
    return max(min_lr, init_lr * decay_rate**epoch)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@registry.register_lr_scheduler("linear_warmup_cosine_lr")
class LinearWarmupCosineLRScheduler:
    """Linear warmup from ``warmup_start_lr`` over ``warmup_steps``, then a cosine from
    ``init_lr`` to ``min_lr`` whose horizon is the whole run (``max_epoch * iters_per_epoch``,
    warmup included, as the reference: after warmup the cosine is already under way)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        max_epoch: int,
        iters_per_epoch: int,
        min_lr: float,
        init_lr: float,
        warmup_steps: int = 0,
        warmup_start_lr: float = -1,
        **unused: Any,  # decay_rate: the step schedule's keyword
    ) -> None:
        del unused
        self.optimizer = optimizer
        self.max_epoch = max_epoch
        self.iters_per_epoch = iters_per_epoch
        self.min_lr = min_lr
        self.init_lr = init_lr
        self.warmup_steps = warmup_steps
        self.warmup_start_lr = warmup_start_lr if warmup_start_lr >= 0 else init_lr

    @classmethod
    def from_config(
        cls, optimizer: torch.optim.Optimizer, run_cfg: DictConfig, iters_per_epoch: int
    ) -> LinearWarmupCosineLRScheduler:
        return cls(
            optimizer,
            max_epoch=int(run_cfg.max_epoch),
            iters_per_epoch=iters_per_epoch,
            min_lr=float(run_cfg.min_lr),
            init_lr=float(run_cfg.init_lr),
            warmup_steps=int(run_cfg.warmup_steps),
            warmup_start_lr=float(run_cfg.warmup_lr),
        )

    def lr_at(self, cur_epoch: int, cur_step: int) -> float:
        t = cur_epoch * self.iters_per_epoch + cur_step
        if t < self.warmup_steps:
            return warmup_lr(t, self.warmup_steps, self.warmup_start_lr, self.init_lr)
        return cosine_lr(t, self.max_epoch * self.iters_per_epoch, self.init_lr, self.min_lr)

    def step(self, cur_epoch: int, cur_step: int) -> float:
        lr = self.lr_at(cur_epoch, cur_step)
        set_lr(self.optimizer, lr)
        return lr


@registry.register_lr_scheduler("linear_warmup_step_lr")
class LinearWarmupStepLRScheduler:
    """Linear warmup from ``warmup_start_lr`` over ``warmup_steps``, then ``init_lr`` decayed by
    ``decay_rate`` once per epoch (``run.lr_decay_rate``), not below ``min_lr``."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        iters_per_epoch: int,
        min_lr: float,
        init_lr: float,
        decay_rate: float = 1.0,
        warmup_start_lr: float = -1,
        warmup_steps: int = 0,
        **unused: Any,  # max_epoch: the cosine schedule's keyword
    ) -> None:
        del unused
        self.optimizer = optimizer
        self.iters_per_epoch = iters_per_epoch
        self.min_lr = min_lr
        self.init_lr = init_lr
        self.decay_rate = decay_rate
        self.warmup_start_lr = warmup_start_lr if warmup_start_lr >= 0 else init_lr
        self.warmup_steps = warmup_steps

    @classmethod
    def from_config(
        cls, optimizer: torch.optim.Optimizer, run_cfg: DictConfig, iters_per_epoch: int
    ) -> LinearWarmupStepLRScheduler:
        if run_cfg.lr_decay_rate is None:
            raise ValueError("run.lr_sched 'linear_warmup_step_lr' needs run.lr_decay_rate (for example 0.9)")
        return cls(
            optimizer,
            iters_per_epoch=iters_per_epoch,
            min_lr=float(run_cfg.min_lr),
            init_lr=float(run_cfg.init_lr),
            decay_rate=float(run_cfg.lr_decay_rate),
            warmup_start_lr=float(run_cfg.warmup_lr),
            warmup_steps=int(run_cfg.warmup_steps),
        )

    def lr_at(self, cur_epoch: int, cur_step: int) -> float:
        t = cur_epoch * self.iters_per_epoch + cur_step
        if t < self.warmup_steps:
            return warmup_lr(t, self.warmup_steps, self.warmup_start_lr, self.init_lr)
        return step_lr(cur_epoch, self.init_lr, self.min_lr, self.decay_rate)

    def step(self, cur_epoch: int, cur_step: int) -> float:
        lr = self.lr_at(cur_epoch, cur_step)
        set_lr(self.optimizer, lr)
        return lr


__all__ = [
    "LinearWarmupCosineLRScheduler",
    "LinearWarmupStepLRScheduler",
    "cosine_lr",
    "set_lr",
    "step_lr",
    "warmup_lr",
]
