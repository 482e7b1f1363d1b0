"""laion / cc_sbu: webdataset shards from the generator, through the builders and the loader."""

from __future__ import annotations

import io
import itertools
import json
import logging
import re
import tarfile
import unittest
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from dataset.make_synthetic import PHOTOS, make_synthetic
from minigpt4.common.schema import DatasetConfig, RunConfig
from minigpt4.datasets.builders import build_datasets
from minigpt4.datasets.datasets.dataloader_utils import MultiIterLoader, build_train_loader
from minigpt4.datasets.datasets.image_text_shards import ImageTextShards, ShardFormatError, resolve_shards
from minigpt4.datasets.datasets.skip_tracking import WINDOW_SHARDS, ShardStreamError, SkipFractionError, SkipTracker
from minigpt4.processors import Blip2ImageEvalProcessor, BlipCaptionProcessor

CLEANED_CAPTIONS = {BlipCaptionProcessor()(c) for photo in PHOTOS for c in photo.captions}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic(out, size=32, laion_samples=120, cc_sbu_samples=60, align_samples=24, shard_size=40)
    return out


def dataset_cfg(storage, image_size=16, sample_ratio=1.0):
    return OmegaConf.merge(
        OmegaConf.structured(DatasetConfig),
        {
            "build_info": {"storage": storage},
            "vis_processor": {"train": {"name": "blip2_image_train", "image_size": image_size}},
            "text_processor": {"train": {"name": "blip_caption"}},
            "sample_ratio": sample_ratio,
        },
    )


def run_cfg(**overrides):
    base = {"device": "cpu", "batch_size_train": 4, "num_workers": 0, "seed": 42}
    return OmegaConf.merge(OmegaConf.structured(RunConfig), {**base, **overrides})


def take(loader, n):
    return list(itertools.islice(loader, n))


def same_batches(a, b) -> bool:
    return all(
        x["text_input"] == y["text_input"] and torch.equal(x["image"], y["image"]) for x, y in zip(a, b, strict=True)
    )


def test_storage_forms(data, tmp_path, caplog):
    shards = [str(data / "laion" / f"{i:05d}.tar") for i in range(3)]
    assert resolve_shards(str(data / "laion" / "{00000..00002}.tar"), "laion") == shards
    assert resolve_shards(str(data / "laion"), "laion") == shards  # a folder
    assert resolve_shards([shards[0], str(data / "cc_sbu" / "{00000..00001}.tar")], "x")[1:] == [
        str(data / "cc_sbu" / "00000.tar"),
        str(data / "cc_sbu" / "00001.tar"),
    ]
    assert resolve_shards("pipe:cat /remote/{00..01}.tar", "laion") == [
        "pipe:cat /remote/00.tar",
        "pipe:cat /remote/01.tar",
    ]
    with caplog.at_level(logging.WARNING):
        assert resolve_shards(str(data / "laion" / "{00000..00004}.tar"), "laion") == shards
    assert "datasets.laion: 2 of 5 shards are missing and left out" in caplog.text
    with pytest.raises(FileNotFoundError, match=r"datasets.laion: none of the 2 shards .* exists"):
        resolve_shards(str(tmp_path / "{0..1}.tar"), "laion")
    with pytest.raises(FileNotFoundError, match=r"no \.tar shards in the folder"):
        resolve_shards(str(tmp_path), "laion")
    with pytest.raises(ValueError, match="storage must be a non-empty str or list of str"):
        resolve_shards("", "laion")


def test_pipe_storage_streams_through_a_command(data):
    dataset = ImageTextShards(
        [f"pipe:cat {data / 'cc_sbu' / '00000.tar'}"], Blip2ImageEvalProcessor(8), BlipCaptionProcessor(), name="cc_sbu"
    )
    samples = take(iter(dataset), 5)
    assert [s["image"].shape for s in samples] == [(3, 8, 8)] * 5
    assert {s["text_input"] for s in samples} <= CLEANED_CAPTIONS


def test_builders_give_named_endless_streams(data):
    datasets = build_datasets(
        {
            "laion": dataset_cfg(str(data / "laion" / "{00000..00002}.tar"), sample_ratio=115),
            "cc_sbu": dataset_cfg(str(data / "cc_sbu"), sample_ratio=14),
        }
    )
    laion = datasets["laion"]["train"]
    assert (laion.name, laion.sample_ratio) == ("laion", 115.0)
    assert (datasets["cc_sbu"]["train"].name, datasets["cc_sbu"]["train"].sample_ratio) == ("cc_sbu", 14.0)
    # More samples than the 120 on disk: shards are drawn again and again.
    samples = take(iter(laion), 300)
    assert all(s["image"].shape == (3, 16, 16) and s["image"].dtype == torch.float32 for s in samples)
    assert {s["text_input"] for s in samples} <= CLEANED_CAPTIONS


