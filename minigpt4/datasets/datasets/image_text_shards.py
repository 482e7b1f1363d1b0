"""Image-caption pairs streamed from webdataset shards in img2dataset's layout (``laion``, ``cc_sbu``).

A shard is a tar of samples ``<key>.jpg``, ``<key>.json`` (holding ``caption``) and ``<key>.txt``.
The stream is the reference's pipeline: shards drawn with replacement, endlessly; samples shuffled
in a buffer of 1000 (100 before the first one leaves); the jpg decoded to RGB and passed through
the image processor; the json's ``caption`` through the text processor. Where the reference had
no answer, this one:

* draws a different, reproducible stream on every rank and worker, seeded from ``run.seed``, the
  rank, the worker id and the dataset name (``for_rank``);
* skips a corrupt sample (an undecodable image or json, a sample without its json or caption, a
  broken tar member), counts it and hands the count on with the next sample (``skipped``), warns
  about the first few by name and then once a minute, and stops the run where skips are no
  longer bad luck (``skip_tracking.py``: ``run.max_skip_fraction`` of a window of shards, or
  shard after shard with no sample, such as an empty tar);
* stops with ``ShardFormatError`` naming the shard, the sample and the keys it has when the first
  samples of a shard all lack ``jpg``, ``json`` or the json's ``caption``: that is a wrong format,
  not bad luck;
* in a loader worker, hands such an error on as an item (``STREAM_ERROR``) that the loader raises
  in the training process with its message whole;
* on request (``grouped_by_length``, ``run.length_grouping``) gives whole batches of similar
  caption length, grouped before the images are decoded; an image found corrupt after grouping
  leaves its batch one sample short.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import logging
import os
import random
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import braceexpand
import numpy as np
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, default_collate, get_worker_info
from webdataset.tariterators import tarfile_samples

from minigpt4.common.errors import MiniGPT4Error
from minigpt4.datasets.datasets.length_grouping import length_grouped_batches
from minigpt4.datasets.datasets.skip_tracking import SkipTracker

logger = logging.getLogger(__name__)

IMAGE_KEY = "jpg"
META_KEY = "json"
CAPTION_FIELD = "caption"
SHUFFLE_BUFFER = 1000
SHUFFLE_INITIAL = 100
# A shard whose first samples (this many, or all it has) lack a key is in the wrong layout.
FORMAT_PROBE = 3
# The key of the item that carries a worker's error to the training process.
STREAM_ERROR = "__stream_error__"


class ShardFormatError(MiniGPT4Error, ValueError):
    """A shard's samples do not have the layout the loader reads."""


def stream_seed(*parts: int) -> int:
    """One 32-bit seed from several integers (run seed, rank, worker, ...), well mixed."""
    return int(np.random.SeedSequence(parts).generate_state(1)[0])


def name_id(name: str) -> int:
    """A stable integer for a dataset name, so that two datasets never share a stream seed."""
    return zlib.crc32(name.encode())


def _is_local(url: str) -> bool:
    return not url.startswith("pipe:") and "://" not in url


def resolve_shards(storage: str | Sequence[str], name: str) -> list[str]:
    """Shard URLs from ``build_info.storage``: a brace pattern, a list of them, a folder of
    ``.tar`` files, or ``pipe:`` commands. Local shards are checked now: none found is an error,
    some missing is a warning (a partly finished download) and they are left out."""
    patterns = [storage] if isinstance(storage, str) else list(storage)
    if not patterns or any(not isinstance(p, str) or not p for p in patterns):
        raise ValueError(f"datasets.{name}.build_info.storage must be a non-empty str or list of str, got {storage!r}")
    urls: list[str] = []
    for pattern in patterns:
        if _is_local(pattern) and Path(pattern).is_dir():
            found = sorted(str(p) for p in Path(pattern).glob("*.tar"))
            if not found:
                raise FileNotFoundError(f"datasets.{name}: no .tar shards in the folder {pattern}")
            urls += found
        else:
            urls += braceexpand.braceexpand(pattern)
    local = [url for url in urls if _is_local(url)]
    missing = [url for url in local if not os.path.isfile(url)]
    if missing and len(missing) == len(urls):
        raise FileNotFoundError(
            f"datasets.{name}: none of the {len(urls)} shards of {storage!r} exists (first: {missing[0]})"
        )
    if missing:
        logger.warning(
            "datasets.%s: %d of %d shards are missing and left out (first: %s)",
            name,
            len(missing),
            len(urls),
            missing[0],
        )
        absent = set(missing)
        urls = [url for url in urls if url not in absent]
    return urls


