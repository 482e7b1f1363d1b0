"""``runner_base``: the training loop of both MiniGPT-4 stages, top to bottom in ``RunnerBase.train``.

The helpers above it build one thing each from ``run:`` (device and precision, the optimizer with
the reference's parameter groups, the loss scaler, DDP); ``train`` then sets up in a visible order
and runs the epoch/iteration loop: LR step, autocast forward, backward, optimizer step every
``accum_grad_iters`` iterations, the log line every ``log_freq``, checkpoints.

What differs from the reference, and why:

* Nothing in the loop reads a device value per iteration. The loss, the gradient norm and the
  throughput figures are accumulated on the device and read once per log line; a first loss near
  that of uniform predictions (a broken LLM) is warned about. A non-finite loss is made to poison the
  gradients, so that the loss scaler skips the step on the device (the fused AdamW takes the
  scaler's "found inf" flag); the count of such steps is read with the log line, and the run stops
  once ``run.max_nonfinite_steps`` come in a row.
* The loss scaler always exists: dynamic for fp16 (the reference), a fixed scale of 1 for bf16 and
  fp32 (only its skipping is used), or ``run.static_loss_scale`` (the Ascend port's fixed 65536).
* Only trainable parameters take part in DDP: frozen weights are loaded identically by every rank
  and are neither broadcast nor reduced.
* Checkpoints add the iteration, the scheduler position and every rank's RNG states, and the data
  stream restarts from a seed derived from the global step at every checkpoint (each epoch end and
  every ``run.checkpoint_interval`` iterations), so a resumed run reads exactly the batches the
  uninterrupted run read and reproduces its losses.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from minigpt4.common.checkpoint import (
    load_checkpoint,
    load_trainable_state_dict,
    resume_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    trainable_state_dict,
)
from minigpt4.common.config import ConfigError
from minigpt4.common.device import accelerator_name, autocast, autocast_dtype, parse_dtype
from minigpt4.common.dist_utils import (
    all_gather_object,
    barrier,
    get_rank,
    get_world_size,
    init_distributed_mode,
    is_main_process,
)
from minigpt4.common.errors import MiniGPT4Error
from minigpt4.common.flops import peak_flops, window_mfu
from minigpt4.common.logger import (
    StepMetrics,
    TensorBoard,
    WindowStats,
    format_step_line,
    log_config,
    log_epoch,
    peak_memory_mib,
    uniform_loss_warning,
)
from minigpt4.common.registry import registry
from minigpt4.datasets.datasets.dataloader_utils import build_train_loader

logger = logging.getLogger(__name__)

# The reference's GradScaler defaults (initial scale 2**16, x2 after 2000 clean steps, x0.5 on overflow).
DYNAMIC_INIT_SCALE = 2.0**16


class NonFiniteLossError(MiniGPT4Error, RuntimeError):
    """Too many consecutive iterations produced a non-finite loss."""


def setup_output_dir(run_cfg: Any, job_id: str) -> Path:
    """``run.output_dir/<job_id>``, relative to the working directory, created and checked
    writable (call it on rank 0 before anything is loaded: an unwritable folder fails in seconds)."""
    output_dir = Path(run_cfg.output_dir) / job_id
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise PermissionError(
            f"run.output_dir: cannot write to {output_dir.resolve()} ({error.strerror or error})"
        ) from error
    return output_dir


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


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a saved optimizer state but keep this optimizer's implementation choice (a
    reference checkpoint records ``fused: None``)."""
    implementation = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, keep in zip(optimizer.param_groups, implementation, strict=True):
        group.update(keep)


