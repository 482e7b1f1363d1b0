"""Tiny random MiniGPT-4 weights in the real on-disk formats, for tests and the CPU quick start.

    python tools/make_tiny_weights.py --out DIR

writes

* ``DIR/eva_vit_tiny.pth``: an ``eva_vit_g.pth``-style flat state dict of the vision tower, with
  one block more than the model uses (as the real 40-block file loaded into 39 blocks);
* ``DIR/blip2_tiny.pth``: a ``blip2_pretrained_flant5xxl.pth``-style ``{'model': ...}`` file with
  the Q-Former under its BERT names, ``query_tokens``, ``ln_vision``, and the parts MiniGPT-4
  discards (the MLM head ``cls``, word and position embeddings, text FFNs, ``t5_proj``, a copy of
  the vision tower);
* ``DIR/vicuna_tiny/``: a LLaMA folder written by ``save_pretrained`` (sharded safetensors) with a
  sentencepiece ``tokenizer.model`` trained on the fly with LLaMA's options (BPE, byte fallback,
  split digits, identity normalisation, dummy prefix; unk 0, bos 1, eos 2) and a
  ``LlamaTokenizer``-era ``tokenizer_config.json``;

and prints the ``model:`` YAML keys that describe the tiny model. Tests call
:func:`make_tiny_weights` to make variants (other image sizes, other widths).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

# Run as ``python tools/make_tiny_weights.py``, the repository root is not on the import path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minigpt4.common.cli import add_debug_argument, run_main
from minigpt4.common.schema import QFormerArch, VitArch

# The architecture of the golden parity set, small enough for a ~0.01 s training step on a CPU.
TINY_VIT_ARCH = VitArch(patch_size=14, embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.3637)
TINY_QFORMER_ARCH = QFormerArch(
    hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128, cross_attention_freq=2
)


@dataclass
class TinySpec:
    """What to write. The defaults are the golden parity set's architecture."""

    image_size: int = 56
    vit_arch: VitArch = field(default_factory=lambda: replace(TINY_VIT_ARCH))
    qformer_arch: QFormerArch = field(default_factory=lambda: replace(TINY_QFORMER_ARCH))
    num_query_token: int = 8
    llm_hidden_size: int = 64
    llm_intermediate_size: int = 128
    llm_layers: int = 2
    llm_heads: int = 4
    vocab_size: int = 1000
    seed: int = 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to write the weights into")
    parser.add_argument(
        "--image-size", type=int, default=TinySpec.image_size, help=f"image side (default: {TinySpec.image_size})"
    )
    parser.add_argument("--seed", type=int, default=TinySpec.seed, help=f"seeds the weights (default: {TinySpec.seed})")
    add_debug_argument(parser)
    return parser.parse_args()


if __name__ == "__main__":
    parse_args()  # --help and a bad option answer before torch and transformers load

# ruff: noqa: E402 (the heavy imports come after that early parse on purpose)
import sentencepiece as spm
import torch
from omegaconf import OmegaConf
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from minigpt4.models.eva_vit import build_eva_vit
from minigpt4.models.qformer import build_qformer, ours_to_blip2

# Sizes of the BERT parts that MiniGPT-4 discards (any values do; these are the golden set's).
BERT_VOCAB = 128
BERT_POSITIONS = 64
T5_WIDTH = 96

CORPUS_LINES = 4000
EMBEDDING_TABLES = ("pos_embed", "cls_token", "query_tokens", "embed_tokens.weight")

_WORDS = (
    "a an the this that its of in on at to with and or while next near behind under over around "
    "woman man child person astronaut cat dog bird horse car bus train plane boat flag window door "
    "floor table chair wall tree grass road street city field beach mountain sky sun cloud water "
    "orange white black red green blue yellow brown gray striped bright dark warm cold sunny long "
    "short small large old young wooden smiling sitting standing lying looking walking running "
    "holding wearing eyes tail paws face hands suit helmet light afternoon morning evening night "
    "picture photo image scene view close up background front left right side top bottom is are "
    "shows has there looks straight camera curls detailed description describe notice contents"
)
_PROMPTS = (
    "###Human: <Img><ImageHere></Img> Describe this image in detail. ###Assistant: ",
    "###Human: <Img><ImageHere></Img> Take a look at this image and describe what you notice. ###Assistant: ",
    "###Human: <Img><ImageHere></Img> Please provide a detailed description of the picture. ###Assistant: ",
    "###Human: <Img><ImageHere></Img> Could you describe the contents of this image for me? ###Assistant: ",
    "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide "
    "it to you. Please answer my questions.###Human: What is in this image?###Assistant: It shows 3 cats.",
)


