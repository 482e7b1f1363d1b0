"""The Ascend port's three edits to transformers' generation, re-done on transformers 5 at run time.

The port replaced ``transformers/generation/utils.py`` (4.28.0) with an edited copy. Here the same
three changes are small wrappers installed on transformers' own classes while a process needs them
(on an Ascend NPU, or when asked for), and removed again with ``remove()``; no installed file is
touched. See README.md in this folder for the upstream code each one replaces and why.

1. End-of-sequence test as a sum of element-wise comparisons (``EosTokenCriteria``), instead of
   ``torch.isin`` (4.28: a tiled ``ne`` and an integer ``prod``).
2. The sampling warpers of beam sampling (temperature, top-k, top-p ...) run on the CPU.
3. Beam sampling shifts running beam scores up by ``-0.9 * max`` when the best is below -100.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
import transformers
from transformers.generation import logits_process
from transformers.generation.stopping_criteria import EosTokenCriteria
from transformers.generation.utils import GenerationMixin

logger = logging.getLogger(__name__)

PATCHED_AGAINST = "5.23.0"
SCORE_FLOOR = -100.0
SCORE_SHIFT = -0.9

# Warpers that allocate nothing on the model's device, so they can run on the CPU as they are.
# EtaLogitsWarper keeps its epsilon as a tensor on the model's device and stays there.
CPU_WARPERS = tuple(
    getattr(logits_process, name)
    for name in (
        "TemperatureLogitsWarper",
        "TopKLogitsWarper",
        "TopPLogitsWarper",
        "TypicalLogitsWarper",
        "EpsilonLogitsWarper",
        "MinPLogitsWarper",
        "TopHLogitsWarper",
    )
)

_originals: dict[tuple[type, str], Callable[..., Any]] = {}
_beam_sampling = contextvars.ContextVar("beam_sampling", default=False)


def eos_hit_as_sum(
    self: EosTokenCriteria, input_ids: torch.LongTensor, _scores: Any, new_token_length: int = 1, **_kwargs: Any
) -> torch.BoolTensor:
    """Edit 1. A row is done when one of its newest tokens equals one of the eos ids, computed with
    element-wise ``==`` and additions only (no ``isin``, ``tile`` or integer ``prod``)."""
    recent = input_ids[:, -new_token_length:]  # (B, n)
    hits = sum(recent == eos for eos in self.eos_token_id.to(input_ids.device).flatten())
    return hits.sum(dim=-1) > 0


class WarperOnCPU(logits_process.LogitsProcessor):
    """Edit 2. Runs ``warper`` on a CPU copy of the scores and moves the result back."""

    def __init__(self, warper: logits_process.LogitsProcessor):
        self.warper = warper

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.warper(input_ids, scores.cpu()).to(scores.device)


def _warpers_on_cpu(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def get_logits_processor(self: GenerationMixin, generation_config: Any, *args: Any, **kwargs: Any) -> Any:
        processors = original(self, generation_config, *args, **kwargs)
        if generation_config.do_sample and (generation_config.num_beams or 1) > 1:
            for i, processor in enumerate(processors):
                if isinstance(processor, CPU_WARPERS):
                    processors[i] = WarperOnCPU(processor)
        return processors

    return get_logits_processor


def _mark_beam_sampling(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def beam_search(self: GenerationMixin, *args: Any, generation_config: Any, **kwargs: Any) -> Any:
        token = _beam_sampling.set(bool(generation_config.do_sample))
        try:
            return original(self, *args, generation_config=generation_config, **kwargs)
        finally:
            _beam_sampling.reset(token)

    return beam_search


def shift_low_scores(scores: torch.Tensor) -> torch.Tensor:
    """Edit 3. Rows (batch items) whose best running beam score is below -100 are shifted by
    ``-0.9 * best``; one shift per row leaves that row's softmax and warpers unchanged."""
    best = scores.max(dim=-1, keepdim=True).values  # (B, 1)
    return torch.where(best < SCORE_FLOOR, scores + SCORE_SHIFT * best, scores)


def _shift_running_scores(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def get_running_beams(self: GenerationMixin, *args: Any, **kwargs: Any) -> Any:
        sequences, scores, indices = original(self, *args, **kwargs)
        if _beam_sampling.get():
            scores = shift_low_scores(scores)
        return sequences, scores, indices

    return get_running_beams


def _install(cls: type, name: str, replacement: Callable[..., Any]) -> None:
    _originals[(cls, name)] = getattr(cls, name)
    setattr(cls, name, replacement)


def is_applied() -> bool:
    return bool(_originals)


def apply() -> None:
    """Installs the three edits (once; a second call does nothing)."""
    if is_applied():
        return
    if transformers.__version__ != PATCHED_AGAINST:
        logger.warning(
            "transformers_modify was written against transformers %s; this is %s",
            PATCHED_AGAINST,
            transformers.__version__,
        )
    for cls, name in (
        (EosTokenCriteria, "__call__"),
        (GenerationMixin, "_get_logits_processor"),
        (GenerationMixin, "_beam_search"),
        (GenerationMixin, "_get_running_beams_for_next_iteration"),
    ):
        if not callable(getattr(cls, name, None)):
            raise RuntimeError(
                f"transformers {transformers.__version__} has no {cls.__name__}.{name}; "
                f"transformers_modify needs transformers {PATCHED_AGAINST}"
            )
    _install(EosTokenCriteria, "__call__", eos_hit_as_sum)
    _install(GenerationMixin, "_get_logits_processor", _warpers_on_cpu(GenerationMixin._get_logits_processor))
    _install(GenerationMixin, "_beam_search", _mark_beam_sampling(GenerationMixin._beam_search))
    _install(
        GenerationMixin,
        "_get_running_beams_for_next_iteration",
        _shift_running_scores(GenerationMixin._get_running_beams_for_next_iteration),
    )
    logger.info("transformers_modify: the Ascend generation edits are applied")


def remove() -> None:
    """Restores transformers' own functions."""
    while _originals:
        (cls, name), original = _originals.popitem()
        setattr(cls, name, original)


@contextlib.contextmanager
def patched() -> Iterator[None]:
    """The edits for the duration of a ``with`` block (restored after, unless they were on before)."""
    was_applied = is_applied()
    apply()
    try:
        yield
    finally:
        if not was_applied:
            remove()


def needed_for(device_type: str, requested: bool = False) -> bool:
    """On an Ascend NPU (``device.type == "npu"``) the edits are needed; elsewhere only when asked for."""
    return requested or device_type == "npu"


__all__ = ["PATCHED_AGAINST", "apply", "is_applied", "needed_for", "patched", "remove", "shift_low_scores"]
