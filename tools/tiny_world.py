"""A tiny world that the embedded default can learn to see, made on a CPU in minutes.

    python tools/tiny_world.py --out assets/world

Every image holds one shape (circle, square, triangle or cross) in one of four colours, small or
large, on a white, gray or black background, and every caption and description says so in words.
``OUT`` gets

* ``data/laion/``, ``data/cc_sbu/``: stage-1 webdataset shards as img2dataset writes them
  (``<key>.jpg``, ``.txt``, ``.json``, ``NNNNN_stats.json``), short captions;
* ``data/cc_sbu_align/``: the stage-2 folder (``filter_cap.json``, ``image/<id>.jpg``), detailed
  descriptions;
* ``data/heldout/``: images of the same folder format that no training stage reads, with each
  image's attributes beside its description, for the held-out score;
* ``weights/``: the frozen parts in the real formats, each taught the world here: an EVA ViT
  (``eva_vit_world.pth``) and a BLIP-2 Q-Former (``blip2_world.pth``) pretrained together to name
  the attributes from the query outputs (an attribute classifier on every query, discarded
  afterwards), and a Vicuna folder (``vicuna_world/``) whose sentencepiece tokenizer is trained on
  the world's text and whose LLaMA is pretrained text-only on it;
* ``world.json``: the seed, the sizes and what was measured while making it (the linear-probe
  accuracy of the frozen vision features on held-out images, the LLM's held-out loss).

The LLM learns to use what comes before the caption from text alone: in its training sequences,
where MiniGPT-4 puts the image's query embeddings, each of the query positions holds the sum of
the word embeddings of some of the attribute words (with noise), laid out exactly as stage 1,
stage 2 and ``Chat`` lay out their inputs. Training ``llama_proj`` then only has to map what the
Q-Former sees onto what the LLM already reads. The same ``--seed`` gives the same world.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import multiprocessing
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to write data/, weights/, world.json into")
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the images, the pretraining and the held-out split (default: 0)"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args(None)  # --help and a bad option answer before torch and the model code load

# ruff: noqa: E402 (the heavy imports come after that early parse on purpose)
import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script, the repository root is not on the import path

from minigpt4.common.schema import QFormerArch, VitArch
from minigpt4.conversation.conversation import CONV_VISION, IMAGE_MESSAGE
from minigpt4.datasets.shard_writer import ShardSample, jpeg_bytes, write_img2dataset_shards
from minigpt4.evaluation.labels import named_values
from minigpt4.models.eva_vit import build_eva_vit
from minigpt4.models.llm import load_llama_tokenizer
from minigpt4.models.mini_gpt4 import IMAGE_PLACEHOLDER, read_prompts
from minigpt4.models.qformer import build_qformer, ours_to_blip2
from minigpt4.processors.blip_processors import (
    Blip2ImageEvalProcessor,
    Blip2ImageTrainProcessor,
    BlipCaptionProcessor,
)
from tools.make_tiny_weights import (
    TinySpec,
    llama_config,
    tiny_llm_shape,
    write_blip2,
    write_eva,
    write_tokenizer,
)

logger = logging.getLogger("tiny_world")

COLOURS = {"red": (205, 35, 35), "green": (35, 150, 55), "blue": (40, 75, 215), "yellow": (235, 200, 25)}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "large")
BACKGROUNDS = {"white": (210, 250), "gray": (100, 150), "black": (5, 45)}  # grey-level ranges
ATTRIBUTES = {"colour": tuple(COLOURS), "shape": SHAPES, "size": SIZES, "background": tuple(BACKGROUNDS)}
# What the held-out score checks: an answer is right when these are the only ones of their kind it names.
SCORED = ("colour", "shape")
# The world's training crops (vis_processor min_scale in its YAMLs): mild, so that no crop loses the shape.
CROP_MIN_SCALE = 0.8
RENDER_SIZE = 64  # pixels; the processors crop and resize to the model's image_size
MISLED = 0.15  # the share of the LLM's training sequences whose query positions describe another thing
SHIFT = 2  # pixels the shape's centre may move from the image's centre

CAPTIONS = (
    "a {size} {colour} {shape} on a {background} background",
    "a {colour} {shape}",
    "{colour} {shape} on {background}",
    "picture of a {size} {colour} {shape}",
    "a {shape} in {colour} on a {background} background",
    "the {colour} {shape} is {size}",
    "a {colour} {shape} drawn on {background}",
)
DESCRIPTIONS = (
    "The image shows a {size} {colour} {shape} on a {background} background. The {shape} is {colour} "
    "and it is {size}. There is nothing else in the picture.",
    "This picture contains one {colour} {shape}. It is {size} and it stands on a plain {background} background.",
    "In this image there is a {size} {shape}, colored {colour}, in front of a {background} background. "
    "No other objects are visible.",
)
# Questions the LLM is taught to answer in Chat's format (the alignment prompts' questions and these).
CHAT_QUESTIONS = ("What is in this image?", "What do you see?")
STAGE2_TEMPLATE = "###Human: {} ###Assistant: "
ALIGNMENT_PROMPTS = "prompts/alignment.txt"


@dataclass(frozen=True)
class Thing:
    """What one image shows."""

    colour: str
    shape: str
    size: str
    background: str

    def labels(self) -> list[int]:
        return [values.index(getattr(self, name)) for name, values in ATTRIBUTES.items()]

    def words(self) -> list[str]:
        return [getattr(self, name) for name in ATTRIBUTES]

    def caption(self, rng: random.Random) -> str:
        return rng.choice(CAPTIONS).format(**asdict(self))

    def description(self, rng: random.Random) -> str:
        return rng.choice(DESCRIPTIONS).format(**asdict(self))


def sample_thing(rng: random.Random) -> Thing:
    return Thing(*(rng.choice(values) for values in ATTRIBUTES.values()))


def named(text: str, attribute: str) -> set[str]:
    """The values of ``attribute`` (e.g. the colours) that ``text`` names, as evaluate.py's
    attribute-naming benchmark reads them (eval_configs/world_heldout.yaml)."""
    return named_values(text, ATTRIBUTES[attribute])


def names_right(text: str, thing: Thing, attributes: tuple[str, ...] = SCORED) -> bool:
    """True when ``text`` names the thing's colour and shape (or ``attributes``) and no other."""
    return all(named(text, attribute) == {getattr(thing, attribute)} for attribute in attributes)


