"""Batches of texts of similar length (``run.length_grouping``), to waste less compute on padding.

The model pads each batch's token sequences to the longest one, so a batch that mixes an 8-word
caption with a 20-word one runs the LLM over pad positions. With ``run.length_grouping: N`` the
loader keeps N batches' worth of samples, sorts them by text length (characters: the tokens are
not known before the model tokenizes) and cuts batches from them:

* a map-style dataset (``cc_sbu_align``): each rank's shuffled pass, N batches at a time, is sorted
  and cut into N batches handed out in random order (``LengthGroupedBatchSampler``);
* a stream (``laion``, ``cc_sbu``): a pool of N batches' worth of samples, before their images are
  decoded; each batch is one of the N length-sorted slices of the pool, drawn at random, and its
  place is refilled from the stream (``length_grouped_batches``). Every sample leaves the pool
  with the same chance at each draw, one batch comes out per batch read, and the pool holds
  compressed images only.

Which samples are seen, and how often, does not change; only which samples share a batch, and
through it the weight of each sample's tokens in its batch's mean loss. 0 (the reference) keeps
batches as the shuffle made them.
"""

from __future__ import annotations

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


def length_grouped_batches(
    samples: Iterator[dict[str, Any]], batch_size: int, batches: int, rng: random.Random
) -> Iterator[list[dict[str, Any]]]:
    """Lists of ``batch_size`` ``{"text_input": str, ...}`` samples of similar text length, from a
    pool of ``batches`` x ``batch_size``: sorted by length, one of its ``batches`` slices drawn,
    the pool refilled. When ``samples`` ends, the rest of the pool comes out sorted, the last
    list shorter where it does not divide."""
    pool: list[dict[str, Any]] = []
    for sample in samples:
        pool.append(sample)
        if len(pool) == batches * batch_size:
            pool.sort(key=lambda s: len(s["text_input"]))
            start = rng.randrange(batches) * batch_size
            yield pool[start : start + batch_size]
            del pool[start : start + batch_size]
    pool.sort(key=lambda s: len(s["text_input"]))
    for start in range(0, len(pool), batch_size):
        yield pool[start : start + batch_size]


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