@dataclass
class TinyWeights:
    """The files written and the ``model:`` keys that point at them."""

    vit_weights: Path
    q_former_model: Path
    llama_model: Path
    spec: TinySpec

    def model_config(self) -> dict:
        return {
            "vit_weights": str(self.vit_weights),
            "q_former_model": str(self.q_former_model),
            "llama_model": str(self.llama_model),
            "image_size": self.spec.image_size,
            "num_query_token": self.spec.num_query_token,
            "vit_arch": asdict(self.spec.vit_arch),
            "qformer_arch": asdict(self.spec.qformer_arch),
            "vit_precision": "fp32",
            "llm_precision": "fp32",
        }


@torch.no_grad()
def randomize(module: nn.Module, generator: torch.Generator) -> None:
    """Seeded values at scales that keep activations of order one, so that a mis-mapped key
    visibly changes outputs: matrices N(0, 1/fan_in), norm weights 1 + 0.1 N, biases and
    embeddings 0.1 N and 0.5 N."""
    for name, param in module.named_parameters():
        noise = torch.randn(param.shape, generator=generator)
        if param.dim() >= 2 and not name.endswith(EMBEDDING_TABLES):
            param.copy_(noise / math.sqrt(param[0].numel()))
        elif "norm" in name.lower() and name.endswith("weight"):
            param.copy_(1 + 0.1 * noise)
        elif param.dim() == 1:
            param.copy_(0.1 * noise)
        else:
            param.copy_(0.5 * noise)


def _normal(generator: torch.Generator, *shape: int, std: float) -> torch.Tensor:
    return std * torch.randn(shape, generator=generator)


