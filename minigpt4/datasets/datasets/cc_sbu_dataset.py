"""``cc_sbu_align``: the stage-2 image descriptions, a map-style dataset.

The folder holds ``filter_cap.json`` (``{"annotations": [{"image_id": ..., "caption": ...}]}``)
and ``image/<image_id>.jpg``. As in the reference the captions are used raw: the stage-2 prompt
template and ``end_sym`` are added by the model, and no caption processor runs. Everything is
checked when the dataset is built, before training: the JSON (a parse error names the file, line
and column) and one stat per listed image (missing or empty ones are refused, named).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from minigpt4.common.errors import MiniGPT4Error

ANNOTATION_FILE = "filter_cap.json"
IMAGE_FOLDER = "image"
NAMED_IN_ERRORS = 3


class AnnotationError(MiniGPT4Error, ValueError):
    """``filter_cap.json`` is not what the dataset reads."""


class MissingDataError(MiniGPT4Error, FileNotFoundError):
    """The folder, its ``filter_cap.json`` or images it lists are missing (or empty)."""


def load_annotations(path: Path) -> list[dict[str, Any]]:
    """The ``annotations`` list of ``filter_cap.json``, each with an ``image_id`` and a ``caption``."""
    if not path.is_file():
        raise MissingDataError(f"cc_sbu_align: annotation file {path} not found (expected {ANNOTATION_FILE})")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exn:
        raise AnnotationError(
            f"cc_sbu_align: {path} is not valid JSON: {exn.msg} at line {exn.lineno}, column {exn.colno}"
        ) from None
    except UnicodeDecodeError as exn:
        raise AnnotationError(f"cc_sbu_align: {path} is not UTF-8 text (byte {exn.start})") from None
    if isinstance(content, list):
        raise AnnotationError(
            f"cc_sbu_align: {path} holds a bare list of {len(content)} entries; the file must be an object "
            f'{{"annotations": [...]}} with that list under "annotations", as cc_sbu_align\'s download has it'
        )
    if not isinstance(content, dict) or not isinstance(content.get("annotations"), list):
        found = f"keys {sorted(content)}" if isinstance(content, dict) else f"a {type(content).__name__}"
        raise AnnotationError(
            f"cc_sbu_align: {path} must hold {{'annotations': [{{'image_id', 'caption'}}, ...]}}; it has {found}"
        )
    annotations = content["annotations"]
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise AnnotationError(
                f"cc_sbu_align: annotation {index} of {path} needs 'image_id' and a 'caption' string: {ann!r}"
            )
    return annotations


class CCSBUAlignDataset(Dataset):
    """``{"image": tensor (3, H, W), "text_input": raw caption, "image_id": int}`` per annotation;
    ``image_id`` is the running index of the distinct ids, as the reference numbers them."""

    def __init__(
        self,
        vis_processor: Callable[[Image.Image], Any],
        storage: str | Path,
        *,
        name: str = "cc_sbu_align",
        sample_ratio: float = 1.0,
    ) -> None:
        storage = Path(storage)
        if not storage.is_dir():
            raise MissingDataError(
                f"{name}: storage folder {storage} not found; it must hold {ANNOTATION_FILE} and {IMAGE_FOLDER}/"
            )
        self.vis_processor = vis_processor
        self.vis_root = storage / IMAGE_FOLDER
        self.annotation = load_annotations(storage / ANNOTATION_FILE)
        self.img_ids: dict[Any, int] = {}
        for ann in self.annotation:
            self.img_ids.setdefault(ann["image_id"], len(self.img_ids))
        self.name = name
        self.sample_ratio = sample_ratio
        self.check_images()

    def check_images(self) -> None:
        """Refuse, before training, a listed image that is missing or empty (one stat each)."""
        bad = []
        for image_id in self.img_ids:
            path = self.image_path(image_id)
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                bad.append(f"image_id '{image_id}': {path} does not exist")
                continue
            if not size:
                bad.append(f"image_id '{image_id}': {path} is empty (0 bytes)")
        if bad:
            more = f" and {len(bad) - NAMED_IN_ERRORS} more" if len(bad) > NAMED_IN_ERRORS else ""
            raise MissingDataError(
                f"{self.name}: {len(bad)} of the {len(self.img_ids)} images listed in "
                f"{self.vis_root.parent / ANNOTATION_FILE} are missing or empty: "
                f"{'; '.join(bad[:NAMED_IN_ERRORS])}{more}. dataset/check_data.py {self.vis_root.parent} lists them all"
            )

    def __len__(self) -> int:
        return len(self.annotation)

    def subset(self, image_ids: Collection[Any], vis_processor: Callable[[Image.Image], Any] | None = None) -> Any:
        """The annotations of ``image_ids`` only (a held-out split, or the training data without
        them), read through ``vis_processor`` when given; ``image_id`` keeps the whole file's numbering."""
        part = copy.copy(self)
        keep = set(image_ids)
        part.annotation = [ann for ann in self.annotation if ann["image_id"] in keep]
        if vis_processor is not None:
            part.vis_processor = vis_processor
        return part

    def text_lengths(self) -> list[int]:
        """Each sample's caption length in characters, without opening an image (for
        ``run.length_grouping``)."""
        return [len(ann["caption"]) for ann in self.annotation]

    def image_path(self, image_id: Any) -> Path:
        return self.vis_root / f"{image_id}.jpg"

    def __getitem__(self, index: int) -> dict[str, Any]:
        ann = self.annotation[index]
        path = self.image_path(ann["image_id"])
        try:
            with Image.open(path) as raw:
                image = raw.convert("RGB")
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{self.name}: image of image_id '{ann['image_id']}' (annotation {index}) not found: {path}"
            ) from None
        except (OSError, SyntaxError, ValueError) as exn:
            raise ValueError(
                f"{self.name}: image of image_id '{ann['image_id']}' (annotation {index}) is unreadable: {path} ({exn})"
            ) from exn
        return {
            "image": self.vis_processor(image),
            "text_input": ann["caption"],
            "image_id": self.img_ids[ann["image_id"]],
        }
