"""One training iteration, as ``RunnerBase.train`` and ``test/benchmark.py`` both run it.

``TrainStep`` holds what an iteration needs, built from ``run:`` (the autocast dtype, AdamW with
the reference's parameter groups, the loss scaler, the non-finite guard) and runs one: autocast
forward through the task, scaled backward (DDP's gradient all-reduce only on the iteration that
steps), and every ``accum_grad_iters`` iterations the optimizer step. Nothing here reads a device
value: the figures are accumulated in ``StepMetrics`` on the device and read with the log line.

A non-finite loss is made to poison the gradients, so that the loss scaler skips the step on the
device (the fused AdamW takes the scaler's "found inf" flag); a step that would leave a weight
non-finite is undone on the device (``StepGuard``). The loss scaler always exists: dynamic for
fp16, a fixed scale of 1 for bf16 and fp32 (only its skipping is used), or
``run.static_loss_scale``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from minigpt4.common.device import autocast, autocast_dtype, parse_dtype
from minigpt4.common.dist_utils import all_reduce
from minigpt4.common.logger import StepMetrics
from minigpt4.runners.contract import StepOutput, TrainableModel

logger = logging.getLogger(__name__)

# The reference's GradScaler defaults (initial scale 2**16, x2 after 2000 clean steps, x0.5 on overflow).
DYNAMIC_INIT_SCALE = 2.0**16


def resolve_precision(run_cfg: Any, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32: ``run.precision`` if set, else by device when ``run.amp``."""
    if run_cfg.precision is not None:
        dtype = parse_dtype(run_cfg.precision)
        return None if dtype == torch.float32 else dtype
    return autocast_dtype(device) if run_cfg.amp else None


def build_optimizer(model: nn.Module, run_cfg: Any) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, in the reference's two groups: weight decay for
    matrices, none for 1-d parameters and names with ``bias``, ``ln`` or ``bn``. Fused where the
    device has the kernel: it takes the loss scaler's skip flag on the device."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "bias" in name or "ln" in name or "bn" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    num_trainable = sum(p.numel() for p in decay + no_decay)
    if num_trainable == 0:
        raise ValueError("the model has no trainable parameters")
    logger.info("number of trainable parameters: %d", num_trainable)
    weight_decay = float(run_cfg.weight_decay)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = {"lr": float(run_cfg.init_lr), "weight_decay": weight_decay, "betas": (0.9, float(run_cfg.beta2))}
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except RuntimeError as error:
        logger.warning("fused AdamW unavailable (%s); the loss scaler will read its skip flag every step", error)
        return torch.optim.AdamW(groups, **kwargs)


def backward_dtype(dtype: torch.dtype | None, model: TrainableModel) -> torch.dtype | None:
    """The precision the backward runs in, which decides the loss scaling: fp16 when the run's
    autocast is fp16 or when the model computes its LLM in fp16 whatever the run says
    (MiniGPT4's ``llm_precision``)."""
    return torch.float16 if torch.float16 in (dtype, model.llm_dtype) else dtype


def build_scaler(
    run_cfg: Any, device: torch.device, dtype: torch.dtype | None
) -> tuple[torch.amp.GradScaler, float | None]:
    """The loss scaler and the fixed scale to reset it to after every step (None: dynamic)."""
    if run_cfg.static_loss_scale is not None:
        scale = float(run_cfg.static_loss_scale)
        return torch.amp.GradScaler(device.type, init_scale=scale), scale
    if dtype == torch.float16:
        return torch.amp.GradScaler(device.type, init_scale=DYNAMIC_INIT_SCALE), None
    return torch.amp.GradScaler(device.type, init_scale=1.0), 1.0


def scaled_backward(loss: torch.Tensor, scaler: torch.amp.GradScaler, trainable: list[nn.Parameter]) -> None:
    """Backward of the scaled loss. A non-finite loss can come with finite gradients (0/0 when no
    token of the batch is a target): the added term is exactly 0 for a finite loss and otherwise
    makes every trainable gradient NaN, so that the scaler skips the step on every rank, without
    reading the loss back to the host."""
    poison = torch.where(torch.isfinite(loss), 0.0, float("nan"))
    scaler.scale(loss + poison * sum(p.sum() for p in trainable)).backward()


def step_optimizer(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    fixed_scale: float | None,
    trainable: list[nn.Parameter],
    max_grad_norm: float | None,
) -> torch.Tensor:
    """Unscaled gradients and their total norm, optional clipping, then the optimizer step
    (skipped, on the device, when a gradient is not finite), the scaler update and zeroed
    gradients. Returns the norm before clipping, a device tensor (not read here)."""
    scaler.unscale_(optimizer)
    if max_grad_norm is None:
        # Not clip_grad_norm_ with an infinite bound: it multiplies the gradients by inf / norm,
        # NaN where finite gradients have a norm beyond the float range, and that step is not skipped.
        norm = torch.nn.utils.get_total_norm([p.grad for p in trainable if p.grad is not None])
    else:
        norm = torch.nn.utils.clip_grad_norm_(trainable, float(max_grad_norm))
    scaler.step(optimizer)
    scaler.update(fixed_scale)
    optimizer.zero_grad(set_to_none=True)
    return norm


