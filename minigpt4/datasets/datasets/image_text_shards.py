"""Image-caption pairs streamed from webdataset shards in img2dataset's layout (``laion``, ``cc_sbu``).

A shard is a tar of samples ``<key>.jpg``, ``<key>.json`` (holding ``caption``) and ``<key>.txt``.
The stream is the reference's pipeline: shards drawn with replacement, endlessly; samples shuffled
in a buffer of 1000 (100 before the first one leaves); the jpg decoded to RGB and passed through
the image processor; the json's ``caption`` through the text processor. Where the reference had
no answer, this one:

* draws a different, reproducible stream on every rank and worker, seeded from ``run.seed``, the
  rank, the worker id and the dataset name (``for_rank``);
* skips a corrupt sample (an undecodable image or json, a broken tar member) with a warning and
  counts it in ``skipped``, but stops after ``MAX_BROKEN_IN_A_ROW`` unreadable shards in a row;
* stops with ``ShardFormatError`` naming the shard, the sample and the keys it has when a sample
  lacks ``jpg``, ``json`` or the json's ``caption``: that is a wrong format, not bad luck;
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
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import braceexpand
import numpy as np
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, default_collate, get_worker_info

from minigpt4.common.errors import MiniGPT4Error
from minigpt4.datasets.datasets.length_grouping import length_grouped_batches

logger = logging.getLogger(__name__)

IMAGE_KEY = "jpg"
META_KEY = "json"
CAPTION_FIELD = "caption"
SHUFFLE_BUFFER = 1000
SHUFFLE_INITIAL = 100
# Shards that cannot be opened or read, one after the other with no sample in between, before the
# stream gives up: a wrong ``pipe:`` command or an unmounted bucket must not spin forever.
MAX_BROKEN_IN_A_ROW = 100


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
    """An endless stream of ``{"image": tensor (3, H, W), "text_input": str}`` from shards or,
    grouped by length, of whole batches ``{"image": (B, 3, H, W), "text_input": B str}``."""

    def __init__(
        self,
        urls: Sequence[str],
        vis_processor: Callable[[Image.Image], Any],
        text_processor: Callable[[str], str],
        *,
        name: str,
        sample_ratio: float = 1.0,
    ) -> None:
        super().__init__()
        if not urls:
            raise ValueError(f"{name}: no shards to read")
        self.urls = list(urls)
        self.vis_processor = vis_processor
        self.text_processor = text_processor
        self.name = name
        self.sample_ratio = sample_ratio
        self.seed, self.rank = 0, 0  # the stream of rank 0 under seed 0, until for_rank picks another
        self.skipped = 0
        self.broken_in_a_row = 0
        self.group_batch_size, self.group_batches = 1, 0  # no length grouping

    def for_rank(self, seed: int, rank: int) -> ImageTextShards:
        """A copy that draws the stream of ``rank`` under the run seed ``seed``."""
        dataset = copy.copy(self)
        dataset.seed, dataset.rank, dataset.skipped = seed, rank, 0
        return dataset

    def grouped_by_length(self, batch_size: int, batches: int) -> ImageTextShards:
        """A copy that gives batches of ``batch_size`` samples of similar caption length, drawn
        from a pool of ``batches`` batches (``length_grouped_batches``)."""
        dataset = copy.copy(self)
        dataset.group_batch_size, dataset.group_batches = batch_size, batches
        return dataset

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        seed = stream_seed(self.seed, self.rank, worker.id if worker else 0, name_id(self.name))
        stages = [
            # The seed already tells ranks and workers apart; webdataset's own worker seed would
            # read RANK from the environment behind our back.
            wds.ResampledShards(self.urls, seed=seed, worker_seed=lambda: 0, deterministic=True),
            wds.tarfile_to_samples(handler=self._skip_broken_member),
            wds.shuffle(SHUFFLE_BUFFER, initial=SHUFFLE_INITIAL, rng=random.Random(seed)),
            self._parse,
        ]
        if self.group_batches:
            # Grouped before decoding, so that the pool holds compressed images only.
            rng = random.Random(stream_seed(seed, 1))
            group = functools.partial(
                length_grouped_batches, batch_size=self.group_batch_size, batches=self.group_batches, rng=rng
            )
            stages += [group, self._decode_batches]
        else:
            stages.append(self._decode)
        return iter(wds.DataPipeline(*stages))

    def _skip_broken_member(self, exn: Exception) -> bool:
        self.skipped += 1
        self.broken_in_a_row += 1
        if self.broken_in_a_row >= MAX_BROKEN_IN_A_ROW:
            raise RuntimeError(
                f"{self.name}: {self.broken_in_a_row} shard reads failed in a row and none gave a sample; "
                f"the last: {type(exn).__name__}: {exn}"
            ) from exn
        logger.warning(
            "%s: skipped a broken shard or tar entry (%s); %d skipped so far here", self.name, exn, self.skipped
        )
        return True

    def _parse(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Samples with their keys checked and their caption read and processed; the image still
        compressed (``jpg``)."""
        for sample in samples:
            self.broken_in_a_row = 0
            url, key = sample.get("__url__"), sample.get("__key__")
            missing = [k for k in (IMAGE_KEY, META_KEY) if k not in sample]
            if missing:
                raise ShardFormatError(_format_error(self.name, url, key, f"has no {', '.join(missing)}", sample))
            try:
                meta = json.loads(sample[META_KEY])
            except ValueError as exn:
                self._skip_corrupt(url, key, f"{type(exn).__name__}: {exn}")
                continue
            if not isinstance(meta, dict) or CAPTION_FIELD not in meta:
                raise ShardFormatError(
                    _format_error(self.name, url, key, f"has no '{CAPTION_FIELD}' in its json", sample)
                )
            caption = meta[CAPTION_FIELD]
            if not isinstance(caption, str):
                self._skip_corrupt(url, key, f"caption is {caption!r}")
                continue
            text = self.text_processor(caption)
            yield {IMAGE_KEY: sample[IMAGE_KEY], "text_input": text, "__url__": url, "__key__": key}

    def _decode(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """``{"image", "text_input"}`` pairs, the image decoded to RGB and processed; a sample whose
        image does not decode is skipped."""
        for sample in samples:
            try:
                with Image.open(io.BytesIO(sample[IMAGE_KEY])) as raw:
                    image = raw.convert("RGB")
            except (OSError, SyntaxError, ValueError) as exn:
                self._skip_corrupt(sample["__url__"], sample["__key__"], f"{type(exn).__name__}: {exn}")
                continue
            yield {"image": self.vis_processor(image), "text_input": sample["text_input"]}

    def _decode_batches(self, batches: Iterator[list[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
        """Each list of parsed samples as one collated batch."""
        for batch in batches:
            if pairs := list(self._decode(batch)):
                yield default_collate(pairs)

    def _skip_corrupt(self, url: str | None, key: str | None, reason: str) -> None:
        self.skipped += 1
        logger.warning(
            "%s: skipped corrupt sample '%s' of %s (%s); %d skipped so far here",
            self.name,
            key,
            url,
            reason,
            self.skipped,
        )


def _format_error(name: str, url: str | None, key: str | None, problem: str, sample: dict[str, Any]) -> str:
    keys = sorted(k for k in sample if not k.startswith("__"))
    return (
        f"{name}: sample '{key}' in shard {url} {problem}; it has: {', '.join(keys) or 'nothing'}. "
        f"Each sample needs <key>.{IMAGE_KEY} and <key>.{META_KEY} with a '{CAPTION_FIELD}' "
        f"(img2dataset's webdataset output); run dataset/check_data.py on the shards."
    )
