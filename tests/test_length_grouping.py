"""run.length_grouping: batches of similar text length, from the shard streams and from cc_sbu_align,
through build_train_loader; and the padding it saves in the model (the benchmark's pool)."""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dataset.make_synthetic import make_synthetic
from minigpt4.common.schema import DatasetConfig, RunConfig
from minigpt4.datasets.builders import build_datasets
from minigpt4.datasets.datasets.dataloader_utils import build_train_loader
from minigpt4.datasets.datasets.length_grouping import length_grouped, length_grouped_batches
from minigpt4.runners.runner_base import RunnerBase


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic(out, size=32, laion_samples=120, cc_sbu_samples=0, align_samples=48, shard_size=40)
    return out


def datasets_of(data: Path, name: str):
    storage = {"laion": data / "laion", "cc_sbu_align": data / "cc_sbu_align"}[name]
    cfg = OmegaConf.merge(
        OmegaConf.structured(DatasetConfig),
        {
            "build_info": {"storage": str(storage)},
            "vis_processor": {"train": {"name": "blip2_image_train", "image_size": 8}},
            "text_processor": {"train": {"name": "blip_caption"}},
        },
    )
    return build_datasets({name: cfg})


def run_cfg(**overrides):
    base = {"device": "cpu", "batch_size_train": 4, "num_workers": 0, "seed": 42}
    return OmegaConf.merge(OmegaConf.structured(RunConfig), {**base, **overrides})


def lengths(batch) -> list[int]:
    return [len(text) for text in batch["text_input"]]


def one_window_sorted(batches) -> bool:
    """The batches of one window: ordered by their shortest text, none overlaps the next."""
    spans = sorted((min(lengths(b)), max(lengths(b))) for b in batches)
    return all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))


def spread(batches) -> int:
    return sum(max(lengths(b)) - min(lengths(b)) for b in batches)


def test_length_grouped_sorts_cuts_and_shuffles():
    items = list("abcdefghij")
    sizes = [5, 1, 9, 3, 7, 2, 8, 4, 6, 0]
    batches = length_grouped(items, sizes, 3, random.Random(0))
    assert {tuple(b) for b in batches} == {("j", "b", "f"), ("d", "h", "a"), ("i", "e", "g"), ("c",)}
    orders = {tuple(map(tuple, length_grouped(items, sizes, 3, random.Random(seed)))) for seed in range(6)}
    assert len(orders) > 1  # the batch order is drawn


def test_stream_batches_are_sorted_slices_of_the_pool_and_lose_nothing():
    rng = random.Random(1)
    samples = [{"text_input": "x" * rng.randint(1, 50), "id": i} for i in range(23)]
    batches = list(length_grouped_batches(iter(samples), 4, 3, random.Random(0)))
    assert sorted(s["id"] for b in batches for s in b) == list(range(23))
    assert [len(b) for b in batches] == [4, 4, 4, 4, 4, 3]  # the last ones flushed when the stream ends
    # The first batch: one of the three length-sorted slices of the first full pool of 12.
    pool = sorted(samples[:12], key=lambda s: len(s["text_input"]))
    assert batches[0] in (pool[:4], pool[4:8], pool[8:])
    draws = {
        tuple(s["id"] for s in next(length_grouped_batches(iter(samples), 4, 3, random.Random(k)))) for k in range(8)
    }
    assert len(draws) > 1  # which slice is drawn


@pytest.mark.parametrize("workers", [0, 2])
def test_shard_batches_are_grouped_by_length(data, workers):
    datasets = datasets_of(data, "laion")
    plain = list(itertools.islice(build_train_loader(datasets, run_cfg(num_workers=workers)), 10))
    cfg = run_cfg(num_workers=workers, length_grouping=5)
    grouped = list(itertools.islice(build_train_loader(datasets, cfg), 10))
    assert all(b["image"].shape == (4, 3, 8, 8) and len(b["text_input"]) == 4 for b in grouped)
    assert spread(grouped) < spread(plain) / 2
    again = list(itertools.islice(build_train_loader(datasets, cfg), 10))
    assert [b["text_input"] for b in again] == [b["text_input"] for b in grouped]  # seeded


@pytest.mark.parametrize("workers", [0, 2])
def test_map_style_batches_are_grouped_and_each_pass_is_a_new_shuffle(data, workers):
    dataset = datasets_of(data, "cc_sbu_align")
    # 48 samples, 2 ranks, batch 4: 6 batches per rank and pass, grouped in windows of 3.
    for rank in (0, 1):
        grouped = run_cfg(length_grouping=3, num_workers=workers)
        loader = build_train_loader(dataset, grouped, rank=rank, world_size=2)
        plain = build_train_loader(dataset, run_cfg(), rank=rank, world_size=2)
        first, second = (list(itertools.islice(loader, 6)) for _ in range(2))
        plain_pass = list(itertools.islice(plain, 6))
        for one_pass in (first, second):
            assert one_window_sorted(one_pass[:3]) and one_window_sorted(one_pass[3:])
        # The same samples as the plain shuffle gives this rank in a pass, only batched otherwise.
        ids = sorted(i for b in first for i in b["image_id"].tolist())
        assert ids == sorted(i for b in plain_pass for i in b["image_id"].tolist()) and len(set(ids)) == 24
        assert [b["image_id"].tolist() for b in first] != [b["image_id"].tolist() for b in second]
        assert spread(first) < spread(plain_pass)


def test_a_dataset_without_text_lengths_and_a_negative_window_are_refused(data):
    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"image": torch.zeros(3, 8, 8), "text_input": "x" * i}

    with pytest.raises(TypeError, match=r"mine: run.length_grouping needs a dataset that knows its text lengths"):
        build_train_loader({"mine": {"train": Plain()}}, run_cfg(length_grouping=2))
    with pytest.raises(
        ValueError, match=re.escape("run.length_grouping must be 0 (off) or a number of batches, got -1")
    ):
        RunnerBase.check_config(run_cfg(length_grouping=-1))