class ImageTextShards(IterableDataset):
    """An endless stream of ``{"image": tensor (3, H, W), "text_input": str, "skipped": int}`` from
    shards or, grouped by length, of whole batches ``{"image": (B, 3, H, W), "text_input": B str,
    "skipped": (B,)}``. ``skipped`` counts the samples skipped since the previous one was handed
    out, so that a batch's sum is what its worker skipped since its previous batch."""

    def __init__(
        self,
        urls: Sequence[str],
        vis_processor: Callable[[Image.Image], Any],
        text_processor: Callable[[str], str],
        *,
        name: str,
        sample_ratio: float = 1.0,
        max_skip_fraction: float = 1.0,
    ) -> None:
        super().__init__()
        if not urls:
            raise ValueError(f"{name}: no shards to read")
        self.urls = list(urls)
        self.vis_processor = vis_processor
        self.text_processor = text_processor
        self.name = name
        self.sample_ratio = sample_ratio
        self.max_skip_fraction = max_skip_fraction
        self.seed, self.rank = 0, 0  # the stream of rank 0 under seed 0, until for_rank picks another
        self.tracker: SkipTracker | None = None  # the skips of the latest iteration
        self.group_batch_size, self.group_batches = 1, 0  # no length grouping

    @property
    def skipped(self) -> int:
        """Samples (and broken tar entries) skipped by the latest iteration in this process."""
        return self.tracker.total if self.tracker else 0

    def for_rank(self, seed: int, rank: int, max_skip_fraction: float | None = None) -> ImageTextShards:
        """A copy that draws the stream of ``rank`` under the run seed ``seed`` (and stops above
        ``max_skip_fraction`` skipped, when given)."""
        dataset = copy.copy(self)
        dataset.seed, dataset.rank, dataset.tracker = seed, rank, None
        if max_skip_fraction is not None:
            dataset.max_skip_fraction = max_skip_fraction
        return dataset

    def grouped_by_length(self, batch_size: int, batches: int) -> ImageTextShards:
        """A copy that gives batches of ``batch_size`` samples of similar caption length, drawn
        from a pool of ``batches`` batches (``length_grouped_batches``)."""
        dataset = copy.copy(self)
        dataset.group_batch_size, dataset.group_batches = batch_size, batches
        return dataset

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if get_worker_info() is None:
            return self._stream()
        return self._errors_as_items()

    def _errors_as_items(self) -> Iterator[dict[str, Any]]:
        # Raised in a loader worker, an error reaches the training process as text wrapped around
        # the worker's traceback; handed out as an item it arrives whole (dataloader_utils raises it).
        try:
            yield from self._stream()
        except MiniGPT4Error as exn:
            yield {STREAM_ERROR: exn}

    def _stream(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        seed = stream_seed(self.seed, self.rank, worker.id if worker else 0, name_id(self.name))
        self.tracker = tracker = SkipTracker(self.name, self.max_skip_fraction)
        stages = [
            # The seed already tells ranks and workers apart; webdataset's own worker seed would
            # read RANK from the environment behind our back.
            wds.ResampledShards(self.urls, seed=seed, worker_seed=lambda: 0, deterministic=True),
            functools.partial(self._read_shards, tracker=tracker),
            wds.shuffle(SHUFFLE_BUFFER, initial=SHUFFLE_INITIAL, rng=random.Random(seed)),
        ]
        decode = functools.partial(self._decode, tracker=tracker)
        if self.group_batches:
            # Grouped before decoding, so that the pool holds compressed images only.
            rng = random.Random(stream_seed(seed, 1))
            group = functools.partial(
                length_grouped_batches, batch_size=self.group_batch_size, batches=self.group_batches, rng=rng
            )
            stages += [group, functools.partial(self._decode_batches, decode=decode)]
        else:
            stages.append(decode)
        yield from wds.DataPipeline(*stages)

    def _read_shards(self, shards: Iterator[dict[str, Any]], tracker: SkipTracker) -> Iterator[dict[str, Any]]:
        """Each shard's samples with their keys checked and caption read and processed; the image
        still compressed (``jpg``). A shard whose first samples all lack a key is in the wrong
        layout (ShardFormatError); later such samples are skipped like corrupt ones."""
        for shard in shards:
            url = shard["url"]
            problems: list[str] = []

            def broken(exn: Exception, problems: list[str] = problems) -> bool:
                problems.append(f"{type(exn).__name__}: {exn}")
                return True  # skip it, go on with the shard

            count, usable = 0, 0
            wrong_layout: list[tuple[dict[str, Any], str, str]] = []  # (sample, problem, kind) while none is usable
            for sample in tarfile_samples(iter([shard]), handler=broken):
                count += 1
                key = sample.get("__key__")
                parsed = self._parse(sample, url, key, tracker)
                if isinstance(parsed, tuple):  # a sample in the wrong layout
                    if usable:
                        tracker.skip(url, key, parsed[1], _keys_of(sample))
                        continue
                    wrong_layout.append((sample, *parsed))
                    if len(wrong_layout) >= FORMAT_PROBE:
                        raise ShardFormatError(_format_error(self.name, url, wrong_layout))
                    continue
                if parsed is None:
                    continue
                if not usable:
                    for skipped, _, kind in wrong_layout:
                        tracker.skip(url, skipped.get("__key__"), kind, _keys_of(skipped))
                usable += 1
                yield parsed
            if wrong_layout and not usable:
                raise ShardFormatError(_format_error(self.name, url, wrong_layout))
            if count:
                for problem in problems:  # broken entries inside a shard that gave samples
                    tracker.skip(url, None, "broken tar entry", problem)
            tracker.shard_done(url, count, problems[-1] if problems else None)

    def _parse(
        self, sample: dict[str, Any], url: str, key: str | None, tracker: SkipTracker
    ) -> dict[str, Any] | tuple[str, str] | None:
        """The parsed sample; ``(problem, kind)`` for one in the wrong layout; None for a corrupt
        one (skipped here)."""
        missing = [k for k in (IMAGE_KEY, META_KEY) if k not in sample]
        if missing:
            return f"has no {', '.join(missing)}", f"no .{missing[0]}"
        try:
            meta = json.loads(sample[META_KEY])
        except ValueError as exn:
            tracker.skip(url, key, "unreadable json", _describe(exn))
            return None
        if not isinstance(meta, dict) or CAPTION_FIELD not in meta:
            return f"has no '{CAPTION_FIELD}' in its json", f"no '{CAPTION_FIELD}' in the json"
        caption = meta[CAPTION_FIELD]
        if not isinstance(caption, str):
            tracker.skip(url, key, "caption not a string", f"caption is {caption!r}")
            return None
        text = self.text_processor(caption)
        return {IMAGE_KEY: sample[IMAGE_KEY], "text_input": text, "__url__": url, "__key__": key}

    def _decode(self, samples: Iterator[dict[str, Any]], tracker: SkipTracker) -> Iterator[dict[str, Any]]:
        """``{"image", "text_input", "skipped"}``, the image decoded to RGB and processed; a sample
        whose image does not decode is skipped."""
        for sample in samples:
            try:
                with Image.open(io.BytesIO(sample[IMAGE_KEY])) as raw:
                    image = raw.convert("RGB")
            except (OSError, SyntaxError, ValueError) as exn:
                tracker.skip(sample["__url__"], sample["__key__"], "corrupt image", _describe(exn))
                continue
            image = self.vis_processor(image)
            yield {"image": image, "text_input": sample["text_input"], "skipped": tracker.take_unreported()}

    def _decode_batches(
        self, batches: Iterator[list[dict[str, Any]]], decode: Callable[[Iterator[dict[str, Any]]], Iterator]
    ) -> Iterator[dict[str, Any]]:
        """Each list of parsed samples as one collated batch."""
        for batch in batches:
            if pairs := list(decode(iter(batch))):
                yield default_collate(pairs)


def _keys_of(sample: dict[str, Any]) -> str:
    return "it has: " + (", ".join(sorted(k for k in sample if not k.startswith("__"))) or "nothing")


def _describe(exn: Exception) -> str:
    """``Type: message``, without the address of the in-memory file PIL names."""
    return f"{type(exn).__name__}: {re.sub(r' <_io.BytesIO object at 0x[0-9a-f]+>', '', str(exn))}"


def _format_error(name: str, url: str, wrong: list[tuple[dict[str, Any], str, str]]) -> str:
    """The wrong-layout message: what the shard's first sample lacked and the keys it has."""
    sample, problem, _ = wrong[0]
    where = f"sample '{sample.get('__key__')}' in shard {url}"
    if len(wrong) > 1:
        where = f"the first {len(wrong)} samples of shard {url} are in another layout: sample '{sample.get('__key__')}'"
    return (
        f"{name}: {where} {problem}; {_keys_of(sample)}. Each sample needs <key>.{IMAGE_KEY} and "
        f"<key>.{META_KEY} with a '{CAPTION_FIELD}' (img2dataset's webdataset output); run dataset/check_data.py "
        "on the shards."
    )