def backward_dtype(dtype: torch.dtype | None, model: nn.Module) -> torch.dtype | None:
    """The precision the backward runs in, which decides the loss scaling: fp16 when the run's
    autocast is fp16 or when the model computes its LLM in fp16 whatever the run says
    (MiniGPT4's ``llm_precision``)."""
    return torch.float16 if torch.float16 in (dtype, getattr(model, "llm_dtype", None)) else dtype


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


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP over the trainable parameters only; frozen parameters and buffers are left out of the
    start-up broadcast and of every reduction (each rank loaded the same frozen weights)."""
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, frozen + [name for name, _ in model.named_buffers()]
    )
    device_ids = None if device.type == "cpu" else [device.index]
    return DistributedDataParallel(model, device_ids=device_ids)


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


def move_to_device(samples: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in samples.items()}


@registry.register_runner("runner_base")
class RunnerBase:
    """Trains ``model`` on ``datasets`` as ``cfg.run_cfg`` says; writes to ``run.output_dir/<job_id>``."""

    def __init__(self, cfg: Any, task: Any, model: nn.Module, datasets: dict[str, Any], job_id: str) -> None:
        self.config = cfg
        self.task = task
        self.model = model
        self.datasets = datasets
        self.job_id = job_id
        self.output_dir = Path(cfg.run_cfg.output_dir) / job_id
        self.history: list[dict[str, Any]] = []  # the figures of every log line

    def train_loader(self, global_step: int) -> Any:
        """The batch stream from ``global_step`` on, seeded from ``run.seed`` and that step."""
        run = self.config.run_cfg
        return build_train_loader(self.datasets, run, get_rank(), get_world_size(), seed=run.seed + global_step)

    def save(self, name: str, state: dict[str, Any]) -> None:
        """Gather every rank's RNG state into ``state``, then write ``name`` on rank 0 only."""
        state["rng"] = all_gather_object(state["rng"])
        if is_main_process():
            path = self.output_dir / name
            save_checkpoint(path, state)
            logger.info("Saving checkpoint at epoch %d (%d iterations in) to %s.", state["epoch"], state["iters"], path)

    @staticmethod
    def check_config(run_cfg: Any) -> None:
        """Refuse ``run:`` values the loop cannot work with (train.py calls this before anything is
        loaded; ``train`` calls it again for runners built by hand)."""
        if run_cfg.evaluate or run_cfg.valid_splits or run_cfg.test_splits:
            raise ValueError(
                "run.evaluate, run.valid_splits, run.test_splits: the image_text_pretrain task has no evaluation "
                "(the reference's did nothing); set evaluate: False and leave the valid and test splits empty"
            )
        for key in ("iters_per_epoch", "accum_grad_iters", "batch_size_train", "log_freq"):
            if run_cfg[key] < 1:
                raise ValueError(f"run.{key} must be at least 1, got {run_cfg[key]}")
        if run_cfg.length_grouping < 0:
            raise ValueError(
                f"run.length_grouping must be 0 (off) or a number of batches, got {run_cfg.length_grouping}"
            )
        if not 0.0 <= run_cfg.max_skip_fraction <= 1.0:
            raise ConfigError(f"run.max_skip_fraction must be between 0 and 1, got {run_cfg.max_skip_fraction}")
        accum = run_cfg.accum_grad_iters
        if run_cfg.iters_per_epoch % accum or run_cfg.checkpoint_interval % accum:
            raise ValueError(
                f"run.iters_per_epoch ({run_cfg.iters_per_epoch}) and run.checkpoint_interval "
                f"({run_cfg.checkpoint_interval}) must be multiples of run.accum_grad_iters ({accum}), so that "
                "checkpoints fall between steps"
            )

    def train(self) -> list[dict[str, Any]]:
        """Run the training; returns ``history``, the figures of every log line."""
        run = self.config.run_cfg
        start_time = time.time()
        self.check_config(run)
        iters_per_epoch, accum = int(run.iters_per_epoch), int(run.accum_grad_iters)
        total_steps = int(run.max_epoch) * iters_per_epoch

        # --- set-up, in order: device, model, optimizer, scaler, schedule, resume, outputs ---
        device = init_distributed_mode(run.device, run.dist_url)
        rank, world_size = get_rank(), get_world_size()
        dtype = resolve_precision(run, device)
        model = self.model.to(device)
        ddp_model = wrap_ddp(model, device) if world_size > 1 else model
        optimizer = build_optimizer(model, run)
        trainable = [p for p in model.parameters() if p.requires_grad]
        scaler, fixed_scale = build_scaler(run, device, backward_dtype(dtype, model))
        scheduler = registry.get_lr_scheduler_class(run.lr_sched).from_config(optimizer, run, iters_per_epoch)

        start_epoch, start_iter = 0, 0
        if run.resume_ckpt_path:
            resume = resume_checkpoint(run.resume_ckpt_path)
            ckpt = load_checkpoint(resume)
            load_trainable_state_dict(model, ckpt["model"], str(resume))
            load_optimizer_state(optimizer, ckpt["optimizer"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            done = ckpt.get("iters", iters_per_epoch)  # reference checkpoints mark complete epochs
            start_epoch, start_iter = (ckpt["epoch"] + 1, 0) if done >= iters_per_epoch else (ckpt["epoch"], done)
            if len(ckpt.get("rng") or []) == world_size:
                set_rng_state(ckpt["rng"][rank], device)
            else:
                logger.warning("%s has no RNG state for %d ranks: random draws will differ", resume, world_size)
            logger.info("Resume checkpoint from %s at epoch %d, iteration %d", resume, start_epoch, start_iter)
        if is_main_process():
            log_config(self.output_dir, self.config.to_dict())
        tensorboard = TensorBoard(self.output_dir / "tensorboard") if is_main_process() else None
        metrics = StepMetrics(device)
        # MFU where the accelerator's peak is known and the model counts its FLOPs (MiniGPT4 does).
        name = accelerator_name(device)
        peak_device_flops = peak_flops(name) if name else None
        flop_model = model.flop_model() if peak_device_flops and hasattr(model, "flop_model") else None
        logger.info(
            "Start training: %d epochs x %d iterations, batch %d x %d ranks, precision %s, device %s",
            run.max_epoch, iters_per_epoch, run.batch_size_train, world_size, dtype or torch.float32, device,
        )  # fmt: skip

        def checkpoint(name: str, epoch: int, iters: int, lr: float) -> None:
            self.save(
                name,
                {
                    "model": trainable_state_dict(model),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "config": self.config.to_dict(),
                    "epoch": epoch,
                    "iters": iters,
                    "global_step": epoch * iters_per_epoch + iters,
                    "scheduler": {"name": run.lr_sched, "epoch": epoch, "step": iters - 1, "lr": lr},
                    "rng": rng_state(device),
                },
            )

        def log_step(stats: WindowStats, step: int, epoch: int, inner: int, lr: float) -> dict[str, Any]:
            peak = peak_memory_mib(device)
            eta = stats.step_time * (total_steps - step)
            mfu = None
            if flop_model is not None:
                all_devices = peak_device_flops * world_size
                mfu = window_mfu(flop_model, stats.samples, stats.padded_tokens, stats.elapsed, all_devices)
            position = {"step": step, "total_steps": total_steps, "epoch": epoch, "inner": inner}
            line = format_step_line(
                stats, **position, iters_per_epoch=iters_per_epoch, lr=lr, peak_mem_mib=peak, mfu=mfu, eta_seconds=eta
            )
            logger.info(line)
            vocab_size = getattr(model, "vocab_size", None)
            # Rank 0 only: the other ranks log warnings too, and every rank holds the same loss.
            first = is_main_process() and not self.history
            if first and vocab_size and (warning := uniform_loss_warning(stats.loss, vocab_size)):
                logger.warning(warning)  # once, at the first line of a run
            figures = {
                "loss": stats.loss,
                "grad_norm": stats.grad_norm,
                "lr": lr,
                "step_time": stats.step_time,
                "data_time": stats.data_time_per_iter,
                "samples_per_sec": stats.samples_per_sec,
                "TokensPerSec": stats.tokens_per_sec,
                "TokensPerSec_padded": stats.padded_tokens_per_sec,
                "mfu": mfu,
                "peak_mem_MiB": peak,
                "nonfinite": stats.nonfinite,
                "skipped": stats.skipped,
            }
            if tensorboard is not None:
                tensorboard.add_scalars(step, {f"train/{k}": v for k, v in figures.items() if v is not None})
            return {"step": step, "epoch": epoch, **figures}

        # --- the loop ---
        for epoch in range(start_epoch, int(run.max_epoch)):
            ddp_model.train()
            first = start_iter if epoch == start_epoch else 0
            loader = self.train_loader(epoch * iters_per_epoch + first)
            metrics.start_window()
            for i in range(first, iters_per_epoch):
                step = epoch * iters_per_epoch + i + 1  # iterations done once this one is
                t_data = time.perf_counter()
                samples = move_to_device(next(loader), device)
                data_time = time.perf_counter() - t_data
                lr = scheduler.step(epoch, i)
                optimizer_step = (i + 1) % accum == 0
                no_sync = ddp_model.no_sync() if world_size > 1 and not optimizer_step else contextlib.nullcontext()
                with no_sync:
                    with autocast(device, dtype):
                        out = self.task.train_step(ddp_model, samples)
                    scaled_backward(out["loss"], scaler, trainable)
                metrics.update(
                    out["loss"],
                    tokens=out["tokens"],
                    padded_tokens=out["padded_tokens"],
                    samples=samples["image"].shape[0],
                    skipped=samples.get("skipped", 0),
                    lr=lr,
                    data_time=data_time,
                )
                if optimizer_step:
                    metrics.add_grad_norm(step_optimizer(optimizer, scaler, fixed_scale, trainable, run.max_grad_norm))

                if step % run.log_freq == 0 or i == iters_per_epoch - 1:
                    stats = metrics.read()
                    self.history.append(log_step(stats, step, epoch, i + 1, lr))
                    if stats.longest_nonfinite_run >= run.max_nonfinite_steps:
                        raise NonFiniteLossError(
                            f"{stats.longest_nonfinite_run} consecutive iterations had a non-finite loss (by step "
                            f"{step}; run.max_nonfinite_steps is {run.max_nonfinite_steps}). Their updates were "
                            "skipped, so the weights and the last checkpoint are intact. Lower run.init_lr, "
                            "train in bf16 or fp32 (run.precision), or check the data."
                        )
                    metrics.start_window()
                if run.checkpoint_interval and step % run.checkpoint_interval == 0 and i < iters_per_epoch - 1:
                    checkpoint("checkpoint_last.pth", epoch, i + 1, lr)
                    loader = self.train_loader(step)

            epoch_stats = metrics.end_epoch()
            if is_main_process():
                log_epoch(self.output_dir, {"epoch": epoch, **epoch_stats})
            checkpoint(f"checkpoint_{epoch}.pth", epoch, iters_per_epoch, lr)
            barrier()

        if tensorboard is not None:
            tensorboard.close()
        logger.info("Training time %s", datetime.timedelta(seconds=int(time.time() - start_time)))
        return self.history