def _jitter(rgb: tuple[int, ...], rng: random.Random, amount: int) -> tuple[int, ...]:
    return tuple(min(255, max(0, c + rng.randint(-amount, amount))) for c in rgb)


def render(thing: Thing, rng: random.Random) -> Image.Image:
    """The thing at a random place, size within its class and shade, on a noisy background;
    returned after a JPEG round trip, as training reads it."""
    size = RENDER_SIZE
    level = rng.randint(*BACKGROUNDS[thing.background])
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 6, (size, size, 3))
    pixels = np.clip(np.array(_jitter((level,) * 3, rng, 8), dtype=float) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(8, 11) if thing.size == "small" else rng.uniform(15, 19)
    # Near the middle, so that the training processor's random crops keep most of the shape.
    cx, cy = (size / 2 + rng.uniform(-SHIFT, SHIFT) for _ in range(2))
    fill = _jitter(COLOURS[thing.colour], rng, 20)
    if thing.shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    elif thing.shape == "square":
        half = radius * 0.85
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif thing.shape == "triangle":
        turn = rng.uniform(-0.3, 0.3)
        corners = [
            (cx + radius * math.sin(turn + k * 2 * math.pi / 3), cy - radius * math.cos(turn + k * 2 * math.pi / 3))
            for k in range(3)
        ]
        draw.polygon(corners, fill=fill)
    else:
        arm = radius * 0.32
        draw.rectangle((cx - radius, cy - arm, cx + radius, cy + arm), fill=fill)
        draw.rectangle((cx - arm, cy - radius, cx + arm, cy + radius), fill=fill)
    with Image.open(io.BytesIO(jpeg_bytes(image))) as decoded:
        return decoded.convert("RGB")


# --- the data ------------------------------------------------------------------------------------


@dataclass
class WorldSizes:
    """How much of everything to make. The defaults are the quick start's world; tests shrink them."""

    laion: int = 2400
    cc_sbu: int = 800
    align: int = 400
    heldout: int = 200
    shard_size: int = 400
    vision_steps: int = 1500
    vision_batch: int = 128
    vision_pool: int = 4000  # rendered training images the vision side sees (under random crops)
    probe_images: int = 1000  # new images the linear probe of the frozen features trains on
    llm_steps: int = 1600  # in its own process, beside the vision side's steps
    llm_batch: int = 32
    vocab_size: int = 600


def write_shards(out: Path, count: int, shard_size: int, rng: random.Random, name: str) -> None:
    """img2dataset's webdataset output: ``count`` captioned images in shards of ``shard_size``."""

    def sample(_number: int, key: str) -> ShardSample:
        thing = sample_thing(rng)
        jpg = jpeg_bytes(render(thing, rng))
        side = (RENDER_SIZE, RENDER_SIZE)
        return ShardSample(jpg, thing.caption(rng), f"world://{name}/{key}", size=side, original_size=side)

    write_img2dataset_shards(out, count, shard_size, sample)


def write_described(out: Path, count: int, rng: random.Random, with_attributes: bool) -> None:
    """A ``cc_sbu_align``-format folder; ``with_attributes`` adds each image's attributes."""
    (out / "image").mkdir(parents=True, exist_ok=True)
    annotations = []
    for index in range(count):
        thing = sample_thing(rng)
        render(thing, rng).save(out / "image" / f"{index}.jpg", format="JPEG", quality=95)
        entry = {"image_id": str(index), "caption": thing.description(rng)}
        if with_attributes:
            entry.update(asdict(thing))
        annotations.append(entry)
    content: dict = {"annotations": annotations}
    if with_attributes:
        # Every value an answer could name, for the held-out score (eval_configs/world_heldout.yaml).
        content["attribute_values"] = {name: list(values) for name, values in ATTRIBUTES.items()}
    (out / "filter_cap.json").write_text(json.dumps(content, indent=1))


def read_heldout(folder: Path) -> list[tuple[Path, Thing, str]]:
    """(image path, what it shows, its description) of each held-out image."""
    annotations = json.loads((folder / "filter_cap.json").read_text())["annotations"]
    return [
        (folder / "image" / f"{a['image_id']}.jpg", Thing(*(a[f.name] for f in fields(Thing))), a["caption"])
        for a in annotations
    ]


def write_data(out: Path, sizes: WorldSizes, seed: int) -> None:
    # Each part has its own stream, so that the held-out images do not depend on the other sizes.
    write_shards(out / "laion", sizes.laion, sizes.shard_size, random.Random(f"{seed}-laion"), "laion")
    write_shards(out / "cc_sbu", sizes.cc_sbu, sizes.shard_size, random.Random(f"{seed}-cc_sbu"), "cc_sbu")
    write_described(out / "cc_sbu_align", sizes.align, random.Random(f"{seed}-align"), with_attributes=False)
    write_described(out / "heldout", sizes.heldout, random.Random(f"{seed}-heldout"), with_attributes=True)


# --- the vision side -----------------------------------------------------------------------------


@dataclass
class WorldSpec(TinySpec):
    """The world's model: the tiny default's shape with a two-layer Q-Former that cross-attends in every layer."""

    vit_arch: VitArch = field(
        default_factory=lambda: VitArch(patch_size=14, embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.3637)
    )
    qformer_arch: QFormerArch = field(
        default_factory=lambda: QFormerArch(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, cross_attention_freq=1
        )
    )


class VisionSide(nn.Module):
    """The modules MiniGPT-4 builds for its frozen vision side, run as ``MiniGPT4.encode_img``
    runs them, up to the Q-Former's query outputs."""

    def __init__(self, spec: WorldSpec) -> None:
        super().__init__()
        self.visual_encoder = build_eva_vit(spec.vit_arch, spec.image_size, 0.0, False, torch.float32)
        self.ln_vision = nn.LayerNorm(self.visual_encoder.embed_dim)
        self.Qformer, self.query_tokens = build_qformer(
            spec.qformer_arch, spec.num_query_token, self.visual_encoder.embed_dim
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, Q, D)
        image_embeds = self.ln_vision(self.visual_encoder.forward_features(pixels))
        queries = self.query_tokens.expand(pixels.shape[0], -1, -1)
        return self.Qformer(query_embeds=queries, encoder_hidden_states=image_embeds).last_hidden_state


def _attribute_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Cross-entropy summed over the attributes; ``logits`` (..., sum of classes), ``labels`` (..., A)."""
    loss, hits, start = 0.0, [], 0
    for a, values in enumerate(ATTRIBUTES.values()):
        part = logits[..., start : start + len(values)]
        loss = loss + F.cross_entropy(part.reshape(-1, len(values)), labels[..., a].reshape(-1))
        hits.append(part.argmax(-1) == labels[..., a])
        start += len(values)
    return loss, hits


def pretrain_vision(spec: WorldSpec, sizes: WorldSizes, seed: int) -> VisionSide:
    """ViT and Q-Former trained together so that every query output names the attributes."""
    torch.manual_seed(seed)
    rng = random.Random(f"{seed}-vision")
    side = VisionSide(spec)
    head = nn.Linear(spec.qformer_arch.hidden_size, sum(len(v) for v in ATTRIBUTES.values()))
    things = [sample_thing(rng) for _ in range(sizes.vision_pool)]
    images = [render(thing, rng) for thing in things]
    labels = torch.tensor([thing.labels() for thing in things])
    augment = Blip2ImageTrainProcessor(image_size=spec.image_size, min_scale=CROP_MIN_SCALE)
    params = [*side.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=4e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=4e-3, total_steps=sizes.vision_steps, pct_start=0.1
    )
    side.train()
    for step in range(sizes.vision_steps):
        batch = rng.sample(range(len(images)), sizes.vision_batch)
        pixels = torch.stack([augment(images[i]) for i in batch])
        queries = side(pixels)  # (B, Q, D)
        target = labels[batch][:, None, :].expand(-1, queries.shape[1], -1)
        loss, hits = _attribute_loss(head(queries), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == sizes.vision_steps - 1:
            accuracy = " ".join(f"{n}={h.float().mean():.2f}" for n, h in zip(ATTRIBUTES, hits, strict=True))
            logger.info("vision step %d: loss %.3f, train accuracy %s", step, loss.item(), accuracy)
    return side.eval()


@torch.no_grad()
def _features(side: VisionSide, images: list[Image.Image], image_size: int) -> torch.Tensor:
    process = Blip2ImageEvalProcessor(image_size=image_size)
    return torch.cat(
        [side(torch.stack([process(im) for im in images[i : i + 128]])) for i in range(0, len(images), 128)]
    )


def probe_accuracy(
    side: VisionSide, spec: WorldSpec, seed: int, heldout: list[tuple[Path, Thing, str]], images: int
) -> dict[str, float]:
    """A fresh linear classifier on the frozen query outputs (flattened), trained on new images and
    scored on the held-out ones: what the frozen vision side makes visible, per attribute."""
    rng = random.Random(f"{seed}-probe")
    things = [sample_thing(rng) for _ in range(images)]
    train = _features(side, [render(t, rng) for t in things], spec.image_size).flatten(1)
    test = _features(side, [Image.open(path).convert("RGB") for path, _, _ in heldout], spec.image_size).flatten(1)
    mean, std = train.mean(0), train.std(0) + 1e-6
    train, test = (train - mean) / std, (test - mean) / std
    train_labels = torch.tensor([t.labels() for t in things])
    test_labels = torch.tensor([thing.labels() for _, thing, _ in heldout])
    torch.manual_seed(seed)
    probe = nn.Linear(train.shape[1], sum(len(v) for v in ATTRIBUTES.values()))
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(300):
        loss, _ = _attribute_loss(probe(train), train_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        _, hits = _attribute_loss(probe(test), test_labels)
    return {name: round(h.float().mean().item(), 4) for name, h in zip(ATTRIBUTES, hits, strict=True)}


def write_vision(side: VisionSide, spec: WorldSpec, weights: Path, generator: torch.Generator) -> tuple[Path, Path]:
    """The trained parts in the real formats: the tiny writers' random files (an extra ViT block,
    the BLIP-2 parts MiniGPT-4 discards), with the trained tensors in place of the used ones."""
    vit_path, blip2_path = weights / "eva_vit_world.pth", weights / "blip2_world.pth"
    vision = write_eva(spec, vit_path, generator)
    vit_state = torch.load(vit_path, weights_only=True)
    trained_vit = side.visual_encoder.state_dict()
    if set(trained_vit) != set(vision):
        raise RuntimeError("the trained ViT's keys differ from the tiny writer's")
    vit_state.update(trained_vit)
    torch.save(vit_state, vit_path)
    write_blip2(spec, blip2_path, trained_vit, generator)
    blip2 = torch.load(blip2_path, weights_only=True)
    trained = {"query_tokens": side.query_tokens.detach().clone()}
    trained.update({f"ln_vision.{k}": v for k, v in side.ln_vision.state_dict().items()})
    trained.update({ours_to_blip2(f"Qformer.{k}"): v for k, v in side.Qformer.state_dict().items()})
    missing = set(trained) - set(blip2["model"])
    if missing:
        raise RuntimeError(f"the BLIP-2 writer has no entries for {sorted(missing)[:3]}")
    blip2["model"].update(trained)
    torch.save(blip2, blip2_path)
    return vit_path, blip2_path


# --- the LLM -------------------------------------------------------------------------------------


def world_corpus(seed: int) -> list[str]:
    """The world's text, as the tokenizer should cut it: captions and descriptions (raw and as
    ``blip_caption`` cleans them), the training prompts and Chat's conversation."""
    rng = random.Random(f"{seed}-corpus")
    clean = BlipCaptionProcessor()
    corpus = []
    for _ in range(3000):
        thing = sample_thing(rng)
        corpus += [thing.caption(rng), clean(thing.caption(rng)), thing.description(rng), clean(thing.description(rng))]
    for prompt in read_prompts(ALIGNMENT_PROMPTS, STAGE2_TEMPLATE):
        corpus += [prompt] * 50
    corpus += [
        CONV_VISION.system + "###Human: " + IMAGE_MESSAGE + " " + q + "###Assistant:" for q in CHAT_QUESTIONS
    ] * 50
    return corpus


