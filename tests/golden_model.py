"""The golden parity model (tests/assets/golden/parity_v1), for every test that needs it.

``golden_model_config(golden_dir, **overrides)`` is a ``model:`` config pointing at the golden
files with the golden architecture; ``build_golden_model(golden_dir, **overrides)`` builds it
through ``MiniGPT4.from_config`` and the production loaders (fp32, CPU, eval-ready). Overrides
are ``model:`` keys, e.g. ``prompt_path=..., prompt_template=..., max_txt_len=160, end_sym="###"``;
nested ones are merged (``vit_arch={"depth": 3}`` keeps the other golden ViT sizes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from minigpt4.common.registry import registry
from minigpt4.conversation.conversation import Chat
from minigpt4.models.mini_gpt4 import MiniGPT4

# The architecture of the parity_v1 set (its README, "Architecture of this set").
GOLDEN_VIT_ARCH = {"patch_size": 14, "embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 4.3637}
GOLDEN_QFORMER_ARCH = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "cross_attention_freq": 2,
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
        "image_size": 56,
        "num_query_token": 8,
        "vit_arch": dict(GOLDEN_VIT_ARCH),
        "qformer_arch": dict(GOLDEN_QFORMER_ARCH),
        "vit_precision": "fp32",
        "llm_precision": "fp32",
    }
    return OmegaConf.merge(cfg, overrides)


def build_golden_model(golden_dir: Path, **overrides: Any) -> MiniGPT4:
    return MiniGPT4.from_config(golden_model_config(golden_dir, **overrides))


def build_golden_chat(golden_dir: Path) -> Chat:
    """The chat engine on the golden model, with the eval processor at the golden image size."""
    processor = registry.get_processor_class("blip2_image_eval").from_config({"image_size": 56})
    return Chat(build_golden_model(golden_dir).eval(), processor, device="cpu")
