"""``runner_base``: the training loop of both MiniGPT-4 stages, top to bottom in ``RunnerBase.train``.

``train`` checks the ``run:`` keys, sets up (``setup``: device, DDP, the train step, the LR
schedule, outputs), resumes where ``run.resume_ckpt_path`` says, then runs the epoch/iteration
loop: LR step, one ``TrainStep`` (autocast forward, backward, the optimizer step every
``accum_grad_iters`` iterations), the step line every ``log_freq``, checkpoints. Each epoch ends
with the held-out figures of ``run.valid_splits`` (the task's evaluation) beside the training
loss, ``checkpoint_<epoch>.pth`` and, for the best epoch, ``checkpoint_best.pth``.

Only trainable parameters take part in DDP: frozen weights are loaded identically by every rank.
Checkpoints hold the iteration and every rank's RNG states, and the data stream restarts from a
seed derived from the global step at every checkpoint, so a resumed run reads exactly the batches
the uninterrupted run read and reproduces its losses (``resume_warnings`` names the settings that
prevent it). Evaluation runs on forked, seeded random generators, so it changes nothing of that.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import logging
import math
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
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
from minigpt4.common.device import accelerator_name, move_to_device
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
    TensorBoard,
    format_epoch_line,
    format_eval_line,
    format_step_line,
    log_config,
    log_epoch,
    peak_memory_mib,
    uniform_loss_warning,
)
from minigpt4.common.registry import registry
from minigpt4.datasets.datasets.dataloader_utils import build_train_loader
from minigpt4.runners.contract import check_model
from minigpt4.runners.memory import prepare_model
from minigpt4.runners.train_step import TrainStep, resolve_precision

logger = logging.getLogger(__name__)


class NonFiniteLossError(MiniGPT4Error, RuntimeError):
    """Too many consecutive optimizer steps were skipped (non-finite loss, gradients or weights)."""


class NonFiniteWeightsError(MiniGPT4Error, RuntimeError):
    """A checkpoint was about to be written from weights holding a non-finite value."""


class ResumeError(MiniGPT4Error, ValueError):
    """``run.resume_ckpt_path`` names a checkpoint this run cannot continue from."""


# The epoch whose agg_metrics on the first of run.valid_splits is the best yet, in the same format.
BEST_CHECKPOINT = "checkpoint_best.pth"


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


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a saved optimizer state but keep this optimizer's implementation choice (a
    reference checkpoint records ``fused: None``)."""
    implementation = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, keep in zip(optimizer.param_groups, implementation, strict=True):
        group.update(keep)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP over the trainable parameters only; frozen parameters and buffers are left out of the
    start-up broadcast and of every reduction (each rank loaded the same frozen weights)."""
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, frozen + [name for name, _ in model.named_buffers()]
    )
    device_ids = None if device.type == "cpu" else [device.index]
    return DistributedDataParallel(model, device_ids=device_ids)


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


@contextlib.contextmanager
def forked_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Every random generator seeded with ``seed`` inside, restored on leaving: an evaluation
    draws the same prompts at every epoch and leaves the training's random stream as it was."""
    state = rng_state(device)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # and every accelerator's
    try:
        yield
    finally:
        set_rng_state(state, device)


