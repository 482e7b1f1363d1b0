"""Logging for training: console set-up, the per-interval step line, ``log.txt`` and TensorBoard.

Rank 0 logs at INFO, the other ranks only warnings and errors. Every ``run.log_freq`` iterations
rank 0 writes one line that starts with ``train: step=`` and holds ``key=value`` fields, so that
scripts can grep and parse it (``test/*.sh`` do):

    train: step=40/400 epoch=0 iter=40/200 loss=2.3456 grad_norm=0.8123 lr=1.000e-05 step_time=0.5120
    data_time=0.0030 samples/s=125.00 TokensPerSec=4321.0 TokensPerSec_padded=5678.0 mfu=0.4012
    peak_mem_MiB=1234 nonfinite=0 skipped=0 eta=0:01:23

(one line in the log). Every figure covers the iterations since the previous line, over all
ranks: ``loss`` is the mean loss, ``grad_norm`` the mean total norm of the trainable parameters'
gradients at the optimizer steps (unscaled, before clipping; non-finite ones left out, as their
steps are skipped; nan when the window holds no optimizer step, as can happen when
``run.accum_grad_iters`` exceeds ``run.log_freq``), ``step_time`` the wall time per iteration,
``samples/s`` and ``TokensPerSec`` the totals of all ranks per second. **TokensPerSec** counts the
LLM input tokens processed (BOS + prompt + image query tokens + text, as the model reports them in
``tokens``); ``TokensPerSec_padded`` counts the padded sequences the LLM actually ran
(``padded_tokens``). ``mfu`` is the model FLOPs of the window (``minigpt4.common.flops``) per second
over the peak of all ranks' accelerators; ``n/a`` on a CPU, on an accelerator whose peak is not in
``flops.PEAK_FLOPS``, or for a model that does not count its FLOPs.
``peak_mem_MiB`` is the device's peak allocated memory (on CPU, the process's peak resident set).
``skipped`` counts the samples the loaders skipped (corrupt images, samples without json or
caption, broken tar entries); they reach the training process inside the batches (``skipped``).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minigpt4.common.device import max_memory_allocated, synchronize
from minigpt4.common.dist_utils import all_reduce

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s [%(levelname)s] %(message)s"
HANDLER_NAME = "minigpt4"


def setup_logger(rank: int = 0) -> None:
    """INFO on rank 0, WARNING elsewhere, one console handler (calling it again replaces it), and
    no library progress bars."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    # transformers draws a "Loading weights" bar per load on every rank; rank 0's log lines say
    # what is loading instead.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def append_log_txt(output_dir: Path, text: str) -> None:
    """``output_dir/log.txt`` as the reference writes it: the indented config, then one JSON line
    per epoch."""
    with open(output_dir / "log.txt", "a", encoding="utf-8") as f:
        f.write(text + "\n")


def log_config(output_dir: Path, config: dict[str, Any]) -> None:
    append_log_txt(output_dir, json.dumps(config, indent=4))


def log_epoch(output_dir: Path, stats: dict[str, Any]) -> None:
    append_log_txt(output_dir, json.dumps(stats))


def peak_memory_mib(device: torch.device) -> float:
    peak = max_memory_allocated(device)
    if device.type == "cpu":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return peak / 2**20


@dataclass
class WindowStats:
    """What happened since the previous log line (or over an epoch), summed over all ranks."""

    iters: int  # iterations per rank
    elapsed: float  # wall seconds (the slowest rank's)
    loss_sum: float  # over finite losses
    finite: int
    nonfinite: int  # optimizer steps not applied (non-finite loss, gradient or updated weight)
    tokens: float  # real LLM input tokens
    padded_tokens: float
    samples: float
    data_time: float  # seconds this rank waited for batches
    grad_norm_sum: float = 0.0  # over the finite gradient norms of optimizer steps
    grad_norms: int = 0
    skipped: int = 0  # samples the loaders skipped for the batches of the window

    @property
    def loss(self) -> float:
        return self.loss_sum / self.finite if self.finite else float("nan")

    @property
    def grad_norm(self) -> float:
        return self.grad_norm_sum / self.grad_norms if self.grad_norms else float("nan")

    @property
    def step_time(self) -> float:
        return self.elapsed / max(self.iters, 1)

    @property
    def data_time_per_iter(self) -> float:
        return self.data_time / max(self.iters, 1)

    @property
    def samples_per_sec(self) -> float:
        return self.samples / max(self.elapsed, 1e-9)

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens / max(self.elapsed, 1e-9)

    @property
    def padded_tokens_per_sec(self) -> float:
        return self.padded_tokens / max(self.elapsed, 1e-9)

    def __add__(self, other: WindowStats) -> WindowStats:
        return WindowStats(
            iters=self.iters + other.iters,
            elapsed=self.elapsed + other.elapsed,
            loss_sum=self.loss_sum + other.loss_sum,
            finite=self.finite + other.finite,
            nonfinite=self.nonfinite + other.nonfinite,
            tokens=self.tokens + other.tokens,
            padded_tokens=self.padded_tokens + other.padded_tokens,
            samples=self.samples + other.samples,
            data_time=self.data_time + other.data_time,
            grad_norm_sum=self.grad_norm_sum + other.grad_norm_sum,
            grad_norms=self.grad_norms + other.grad_norms,
            skipped=self.skipped + other.skipped,
        )


