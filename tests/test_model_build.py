"""Building MiniGPT4 from config: sizes, precision, config validation, registry surface."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError
from transformers import LlamaConfig

from minigpt4.common.registry import UnknownNameError, registry
from minigpt4.models.llm import load_llama_tokenizer
from minigpt4.models.mini_gpt4 import MiniGPT4, model_config

# LLaMA-7B as the reference's 7B Vicuna has it.
LLAMA_7B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "intermediate_size": 11008,
    "vocab_size": 32000,
}


def n_params(module: torch.nn.Module | torch.nn.Parameter) -> int:
    if isinstance(module, torch.nn.Parameter):
        return module.numel()
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def tokenizer(golden_dir: Path):
    return load_llama_tokenizer(golden_dir / "vicuna_tiny")


@pytest.fixture(scope="module")
def full_model(tokenizer) -> MiniGPT4:
    with torch.device("meta"):
        return MiniGPT4.build({}, LlamaConfig(**LLAMA_7B), tokenizer)


@pytest.mark.slow
def test_full_size_parameter_counts_match_reference(full_model):
    assert n_params(full_model.visual_encoder) == 985_894_528
    assert n_params(full_model.Qformer) == 105_137_664
    assert n_params(full_model.query_tokens) == 24_576
    assert n_params(full_model.llama_proj) == 3_149_824
    assert n_params(full_model.ln_vision) == 2 * 1408
    assert full_model.query_tokens.shape == (1, 32, 768)


def test_full_size_trains_only_the_projection(full_model):
    trainable = {name for name, p in full_model.named_parameters() if p.requires_grad}
    assert trainable == {"llama_proj.weight", "llama_proj.bias"}


def test_full_size_architecture_is_the_reference_one(full_model):
    vit = full_model.visual_encoder
    assert len(vit.blocks) == 39
    assert vit.patch_embed.grid_size == (16, 16)
    assert vit.pos_embed.shape == (1, 257, 1408)
    assert vit.blocks[0].mlp.fc1.out_features == 6144
    assert vit.blocks[0].attn.num_heads == 16
    assert vit.blocks[0].attn.qkv.bias is None
    assert full_model.ln_vision.eps == 1e-5
    assert vit.blocks[0].norm1.eps == 1e-6
    layers = full_model.Qformer.encoder.layer
    assert len(layers) == 12
    assert [i for i, layer in enumerate(layers) if layer.has_cross_attention] == [0, 2, 4, 6, 8, 10]
    assert layers[0].crossattention.attention.key.weight.shape == (768, 1408)
    assert not hasattr(layers[0], "intermediate")  # no text FFN: the reference deletes it
    assert full_model.llama_model.config._attn_implementation == "sdpa"


@pytest.mark.slow
def test_fp16_vit_keeps_norms_embeddings_and_biases_fp32(tokenizer):
    """vit_precision fp16 (what auto gives on an accelerator) halves Linear/Conv weights only, as the
    reference."""
    with torch.device("meta"):
        full_model = MiniGPT4.build({"vit_precision": "fp16"}, LlamaConfig(**LLAMA_7B), tokenizer)
    vit = full_model.visual_encoder
    block = vit.blocks[0]
    assert block.attn.qkv.weight.dtype == torch.float16
    assert block.attn.proj.weight.dtype == torch.float16
    assert block.mlp.fc1.bias.dtype == torch.float16
    assert vit.patch_embed.proj.weight.dtype == torch.float16
    for tensor in (block.norm1.weight, block.norm2.bias, vit.cls_token, vit.pos_embed, block.attn.q_bias):
        assert tensor.dtype == torch.float32
    assert block.attn.v_bias.dtype == torch.float32
    assert full_model.ln_vision.weight.dtype == torch.float32
    assert next(full_model.Qformer.parameters()).dtype == torch.float32
    assert full_model.llama_proj.weight.dtype == torch.float32


def test_build_directly_on_a_device_with_precision_keys(tokenizer):
    cfg = {
        "vit_arch": {"embed_dim": 32, "depth": 1, "num_heads": 2},
        "qformer_arch": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
        "image_size": 28,
        "num_query_token": 4,
        "vit_precision": "bf16",
        "llm_precision": "bf16",
    }
    llama = LlamaConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=600
    )
    with torch.device("cpu"):
        model = MiniGPT4.build(cfg, llama, tokenizer)
    assert model.visual_encoder.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert model.llama_model.dtype == torch.bfloat16
    assert model.llama_proj.weight.shape == (32, 32)
    assert model.prompt_list == []


def test_config_rejects_unknown_keys_and_wrong_types():
    with pytest.raises(ConfigKeyError, match="vit_precison"):
        model_config({"vit_precison": "fp32"})
    with pytest.raises(ValidationError, match="max_txt_len"):
        model_config({"max_txt_len": "long"})
    with pytest.raises(ConfigKeyError, match="depht"):
        model_config({"vit_arch": {"depht": 3}})


def test_config_defaults_are_the_reference_ones():
    cfg = model_config({})
    assert (cfg.image_size, cfg.num_query_token, cfg.max_txt_len, cfg.end_sym) == (224, 32, 32, "\n")
    assert (cfg.freeze_vit, cfg.freeze_qformer, cfg.low_resource, cfg.device_8bit) == (True, True, False, 0)
    # the reference's fp16 on an accelerator, fp32 on a CPU (tests/test_model_precision.py)
    assert cfg.vit_precision == cfg.llm_precision == "auto"
    assert cfg.q_former_model.endswith("blip2_pretrained_flant5xxl.pth")
    assert cfg.vit_weights.endswith("eva_vit_g.pth")
    with pytest.raises(Exception, match="read-only"):
        cfg.max_txt_len = 5


def test_bad_values_name_their_key(tokenizer):
    llama = LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    with torch.device("meta"), pytest.raises(ValueError, match=r"model\.vit_precision"):
        MiniGPT4.build({"vit_precision": "fp8"}, llama, tokenizer)
    with torch.device("meta"), pytest.raises(ValueError, match=r"model\.llm_precision"):
        MiniGPT4.build({"llm_precision": "half"}, llama, tokenizer)
    with torch.device("meta"), pytest.raises(ValueError, match="eva_clip_g"):
        MiniGPT4.build({"vit_model": "clip_l"}, llama, tokenizer)


def test_registry_and_default_config_path():
    assert registry.get_model_class("mini_gpt4") is MiniGPT4
    path = Path(MiniGPT4.default_config_path("pretrain_vicuna"))
    assert path.is_absolute() and path.is_file()
    default = OmegaConf.load(path)
    model_config(default.model)  # every key of the default YAML is a schema key
    assert default.preprocess.vis_processor.train.name == "blip2_image_train"
    assert default.preprocess.vis_processor.eval.image_size == 224
    with pytest.raises(UnknownNameError, match="valid: pretrain_llama2, pretrain_vicuna, pretrain_vicuna0"):
        MiniGPT4.default_config_path("pretrain_llama3")


def test_prompts_read_from_the_repository(tokenizer):
    llama = LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    cfg = {"prompt_path": "prompts/alignment.txt", "prompt_template": "###Human: {} ###Assistant: "}
    with torch.device("meta"):
        model = MiniGPT4.build(cfg, llama, tokenizer)
    assert len(model.prompt_list) == 4
    assert model.prompt_list[0] == "###Human: <Img><ImageHere></Img> Describe this image in detail. ###Assistant: "
    with torch.device("meta"), pytest.raises(FileNotFoundError, match=r"model\.prompt_path"):
        MiniGPT4.build({"prompt_path": "prompts/missing.txt"}, llama, tokenizer)