class Sequences:
    """The LLM's training text, laid out as MiniGPT-4's three consumers lay out theirs, with the
    query positions left open: stage 1 (``[BOS] [image] caption\\n``), stage 2 (``[BOS]
    ###Human: <Img>[image]</Img> prompt ###Assistant: description###``) and ``Chat``
    (its system text and ``###Assistant:``, the answer generated after it)."""

    def __init__(self, tokenizer, num_query_token: int) -> None:
        self.tokenizer = tokenizer
        self.queries = num_query_token
        self.clean = BlipCaptionProcessor()
        self.stage2 = [self._split(p) for p in read_prompts(ALIGNMENT_PROMPTS, STAGE2_TEMPLATE)]
        questions = [
            line.split("</Img>", 1)[1].strip()
            for line in (REPO / ALIGNMENT_PROMPTS).read_text().splitlines()
            if line.strip()
        ]
        self.chat = []
        for question in (*questions, *CHAT_QUESTIONS):
            conv = CONV_VISION.copy()
            conv.append_message(conv.roles[0], f"{IMAGE_MESSAGE} {question}")
            conv.append_message(conv.roles[1], None)
            self.chat.append(self._split(conv.get_prompt()))
        self.word_ids = {word: self.ids(word) for values in ATTRIBUTES.values() for word in values}

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _split(self, prompt: str) -> tuple[list[int], list[int]]:
        before, after = prompt.split(IMAGE_PLACEHOLDER)
        return self.ids(before), self.ids(after)

    def sample(self, thing: Thing, rng: random.Random) -> tuple[list[int], list[int], list[int]]:
        """(ids before the image, ids after it, target ids) of one sequence; BOS comes first."""
        kind = rng.random()
        if kind < 0.4:  # stage 1; max_txt_len 32 and end_sym "\n" as the stage-1 config
            return [], [], self.ids(self.clean(thing.caption(rng)) + "\n")[:32]
        if kind < 0.7:  # stage 2: end_sym "###", max_txt_len 160
            before, after = rng.choice(self.stage2)
            return before, after, self.ids(self.clean(thing.description(rng)) + "###")[:160]
        before, after = rng.choice(self.chat)
        return before, after, self.ids(thing.description(rng) + "###")