def test_two_ranks_two_workers_distinct_and_reproducible(data):
    datasets = build_datasets({"laion": dataset_cfg(str(data / "laion"))})
    cfg = run_cfg(num_workers=2)

    def stream(rank, config=cfg):
        return take(build_train_loader(datasets, config, rank=rank, world_size=2), 6)

    rank0, rank1 = stream(0), stream(1)
    for batch in rank0:
        assert batch["image"].shape == (4, 3, 16, 16)
        assert len(batch["text_input"]) == 4 and set(batch["text_input"]) <= CLEANED_CAPTIONS
    assert not same_batches(rank0, rank1)
    # The DataLoader takes batches from its workers in turn: 0, 1, 0, 1, ...
    assert not same_batches(rank0[0::2], rank0[1::2])
    assert same_batches(stream(0), rank0)  # images too, so the random crops are seeded
    assert not same_batches(stream(0, run_cfg(num_workers=2, seed=7)), rank0)


def write_shard(path: Path, samples: list[dict[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for extension, payload in sample.items():
                if extension == "key":
                    continue
                info = tarfile.TarInfo(f"{sample['key']}.{extension}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return str(path)


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 12), (10, 200, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def caption(text) -> bytes:
    return json.dumps({"caption": text}).encode()


def stream_of(*urls: str, max_skip_fraction: float = 1.0) -> ImageTextShards:
    return ImageTextShards(
        list(urls),
        Blip2ImageEvalProcessor(8),
        BlipCaptionProcessor(),
        name="laion",
        max_skip_fraction=max_skip_fraction,
    )


def skip_kinds(dataset: ImageTextShards) -> set[tuple[str, str]]:
    """(sample key or shard, kind) of every skip the latest iteration warned about or holds."""
    return {(url, kind) for url, kind in dataset.tracker.details}


def test_corrupt_samples_are_skipped_counted_and_handed_on(tmp_path, caplog):
    url = write_shard(
        tmp_path / "00000.tar",
        [
            {"key": "good1", "jpg": jpeg(), "json": caption("One.")},
            {"key": "badimage", "jpg": b"not a jpeg", "json": caption("Two.")},
            {"key": "badjson", "jpg": jpeg(), "json": b"{caption"},
            {"key": "nullcaption", "jpg": jpeg(), "json": caption(None)},
            {"key": "truncated", "jpg": jpeg()[:60], "json": caption("Three.")},
            {"key": "nojson", "jpg": jpeg(), "txt": b"no json here"},
            {"key": "nocaption", "jpg": jpeg(), "json": json.dumps({"text": "x"}).encode()},
            {"key": "good2", "jpg": jpeg(), "json": caption("Four!")},
        ],
    )
    dataset = stream_of(url)
    with caplog.at_level(logging.WARNING):
        samples = take(iter(dataset), 40)  # the one shard, read again and again
    assert {s["text_input"] for s in samples} == {"one", "four"}
    # Samples missing their json or caption after a good one are skipped like corrupt ones.
    assert {kind for _, kind in skip_kinds(dataset)} == {
        "corrupt image", "unreadable json", "caption not a string", "no .json", "no 'caption' in the json"
    }  # fmt: skip
    # Each sample handed out carries the skips since the previous one: together, all of them
    # but those behind the last sample (still in the tracker).
    assert sum(s["skipped"] for s in samples) + dataset.tracker.unreported == dataset.skipped > 40
    assert f"laion: skipped sample 'badjson' of {url}: unreadable json (JSONDecodeError" in caplog.text
    # The first few are named, the rest held for the once-a-minute summary.
    assert len(caplog.records) == 5 and "later skips are counted, one warning a minute" in caplog.text
    # for_rank gives a copy with its own count.
    assert dataset.for_rank(1, 1).skipped == 0


def test_a_corrupt_image_found_after_length_grouping_leaves_its_batch_one_short(tmp_path):
    words = ["One.", "Two words.", "Three words here.", "Four words are here.", "And five words are here."]
    samples = [{"key": f"good{i}", "jpg": jpeg(), "json": caption(text)} for i, text in enumerate(words + words[:2])]
    url = write_shard(
        tmp_path / "00000.tar", [*samples, {"key": "badimage", "jpg": b"not a jpeg", "json": caption("x")}]
    )
    dataset = stream_of(url).grouped_by_length(4, 2)  # a pool of 8: one pass over the shard
    batches = take(iter(dataset), 12)
    sizes = [len(b["text_input"]) for b in batches]
    assert set(sizes) == {3, 4} and dataset.skipped == sizes.count(3)
    assert all(b["image"].shape == (n, 3, 8, 8) for b, n in zip(batches, sizes, strict=True))
    assert sum(int(b["skipped"].sum()) for b in batches) == dataset.skipped
    assert skip_kinds(dataset) == {(url, "corrupt image")}


def test_a_stream_of_unreadable_shards_stops(tmp_path, caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(ShardStreamError) as info:
        next(iter(stream_of(str(tmp_path / "gone.tar"))))
    assert re.match(r"laion: 100 shards read in a row gave no sample: .*gone.tar \(FileNotFoundError", str(info.value))
    # One shard, named once.
    assert len(caplog.records) == 1 and "gone.tar gave no sample" in caplog.text


def test_an_empty_tar_stops_the_stream_instead_of_spinning(tmp_path):
    empty = write_shard(tmp_path / "empty.tar", [])
    with pytest.raises(ShardStreamError, match=r"100 shards read in a row gave no sample: .*empty.tar \(an empty tar"):
        next(iter(stream_of(empty)))
    # Beside good shards, an empty one is skipped.
    good = write_shard(tmp_path / "good.tar", [{"key": "k", "jpg": jpeg(), "json": caption("A cat.")}])
    dataset = stream_of(empty, good)
    assert {s["text_input"] for s in take(iter(dataset), 200)} == {"a cat"}
    assert skip_kinds(dataset) == {(empty, "shard without samples")} and dataset.skipped == 0


def test_a_shard_of_corrupt_images_stops_above_the_skip_fraction(tmp_path):
    corrupt = [{"key": f"b{i}", "jpg": b"garbage", "json": caption("x")} for i in range(4)]
    bad = write_shard(tmp_path / "bad.tar", corrupt)
    with pytest.raises(SkipFractionError) as info:
        next(iter(stream_of(bad, max_skip_fraction=0.2)))
    message = str(info.value)
    # Every sample judged was skipped, although the shuffle buffer holds back samples read.
    assert re.match(r"laion: (\d+) of \1 samples were skipped while the last 20 shards were read \(100%", message)
    assert f"above run.max_skip_fraction 0.2); most from {bad} (" in message
    assert "x corrupt image: UnidentifiedImageError: cannot identify image file)" in message


def test_samples_without_the_expected_keys_fail_naming_shard_sample_and_keys(tmp_path):
    url = write_shard(tmp_path / "00007.tar", [{"key": "000070000", "png": jpeg(), "json": caption("x"), "txt": b"x"}])
    with pytest.raises(ShardFormatError) as info:
        next(iter(stream_of(url)))
    message = str(info.value)
    assert f"sample '000070000' in shard {url} has no jpg; it has: json, png, txt" in message
    url = write_shard(tmp_path / "00008.tar", [{"key": "k", "jpg": jpeg(), "json": json.dumps({"text": "x"}).encode()}])
    with pytest.raises(ShardFormatError, match=r"sample 'k' in shard .*00008.tar has no 'caption' in its json"):
        next(iter(stream_of(url)))
    # A big shard: its first samples decide, before any is handed out.
    samples = [{"key": f"{i:04d}", "jpg": jpeg(), "txt": b"x"} for i in range(50)]
    url = write_shard(tmp_path / "00009.tar", [*samples, {"key": "late", "jpg": jpeg(), "json": caption("x")}])
    with pytest.raises(ShardFormatError, match=r"first 3 samples of shard .* another layout: sample '0000' has no"):
        next(iter(stream_of(url)))


def test_warnings_are_rate_limited():
    now = [0.0]
    tracker = SkipTracker("laion", 1.0, clock=lambda: now[0])
    with assert_warnings() as records:
        for i in range(1000):
            now[0] = i * 0.5  # one skip every half second: 500 s in all
            tracker.skip("a.tar" if i % 3 else "b.tar", f"k{i}", "corrupt image", "OSError: broken")
    messages = [r.getMessage() for r in records.records]
    assert len(messages) == 5 + 8  # the first five, then one a minute
    assert messages[0] == "laion: skipped sample 'k0' of b.tar: corrupt image (OSError: broken)"
    assert messages[5] == (
        "laion: 120 more samples skipped in the last 60 s (125 since the start), from "
        "a.tar (80 x corrupt image: OSError: broken), b.tar (40 x corrupt image: OSError: broken)"
    )
    assert tracker.total == 1000 and tracker.take_unreported() == 1000 and tracker.take_unreported() == 0


def test_the_skip_fraction_is_judged_over_a_window_of_shards():
    tracker = SkipTracker("cc_sbu", 0.2)
    # One shard in 20 entirely corrupt is survived, window after window.
    for _ in range(3):
        for shard in range(WINDOW_SHARDS):
            for key in range(10):
                if shard == 7:
                    tracker.skip(f"{shard}.tar", str(key), "corrupt image", "OSError")
                else:
                    tracker.take_unreported()
            tracker.shard_done(f"{shard}.tar", 10, None)
    assert tracker.total == 30
    # Five in 20 are not: 25% > 20%, stopped when the window closes.
    with pytest.raises(
        SkipFractionError,
        match=r"cc_sbu: 50 of 200 samples were skipped .* shards were read \(25%, above",
    ):
        for shard in range(WINDOW_SHARDS):
            for key in range(10):
                if shard < 5:
                    tracker.skip(f"{shard}.tar", str(key), "no .json", "has no json")
                else:
                    tracker.take_unreported()
            tracker.shard_done(f"{shard}.tar", 10, None)
            assert shard < WINDOW_SHARDS - 1  # only the window's end decides


def assert_warnings():
    return unittest.TestCase().assertLogs("minigpt4.datasets.datasets.skip_tracking", logging.WARNING)


def test_wrong_keys_fail_from_a_worker_process(tmp_path):
    url = write_shard(tmp_path / "00000.tar", [{"key": "k", "jpg": jpeg()}])
    loader = build_train_loader({"laion": {"train": stream_of(url)}}, run_cfg(num_workers=1, batch_size_train=1))
    try:
        next(loader)
    except ShardFormatError as exn:
        message = str(exn)
        # The traceback's frames hold the loader in a reference cycle; left to the garbage
        # collector, torch's worker shutdown waits 5 s for the worker.
        exn.__traceback__ = None
    else:
        pytest.fail("no error")
    del loader
    assert re.search(r"sample 'k' in shard .*00000.tar has no json; it has: jpg", message)


def test_mixing_ratio_of_the_reference():
    loader = MultiIterLoader([itertools.repeat("laion"), itertools.repeat("cc_sbu")], [115, 14], seed=3)
    draws = take(loader, 20000)
    share = draws.count("laion") / len(draws)
    sigma = (115 / 129 * 14 / 129 / len(draws)) ** 0.5
    assert abs(share - 115 / 129) < 4 * sigma
    again = MultiIterLoader([itertools.repeat("laion"), itertools.repeat("cc_sbu")], [115, 14], seed=3)
    assert take(again, 200) == draws[:200]
    uniform = take(MultiIterLoader([itertools.repeat(0), itertools.repeat(1)], seed=0), 4000)
    assert abs(sum(uniform) / 4000 - 0.5) < 4 * (0.25 / 4000) ** 0.5
    with pytest.raises(ValueError, match="one ratio per loader"):
        MultiIterLoader([itertools.repeat(0)], [1, 2])
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        MultiIterLoader([itertools.repeat(0)], [0])


def test_loader_mixes_datasets_batch_by_batch(data):
    # Different image sizes tell which dataset each batch came from.
    datasets = build_datasets(
        {
            "laion": dataset_cfg(str(data / "laion"), image_size=8, sample_ratio=3),
            "cc_sbu": dataset_cfg(str(data / "cc_sbu"), image_size=12, sample_ratio=1),
        }
    )
    batches = take(build_train_loader(datasets, run_cfg(batch_size_train=1)), 400)
    sizes = [b["image"].shape[-1] for b in batches]
    assert set(sizes) == {8, 12}
    share = sizes.count(8) / len(sizes)
    assert abs(share - 0.75) < 4 * (0.75 * 0.25 / len(sizes)) ** 0.5


def test_loader_needs_a_train_split(data):
    datasets = build_datasets({"laion": dataset_cfg(str(data / "laion"))})
    with pytest.raises(ValueError, match=r"no dataset has a split in run.train_splits \['val'\]"):
        build_train_loader(datasets, run_cfg(train_splits=["val"]))


def test_builder_needs_an_image_processor(data):
    cfg = OmegaConf.merge(OmegaConf.structured(DatasetConfig), {"build_info": {"storage": str(data / "laion")}})
    with pytest.raises(ValueError, match=r"datasets.laion.vis_processor.train is not set"):
        build_datasets({"laion": cfg})


@pytest.mark.gpu
def test_batches_are_pinned_for_an_accelerator(data):
    datasets = build_datasets({"laion": dataset_cfg(str(data / "laion"))})
    batch = next(build_train_loader(datasets, run_cfg(num_workers=1), pin_memory=True))
    assert batch["image"].is_pinned()
    assert not next(build_train_loader(datasets, run_cfg()))["image"].is_pinned()
