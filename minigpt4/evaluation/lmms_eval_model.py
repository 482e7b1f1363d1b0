"""``minigpt4``, an lmms-eval model: a config's ``Chat`` answering ``generate_until`` requests.

    pip install -e ".[lmms-eval]"     # registers the model through the "lmms_eval.models" entry point
    lmms-eval --model minigpt4 --tasks mme,pope --batch_size 8 \\
        --model_args 'cfg_path=eval_configs/minigpt4_eval.yaml,options=model.ckpt=/path/to/ckpt.pth'

``--model_args``: ``cfg_path`` (an eval config, as ``demo.py --cfg-path`` takes), ``options``
(``key=value`` overrides of that config separated by spaces, as ``--options`` takes),
``device`` (default ``auto``: cuda, then npu, then cpu; under ``accelerate launch`` or ``torchrun``
the index is ``LOCAL_RANK``), ``patch_generation`` (the NPU's generation edits elsewhere, as
``demo.py --patch-generation``). ``--batch_size`` is the number of questions per ``generate``
call. Every question is a fresh conversation with one image; how a request's generation settings
are read is told in :mod:`.lmms_requests`. Tasks that score by log-likelihood (multiple choice
through ``loglikelihood``) or hold multi-round dialogues are refused with a message.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from minigpt4.common.device import resolve_device
from minigpt4.conversation.launch import build_chat
from minigpt4.evaluation.lmms_requests import LmmsRequestError, RequestAnswerer


class MiniGPT4(lmms):
    """MiniGPT-4 in lmms-eval's simple (``doc_to_visual``) model interface."""

    is_simple = True

    def __init__(
        self,
        cfg_path: str,
        options: str = "",
        device: str | None = None,
        batch_size: int | str = 1,
        patch_generation: bool = False,
    ) -> None:
        super().__init__()
        try:
            batch = int(batch_size)
        except ValueError:
            raise LmmsRequestError(f"minigpt4 needs a number for --batch_size, got {batch_size!r}") from None
        self._rank = int(os.environ.get("RANK", "0"))
        self._world_size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ else None
        self._device = resolve_device(device or "auto", local_rank=local_rank)
        self.chat = build_chat(cfg_path, str(options).split(), self._device, patch_generation=patch_generation)
        self._answerer = RequestAnswerer(self.chat, batch)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self._answerer.batch_size

    def generate_until(self, requests: Sequence[Instance]) -> list[str]:
        args = [request.args for request in requests]
        answers = self._answerer.answer(args, self.task_dict)
        for request_args, answer in zip(args, answers, strict=True):
            self.cache_hook.add_partial("generate_until", (request_args[0], request_args[1]), answer)
        return answers

    def loglikelihood(self, requests: Sequence[Instance]) -> list[tuple[float, bool]]:
        raise LmmsRequestError(
            f"minigpt4 answers generate_until requests only; task {requests[0].task_name if requests else '?'} "
            "scores by loglikelihood (multiple choice): use its generate_until variant"
        )

    def generate_until_multi_round(self, requests: Sequence[Instance]) -> list[str]:
        raise LmmsRequestError(
            f"minigpt4 answers every question as a fresh one-turn conversation; task "
            f"{requests[0].task_name if requests else '?'} asks for multi-round dialogues"
        )