def all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Whether every element is finite, as a device bool (not read here)."""
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


class StepGuard:
    """Makes sure no optimizer step leaves a trainable parameter non-finite, and counts the
    consecutive steps that were not applied, on the device (read with the log line).

    The loss scaler already skips a step whose gradients are not finite (a non-finite loss is made
    to poison them, see ``scaled_backward``). Finite gradients can still give non-finite weights
    (a huge learning rate): the parameters and the optimizer state are copied before each step and
    put back, on the device, where the step left a parameter non-finite. A skipped step counts
    when a loss of its iterations or a parameter was not finite, or, under a fixed loss scale, a
    gradient; the overflows of a dynamic fp16 scale are the scaler's normal working."""

    def __init__(self, optimizer: torch.optim.Optimizer, trainable: list[nn.Parameter], count_overflow: bool) -> None:
        self.optimizer = optimizer
        self.trainable = trainable
        self.count_overflow = count_overflow
        device = trainable[0].device
        self._loss_bad = torch.zeros((), dtype=torch.bool, device=device)
        self._run = torch.zeros((), dtype=torch.float64, device=device)
        self._longest = torch.zeros((), dtype=torch.float64, device=device)

    def note_loss(self, loss: torch.Tensor) -> None:
        self._loss_bad |= ~torch.isfinite(loss.detach())

    def step(
        self, scaler: torch.amp.GradScaler, fixed_scale: float | None, max_grad_norm: float | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``step_optimizer``, undone where it made a parameter non-finite; returns the gradient norm
        and whether the step was not applied (device tensors)."""
        grads_ok = all_finite([p.grad for p in self.trainable if p.grad is not None])
        saved = [(p.detach().clone(), self._tensor_state(p, clone=True)) for p in self.trainable]
        norm = step_optimizer(self.optimizer, scaler, fixed_scale, self.trainable, max_grad_norm)
        params_ok = all_finite(self.trainable)
        for p, (old_p, old_state) in zip(self.trainable, saved, strict=True):
            p.detach().copy_(torch.where(params_ok, p.detach(), old_p))
            for key, value in self._tensor_state(p).items():
                value.copy_(torch.where(params_ok, value, old_state.get(key, torch.zeros_like(value))))
        skipped = self._loss_bad | ~params_ok
        if self.count_overflow:
            skipped |= ~grads_ok
        self._run = (self._run + 1.0) * skipped
        self._longest = torch.maximum(self._longest, self._run)
        self._loss_bad.zero_()
        return norm, skipped

    def longest_skipped_run(self) -> int:
        """The longest run of consecutive skipped steps on any rank (a host read and an all-reduce)."""
        return int(all_reduce(self._longest.clone(), torch.distributed.ReduceOp.MAX).item())

    def _tensor_state(self, p: nn.Parameter, clone: bool = False) -> dict[str, torch.Tensor]:
        state = self.optimizer.state.get(p, {})
        return {k: v.clone() if clone else v for k, v in state.items() if torch.is_tensor(v)}


class TrainStep:
    """The optimizer, loss scaler, guard and metrics of a run, and one iteration with them.

    ``model`` is the unwrapped model (its parameters are the ones trained); ``wrapped`` the module
    the forward goes through (DDP over it, or the model itself)."""

    def __init__(
        self, task: Any, model: TrainableModel, run_cfg: Any, device: torch.device, wrapped: nn.Module | None = None
    ) -> None:
        self.task = task
        self.model = model
        self.wrapped = model if wrapped is None else wrapped
        self.device = device
        self.dtype = resolve_precision(run_cfg, device)
        self.optimizer = build_optimizer(model, run_cfg)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.scaler, self.fixed_scale = build_scaler(run_cfg, device, backward_dtype(self.dtype, model))
        self.guard = StepGuard(self.optimizer, self.trainable, count_overflow=self.fixed_scale is not None)
        self.max_grad_norm = run_cfg.max_grad_norm
        self.metrics = StepMetrics(device)

    def __call__(
        self, samples: dict[str, Any], *, lr: float, data_time: float = 0.0, optimizer_step: bool = True
    ) -> StepOutput:
        """Forward and backward of one batch (already on the device); the optimizer step too
        where ``optimizer_step``. Returns the model's output."""
        skip_sync = not optimizer_step and isinstance(self.wrapped, DistributedDataParallel)
        with self.wrapped.no_sync() if skip_sync else contextlib.nullcontext():
            with autocast(self.device, self.dtype):
                out = self.task.train_step(self.wrapped, samples)
            scaled_backward(out["loss"], self.scaler, self.trainable)
        self.guard.note_loss(out["loss"])
        self.metrics.update(
            out["loss"],
            tokens=out["tokens"],
            padded_tokens=out["padded_tokens"],
            samples=samples["image"].shape[0],
            skipped=samples.get("skipped", 0),
            lr=lr,
            data_time=data_time,
        )
        if optimizer_step:
            self.metrics.add_grad_norm(*self.guard.step(self.scaler, self.fixed_scale, self.max_grad_norm))
        return out