@registry.register_runner("runner_base")
class RunnerBase:
    """Trains ``model`` on ``datasets`` as ``cfg.run_cfg`` says; writes to ``run.output_dir/<job_id>``.

    ``device`` is the one ``init_distributed_mode`` returned (train.py passes it on); None joins
    the process group and resolves ``run.device`` here, for a runner built by hand."""

    def __init__(
        self,
        cfg: Any,
        task: Any,
        model: nn.Module,
        datasets: dict[str, Any],
        job_id: str,
        *,
        device: torch.device | None = None,
    ) -> None:
        self.config = cfg
        self.task = task
        self.model = check_model(model)
        self.datasets = datasets
        self.job_id = job_id
        self.device = device
        self.output_dir = Path(cfg.run_cfg.output_dir) / job_id
        self.history: list[dict[str, Any]] = []  # the figures of every log line
        self.evaluations: list[dict[str, Any]] = []  # the figures of every evaluation
        self.last_checkpoint: tuple[Path, int] | None = None  # and its global step
        self.best: dict[str, Any] | None = None  # the epoch checkpoint_best.pth holds, and its agg_metrics
        self.dtype: torch.dtype | None = None  # the run's autocast dtype, once set up

    # --- set-up -----------------------------------------------------------------------------------

    @staticmethod
    def check_config(run_cfg: Any) -> None:
        """Refuse ``run:`` values the loop cannot work with, and a resume checkpoint that ends a
        finished run (train.py calls this before anything is loaded; ``train`` calls it again for
        runners built by hand)."""
        for key in ("max_epoch", "iters_per_epoch", "accum_grad_iters", "batch_size_train", "batch_size_eval"):
            if run_cfg[key] < 1:
                raise ConfigError(f"run.{key} must be at least 1, got {run_cfg[key]}")
        if run_cfg.log_freq < 1:
            raise ConfigError(f"run.log_freq must be at least 1, got {run_cfg.log_freq}")
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
        held_out = [*run_cfg.valid_splits, *run_cfg.test_splits]
        if trained := sorted(set(held_out) & set(run_cfg.train_splits)):
            raise ConfigError(f"run.valid_splits / test_splits: {', '.join(trained)} is also in run.train_splits")
        if run_cfg.evaluate and not held_out:
            raise ConfigError("run.evaluate: True evaluates run.valid_splits and run.test_splits; both are empty")
        if run_cfg.resume_ckpt_path and not run_cfg.evaluate:
            path, position = find_resume_checkpoint(run_cfg.resume_ckpt_path)
            epoch, _ = resume_position(position, int(run_cfg.iters_per_epoch))
            if epoch >= run_cfg.max_epoch:
                raise ResumeError(
                    f"run.resume_ckpt_path: {path} ends a finished run (epoch {epoch - 1} complete, "
                    f"run.max_epoch is {run_cfg.max_epoch}); raise run.max_epoch to train further"
                )

    def setup(self) -> None:
        """Device, model, DDP, the train step (optimizer, loss scaler, guard, metrics), the LR
        schedule, TensorBoard and the MFU figures, in that order."""
        run = self.config.run_cfg
        if self.device is None:
            self.device = init_distributed_mode(run.device, run.dist_url)
        device, world_size = self.device, get_world_size()
        model = prepare_model(self.model, device, run)  # LLM checkpointing and sharding, then .to(device)
        ddp_model = wrap_ddp(model, device) if world_size > 1 else model
        self.step = TrainStep(self.task, model, run, device, wrapped=ddp_model)
        self.dtype = self.step.dtype
        iters_per_epoch = int(run.iters_per_epoch)
        self.scheduler = registry.get_lr_scheduler_class(run.lr_sched).from_config(
            self.step.optimizer, run, iters_per_epoch
        )
        self.tensorboard = TensorBoard(self.output_dir / "tensorboard") if is_main_process() else None
        # MFU where the accelerator's peak is known and the model counts its FLOPs.
        name = accelerator_name(device)
        peak = peak_flops(name) if name else None
        self.flop_model = model.flop_model() if peak else None
        self.peak_flops = peak * world_size if peak and self.flop_model is not None else None

    def train_loader(self, global_step: int) -> Any:
        """The batch stream from ``global_step`` on, seeded from ``run.seed`` and that step."""
        run = self.config.run_cfg
        return build_train_loader(
            self.datasets,
            run,
            get_rank(),
            get_world_size(),
            seed=run.seed + global_step,
            pin_memory=self.device.type != "cpu",
        )

    def resume(self) -> tuple[int, int]:
        """Load ``run.resume_ckpt_path`` into the model, optimizer, loss scaler, random generators
        and best-epoch record; returns the (epoch, iteration) to start at. Warns where the resumed
        run cannot read the batches the interrupted run would have read (see ``resume_warnings``)."""
        run = self.config.run_cfg
        path = resume_checkpoint(run.resume_ckpt_path)
        ckpt = self.load_weights(path)
        load_optimizer_state(self.step.optimizer, ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.step.scaler.load_state_dict(ckpt["scaler"])
        rank, world_size = get_rank(), get_world_size()
        if len(ckpt.get("rng") or []) == world_size:
            set_rng_state(ckpt["rng"][rank], self.device)
        self.best = ckpt.get("best")
        if is_main_process():
            for warning in resume_warnings(path, ckpt, run, world_size, self.scheduler):
                logger.warning(warning)
        start_epoch, start_iter = resume_position(ckpt, int(run.iters_per_epoch))
        logger.info("Resume checkpoint from %s at epoch %d, iteration %d", path, start_epoch, start_iter)
        return start_epoch, start_iter

    def load_weights(self, path: Path) -> dict[str, Any]:
        """A checkpoint's trainable weights into the model; returns the whole checkpoint."""
        ckpt = load_checkpoint(path)
        load_trainable_state_dict(self.model, self.model.checkpoint_state(ckpt["model"]), str(path))
        return ckpt

    # --- the loop ---------------------------------------------------------------------------------

    def train(self) -> list[dict[str, Any]]:
        """Run the training (with ``run.evaluate``, the evaluation only); returns ``history``,
        the figures of every log line."""
        run = self.config.run_cfg
        self.check_config(run)
        if run.evaluate:
            self.evaluate_only()
            return self.history
        start_time = time.time()
        self.setup()
        start_epoch, start_iter = self.resume() if run.resume_ckpt_path else (0, 0)
        if is_main_process():
            log_config(self.output_dir, self.config.to_dict())
        iters_per_epoch, accum, step = int(run.iters_per_epoch), int(run.accum_grad_iters), self.step
        logger.info(
            "Start training: %d epochs x %d iterations, batch %d x %d ranks, precision %s, device %s",
            run.max_epoch, iters_per_epoch, run.batch_size_train, get_world_size(), step.dtype or torch.float32,
            self.device,
        )  # fmt: skip

        for epoch in range(start_epoch, int(run.max_epoch)):
            step.wrapped.train()
            first = start_iter if epoch == start_epoch else 0
            loader = self.train_loader(epoch * iters_per_epoch + first)
            step.metrics.start_window()
            for i in range(first, iters_per_epoch):
                global_step = epoch * iters_per_epoch + i + 1  # iterations done once this one is
                t_data = time.perf_counter()
                samples = move_to_device(next(loader), self.device)
                data_time = time.perf_counter() - t_data
                lr = self.scheduler.step(epoch, i)
                step(samples, lr=lr, data_time=data_time, optimizer_step=(i + 1) % accum == 0)
                if global_step % run.log_freq == 0 or i == iters_per_epoch - 1:
                    self.log_step(global_step, epoch, i + 1, lr)
                if run.checkpoint_interval and global_step % run.checkpoint_interval == 0 and i < iters_per_epoch - 1:
                    self.save("checkpoint_last.pth", self.checkpoint(epoch, i + 1, lr))
                    loader = self.train_loader(global_step)
            self.end_epoch(epoch, lr)
            barrier()

        if run.test_splits:
            self.test()
        if self.tensorboard is not None:
            self.tensorboard.close()
        logger.info("Training time %s", datetime.timedelta(seconds=int(time.time() - start_time)))
        return self.history

    # --- logging and checkpoints ------------------------------------------------------------------

    def log_step(self, global_step: int, epoch: int, inner: int, lr: float) -> None:
        """The step line of the iterations since the previous one, into ``history`` and
        TensorBoard; stops the run after ``run.max_nonfinite_steps`` skipped steps in a row."""
        run, step = self.config.run_cfg, self.step
        stats = step.metrics.read()
        iters_per_epoch = int(run.iters_per_epoch)
        total_steps = int(run.max_epoch) * iters_per_epoch
        peak = peak_memory_mib(self.device)
        mfu = None
        if self.peak_flops is not None:
            mfu = window_mfu(self.flop_model, stats.samples, stats.padded_tokens, stats.elapsed, self.peak_flops)
        logger.info(
            format_step_line(
                stats,
                step=global_step,
                total_steps=total_steps,
                epoch=epoch,
                inner=inner,
                iters_per_epoch=iters_per_epoch,
                lr=lr,
                peak_mem_mib=peak,
                mfu=mfu,
                eta_seconds=stats.step_time * (total_steps - global_step),
            )
        )
        # Rank 0 only, once, at the first line of a run: every rank holds the same loss.
        vocab_size = self.model.vocab_size
        first = is_main_process() and not self.history
        if first and vocab_size and (warning := uniform_loss_warning(stats.loss, vocab_size)):
            logger.warning(warning)
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
        if self.tensorboard is not None:
            self.tensorboard.add_scalars(global_step, {f"train/{k}": v for k, v in figures.items() if v is not None})
        self.history.append({"step": global_step, "epoch": epoch, **figures})
        if (skipped := step.guard.longest_skipped_run()) >= run.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{skipped} consecutive optimizer steps were skipped for a non-finite loss, gradient or "
                f"updated weight (by step {global_step}; run.max_nonfinite_steps is {run.max_nonfinite_steps}). "
                f"None of them was applied: the weights hold no non-finite value and "
                f"{self.last_checkpoint_words()}. Lower run.init_lr, train in bf16 or fp32 "
                "(run.precision), or check the data."
            )
        step.metrics.start_window()

    def end_epoch(self, epoch: int, lr: float) -> None:
        """The epoch's figures and its held-out figures in one line (console, log.txt,
        TensorBoard), ``checkpoint_<epoch>.pth``, and ``checkpoint_best.pth`` when the first of
        ``run.valid_splits`` is the best yet."""
        run = self.config.run_cfg
        stats = {"epoch": epoch, **self.step.metrics.end_epoch()}
        results = self.evaluate_splits(run.valid_splits, epoch)
        is_best = self.note_best(epoch, results)
        figures = flat_metrics(results)
        if self.best is not None:
            figures["best_epoch"] = self.best["epoch"]
        logger.info(format_epoch_line(stats["epoch"], stats["train_loss"], figures))
        if is_main_process():
            log_epoch(self.output_dir, {**stats, **figures})
        if self.tensorboard is not None and results:
            global_step = (epoch + 1) * int(run.iters_per_epoch)
            self.tensorboard.add_scalars(
                global_step, {f"{split}/{k}": v for split, metrics in results.items() for k, v in metrics.items()}
            )
        state = self.checkpoint(epoch, int(run.iters_per_epoch), lr)
        if is_best:
            self.save(BEST_CHECKPOINT, state)
        self.save(f"checkpoint_{epoch}.pth", state)

    def checkpoint(self, epoch: int, iters: int, lr: float) -> dict[str, Any]:
        """What a checkpoint holds (``minigpt4.common.checkpoint``), taken now."""
        run = self.config.run_cfg
        return {
            "model": trainable_state_dict(self.model),
            "optimizer": self.step.optimizer.state_dict(),
            "scaler": self.step.scaler.state_dict(),
            "config": self.config.to_dict(),
            "epoch": epoch,
            "iters": iters,
            "global_step": epoch * int(run.iters_per_epoch) + iters,
            "scheduler": {"name": run.lr_sched, "epoch": epoch, "step": iters - 1, "lr": lr},
            "best": self.best,
            "rng": all_gather_object(rng_state(self.device)),  # every rank's, in rank order
        }

    def save(self, name: str, state: dict[str, Any]) -> None:
        """Write ``state`` (see ``checkpoint``) to ``name`` on rank 0 only; refuse to write weights
        that hold a non-finite value (one host read per checkpoint)."""
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

    # --- evaluation -------------------------------------------------------------------------------

    def evaluate_splits(self, splits: list[str], epoch: int | None) -> dict[str, dict[str, float]]:
        """``{split: metrics}``: the task's evaluation of each held-out split (its loss, or a
        benchmark's scores), every sample once over all ranks, with the model in eval mode, on
        seeded random generators."""
        if not splits:
            return {}
        run = self.config.run_cfg
        results = {}
        with forked_rng(self.device, int(run.seed)):
            self.model.eval()
            for split in splits:
                results[split] = self.task.evaluate_split(
                    self.model, self.datasets, split, self.config,
                    device=self.device, dtype=self.dtype, epoch=epoch, output_dir=self.output_dir,
                )  # fmt: skip
            self.model.train()
        self.evaluations += [{"epoch": epoch, "split": split, **metrics} for split, metrics in results.items()]
        return results

    def note_best(self, epoch: int, results: dict[str, dict[str, float]]) -> bool:
        """Whether this epoch's ``agg_metrics`` (higher is better) on the first of
        ``run.valid_splits`` beats the best so far; if so it becomes the best."""
        if not results:
            return False
        split = self.config.run_cfg.valid_splits[0]
        value = results[split]["agg_metrics"]
        if not math.isfinite(value) or (self.best is not None and value <= self.best["agg_metrics"]):
            return False
        self.best = {"epoch": epoch, "split": split, "agg_metrics": value}
        return True

    def test(self) -> None:
        """``run.test_splits`` after training, with the weights of ``checkpoint_best.pth`` where
        ``run.valid_splits`` chose one, else the last ones."""
        barrier()  # rank 0 has written the best checkpoint
        epoch = int(self.config.run_cfg.max_epoch) - 1
        if self.best is not None:
            self.load_weights(self.output_dir / BEST_CHECKPOINT)
            epoch = self.best["epoch"]
        self.log_evaluation(self.evaluate_splits(self.config.run_cfg.test_splits, epoch), epoch)

    def evaluate_only(self) -> None:
        """``run.evaluate``: no training; the held-out figures of ``run.valid_splits`` and
        ``run.test_splits`` for the model as loaded, or with the weights of ``run.resume_ckpt_path``."""
        run = self.config.run_cfg
        if self.device is None:
            self.device = init_distributed_mode(run.device, run.dist_url)
        self.model = prepare_model(self.model, self.device, run)
        self.dtype = resolve_precision(run, self.device)
        epoch = None
        if run.resume_ckpt_path:
            path = resume_checkpoint(run.resume_ckpt_path)
            epoch = self.load_weights(path)["epoch"]
            logger.info("Evaluating the weights of %s (epoch %d)", path, epoch)
        if is_main_process():
            log_config(self.output_dir, self.config.to_dict())
        self.log_evaluation(self.evaluate_splits([*run.valid_splits, *run.test_splits], epoch), epoch)

    def log_evaluation(self, results: dict[str, dict[str, float]], epoch: int | None) -> None:
        """One console line per split, and one log.txt line for them all."""
        for split, metrics in results.items():
            logger.info(format_eval_line(split, epoch, metrics))
        if is_main_process():
            log_epoch(self.output_dir, {"epoch": epoch, **flat_metrics(results)})


def flat_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{"val": {"loss": x}}`` -> ``{"val_loss": x}``, as LAVIS names them in log.txt."""
    return {f"{split}_{k}": v for split, metrics in results.items() for k, v in metrics.items()}
