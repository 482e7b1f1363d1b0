"""cc_sbu_align: the map-style stage-2 dataset, its errors, and its sharding across ranks."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dataset.make_synthetic import PHOTOS, make_synthetic
from minigpt4.common.schema import DatasetConfig, RunConfig
from minigpt4.datasets.builders import build_datasets
from minigpt4.datasets.datasets.cc_sbu_dataset import AnnotationError, CCSBUAlignDataset, MissingDataError
from minigpt4.datasets.datasets.dataloader_utils import IterLoader, build_train_loader
from minigpt4.processors import Blip2ImageEvalProcessor

DESCRIPTIONS = {photo.description for photo in PHOTOS}


@pytest.fixture(scope="module")
def align(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic(out, size=32, laion_samples=0, cc_sbu_samples=0, align_samples=24)
    return out / "cc_sbu_align"


def build(storage) -> CCSBUAlignDataset:
    cfg = OmegaConf.merge(
        OmegaConf.structured(DatasetConfig),
        {
            "build_info": {"storage": str(storage)},
            "vis_processor": {"train": {"name": "blip2_image_train", "image_size": 16}},
            "text_processor": {"train": {"name": "blip_caption"}},
        },
    )
    return build_datasets({"cc_sbu_align": cfg})["cc_sbu_align"]["train"]


def run_cfg(**overrides):
    base = {"device": "cpu", "batch_size_train": 4, "num_workers": 0, "seed": 42}
    return OmegaConf.merge(OmegaConf.structured(RunConfig), {**base, **overrides})


def test_items_have_processed_images_and_raw_captions(align):
    dataset = build(align)
    assert (dataset.name, dataset.sample_ratio, len(dataset)) == ("cc_sbu_align", 1.0, 24)
    item = dataset[3]
    assert item["image"].shape == (3, 16, 16)
    # The caption processor is configured but, as in the reference, not applied.
    assert item["text_input"] == PHOTOS[3].description
    assert any(c.isupper() for c in item["text_input"]) and item["text_input"].endswith(".")
    assert item["image_id"] == 3  # the running index of the distinct image ids
    assert {dataset[i]["text_input"] for i in range(len(dataset))} <= DESCRIPTIONS


def copy_of(align: Path, tmp_path: Path, annotations=None) -> Path:
    folder = tmp_path / "cc_sbu_align"
    (folder / "image").mkdir(parents=True)
    for image in (align / "image").iterdir():
        (folder / "image" / image.name).write_bytes(image.read_bytes())
    content = json.loads((align / "filter_cap.json").read_text())
    if annotations is not None:
        content = annotations
    (folder / "filter_cap.json").write_text(json.dumps(content))
    return folder


def test_missing_and_unreadable_images_name_path_and_id(align, tmp_path):
    folder = copy_of(align, tmp_path)
    dataset = CCSBUAlignDataset(Blip2ImageEvalProcessor(8), folder)
    # Gone or broken after the start-up check: named when the sample is reached.
    (folder / "image" / "5.jpg").unlink()
    (folder / "image" / "6.jpg").write_bytes(b"not a jpeg")
    missing = folder / "image" / "5.jpg"
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"image of image_id '5' (annotation 5) not found: {missing}")
    ):
        dataset[5]
    with pytest.raises(ValueError, match=r"image of image_id '6' \(annotation 6\) is unreadable: .*6\.jpg"):
        dataset[6]


def test_missing_image_fails_from_a_worker_process(align, tmp_path):
    folder = copy_of(align, tmp_path)
    dataset = build(folder)
    for image in (folder / "image").iterdir():
        image.unlink()
    loader = build_train_loader({"cc_sbu_align": {"train": dataset}}, run_cfg(num_workers=1))
    try:
        next(loader)
    except FileNotFoundError as exn:
        message = str(exn)
        exn.__traceback__ = None  # see test_datasets_shards: lets the worker stop at once
    else:
        pytest.fail("no error")
    del loader
    assert re.search(r"cc_sbu_align: image of image_id '\d+' \(annotation \d+\) not found: .*\.jpg", message)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ({"images": []}, r"must hold \{'annotations'.*; it has keys \['images'\]"),
        (
            [{"image_id": "1", "caption": "x"}],
            r"filter_cap.json holds a bare list of 1 entries; .* \{\"annotations\": ",
        ),
        ({"annotations": [{"image_id": "1"}]}, r"annotation 0 of .*filter_cap.json needs 'image_id' and a 'caption'"),
        ({"annotations": [{"caption": "x"}]}, "annotation 0 of"),
    ],
)
def test_malformed_annotations(align, tmp_path, content, error):
    with pytest.raises(ValueError, match=error):
        CCSBUAlignDataset(Blip2ImageEvalProcessor(8), copy_of(align, tmp_path, content))


def test_bad_json_is_named_with_its_line_and_column(align, tmp_path):
    folder = copy_of(align, tmp_path)
    (folder / "filter_cap.json").write_text(
        '{"annotations": [\n  {"image_id": "1", "caption": "x"},\n  {"image_id": 2\n]}'
    )
    with pytest.raises(AnnotationError) as info:
        build(folder)
    assert str(info.value) == (
        f"cc_sbu_align: {folder / 'filter_cap.json'} is not valid JSON: Expecting ',' delimiter at line 4, column 1"
    )


def test_missing_and_empty_images_are_refused_when_built(align, tmp_path):
    folder = copy_of(align, tmp_path)
    for image_id in (2, 3, 7, 9):
        (folder / "image" / f"{image_id}.jpg").unlink()
    (folder / "image" / "4.jpg").write_bytes(b"")
    with pytest.raises(MissingDataError) as info:
        build(folder)
    image = folder / "image"
    assert str(info.value) == (
        f"cc_sbu_align: 5 of the 24 images listed in {folder / 'filter_cap.json'} are missing or empty: "
        f"image_id '2': {image / '2.jpg'} does not exist; image_id '3': {image / '3.jpg'} does not exist; "
        f"image_id '4': {image / '4.jpg'} is empty (0 bytes) and 2 more. "
        f"dataset/check_data.py {folder} lists them all"
    )


def test_missing_folder_or_annotation_file(align, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"storage folder .*nowhere not found; it must hold filter_cap.json"):
        build(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"annotation file .*empty/filter_cap.json not found"):
        build(tmp_path / "empty")


def image_ids(loader: IterLoader, batches: int) -> list[int]:
    return [i for batch in itertools.islice(loader, batches) for i in batch["image_id"].tolist()]


def test_shuffled_and_sharded_across_ranks_with_a_new_order_every_pass(align):
    dataset = build(align)
    cfg = run_cfg()

    def two_passes(rank):
        # 24 samples, 2 ranks, batch 4: three batches per rank and pass.
        loader = build_train_loader({"cc_sbu_align": {"train": dataset}}, cfg, rank=rank, world_size=2)
        (inner,) = loader.loaders
        assert isinstance(inner, IterLoader) and inner.loader.pin_memory is False  # no accelerator
        ids = image_ids(inner, 6)
        assert inner.epoch == 1
        return ids[:12], ids[12:]

    (rank0_pass0, rank0_pass1), (rank1_pass0, rank1_pass1) = two_passes(0), two_passes(1)
    for first, second in ((rank0_pass0, rank1_pass0), (rank0_pass1, rank1_pass1)):
        assert sorted(first + second) == list(range(24))  # disjoint and complete
    assert rank0_pass0 != rank0_pass1  # set_epoch reshuffles
    assert rank0_pass0 != sorted(rank0_pass0)
    assert two_passes(0) == (rank0_pass0, rank0_pass1)  # reproducible from run.seed
    seeded = build_train_loader({"cc_sbu_align": {"train": dataset}}, run_cfg(seed=1), rank=0, world_size=2)
    seeded_ids = image_ids(seeded.loaders[0], 3)
    assert seeded_ids != rank0_pass0
    # An explicit seed (the runner's run.seed + global step) replaces run.seed.
    explicit = build_train_loader({"cc_sbu_align": {"train": dataset}}, cfg, rank=0, world_size=2, seed=1)
    assert image_ids(explicit.loaders[0], 3) == seeded_ids


def test_batches_with_workers(align):
    loader = build_train_loader({"cc_sbu_align": {"train": build(align)}}, run_cfg(num_workers=2))
    batches = list(itertools.islice(loader, 8))  # more than one pass of 6 batches
    assert all(b["image"].shape == (4, 3, 16, 16) and len(b["text_input"]) == 4 for b in batches)
    assert all(isinstance(b["image_id"], torch.Tensor) for b in batches)


def test_too_few_samples_for_a_batch(align):
    with pytest.raises(ValueError, match=r"24 samples over 8 ranks leave 3 per rank, fewer than one batch of 4"):
        build_train_loader({"cc_sbu_align": {"train": build(align)}}, run_cfg(), rank=0, world_size=8)