def write_eva(spec: TinySpec, path: Path, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The vision tower with one extra block, as a flat state dict; returns the used blocks' part."""
    deeper = replace(spec.vit_arch, depth=spec.vit_arch.depth + 1)
    vit = build_eva_vit(deeper, spec.image_size, 0.0, False, torch.float32)
    randomize(vit, generator)
    state = vit.state_dict()
    torch.save(state, path)
    extra_block = f"blocks.{spec.vit_arch.depth}."
    return {key: value for key, value in state.items() if not key.startswith(extra_block)}


def write_blip2(spec: TinySpec, path: Path, vision: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    arch = spec.qformer_arch
    width, hidden, inner = spec.vit_arch.embed_dim, arch.hidden_size, arch.intermediate_size
    qformer, query_tokens = build_qformer(arch, spec.num_query_token, width)
    randomize(qformer, generator)
    state = {"query_tokens": _normal(generator, *query_tokens.shape, std=0.5)}
    state.update({f"visual_encoder.{key}": value for key, value in vision.items()})
    state["ln_vision.weight"] = 1 + _normal(generator, width, std=0.1)
    state["ln_vision.bias"] = _normal(generator, width, std=0.1)
    state.update({ours_to_blip2(f"Qformer.{key}"): value for key, value in qformer.state_dict().items()})
    # The text branch of the Q-Former, which MiniGPT-4 discards.
    bert = "Qformer.bert."
    state[bert + "embeddings.word_embeddings.weight"] = _normal(generator, BERT_VOCAB, hidden, std=0.5)
    state[bert + "embeddings.position_embeddings.weight"] = _normal(generator, BERT_POSITIONS, hidden, std=0.5)
    state[bert + "embeddings.position_ids"] = torch.arange(BERT_POSITIONS).unsqueeze(0)
    for layer in range(arch.num_hidden_layers):
        prefix = f"{bert}encoder.layer.{layer}."
        state[prefix + "intermediate.dense.weight"] = _normal(generator, inner, hidden, std=hidden**-0.5)
        state[prefix + "intermediate.dense.bias"] = _normal(generator, inner, std=0.1)
        state[prefix + "output.dense.weight"] = _normal(generator, hidden, inner, std=inner**-0.5)
        state[prefix + "output.dense.bias"] = _normal(generator, hidden, std=0.1)
        state[prefix + "output.LayerNorm.weight"] = 1 + _normal(generator, hidden, std=0.1)
        state[prefix + "output.LayerNorm.bias"] = _normal(generator, hidden, std=0.1)
    head = "Qformer.cls.predictions."
    state[head + "transform.dense.weight"] = _normal(generator, hidden, hidden, std=hidden**-0.5)
    state[head + "transform.dense.bias"] = _normal(generator, hidden, std=0.1)
    state[head + "transform.LayerNorm.weight"] = 1 + _normal(generator, hidden, std=0.1)
    state[head + "transform.LayerNorm.bias"] = _normal(generator, hidden, std=0.1)
    # The prediction head's decoder is tied to the word embeddings, as in BERT.
    state[head + "decoder.weight"] = state[bert + "embeddings.word_embeddings.weight"]
    state[head + "bias"] = _normal(generator, BERT_VOCAB, std=0.1)
    state[head + "decoder.bias"] = state[head + "bias"]
    state["t5_proj.weight"] = _normal(generator, T5_WIDTH, hidden, std=hidden**-0.5)
    state["t5_proj.bias"] = _normal(generator, T5_WIDTH, std=0.1)
    torch.save({"model": state}, path)


def tokenizer_corpus(seed: int) -> list[str]:
    """Caption-like sentences over a small vocabulary, plus the prompts MiniGPT-4 uses."""
    rng = random.Random(seed)
    words = _WORDS.split()
    corpus = list(_PROMPTS) * 20
    for _ in range(CORPUS_LINES):
        sentence = " ".join(rng.choices(words, k=rng.randint(4, 16)))
        end = rng.choice([".", "", "!", "?", ".###", f" {rng.randint(0, 999)}."])
        corpus.append(sentence.capitalize() + end)
    return corpus


def write_tokenizer(folder: Path, vocab_size: int, seed: int, corpus: list[str] | None = None) -> int:
    """Train the sentencepiece model into ``folder`` with LLaMA's options, on ``corpus`` (by
    default :func:`tokenizer_corpus`); returns its size."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus if corpus is not None else tokenizer_corpus(seed)),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "sp_model_kwargs": {},
        **special,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()


def llama_config(vocab_size: int, max_position_embeddings: int, **shape: int) -> LlamaConfig:
    """A LLaMA/Vicuna config of the given ``shape`` (``hidden_size``, ``intermediate_size``,
    ``num_hidden_layers``, ``num_attention_heads``) with LLaMA's norm epsilon and special ids."""
    return LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        **shape,
    )


def tiny_llm_shape(spec: TinySpec) -> dict[str, int]:
    return {
        "hidden_size": spec.llm_hidden_size,
        "intermediate_size": spec.llm_intermediate_size,
        "num_hidden_layers": spec.llm_layers,
        "num_attention_heads": spec.llm_heads,
    }


def write_llama(spec: TinySpec, folder: Path, generator: torch.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(folder, spec.vocab_size, spec.seed)
    llama = LlamaForCausalLM(llama_config(vocab, 512, **tiny_llm_shape(spec)))
    randomize(llama, generator)
    llama.save_pretrained(folder, max_shard_size="200KB")


def make_tiny_weights(out: Path, spec: TinySpec | None = None) -> TinyWeights:
    """Write the three weight locations of a tiny MiniGPT-4 into ``out``."""
    spec = spec or TinySpec()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(spec.seed)
    weights = TinyWeights(out / "eva_vit_tiny.pth", out / "blip2_tiny.pth", out / "vicuna_tiny", spec)
    vision = write_eva(spec, weights.vit_weights, generator)
    write_blip2(spec, weights.q_former_model, vision, generator)
    write_llama(spec, weights.llama_model, generator)
    return weights


def main() -> None:
    args = parse_args()
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # save_pretrained's "Writing model shards" bar
    weights = make_tiny_weights(args.out, TinySpec(image_size=args.image_size, seed=args.seed))
    sys.stdout.write(OmegaConf.to_yaml({"model": weights.model_config()}))


if __name__ == "__main__":
    run_main(main, "tools/make_tiny_weights.py")