EMPTY_WINDOW = WindowStats(0, 0.0, 0.0, 0, 0, 0.0, 0.0, 0.0, 0.0)


class StepMetrics:
    """Accumulates per-iteration figures without synchronising with the device, and reads them
    once per log interval: one device synchronisation and two all-reduces.

    Per rank it sums the finite losses and counts them (device tensors), sums the finite gradient
    norms of the optimizer steps and counts them and counts the steps that were not applied
    (device tensors), and sums the real and padded
    LLM tokens and the samples the loaders skipped (tensors or ints, as the model and the batches
    hold them), the samples and the learning rate (host numbers). The windows read during an
    epoch add up to the epoch's figures."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._losses = torch.zeros(2, dtype=torch.float64, device=device)  # sum, count (finite ones)
        self._grad_norms = torch.zeros(2, dtype=torch.float64, device=device)  # sum, count (finite ones)
        self._not_applied = torch.zeros((), dtype=torch.float64, device=device)  # optimizer steps
        self._epoch = EMPTY_WINDOW
        self._epoch_lr_sum = 0.0
        self.start_window()

    def start_window(self) -> None:
        synchronize(self.device)
        self._losses.zero_()
        self._grad_norms.zero_()
        self._not_applied.zero_()
        self._tokens: torch.Tensor | int = 0
        self._padded: torch.Tensor | int = 0
        self._skipped: torch.Tensor | int = 0
        self._samples = 0
        self._iters = 0
        self._data_time = 0.0
        self._t0 = time.perf_counter()

    def update(
        self,
        loss: torch.Tensor,
        *,
        tokens: torch.Tensor | int,
        padded_tokens: torch.Tensor | int,
        samples: int,
        lr: float,
        data_time: float,
        skipped: torch.Tensor | int = 0,
    ) -> None:
        """``skipped``: a batch's ``skipped`` (a tensor (B,) from a stream, summed here on its
        device) or a count."""
        loss = loss.detach().double()
        finite = torch.isfinite(loss)
        self._losses += torch.stack([torch.where(finite, loss, 0.0), finite.double()])
        self._tokens = self._tokens + tokens
        self._padded = self._padded + padded_tokens
        self._skipped = self._skipped + (skipped.sum() if torch.is_tensor(skipped) else skipped)
        self._samples += samples
        self._epoch_lr_sum += lr
        self._data_time += data_time
        self._iters += 1

    def add_grad_norm(self, norm: torch.Tensor, not_applied: torch.Tensor) -> None:
        """One optimizer step: its total gradient norm and whether the step was not applied
        (device tensors; not read here)."""
        self._not_applied += not_applied.double()
        norm = norm.detach().double()
        finite = torch.isfinite(norm)
        self._grad_norms += torch.stack([torch.where(finite, norm, 0.0), finite.double()])

    def read(self) -> WindowStats:
        """All ranks must call this at the same iteration (it all-reduces)."""
        synchronize(self.device)
        elapsed = time.perf_counter() - self._t0
        counts = [
            torch.as_tensor(x, device=self.device).double()
            for x in (self._tokens, self._padded, self._samples, self._skipped)
        ]
        # Every rank holds the same gradient norms (DDP averages the gradients), so their sum
        # and count both grow by the number of ranks and the mean is unchanged.
        sums = all_reduce(torch.cat([self._losses, self._grad_norms, torch.stack(counts)]))
        elapsed_t = torch.tensor(elapsed, dtype=torch.float64, device=self.device)
        # Every rank takes the same step decisions (the gradients are all-reduced), so the count of
        # steps not applied is the same everywhere: a maximum, not a sum.
        maxes = all_reduce(torch.stack([self._not_applied, elapsed_t]), torch.distributed.ReduceOp.MAX)
        loss_sum, finite, grad_norm_sum, grad_norms, tokens, padded, samples, skipped = sums.tolist()
        nonfinite, elapsed = maxes.tolist()
        window = WindowStats(
            iters=self._iters,
            elapsed=elapsed,
            loss_sum=loss_sum,
            finite=int(finite),
            nonfinite=int(nonfinite),
            tokens=tokens,
            padded_tokens=padded,
            samples=samples,
            data_time=self._data_time,
            grad_norm_sum=grad_norm_sum,
            grad_norms=int(grad_norms),
            skipped=int(skipped),
        )
        self._epoch = self._epoch + window
        return window

    def end_epoch(self) -> dict[str, Any]:
        """The epoch's figures for ``log.txt`` (the reference's ``train_lr``/``train_loss`` strings
        first, the lr now in a readable precision), then resets them."""
        epoch, lr_mean = self._epoch, self._epoch_lr_sum / max(self._epoch.iters, 1)
        self._epoch, self._epoch_lr_sum = EMPTY_WINDOW, 0.0
        return {
            "train_lr": f"{lr_mean:.3e}",
            "train_loss": f"{epoch.loss:.3f}",
            "iters": epoch.iters,
            "step_time": round(epoch.step_time, 6),
            "samples_per_sec": round(epoch.samples_per_sec, 3),
            "TokensPerSec": round(epoch.tokens_per_sec, 1),
            "TokensPerSec_padded": round(epoch.padded_tokens_per_sec, 1),
            "nonfinite_steps": epoch.nonfinite,
            "skipped_samples": epoch.skipped,
        }


# A first logged loss above this share of ln(vocabulary) is close to predicting every token with
# equal probability (10.37 for LLaMA's 32000 tokens), the mark of an LLM that is not working.
UNIFORM_LOSS_SHARE = 0.9


def uniform_loss_warning(loss: float, vocab_size: int) -> str | None:
    """A warning in words when ``loss`` is about that of uniform predictions over ``vocab_size``
    tokens; None otherwise."""
    uniform = math.log(vocab_size)
    if not loss >= UNIFORM_LOSS_SHARE * uniform:
        return None
    return (
        f"the loss {loss:.4f} is close to ln({vocab_size}) = {uniform:.4f}, the loss of predicting every token "
        "with equal probability. Randomly initialised weights (the tiny test assets) do that; a real LLM does "
        "not: check that model.llama_model holds merged weights (Vicuna deltas applied) that match its "
        "tokenizer, and that fp16 does not overflow (run.precision: bf16)"
    )


def format_step_line(
    stats: WindowStats,
    *,
    step: int,
    total_steps: int,
    epoch: int,
    inner: int,
    iters_per_epoch: int,
    lr: float,
    peak_mem_mib: float,
    mfu: float | None,
    eta_seconds: float,
) -> str:
    eta = datetime.timedelta(seconds=int(eta_seconds))
    return (
        f"train: step={step}/{total_steps} epoch={epoch} iter={inner}/{iters_per_epoch} loss={stats.loss:.4f} "
        f"grad_norm={stats.grad_norm:.4f} lr={lr:.3e} step_time={stats.step_time:.4f} "
        f"data_time={stats.data_time_per_iter:.4f} "
        f"samples/s={stats.samples_per_sec:.2f} TokensPerSec={stats.tokens_per_sec:.1f} "
        f"TokensPerSec_padded={stats.padded_tokens_per_sec:.1f} mfu={'n/a' if mfu is None else f'{mfu:.4f}'} "
        f"peak_mem_MiB={peak_mem_mib:.0f} "
        f"nonfinite={stats.nonfinite} skipped={stats.skipped} eta={eta}"
    )


def _figure(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_epoch_line(epoch: int, train_loss: str, held_out: dict[str, Any]) -> str:
    """``epoch: epoch=0 train_loss=2.346 val_loss=2.1234 val_samples=12 best_epoch=0``: the
    epoch's mean training loss and the held-out figures beside it."""
    fields = " ".join(f"{k}={_figure(v)}" for k, v in held_out.items())
    return f"epoch: epoch={epoch} train_loss={train_loss}{' ' + fields if fields else ''}"


def format_eval_line(split: str, epoch: int | None, metrics: dict[str, Any]) -> str:
    """``evaluate: split=test epoch=1 loss=2.1234 samples=12``."""
    fields = " ".join(f"{k}={_figure(v)}" for k, v in metrics.items())
    return f"evaluate: split={split} epoch={'n/a' if epoch is None else epoch} {fields}"


class TensorBoard:
    """Scalars to ``output_dir/tensorboard`` when the ``tensorboard`` package is installed; a
    no-op otherwise (it is optional)."""

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.writer = None
            logger.info("tensorboard is not installed: loss and throughput go to the console and log.txt only")
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def add_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if self.writer is None:
            return
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


__all__ = [
    "StepMetrics",
    "TensorBoard",
    "WindowStats",
    "format_epoch_line",
    "format_eval_line",
    "format_step_line",
    "log_config",
    "log_epoch",
    "peak_memory_mib",
    "setup_logger",
    "uniform_loss_warning",
]