def query_prefix(embed: nn.Embedding, sequences: Sequences, things: list[Thing], rng: random.Random) -> torch.Tensor:
    """(B, Q, H) stand-ins for the image: each query position holds the sum of the embeddings of a
    random subset of the thing's attribute words (each word in at least one position), plus noise."""
    hidden = embed.weight.shape[1]
    rows = []
    for thing in things:
        words = [torch.tensor(sequences.word_ids[w]) for w in thing.words()]
        vectors = torch.stack([embed(ids).mean(0) for ids in words])  # (A, H)
        keep = torch.rand(sequences.queries, len(words)) < 0.7
        keep[torch.randint(sequences.queries, (len(words),)), torch.arange(len(words))] = True
        slots = keep.float() @ vectors  # (Q, H)
        scale = slots.norm(dim=-1, keepdim=True).detach() / math.sqrt(hidden)
        rows.append(slots + rng.uniform(0.0, 0.5) * scale * torch.randn(sequences.queries, hidden))
    return torch.stack(rows)


def llm_batch(
    llama,
    sequences: Sequences,
    things: list[Thing],
    rng: random.Random,
    *,
    informative: bool = True,
    mislead: bool = False,
):
    """inputs_embeds (B, L, H) and labels (B, L) of a batch, right-padded."""
    embed = llama.get_input_embeddings()
    prefix = query_prefix(embed, sequences, things, rng)
    if not informative:  # another thing's words: inputs of the same kind that say nothing of this one
        prefix = prefix[torch.randperm(len(things))]
    elif mislead:
        # Now and then another thing's words: the LLM also learns to stay with what its answer has
        # already said (a description names the shape twice) when the image is unclear.
        other = torch.randint(len(things), (len(things),))
        prefix = torch.where((torch.rand(len(things)) < MISLED)[:, None, None], prefix[other], prefix)
    rows, labels = [], []
    bos = sequences.tokenizer.bos_token_id
    for i, thing in enumerate(things):
        before, after, target = sequences.sample(thing, rng)
        head = embed(torch.tensor([bos, *before]))
        tail = embed(torch.tensor([*after, *target]))
        rows.append(torch.cat([head, prefix[i], tail]))
        labels.append([-100] * (1 + len(before) + sequences.queries + len(after)) + target)
    width = max(len(row) for row in labels)
    inputs = torch.zeros(len(rows), width, rows[0].shape[1])
    label_ids = torch.full((len(rows), width), -100)
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        inputs[i, : len(row)] = row
        label_ids[i, : len(label)] = torch.tensor(label)
    return inputs, label_ids


