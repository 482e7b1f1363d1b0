"""Webdataset shards laid out as img2dataset writes them, for the data generators
(``dataset/make_synthetic.py``, ``tools/tiny_world.py``): ``NNNNN.tar`` holding ``<key>.jpg``,
``<key>.txt`` (the caption) and ``<key>.json`` (img2dataset's metadata), and ``NNNNN_stats.json``."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

KEY_DIGITS = 4  # img2dataset's keys: the 5-digit shard id, then the sample's index in the shard


@dataclass(frozen=True)
class ShardSample:
    """One captioned image as a generator makes it."""

    jpg: bytes
    caption: str
    url: str  # where img2dataset would have downloaded it from
    size: tuple[int, int]  # (width, height) as stored
    original_size: tuple[int, int]  # (width, height) before img2dataset's resize


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_img2dataset_shards(
    out: Path, count: int, shard_size: int, make_sample: Callable[[int, str], ShardSample]
) -> list[list[dict[str, Any]]]:
    """``count`` samples in shards of ``shard_size`` under ``out``. ``make_sample(number, key)``
    makes the sample numbered ``number`` (from 0, across the shards), in that order; returns each
    shard's metadata records."""
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for shard_id, start in enumerate(range(0, count, shard_size)):
        records = []
        with tarfile.open(out / f"{shard_id:05d}.tar", "w") as tar:
            for index in range(min(shard_size, count - start)):
                key = f"{shard_id:05d}{index:0{KEY_DIGITS}d}"
                sample = make_sample(start + index, key)
                record = {
                    "url": sample.url,
                    "caption": sample.caption,
                    "key": key,
                    "status": "success",
                    "error_message": None,
                    "width": sample.size[0],
                    "height": sample.size[1],
                    "original_width": sample.original_size[0],
                    "original_height": sample.original_size[1],
                    "exif": None,
                    "sha256": hashlib.sha256(sample.jpg).hexdigest(),
                }
                for extension, payload in (
                    ("jpg", sample.jpg),
                    ("txt", sample.caption.encode()),
                    ("json", json.dumps(record).encode()),
                ):
                    _add_member(tar, f"{key}.{extension}", payload)
                records.append(record)
        stats = {
            "count": len(records),
            "successes": len(records),
            "failed_to_download": 0,
            "failed_to_resize": 0,
            "status_dict": {"success": len(records)},
        }
        (out / f"{shard_id:05d}_stats.json").write_text(json.dumps(stats, indent=4))
        shards.append(records)
    return shards
