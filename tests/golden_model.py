"""The golden parity model (a set under tests/assets/golden/), for every test that needs it.

``golden_model_config(golden_dir, **overrides)`` is a ``model:`` config pointing at the golden
files with the golden architecture; ``build_golden_model(golden_dir, **overrides)`` builds it
through ``MiniGPT4.from_config`` and the production loaders (fp32, CPU, eval-ready). Overrides
are ``model:`` keys, e.g. ``prompt_path=..., prompt_template=..., max_txt_len=160, end_sym="###"``;
nested ones are merged (``vit_arch={"depth": 3}`` keeps the other golden ViT sizes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from minigpt4.common.registry import registry
from minigpt4.conversation.conversation import Chat
from minigpt4.models.mini_gpt4 import MiniGPT4


def golden_arch(golden_dir: Path) -> dict[str, Any]:
    """The ``model:`` keys of a golden set's architecture, read from its expected.json (``arch``),
    so that every golden set is built by the same code."""
    arch = json.loads((Path(golden_dir) / "expected.json").read_text())["arch"]
    vision, bert, extra = arch["vision"], arch["qformer_bert_config"], arch["qformer_extra"]
    return {
        "image_size": vision["img_size"],
        "num_query_token": extra["query_length"],
        "vit_arch": {key: vision[key] for key in ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")},
        "qformer_arch": {
            **{key: bert[key] for key in ("hidden_size", "num_hidden_layers", "num_attention_heads")},
            "intermediate_size": bert["intermediate_size"],
            "cross_attention_freq": extra["cross_attention_freq"],
        },
    }


def golden_model_config(golden_dir: Path, **overrides: Any) -> DictConfig:
    golden_dir = Path(golden_dir)
    cfg = {
        "arch": "mini_gpt4",
        "model_type": "pretrain_vicuna",
        "vit_weights": str(golden_dir / "eva_vit_tiny.pth"),
        "q_former_model": str(golden_dir / "blip2_tiny.pth"),
        "llama_model": str(golden_dir / "vicuna_tiny"),
        "ckpt": str(golden_dir / "minigpt4_tiny.pth"),
        **golden_arch(golden_dir),
        "vit_precision": "fp32",
        "llm_precision": "fp32",
    }
    return OmegaConf.merge(cfg, overrides)


def build_golden_model(golden_dir: Path, **overrides: Any) -> MiniGPT4:
    return MiniGPT4.from_config(golden_model_config(golden_dir, **overrides))


def build_golden_chat(golden_dir: Path) -> Chat:
    """The chat engine on the golden model, with the eval processor at the golden image size."""
    processor = registry.get_processor_class("blip2_image_eval").from_config(
        {"image_size": golden_arch(golden_dir)["image_size"]}
    )
    return Chat(build_golden_model(golden_dir).eval(), processor, device="cpu")
