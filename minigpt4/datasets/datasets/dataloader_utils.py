"""Training batches from the built datasets: one DataLoader per dataset, mixed batch by batch;
and the batches of a held-out split, each sample once over the ranks (``build_eval_loader``).

``build_train_loader`` is what the runner calls. Each batch is
``{"image": tensor (B, 3, H, W), "text_input": list of B str}`` (map-style ``cc_sbu_align``
batches also carry ``image_id``, a tensor (B,)). Everything random here is seeded from
``run.seed`` and the rank, so a run can be repeated exactly:

* webdataset streams (``laion``, ``cc_sbu``) draw their own shards and shuffle per rank and worker
  (``ImageTextShards.for_rank``);
* map-style datasets are shuffled and split across ranks by ``DistributedSampler`` (seeded, a new
  order every pass, last incomplete batch dropped) and repeated without end (``IterLoader``);
* the worker processes' torch RNG (random crops) comes from a seeded DataLoader generator;
* ``MultiIterLoader`` picks which dataset gives the next whole batch with weights ``sample_ratio``
  (stage 1: laion 115, cc_sbu 14), as the reference does;
* ``run.length_grouping`` > 0 makes each dataset's batches of texts of similar length
  (``length_grouping.py``), seeded like the rest;
* a stream's batches carry ``skipped``, a tensor (B,) whose sum is the samples its worker skipped
  since its previous batch, and a stream's worker hands on its errors as items that
  ``StreamLoader`` raises here, in the training process, with their one-line message intact.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Subset, default_collate

from minigpt4.common.config import ConfigError
from minigpt4.datasets.datasets.image_text_shards import STREAM_ERROR, ImageTextShards, name_id, stream_seed
from minigpt4.datasets.datasets.length_grouping import LengthGroupedBatchSampler

Batch = dict[str, Any]


class IterLoader:
    """Endless iteration over a DataLoader of a map-style dataset; every new pass calls
    ``set_epoch(pass)`` on its sampler (or batch sampler) so that the shuffle differs from pass to
    pass."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.epoch = 0
        self._iter = iter(loader)

    def __iter__(self) -> IterLoader:
        return self

    def __next__(self) -> Batch:
        try:
            return next(self._iter)
        except StopIteration:
            self.epoch += 1
            for sampler in (self.loader.sampler, self.loader.batch_sampler):
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(self.epoch)
            self._iter = iter(self.loader)
            return next(self._iter)


def collate_stream(samples: list[Batch]) -> Batch:
    """``default_collate``, except that a worker's error item (``STREAM_ERROR``) is passed on alone."""
    for sample in samples:
        if STREAM_ERROR in sample:
            return sample
    return default_collate(samples)


