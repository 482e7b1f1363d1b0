"""What the runner and ``test/benchmark.py`` need of a model beyond ``nn.Module``: one contract.

``MiniGPT4`` implements it; a model of one's own that the runner is to train implements it too
(the runner refuses one that does not, naming what is missing). Called with a batch
(``{"image": (B, 3, H, W), "text_input": B str, ...}``), the model returns a ``StepOutput``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NotRequired, Protocol, TypedDict, runtime_checkable

import torch
from torch import nn

from minigpt4.common.flops import FlopModel


class StepOutput(TypedDict):
    """The model's output for one batch."""

    loss: torch.Tensor  # 0-dim: the mean over the batch's target tokens
    tokens: torch.Tensor | int  # real LLM input tokens (throughput is counted in them)
    padded_tokens: torch.Tensor | int  # positions of the padded sequences the LLM ran
    target_tokens: NotRequired[torch.Tensor | int]  # tokens the loss averages over (needed by evaluation)


@runtime_checkable
class TrainableModel(Protocol):
    """The members the runner and the benchmark read, besides ``nn.Module``'s own."""

    # The dtype the model computes its LLM in whatever the run's autocast says (fp16 needs a
    # dynamic loss scale); None where the run's autocast decides alone.
    llm_dtype: torch.dtype | None

    @property
    def vocab_size(self) -> int | None:
        """The width of the logits, for the uniform-loss warning of the first log line; None: no vocabulary."""
        ...

    def flop_model(self) -> FlopModel | None:
        """The training FLOP counts behind MFU; None for a model that does not count them."""
        ...

    def checkpoint_state(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint's ``model`` entry under this model's parameter names (older formats mapped)."""
        ...

    def __call__(self, samples: Mapping[str, Any]) -> StepOutput: ...


MEMBERS = tuple(name for name in (*TrainableModel.__annotations__, *vars(TrainableModel)) if not name.startswith("_"))


def check_model(model: nn.Module) -> TrainableModel:
    """``model`` as a ``TrainableModel``; a TypeError naming the members it lacks otherwise."""
    if not isinstance(model, TrainableModel):
        missing = [name for name in MEMBERS if not hasattr(model, name)]
        raise TypeError(
            f"{type(model).__name__} lacks {', '.join(missing)} of minigpt4.runners.contract.TrainableModel"
        )
    return model
