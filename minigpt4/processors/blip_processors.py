"""The BLIP-2 image processors and the BLIP caption processor, registered under the reference's
names: ``blip2_image_train``, ``blip2_image_eval`` and ``blip_caption``."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from minigpt4.common.registry import registry
from minigpt4.processors.base_processor import BaseProcessor

# CLIP's normalisation, which EVA-CLIP and BLIP-2 were trained with.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _normalize(mean: Sequence[float] | None, std: Sequence[float] | None) -> transforms.Normalize:
    return transforms.Normalize(CLIP_MEAN if mean is None else mean, CLIP_STD if std is None else std)


# blip2_image_train's ``transform``: the reference's random crop, or upstream's later plain resize.
TRAIN_TRANSFORMS = ("random_resized_crop", "resize")


@registry.register_processor("blip2_image_train")
class Blip2ImageTrainProcessor(BaseProcessor):
    """``transform: random_resized_crop`` (the reference): a random crop covering
    ``min_scale``..``max_scale`` of the area (aspect 3/4..4/3), bicubic resize to ``image_size``;
    ``transform: resize`` (upstream's later processor): a bicubic square resize, as
    ``blip2_image_eval``, the scales unused. Then tensor, CLIP normalisation. No flip, no
    RandAugment."""

    def __init__(
        self,
        image_size: int = 224,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        min_scale: float = 0.5,
        max_scale: float = 1.0,
        *,
        transform: str = "random_resized_crop",
    ) -> None:
        if transform not in TRAIN_TRANSFORMS:
            raise ValueError(f"blip2_image_train: transform '{transform}' is not one of {', '.join(TRAIN_TRANSFORMS)}")
        if transform == "resize":
            first = transforms.Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC)
        else:
            first = transforms.RandomResizedCrop(
                image_size, scale=(min_scale, max_scale), interpolation=InterpolationMode.BICUBIC
            )
        self.transform = transforms.Compose([first, transforms.ToTensor(), _normalize(mean, std)])

    def __call__(self, image: Image.Image) -> torch.Tensor:  # (3, image_size, image_size)
        return self.transform(image)


@registry.register_processor("blip2_image_eval")
class Blip2ImageEvalProcessor(BaseProcessor):
    """Bicubic resize to an ``image_size`` square (the aspect ratio is not kept), tensor, CLIP
    normalisation."""

    def __init__(
        self, image_size: int = 224, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
    ) -> None:
        self.transform = transforms.Compose(
            [
                transforms.Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC),
                transforms.ToTensor(),
                _normalize(mean, std),
            ]
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:  # (3, image_size, image_size)
        return self.transform(image)


_PUNCTUATION = re.compile(r'[.!"()*#:;~]')
_WHITESPACE_RUN = re.compile(r"\s{2,}")


@registry.register_processor("blip_caption")
class BlipCaptionProcessor(BaseProcessor):
    """``prompt`` followed by the cleaned caption: lower case, each of ``. ! " ( ) * # : ; ~``
    replaced by a space, whitespace runs collapsed to one space, a trailing newline and the
    surrounding spaces stripped, then at most ``max_words`` space-separated words."""

    def __init__(self, prompt: str = "", max_words: int = 50) -> None:
        self.prompt = prompt
        self.max_words = max_words

    def __call__(self, caption: str) -> str:
        return self.prompt + self.pre_caption(caption)

    def pre_caption(self, caption: str) -> str:
        caption = _PUNCTUATION.sub(" ", caption.lower())
        caption = _WHITESPACE_RUN.sub(" ", caption).rstrip("\n").strip(" ")
        words = caption.split(" ")
        if len(words) > self.max_words:
            caption = " ".join(words[: self.max_words])
        return caption
