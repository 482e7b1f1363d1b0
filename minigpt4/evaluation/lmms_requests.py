"""lmms-eval's ``generate_until`` requests answered with ``Chat.answer_batch``.

A request's ``args`` are ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``: the question
text, the task's generation settings, a function from a document to its images, and where the
document is in ``task_dict[task][split]``. Every request is answered as a fresh one-turn
conversation about its one image (``answer_batch`` builds a new conversation per question), so no
answer ever sees another question. Requests with the same settings are answered in batches of
``batch_size``; the answers come back in the requests' order.

From ``gen_kwargs``: ``until`` (a string or a list; the answer is cut before the first one it
contains, as if generation had stopped there; MiniGPT-4's own stop on the template separator still
applies), ``max_new_tokens``, ``temperature`` (0, the default, is greedy; above 0 samples with it),
``do_sample`` (``False`` forces greedy), ``top_p`` and ``num_beams``. Other keys are reported once
and ignored. This module does not import lmms-eval: :mod:`.lmms_eval_model` wraps it in lmms-eval's
model class.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from minigpt4.common.errors import MiniGPT4Error
from minigpt4.conversation.decoding import Decoding

logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"  # the placeholder some tasks put in the question; answer_batch places the image itself
HANDLED_KEYS = frozenset({"until", "max_new_tokens", "temperature", "do_sample", "top_p", "num_beams"})

GenerateArgs = tuple[str, Mapping[str, Any] | None, Callable[[Any], Any], Any, str, str]


class LmmsRequestError(MiniGPT4Error, ValueError):
    """A request this model cannot answer, explained in words."""


def generation_settings(gen_kwargs: Mapping[str, Any] | None) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(keyword arguments for ``Chat.answer_batch``, stop strings) for a request's ``gen_kwargs``."""
    gen_kwargs = dict(gen_kwargs or {})
    until = gen_kwargs.get("until") or ()
    if isinstance(until, str):
        until = (until,)
    if not all(isinstance(stop, str) for stop in until):
        raise LmmsRequestError(f"gen_kwargs['until'] must be a string or a list of strings, got {until!r}")
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    sample = temperature > 0 and gen_kwargs.get("do_sample", True) is not False
    decoding: dict[str, Any] = {
        "max_new_tokens": int(gen_kwargs.get("max_new_tokens") or Decoding.max_new_tokens),
        "do_sample": sample,
        "num_beams": int(gen_kwargs.get("num_beams") or 1),
    }
    if sample:
        decoding["temperature"] = temperature
        if gen_kwargs.get("top_p") is not None:
            decoding["top_p"] = float(gen_kwargs["top_p"])
    Decoding(**decoding)  # a setting Chat would refuse fails here, before any image is encoded
    return decoding, tuple(stop for stop in until if stop)


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any of ``until``."""
    ends = [index for stop in until if (index := text.find(stop)) != -1]
    return text[: min(ends)] if ends else text


def question_text(context: str) -> str:
    return context.replace(IMAGE_TOKEN, "").strip()


def request_image(args: GenerateArgs, task_dict: Mapping[str, Mapping[str, Any]]) -> Any:
    """The one image of the request's document (a PIL image, a path or a tensor)."""
    _, _, doc_to_visual, doc_id, task, split = args
    visuals = doc_to_visual(task_dict[task][split][doc_id])
    visuals = [v for v in (visuals if isinstance(visuals, list | tuple) else [visuals]) if v is not None]
    if len(visuals) != 1:
        raise LmmsRequestError(
            f"task {task}, document {doc_id}: MiniGPT-4 answers about exactly one image, this document has "
            f"{len(visuals)}"
        )
    return visuals[0]


class RequestAnswerer:
    """Answers batches of ``generate_until`` request args with a ``Chat``."""

    def __init__(self, chat: Any, batch_size: int = 1):
        if batch_size < 1:
            raise LmmsRequestError(f"batch_size must be at least 1, got {batch_size}")
        self.chat = chat
        self.batch_size = batch_size
        self._ignored: set[str] = set()

    def _report_ignored(self, gen_kwargs: Mapping[str, Any] | None) -> None:
        new = sorted(set(gen_kwargs or {}) - HANDLED_KEYS - self._ignored)
        if new:
            logger.warning("minigpt4 ignores these generation settings of the task: %s", ", ".join(new))
            self._ignored.update(new)

    def answer(self, requests: Sequence[GenerateArgs], task_dict: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """One answer per request, in the requests' order."""
        groups: dict[str, list[int]] = {}
        for index, args in enumerate(requests):
            if len(args) != 6:
                raise LmmsRequestError(f"a generate_until request has 6 arguments, this one has {len(args)}")
            groups.setdefault(json.dumps(args[1] or {}, sort_keys=True, default=repr), []).append(index)
        answers = [""] * len(requests)  # every index is in exactly one group
        for indices in groups.values():
            gen_kwargs = requests[indices[0]][1]
            self._report_ignored(gen_kwargs)
            decoding, until = generation_settings(gen_kwargs)
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                images = [request_image(requests[i], task_dict) for i in batch]
                questions = [question_text(requests[i][0]) for i in batch]
                texts = self.chat.answer_batch(images, questions, **decoding)
                for i, text in zip(batch, texts, strict=True):
                    answers[i] = cut_at_stops(text, until)
                logger.debug("answered %d requests of %d", start + len(batch), len(indices))
        return answers
