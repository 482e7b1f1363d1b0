"""``Decoding``: how ``Chat`` generates, as a value (kept apart from ``conversation.py`` so that the
command lines can show its defaults in ``--help`` without loading torch)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Decoding:
    """How ``Chat`` generates. The defaults are the reference's ``Chat.answer`` defaults, with the
    ``top_k=50`` that transformers 4.28 applied implicitly written out."""

    max_new_tokens: int = 300
    num_beams: int = 1
    min_length: int = 1
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    temperature: float = 1.0
    max_length: int = 2000
    do_sample: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.max_length <= self.max_new_tokens:
            raise ValueError(
                f"max_length ({self.max_length}) must exceed max_new_tokens ({self.max_new_tokens}): "
                "the context gets what is left"
            )
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, got {self.num_beams}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be positive when sampling, got {self.temperature}")
        if self.do_sample and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``generate``. Transformers 4.28 counted the ``<s>`` it put in front of
        the output in ``min_length``; transformers 5 returns only new tokens, hence ``- 1``."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": self.do_sample,
            "min_new_tokens": max(self.min_length - 1, 0),
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            kwargs.update(top_p=self.top_p, top_k=self.top_k, temperature=self.temperature)
        if self.num_beams > 1:
            kwargs["length_penalty"] = self.length_penalty
        return kwargs