def pretrain_llm(spec: WorldSpec, sizes: WorldSizes, folder: Path, seed: int) -> dict[str, float]:
    """The tokenizer and the LLaMA in ``folder`` (Vicuna format); returns held-out losses."""
    from transformers import LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(folder, sizes.vocab_size, seed, world_corpus(seed))
    tokenizer = load_llama_tokenizer(folder)
    sequences = Sequences(tokenizer, spec.num_query_token)
    torch.manual_seed(seed)
    llama = LlamaForCausalLM(llama_config(vocab, 512, **tiny_llm_shape(spec)))
    rng = random.Random(f"{seed}-llm")
    optimizer = torch.optim.AdamW(llama.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=sizes.llm_steps, pct_start=0.1)
    llama.train()
    for step in range(sizes.llm_steps):
        things = [sample_thing(rng) for _ in range(sizes.llm_batch)]
        inputs, labels = llm_batch(llama, sequences, things, rng, mislead=True)
        loss = llama(inputs_embeds=inputs, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == sizes.llm_steps - 1:
            logger.info("llm step %d: loss %.3f (ln(vocab) = %.2f)", step, loss.item(), math.log(vocab))
    llama.eval()
    held = random.Random(f"{seed}-llm-heldout")
    losses = {}
    with torch.no_grad():
        for name, informative in (("heldout_loss", True), ("heldout_loss_uninformative_prefix", False)):
            state = held.getstate()
            total = []
            for _ in range(8):
                inputs, labels = llm_batch(
                    llama, sequences, [sample_thing(held) for _ in range(32)], held, informative=informative
                )
                total.append(llama(inputs_embeds=inputs, labels=labels).loss.item())
            held.setstate(state)
            losses[name] = round(sum(total) / len(total), 4)
    llama.save_pretrained(folder, max_shard_size="200KB")
    losses["ln_vocab"] = round(math.log(vocab), 4)
    return losses


# --- the held-out score --------------------------------------------------------------------------


def heldout_score(
    chat, heldout: list[tuple[Path, Thing, str]], question: str, batch: int = 50
) -> tuple[float, list[str]]:
    """The fraction of held-out images whose greedy answer (``Chat.answer_batch``) names the
    right colour and shape and no other, and the answers."""
    answers = []
    for start in range(0, len(heldout), batch):
        part = heldout[start : start + batch]
        answers += chat.answer_batch(
            [str(path) for path, _, _ in part], [question] * len(part), max_new_tokens=60, do_sample=False
        )
    right = sum(names_right(answer, thing) for answer, (_, thing, _) in zip(answers, heldout, strict=True))
    return right / len(heldout), answers


# --- the whole world -----------------------------------------------------------------------------


def _worker_setup() -> None:
    from minigpt4.common.logger import setup_logger

    setup_logger()
    torch.set_num_threads(1)


def make_world(out: Path, sizes: WorldSizes | None = None, spec: WorldSpec | None = None, seed: int = 0) -> dict:
    """Write the world (data, weights, ``world.json``) into ``out``; returns ``world.json``'s content."""
    sizes, spec = sizes or WorldSizes(), spec or WorldSpec(seed=seed)
    out = Path(out)
    start = time.perf_counter()
    write_data(out / "data", sizes, seed)
    heldout = read_heldout(out / "data" / "heldout")
    logger.info("world data written in %.0f s", time.perf_counter() - start)
    weights = out / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    # The two pretrainings are independent: the LLM's runs in a second process, on the second core.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn, initializer=_worker_setup) as pool:
        llm_job = pool.submit(pretrain_llm, spec, sizes, weights / "vicuna_world", seed)
        side = pretrain_vision(spec, sizes, seed)
        llm = llm_job.result()
    probe = probe_accuracy(side, spec, seed, heldout, sizes.probe_images)
    torch.manual_seed(seed)
    probe_random = probe_accuracy(VisionSide(spec).eval(), spec, seed, heldout, sizes.probe_images)
    logger.info("held-out linear-probe accuracy: pretrained %s; random vision side %s", probe, probe_random)
    write_vision(side, spec, weights, torch.Generator().manual_seed(seed))
    logger.info("LLM held-out loss %s", llm)
    report = {
        "seed": seed,
        "sizes": asdict(sizes),
        "spec": asdict(spec),
        "probe_accuracy": probe,
        "probe_accuracy_random_vision": probe_random,
        "llm": llm,
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / "world.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from minigpt4.common.logger import setup_logger

    setup_logger()
    torch.set_num_threads(1)
    make_world(args.out, seed=args.seed)


if __name__ == "__main__":
    main()
