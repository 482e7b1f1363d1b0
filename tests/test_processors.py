"""The image and caption processors: hand-computed expectations and the 2023 code's outputs."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms import InterpolationMode

from minigpt4.common.registry import registry
from minigpt4.processors import (
    BaseProcessor,
    Blip2ImageEvalProcessor,
    Blip2ImageTrainProcessor,
    BlipCaptionProcessor,
)
from minigpt4.processors.blip_processors import CLIP_MEAN, CLIP_STD


@pytest.fixture(scope="module")
def golden(golden_dir):
    return json.loads((golden_dir / "expected.json").read_text())


def test_registered_names():
    assert registry.get_processor_class("blip2_image_train") is Blip2ImageTrainProcessor
    assert registry.get_processor_class("blip2_image_eval") is Blip2ImageEvalProcessor
    assert registry.get_processor_class("blip_caption") is BlipCaptionProcessor


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ('x.y!z"w(v)u*t#s:r;q~p', "x y z w v u t s r q p"),  # each listed mark becomes a space
        ("Commas, dashes - and 'quotes' stay?", "commas, dashes - and 'quotes' stay?"),
        ("  Spaces   and\n\nnewlines   collapse  ", "spaces and newlines collapse"),
        ("a\tb", "a\tb"),  # a single tab is not a run of two
        ("Ends with a newline\n", "ends with a newline"),
        ("...", ""),
    ],
)
def test_caption_cleaning_rules(raw, cleaned):
    assert BlipCaptionProcessor()(raw) == cleaned


def test_caption_word_limit_and_prompt():
    words = " ".join(f"w{i}" for i in range(60))
    assert BlipCaptionProcessor()(words) == " ".join(f"w{i}" for i in range(50))
    # Words are split on single spaces, so a tab does not separate them.
    assert BlipCaptionProcessor(max_words=1)("a\tb c") == "a\tb"
    assert BlipCaptionProcessor(prompt="a picture of ", max_words=2)("The Big Red Dog.") == "a picture of the big"


def test_caption_processor_on_the_golden_captions(golden):
    stage1 = golden["stage1"]
    processor = registry.get_processor_class("blip_caption").from_config(stage1["caption_processor"])
    assert [processor(c) for c in stage1["raw_captions"]] == stage1["text_input"]


def test_from_config_defaults_and_unknown_keys():
    processor = BlipCaptionProcessor.from_config({"name": "blip_caption", "prompt": None, "max_words": 3})
    assert (processor.prompt, processor.max_words) == ("", 3)
    assert BlipCaptionProcessor.from_config(None).max_words == 50
    assert isinstance(BaseProcessor.build(), BaseProcessor)
    assert BaseProcessor()("unchanged") == "unchanged"
    with pytest.raises(
        ValueError, match=r"'blip2_image_eval' does not read min_scale; it reads: image_size, mean, std"
    ):
        Blip2ImageEvalProcessor.from_config({"name": "blip2_image_eval", "min_scale": 0.3})


def test_eval_processor_normalises_with_clip_statistics():
    image = Image.new("RGB", (40, 30), (200, 100, 50))
    out = Blip2ImageEvalProcessor(image_size=8)(image)
    assert out.shape == (3, 8, 8)  # a square whatever the aspect ratio
    expected = [(v / 255 - m) / s for v, m, s in zip((200, 100, 50), CLIP_MEAN, CLIP_STD, strict=True)]
    torch.testing.assert_close(out, torch.tensor(expected)[:, None, None].expand(3, 8, 8), atol=1e-6, rtol=0)
    custom = Blip2ImageEvalProcessor.build(image_size=4, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])(image)
    torch.testing.assert_close(custom[:, 0, 0], torch.tensor([200 / 255, 100 / 255, 50 / 255]))


def test_eval_processor_matches_the_2023_code(golden_dir, golden):
    images = golden["images"]
    settings = images["processor"]
    processor = registry.get_processor_class(settings["name"]).build(
        image_size=settings["image_size"], mean=settings["mean"], std=settings["std"]
    )
    batch = []
    for name, sha, size in zip(images["files"], images["decoded_rgb_sha256"], images["file_sizes_wh"], strict=True):
        with Image.open(golden_dir / name) as raw:
            image = raw.convert("RGB")
        assert list(image.size) == size
        # The same JPEG decoder output as in 2023, so any difference below is the resize's.
        assert hashlib.sha256(image.tobytes()).hexdigest() == sha
        batch.append(processor(image))
    expected = load_file(golden_dir / "expected.safetensors")["images.eval"]
    torch.testing.assert_close(torch.stack(batch), expected, atol=1e-4, rtol=0)


def test_train_processor_settings_and_randomness():
    processor = registry.get_processor_class("blip2_image_train").build(image_size=32)
    crop = processor.transform.transforms[0]
    assert (crop.size, crop.scale, crop.interpolation) == ((32, 32), (0.5, 1.0), InterpolationMode.BICUBIC)
    assert crop.ratio == pytest.approx((3 / 4, 4 / 3))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8))
    torch.manual_seed(0)
    first = processor(image)
    torch.manual_seed(0)
    assert torch.equal(processor(image), first)
    assert first.shape == (3, 32, 32)
    assert not torch.equal(processor(image), first)


def test_train_processor_with_full_scale_equals_the_eval_resize():
    # With scale (1, 1) on a square image the only crop that fits is the whole image.
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 50, 3), dtype=np.uint8))
    train = Blip2ImageTrainProcessor(image_size=24, min_scale=1.0, max_scale=1.0)
    torch.testing.assert_close(train(image), Blip2ImageEvalProcessor(image_size=24)(image))