class StreamLoader:
    """Batches of a stream's DataLoader; raises the error a worker handed on in place of one."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self._iter = iter(loader)

    def __iter__(self) -> StreamLoader:
        return self

    def __next__(self) -> Batch:
        batch = next(self._iter)
        if STREAM_ERROR in batch:
            raise batch[STREAM_ERROR]
        return batch


class MultiIterLoader:
    """Each ``next`` returns one whole batch from one loader, chosen at random with probability
    proportional to ``ratios`` (uniform when None)."""

    def __init__(self, loaders: Sequence[Iterator[Batch]], ratios: Sequence[float] | None = None, seed: int = 0):
        if ratios is None:
            ratios = [1.0] * len(loaders)
        if len(ratios) != len(loaders) or not loaders:
            raise ValueError(f"need one ratio per loader, got {len(ratios)} ratios for {len(loaders)} loaders")
        if any(r < 0 for r in ratios) or sum(ratios) <= 0:
            raise ValueError(f"sample ratios must be non-negative with a positive sum, got {list(ratios)}")
        total = float(sum(ratios))
        self.loaders = list(loaders)
        self.ratios = [r / total for r in ratios]
        self.rng = random.Random(seed)

    def __iter__(self) -> MultiIterLoader:
        return self

    def __next__(self) -> Batch:
        index = self.rng.choices(range(len(self.loaders)), weights=self.ratios)[0]
        return next(self.loaders[index])


def _loader_generator(seed: int, rank: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, rank, name_id(name), 1))


def _build_loader(
    dataset: Dataset, name: str, run_cfg: Any, rank: int, world_size: int, *, seed: int, pin_memory: bool
) -> Iterator[Batch]:
    batch_size, grouping = run_cfg.batch_size_train, run_cfg.length_grouping
    common = {
        "num_workers": run_cfg.num_workers,
        "pin_memory": pin_memory,
        "generator": _loader_generator(seed, rank, name),
    }
    if isinstance(dataset, ImageTextShards):
        stream = dataset.for_rank(seed, rank, run_cfg.max_skip_fraction)
        if grouping:  # the stream gives whole batches
            return StreamLoader(DataLoader(stream.grouped_by_length(batch_size, grouping), batch_size=None, **common))
        return StreamLoader(DataLoader(stream, batch_size=batch_size, collate_fn=collate_stream, **common))
    if isinstance(dataset, IterableDataset):
        raise TypeError(f"{name}: iterable datasets other than ImageTextShards cannot be seeded per rank")
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    if len(sampler) < batch_size:
        raise ValueError(
            f"{name}: {len(dataset)} samples over {world_size} ranks leave {len(sampler)} per rank, "
            f"fewer than one batch of {batch_size}"
        )
    common["persistent_workers"] = run_cfg.num_workers > 0
    if not grouping:
        return IterLoader(DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, **common))
    if not hasattr(dataset, "text_lengths"):
        raise TypeError(f"{name}: run.length_grouping needs a dataset that knows its text lengths (text_lengths())")
    batches = LengthGroupedBatchSampler(
        sampler, dataset.text_lengths(), batch_size, grouping, seed=stream_seed(seed, rank, name_id(name), 3)
    )
    return IterLoader(DataLoader(dataset, batch_sampler=batches, **common))


def build_train_loader(
    datasets: Mapping[str, Mapping[str, Dataset]],
    run_cfg: Any,
    rank: int = 0,
    world_size: int = 1,
    *,
    seed: int | None = None,
    pin_memory: bool = False,
) -> MultiIterLoader:
    """An endless iterator of training batches.

    ``datasets`` is ``{name: {split: dataset}}`` as the builders return it; the splits in
    ``run.train_splits`` are used. From ``run_cfg`` it reads ``batch_size_train``, ``num_workers``,
    ``train_splits``, ``length_grouping`` and ``max_skip_fraction``. ``seed`` seeds every random
    draw of the stream (None: ``run.seed``); the runner passes ``run.seed`` plus the global step
    the stream starts at, so that a resumed run reads the batches the uninterrupted one read.
    ``pin_memory``: for an accelerator (the runner's device decides)."""
    seed = run_cfg.seed if seed is None else seed
    chosen = [
        (name, splits[split]) for name, splits in datasets.items() for split in run_cfg.train_splits if split in splits
    ]
    if not chosen:
        raise ValueError(f"no dataset has a split in run.train_splits {list(run_cfg.train_splits)}: {dict(datasets)}")
    loaders = [
        _build_loader(ds, name, run_cfg, rank, world_size, seed=seed, pin_memory=pin_memory) for name, ds in chosen
    ]
    ratios = [float(getattr(ds, "sample_ratio", 1.0)) for _, ds in chosen]
    return MultiIterLoader(loaders, ratios, seed=stream_seed(seed, rank, 2))


def build_eval_loader(
    datasets: Mapping[str, Mapping[str, Dataset]],
    split: str,
    run_cfg: Any,
    rank: int = 0,
    world_size: int = 1,
    *,
    pin_memory: bool = False,
) -> Iterator[Batch]:
    """Every sample of ``split``, of each dataset that has it, exactly once over all ranks: rank
    ``r`` reads samples ``r, r + world_size, ...`` in order, in batches of ``run.batch_size_eval``
    (the last one smaller), with ``run.num_workers`` workers. Nothing in it is random."""
    chosen = [(name, splits[split]) for name, splits in datasets.items() if split in splits]
    if not chosen:
        raise ConfigError(
            f"run.valid_splits / test_splits: no dataset has a split '{split}' (its splits: "
            f"{dict((name, sorted(splits)) for name, splits in datasets.items())}); "
            f"datasets.cc_sbu_align.held_out.{split} holds one out"
        )
    loaders = []
    for name, dataset in chosen:
        if isinstance(dataset, IterableDataset):
            raise TypeError(f"{name}: the held-out split '{split}' is a stream, which has no end to evaluate to")
        shard = Subset(dataset, range(rank, len(dataset), world_size))
        loaders.append(
            DataLoader(
                shard, batch_size=run_cfg.batch_size_eval, num_workers=run_cfg.num_workers, pin_memory=pin_memory
            )
        )
    return itertools.chain.from_iterable(loaders)
