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
  scaler's "found inf" flag); a step that would leave a weight non-finite is undone on the device
  (``StepGuard``). The count of skipped steps is read with the log line, and the run stops once
  ``run.max_nonfinite_steps`` come in a row; a checkpoint is never written from non-finite weights.
* The loss scaler always exists: dynamic for fp16 (the reference), a fixed scale of 1 for bf16 and
  fp32 (only its skipping is used), or ``run.static_loss_scale`` (the Ascend port's fixed 65536).
* Only trainable parameters take part in DDP: frozen weights are loaded identically by every rank
  and are neither broadcast nor reduced.
* Checkpoints add the iteration, the scheduler position and every rank's RNG states, and the data
  stream restarts from a seed derived from the global step at every checkpoint (each epoch end and
  every ``run.checkpoint_interval`` iterations), so a resumed run reads exactly the batches the
  uninterrupted run read and reproduces its losses; a resume whose settings change the batches or
  the schedule says so in a warning (``resume_warnings``).
* Run folders are created exclusively (``setup_output_dir``), and a failed start removes its own.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from minigpt4.common.checkpoint import (
    find_resume_checkpoint,
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
    all_reduce,
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
from minigpt4.runners.memory import prepare_model

logger = logging.getLogger(__name__)

# The reference's GradScaler defaults (initial scale 2**16, x2 after 2000 clean steps, x0.5 on overflow).
DYNAMIC_INIT_SCALE = 2.0**16


class NonFiniteLossError(MiniGPT4Error, RuntimeError):
    """Too many consecutive optimizer steps were skipped (non-finite loss, gradients or weights)."""


class NonFiniteWeightsError(MiniGPT4Error, RuntimeError):
    """A checkpoint was about to be written from weights holding a non-finite value."""


class ResumeError(MiniGPT4Error, ValueError):
    """``run.resume_ckpt_path`` names a checkpoint this run cannot continue from."""


def setup_output_dir(run_cfg: Any, job_id: str) -> Path:
    """``run.output_dir/<job_id>``, relative to the working directory, created for this run alone
    and checked writable (call it on rank 0 before anything is loaded: an unwritable folder fails
    in seconds). Where that folder exists already (a run started in the same second),
    ``<job_id>_2``, ``<job_id>_3`` ... is taken: the returned folder's name is the run's job id."""
    parent = Path(run_cfg.output_dir)
    output_dir = parent / job_id
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for n in itertools.count(2):
            try:
                output_dir.mkdir()  # exclusive: fails where another run made the folder first
                break
            except FileExistsError:
                output_dir = parent / f"{job_id}_{n}"
        probe = output_dir / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise PermissionError(
            f"run.output_dir: cannot write to {output_dir.resolve()} ({error.strerror or error})"
        ) from error
    return output_dir


def discard_output_dir(output_dir: Path) -> None:
    """Remove the folder of a run that failed before it had anything to keep: no checkpoint in it
    (the caller knows that no step was logged), so that a failed start leaves no folder behind."""
    if output_dir.is_dir() and not any(output_dir.glob("checkpoint_*.pth")):
        shutil.rmtree(output_dir, ignore_errors=True)
        logger.info("Removed %s: the run stopped before it wrote anything to keep", output_dir)


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


def resume_position(ckpt: dict[str, Any], iters_per_epoch: int) -> tuple[int, int]:
    """The (epoch, iteration) a run resumed from ``ckpt`` starts at."""
    epoch, done = ckpt["epoch"], ckpt.get("iters", iters_per_epoch)  # reference checkpoints mark whole epochs
    return (epoch + 1, 0) if done >= iters_per_epoch else (epoch, done)


# The run: keys that decide which batches a run reads from a given step on.
STREAM_KEYS = ("iters_per_epoch", "batch_size_train", "checkpoint_interval", "seed", "num_workers", "length_grouping")


def resume_warnings(path: Path, ckpt: dict[str, Any], run_cfg: Any, world_size: int, scheduler: Any) -> list[str]:
    """One line for each way the resumed run differs from the run that wrote ``ckpt``: the data
    settings and rank count (the batches differ from those the interrupted run would have read;
    a smaller ``iters_per_epoch`` skips the rest of the epoch), and the learning-rate schedule."""
    warnings = []
    saved = (ckpt.get("config") or {}).get("run") or {}
    changed = [f"run.{k} {saved[k]} -> {run_cfg[k]}" for k in STREAM_KEYS if k in saved and saved[k] != run_cfg[k]]
    ranks = len(ckpt.get("rng") or [])
    if ranks != world_size:
        changed.append(f"{ranks or 'unknown'} -> {world_size} ranks")
    if changed:
        done = ckpt.get("iters", 0)
        skipped = ""
        if saved.get("iters_per_epoch", 0) > done >= run_cfg.iters_per_epoch:
            skipped = f"; the rest of epoch {ckpt['epoch']} ({saved['iters_per_epoch'] - done} iterations) is skipped"
        warnings.append(
            f"run.resume_ckpt_path: {path} was written with other data settings ({', '.join(changed)}): the resumed "
            f"run reads other batches and random draws than the interrupted run would have{skipped}"
        )
    sched = ckpt.get("scheduler")
    if sched and sched.get("name") != run_cfg.lr_sched:
        warnings.append(
            f"run.resume_ckpt_path: {path} was trained with run.lr_sched {sched.get('name')}, now {run_cfg.lr_sched}"
        )
    elif sched and not math.isclose(lr := scheduler.lr_at(sched["epoch"], sched["step"]), sched["lr"], rel_tol=1e-6):
        warnings.append(
            f"run.resume_ckpt_path: the learning-rate schedule differs from the one {path} was trained with: at epoch "
            f"{sched['epoch']}, iteration {sched['step']} it gave {sched['lr']:.4g}, now {lr:.4g} (run.init_lr, "
            "min_lr, warmup_lr, warmup_steps, max_epoch, lr_decay_rate or iters_per_epoch changed)"
        )
    return warnings


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
        self.last_checkpoint: tuple[Path, int] | None = None  # and its global step

    def train_loader(self, global_step: int) -> Any:
        """The batch stream from ``global_step`` on, seeded from ``run.seed`` and that step."""
        run = self.config.run_cfg
        return build_train_loader(self.datasets, run, get_rank(), get_world_size(), seed=run.seed + global_step)

    def save(self, name: str, state: dict[str, Any]) -> None:
        """Gather every rank's RNG state into ``state``, then write ``name`` on rank 0 only; refuse
        to write weights that hold a non-finite value (one host read per checkpoint)."""
        state["rng"] = all_gather_object(state["rng"])
        bad = [k for k, v in state["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise NonFiniteWeightsError(
                f"not writing {self.output_dir / name}: the weights {', '.join(bad)} hold non-finite values at epoch "
                f"{state['epoch']}, {state['iters']} iterations in; {self.last_checkpoint_words()}"
            )
        if is_main_process():
            path = self.output_dir / name
            save_checkpoint(path, state)
            logger.info("Saving checkpoint at epoch %d (%d iterations in) to %s.", state["epoch"], state["iters"], path)
        self.last_checkpoint = self.output_dir / name, state["global_step"]

    def last_checkpoint_words(self) -> str:
        if self.last_checkpoint is None:
            return "this run wrote no checkpoint"
        path, step = self.last_checkpoint
        return f"the last checkpoint written is {path} (step {step})"

    @staticmethod
    def check_config(run_cfg: Any) -> None:
        """Refuse ``run:`` values the loop cannot work with, and a resume checkpoint that ends a
        finished run (train.py calls this before anything is loaded; ``train`` calls it again for
        runners built by hand)."""
        if run_cfg.evaluate or run_cfg.valid_splits or run_cfg.test_splits:
            raise ConfigError(
                "run.evaluate, run.valid_splits, run.test_splits: the image_text_pretrain task has no evaluation "
                "(the reference's did nothing); set evaluate: False and leave the valid and test splits empty"
            )
        for key in ("max_epoch", "iters_per_epoch", "accum_grad_iters", "batch_size_train", "log_freq"):
            if run_cfg[key] < 1:
                raise ConfigError(f"run.{key} must be at least 1, got {run_cfg[key]}")
        if run_cfg.length_grouping < 0:
            raise ConfigError(
                f"run.length_grouping must be 0 (off) or a number of batches, got {run_cfg.length_grouping}"
            )
        if not 0.0 <= run_cfg.max_skip_fraction <= 1.0:
            raise ConfigError(f"run.max_skip_fraction must be between 0 and 1, got {run_cfg.max_skip_fraction}")
        accum = run_cfg.accum_grad_iters
        if run_cfg.iters_per_epoch % accum or run_cfg.checkpoint_interval % accum:
            raise ConfigError(
                f"run.iters_per_epoch ({run_cfg.iters_per_epoch}) and run.checkpoint_interval "
                f"({run_cfg.checkpoint_interval}) must be multiples of run.accum_grad_iters ({accum}), so that "
                "checkpoints fall between steps"
            )
        if run_cfg.resume_ckpt_path:
            path, position = find_resume_checkpoint(run_cfg.resume_ckpt_path)
            epoch, _ = resume_position(position, int(run_cfg.iters_per_epoch))
            if epoch >= run_cfg.max_epoch:
                raise ResumeError(
                    f"run.resume_ckpt_path: {path} ends a finished run (epoch {epoch - 1} complete, "
                    f"run.max_epoch is {run_cfg.max_epoch}); raise run.max_epoch to train further"
                )

    def resume(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, scheduler: Any
    ) -> tuple[int, int]:
        """Load ``run.resume_ckpt_path`` into the model, optimizer, loss scaler and random generators;
        returns the (epoch, iteration) to start at. Warns where the resumed run cannot read the
        batches the interrupted run would have read (see ``resume_warnings``)."""
        run = self.config.run_cfg
        path = resume_checkpoint(run.resume_ckpt_path)
        ckpt = load_checkpoint(path)
        load_trainable_state_dict(model, ckpt["model"], str(path))
        load_optimizer_state(optimizer, ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        rank, world_size = get_rank(), get_world_size()
        if len(ckpt.get("rng") or []) == world_size:
            set_rng_state(ckpt["rng"][rank], next(model.parameters()).device)
        if is_main_process():
            for warning in resume_warnings(path, ckpt, run, world_size, scheduler):
                logger.warning(warning)
        start_epoch, start_iter = resume_position(ckpt, int(run.iters_per_epoch))
        logger.info("Resume checkpoint from %s at epoch %d, iteration %d", path, start_epoch, start_iter)
        return start_epoch, start_iter

    def train(self) -> list[dict[str, Any]]:
        """Run the training; returns ``history``, the figures of every log line."""
        run = self.config.run_cfg
        start_time = time.time()
        self.check_config(run)
        iters_per_epoch, accum = int(run.iters_per_epoch), int(run.accum_grad_iters)
        total_steps = int(run.max_epoch) * iters_per_epoch

        # --- set-up, in order: device, model, optimizer, scaler, schedule, resume, outputs ---
        device = init_distributed_mode(run.device, run.dist_url)
        world_size = get_world_size()
        dtype = resolve_precision(run, device)
        model = prepare_model(self.model, device, run)  # LLM checkpointing and sharding, then .to(device)
        ddp_model = wrap_ddp(model, device) if world_size > 1 else model
        optimizer = build_optimizer(model, run)
        trainable = [p for p in model.parameters() if p.requires_grad]
        scaler, fixed_scale = build_scaler(run, device, backward_dtype(dtype, model))
        guard = StepGuard(optimizer, trainable, count_overflow=fixed_scale is not None)
        scheduler = registry.get_lr_scheduler_class(run.lr_sched).from_config(optimizer, run, iters_per_epoch)
        start_epoch, start_iter = self.resume(model, optimizer, scaler, scheduler) if run.resume_ckpt_path else (0, 0)
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
                guard.note_loss(out["loss"])
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
                    metrics.add_grad_norm(*guard.step(scaler, fixed_scale, run.max_grad_norm))

                if step % run.log_freq == 0 or i == iters_per_epoch - 1:
                    stats = metrics.read()
                    self.history.append(log_step(stats, step, epoch, i + 1, lr))
                    if (skipped := guard.longest_skipped_run()) >= run.max_nonfinite_steps:
                        raise NonFiniteLossError(
                            f"{skipped} consecutive optimizer steps were skipped for a non-finite loss, gradient or "
                            f"updated weight (by step {step}; run.max_nonfinite_steps is {run.max_nonfinite_steps}). "
                            f"None of them was applied: the weights hold no non-finite value and "
                            f"{self.last_checkpoint_words()}. Lower run.init_lr, train in bf16 or fp32 "
                            "(run.precision), or check the data."
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
