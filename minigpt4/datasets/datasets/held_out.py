"""Splits held out of a map-style dataset's training data, by image (``datasets.<name>.held_out``).

A split is either the images listed in its ``image_ids`` or a ``fraction`` of the dataset's images
drawn with ``held_out_seed``: the listed splits are taken first, then every fraction split takes
its share, in the order of the config, from one seeded permutation of the images left. The draw
depends on the annotation file and the seed only, so a split stays the same across runs, rank
counts and ``run.seed``. Whatever no split takes is the ``train`` split.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from minigpt4.common.errors import MiniGPT4Error


class HeldOutError(MiniGPT4Error, ValueError):
    """A ``held_out`` split that cannot be drawn from the dataset."""


def _listed(split: str, wanted: Sequence[Any], by_text: Mapping[str, Any], key: str) -> list[Any]:
    unknown = [str(i) for i in wanted if str(i) not in by_text]
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise HeldOutError(f"{key}.{split}.image_ids: {', '.join(unknown[:3])}{more} not in the dataset's annotations")
    return list(dict.fromkeys(by_text[str(i)] for i in wanted))


def choose_held_out(
    image_ids: Sequence[Any], held_out: Mapping[str, Any], seed: int, name: str
) -> dict[str, list[Any]]:
    """``{split: its image ids}`` for each entry of ``held_out`` (``HeldOutSplit``-shaped:
    ``fraction``, ``image_ids``), drawn from ``image_ids`` (the dataset's, in file order)."""
    key = f"datasets.{name}.held_out"
    by_text = {str(i): i for i in image_ids}
    chosen: dict[str, list[Any]] = {}
    taken: set[Any] = set()
    for split, spec in held_out.items():
        if split == "train":
            raise HeldOutError(
                f"{key}: 'train' is what is left once the held-out splits are taken; name them otherwise"
            )
        if bool(spec.fraction) == bool(spec.image_ids):
            raise HeldOutError(f"{key}.{split}: give either fraction or image_ids")
        if spec.image_ids:
            ids = _listed(split, spec.image_ids, by_text, key)
            if both := taken.intersection(ids):
                raise HeldOutError(f"{key}.{split}: image_ids {sorted(map(str, both))[:3]} are in another split too")
            chosen[split] = ids
            taken.update(ids)
    free = [i for i in image_ids if i not in taken]
    random.Random(seed).shuffle(free)
    for split, spec in held_out.items():
        if not spec.fraction:
            continue
        if not 0.0 < spec.fraction < 1.0:
            raise HeldOutError(f"{key}.{split}.fraction must be between 0 and 1, got {spec.fraction}")
        count = round(spec.fraction * len(image_ids))
        if count == 0 or count > len(free):
            raise HeldOutError(
                f"{key}.{split}.fraction {spec.fraction} of {len(image_ids)} images is {count}, "
                f"with {len(free)} images not yet in a split"
            )
        chosen[split], free = free[:count], free[count:]
    if not free:
        raise HeldOutError(f"{key}: the held-out splits take every image of {name}, leaving none to train on")
    return {split: chosen[split] for split in held_out}
