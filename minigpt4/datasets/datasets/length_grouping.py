"""Batches of texts of similar length (``run.length_grouping``), to waste less compute on padding.

The model pads each batch's token sequences to the longest one, so a batch that mixes an 8-word
caption with a 20-word one runs the LLM over pad positions. With ``run.length_grouping: N`` the
loader gathers N batches' worth of samples, sorts them by text length (characters: the tokens are
not known before the model tokenizes), cuts them into N batches and hands those out in random
order. Which samples are seen, and how often, does not change; only which samples share a batch,
and through it the weight of each sample's tokens in its batch's mean loss. 0 (the reference)
keeps batches as the shuffle made them.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from torch.utils.data import DistributedSampler, Sampler

T = TypeVar("T")


def length_grouped(items: Sequence[T], lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[T]]:
    """``items`` sorted by ``lengths`` (ties keep their order), cut into batches of ``batch_size``
    (the last one shorter where the items do not divide), the batches in an order drawn from ``rng``."""
    order = sorted(range(len(items)), key=lengths.__getitem__)
    batches = [[items[i] for i in order[start : start + batch_size]] for start in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def length_grouped_stream(
    samples: Iterator[dict[str, Any]], batch_size: int, batches: int, rng: random.Random
) -> Iterator[dict[str, Any]]:
    """A stream of ``{"text_input": str, ...}`` samples re-ordered window by window: every
    ``batches`` x ``batch_size`` samples come out as ``batches`` runs of ``batch_size`` of similar
    text length. A DataLoader that batches this stream by ``batch_size`` gets those runs as its
    batches (each worker process batches its own stream)."""
    while window := list(itertools.islice(samples, batches * batch_size)):
        for batch in length_grouped(window, [len(s["text_input"]) for s in window], batch_size, rng):
            yield from batch


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Index batches for a map-style dataset: the indices ``sampler`` gives this rank in a pass
    (shuffled, a new order every epoch), taken ``batches`` x ``batch_size`` at a time and grouped
    by text length. The last incomplete batch of a pass is dropped, as ``drop_last`` does."""

    def __init__(
        self, sampler: DistributedSampler, lengths: Sequence[int], batch_size: int, batches: int, seed: int
    ) -> None:
        self.sampler = sampler
        self.lengths = lengths
        self.batch_size = batch_size
        self.batches = batches
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        indices = list(self.sampler)[: len(self) * self.batch_size]
        rng = random.Random(f"{self.seed}-{self.epoch}")
        window = self.batches * self.batch_size
        for start in range(0, len(indices), window):
            chunk = indices[start : start + window]
            yield from length_grouped(chunk, [self.lengths[i] for i in chunk], self.batch_size, rng)
