"""Held-out splits of cc_sbu_align (datasets.<name>.held_out): disjoint from training, seeded,
by fraction or by listed image ids, read without random crops, and every sample evaluated once
over the ranks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dataset.make_synthetic import make_synthetic
from minigpt4.common.config import ConfigError
from minigpt4.common.schema import DatasetConfig, RunConfig
from minigpt4.datasets.builders import build_datasets
from minigpt4.datasets.datasets.dataloader_utils import build_eval_loader
from minigpt4.datasets.datasets.held_out import HeldOutError


@pytest.fixture(scope="module")
def align(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic(out, size=32, laion_samples=0, cc_sbu_samples=0, align_samples=20)
    return out / "cc_sbu_align"


def splits_of(storage: Path, held_out: dict, seed: int = 0, name: str = "cc_sbu_align") -> dict:
    cfg = OmegaConf.merge(
        OmegaConf.structured(DatasetConfig),
        {
            "build_info": {"storage": str(storage)},
            "vis_processor": {"train": {"name": "blip2_image_train", "image_size": 16, "min_scale": 0.2}},
            "held_out": held_out,
            "held_out_seed": seed,
        },
    )
    return build_datasets({name: cfg})[name]


def ids(dataset) -> list[str]:
    return [str(ann["image_id"]) for ann in dataset.annotation]


def test_a_fraction_is_held_out_of_training_the_same_way_every_time(align):
    splits = splits_of(align, {"val": {"fraction": 0.2}})
    assert sorted(splits) == ["train", "val"]
    assert (len(splits["train"]), len(splits["val"])) == (16, 4)
    assert not set(ids(splits["train"])) & set(ids(splits["val"]))
    assert sorted(ids(splits["train"]) + ids(splits["val"])) == sorted(ids(splits_of(align, {})["train"]))
    assert ids(splits_of(align, {"val": {"fraction": 0.2}})["val"]) == ids(splits["val"])  # seeded
    assert ids(splits_of(align, {"val": {"fraction": 0.2}}, seed=1)["val"]) != ids(splits["val"])
    # The held-out images are resized, not randomly cropped: the same tensor every time.
    assert splits["val"][0]["image"].shape == (3, 16, 16)
    assert torch.equal(splits["val"][0]["image"], splits["val"][0]["image"])
    assert not torch.equal(splits["train"][0]["image"], splits["train"][0]["image"])


def test_listed_image_ids_and_a_fraction_make_disjoint_splits(align):
    listed = ids(splits_of(align, {})["train"])[:3]
    splits = splits_of(align, {"test": {"image_ids": listed}, "val": {"fraction": 0.25}})
    assert ids(splits["test"]) == listed
    assert len(splits["val"]) == 5 and not set(ids(splits["val"])) & set(listed)
    assert len(splits["train"]) == 12


@pytest.mark.parametrize(
    ("held_out", "message"),
    [
        ({"val": {}}, r"held_out.val: give either fraction or image_ids"),
        ({"val": {"fraction": 0.1, "image_ids": ["0"]}}, r"give either fraction or image_ids"),
        ({"val": {"image_ids": ["nope"]}}, r"held_out.val.image_ids: nope not in the dataset's annotations"),
        ({"val": {"fraction": 1.5}}, r"held_out.val.fraction must be between 0 and 1, got 1.5"),
        ({"val": {"fraction": 0.01}}, r"fraction 0.01 of 20 images is 0"),
        ({"train": {"fraction": 0.1}}, r"'train' is what is left"),
        ({"a": {"fraction": 0.5}, "b": {"fraction": 0.5}}, r"take every image of cc_sbu_align"),
    ],
)
def test_held_out_splits_that_cannot_be_drawn_are_refused(align, held_out, message):
    with pytest.raises(HeldOutError, match=message):
        splits_of(align, held_out)


def test_a_stream_has_no_held_out_split(tmp_path):
    with pytest.raises(HeldOutError, match=r"datasets.laion.held_out: a stream of shards has no held-out split"):
        splits_of(tmp_path, {"val": {"fraction": 0.1}}, name="laion")


def test_every_held_out_sample_is_evaluated_once_over_the_ranks(align):
    val = splits_of(align, {"val": {"fraction": 0.35}})["val"]  # 7 samples
    run = OmegaConf.merge(OmegaConf.structured(RunConfig), {"batch_size_eval": 2, "num_workers": 0})
    seen = []
    for rank in range(3):
        batches = list(build_eval_loader({"cc_sbu_align": {"val": val}}, "val", run, rank, 3))
        assert all(len(b["text_input"]) <= 2 for b in batches)
        seen += [int(i) for b in batches for i in b["image_id"]]
    assert sorted(seen) == sorted(val.img_ids[a["image_id"]] for a in val.annotation)
    with pytest.raises(ConfigError, match=r"no dataset has a split 'test'"):
        build_eval_loader({"cc_sbu_align": {"val": val}}, "test", run)
