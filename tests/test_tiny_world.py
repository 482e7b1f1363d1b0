"""The tiny world (tools/tiny_world.py): its data in the real formats, its frozen parts loaded by
the production loaders, and, at reduced size, the whole path (stage 1, stage 2, Chat) making the
frozen LLM name what is in held-out images that no stage trained on."""

from __future__ import annotations

import filecmp
import json
import logging
import random
import tarfile

import pytest
import torch
from omegaconf import OmegaConf
from world_model import EVAL, STAGE1, STAGE2, trained_world

from minigpt4.conversation.launch import build_chat
from minigpt4.models.mini_gpt4 import MiniGPT4
from tools.tiny_world import (
    ATTRIBUTES,
    Thing,
    WorldSizes,
    WorldSpec,
    heldout_score,
    make_world,
    named,
    names_right,
    read_heldout,
    sample_thing,
    write_data,
)

SMALL_DATA = WorldSizes(laion=30, cc_sbu=10, align=8, heldout=6, shard_size=20)


def test_the_score_wants_the_right_colour_and_shape_and_no_other():
    thing = Thing("red", "circle", "large", "gray")
    assert names_right("The image shows a large red circle on a gray background.", thing)
    assert not names_right("a red square", thing)
    assert not names_right("a red circle next to a blue circle", thing)
    assert not names_right("a large circle", thing)
    assert names_right("a blue circle", thing, attributes=("shape",))


def test_the_data_is_reproducible_and_says_what_each_image_shows(tmp_path):
    write_data(tmp_path / "a", SMALL_DATA, seed=3)
    write_data(tmp_path / "b", SMALL_DATA, seed=3)
    write_data(tmp_path / "c", SMALL_DATA, seed=4)
    for part in ("laion/00000.tar", "laion/00001.tar", "cc_sbu/00000.tar", "cc_sbu_align/filter_cap.json"):
        assert filecmp.cmp(tmp_path / "a" / part, tmp_path / "b" / part, shallow=False), part
    assert not filecmp.cmp(tmp_path / "a" / "laion/00000.tar", tmp_path / "c" / "laion/00000.tar", shallow=False)
    with tarfile.open(tmp_path / "a" / "laion" / "00000.tar") as tar:
        names = tar.getnames()
        assert names[:3] == ["000000000.jpg", "000000000.txt", "000000000.json"]
        caption = tar.extractfile("000000000.txt").read().decode()
        assert json.loads(tar.extractfile("000000000.json").read())["caption"] == caption
    assert len(names) == 3 * 20
    assert json.loads((tmp_path / "a" / "laion" / "00001_stats.json").read_text())["count"] == 10
    # Every caption names one colour and one shape; the held-out split says which.
    assert named(caption, "colour") and named(caption, "shape")
    heldout = read_heldout(tmp_path / "a" / "heldout")
    assert len(heldout) == 6
    for path, thing, description in heldout:
        assert path.exists()
        assert names_right(description, thing, attributes=tuple(ATTRIBUTES))


@pytest.mark.slow
def test_the_frozen_parts_load_through_the_production_loaders(tmp_path):
    sizes = WorldSizes(
        **{**vars(SMALL_DATA), "vision_steps": 2, "vision_batch": 4, "vision_pool": 8, "probe_images": 16}
    )
    sizes.llm_steps, sizes.llm_batch = 2, 2
    report = make_world(tmp_path / "world", sizes, seed=1)
    assert set(report["probe_accuracy"]) == set(ATTRIBUTES)
    # The world's YAMLs describe the model the world was made for.
    spec = WorldSpec()
    for config in (STAGE1, STAGE2, EVAL):
        model = OmegaConf.load(config).model
        assert OmegaConf.to_container(model.vit_arch) == vars(spec.vit_arch), config
        assert OmegaConf.to_container(model.qformer_arch) == vars(spec.qformer_arch), config
        assert (model.image_size, model.num_query_token) == (spec.image_size, spec.num_query_token)
    model = OmegaConf.load(EVAL).model
    weights = tmp_path / "world" / "weights"
    model.vit_weights, model.q_former_model = str(weights / "eva_vit_world.pth"), str(weights / "blip2_world.pth")
    model.llama_model = str(weights / "vicuna_world")
    loaded = MiniGPT4.from_config(model)
    blip2 = torch.load(weights / "blip2_world.pth", weights_only=True)["model"]
    assert torch.equal(loaded.query_tokens, blip2["query_tokens"])
    assert torch.equal(loaded.ln_vision.weight, blip2["ln_vision.weight"])


@pytest.mark.slow
def test_training_the_projection_makes_the_frozen_llm_name_held_out_images():
    """The reduced world of tests/world_model.py (a vision side that sees colour well and shape
    barely): after stage 1 and stage 2, Chat names the colour of held-out images far more often
    than with an untrained projection (the quick start's full world, whose vision side also sees
    shape, scores 92% against 6% on colour and shape)."""
    world = trained_world()
    losses = world.stage1_losses
    assert losses[-1] < 0.5 * losses[0]
    heldout = world.heldout()
    scores = {}
    for name, trained in (("trained", True), ("untrained", False)):
        torch.manual_seed(0)
        chat = build_chat(str(EVAL), world.eval_options(trained), torch.device("cpu"))
        _, answers = heldout_score(chat, heldout, "Describe this image in detail.")
        pairs = list(zip(answers, heldout, strict=True))
        scores[name] = sum(names_right(answer, thing, ("colour",)) for answer, (_, thing, _) in pairs) / len(pairs)
        scores[f"{name} colour and shape"] = sum(names_right(a, thing) for a, (_, thing, _) in pairs) / len(pairs)
    logging.getLogger(__name__).info("held-out scores of the reduced world: %s", scores)
    assert scores["trained"] >= 0.7, scores
    assert scores["trained"] >= scores["untrained"] + 0.4, scores


def test_sample_thing_covers_every_value():
    rng = random.Random(0)
    things = [sample_thing(rng) for _ in range(200)]
    for attribute, values in ATTRIBUTES.items():
        assert {getattr(t, attribute) for t in things} == set(values)
