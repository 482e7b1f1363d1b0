"""Where MiniGPT4 computes in what precision, and where its parts live in low_resource mode.

``vit_precision``/``llm_precision: auto`` follow the device the model runs on: half precision on an
accelerator (the reference's fp16 for the ViT), fp32 on a CPU. ``low_resource`` keeps the vision
tower on the CPU in fp32 and the 8-bit LLM on its GPU whatever the model is moved to; CUDA and
bitsandbytes are not here, so the 8-bit load is stood in for by a plain load and the placement logic
is checked by moving the model to the meta device.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from golden_model import golden_model_config
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import LlamaConfig

from minigpt4.models import mini_gpt4
from minigpt4.models.llm import load_llama_tokenizer
from minigpt4.models.mini_gpt4 import MiniGPT4, llm_dtype, model_config, vit_dtype

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)
TINY_LLAMA = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
TINY = {
    "vit_arch": {"embed_dim": 32, "depth": 1, "num_heads": 2},
    "qformer_arch": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "image_size": 28,
    "num_query_token": 4,
}


def returning(value):
    return lambda *_args, **_kwargs: value


@pytest.fixture(scope="module")
def tensors(golden_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(golden_dir / "expected.safetensors")


@pytest.fixture(scope="module")
def tokenizer(golden_dir: Path):
    return load_llama_tokenizer(golden_dir / "vicuna_tiny")


def test_auto_is_half_on_accelerators_and_fp32_on_a_cpu(monkeypatch):
    cfg = model_config({})
    assert cfg.vit_precision == cfg.llm_precision == "auto"
    assert vit_dtype(cfg, CPU) == llm_dtype(cfg, CPU) == torch.float32
    assert vit_dtype(cfg, CUDA) == torch.float16  # the reference's ViT
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", returning(True))
    assert llm_dtype(cfg, CUDA) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", returning(False))
    assert llm_dtype(cfg, CUDA) == torch.float16


def test_explicit_precisions_hold_on_any_device():
    cfg = model_config({"vit_precision": "bf16", "llm_precision": "fp16"})
    assert vit_dtype(cfg, CPU) == vit_dtype(cfg, CUDA) == torch.bfloat16
    assert llm_dtype(cfg, CPU) == torch.float16
    assert vit_dtype(model_config({"vit_precision": "fp32"}), CUDA) == torch.float32


def test_low_resource_runs_the_vision_tower_in_fp32_but_still_checks_the_key():
    assert vit_dtype(model_config({"vit_precision": "fp16", "low_resource": True}), CUDA) == torch.float32
    with pytest.raises(ValueError, match=r"model\.vit_precision"):
        vit_dtype(model_config({"vit_precision": "fp8", "low_resource": True}), CUDA)


def test_the_default_model_yaml_leaves_the_precision_to_the_device():
    default = OmegaConf.load(MiniGPT4.default_config_path("pretrain_vicuna"))
    assert default.model.vit_precision == "auto"


@pytest.mark.parametrize(
    ("machine", "vit", "llm"),
    [(CPU, torch.float32, torch.float32), (CUDA, torch.float16, torch.float16)],
)
def test_build_chooses_for_the_machine(monkeypatch, tokenizer, machine, vit, llm):
    monkeypatch.setattr(mini_gpt4, "resolve_device", returning(machine))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", returning(False))
    with torch.device("meta"):
        model = MiniGPT4.build(TINY, LlamaConfig(**TINY_LLAMA), tokenizer)
    block = model.visual_encoder.blocks[0]
    assert block.attn.qkv.weight.dtype == model.vit_dtype == vit
    assert block.norm1.weight.dtype == model.visual_encoder.pos_embed.dtype == torch.float32
    assert model.llama_model.dtype == model.llm_dtype == llm


def test_from_config_for_the_cpu_computes_in_fp32_on_a_machine_with_a_gpu(golden_dir, monkeypatch, tensors):
    """``auto`` follows the device the model is built for, not the machine's accelerator; on a CPU
    that is fp32, and the golden numbers come out as with fp32 written in the config."""
    monkeypatch.setattr(mini_gpt4, "resolve_device", returning(CUDA))
    cfg = golden_model_config(golden_dir, vit_precision="auto", llm_precision="auto")
    model = MiniGPT4.from_config(cfg, device="cpu").eval()
    assert model.vit_dtype == model.llm_dtype == torch.float32
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    with torch.no_grad():
        inputs_llama, _ = model.encode_img(tensors["images.eval"])
    torch.testing.assert_close(inputs_llama, tensors["encode.inputs_llama"], rtol=1e-5, atol=1e-5)


@pytest.fixture
def no_8bit(monkeypatch) -> None:
    """``low_resource`` loads the LLM as usual, not in 8 bit (which needs CUDA and bitsandbytes)."""
    real_load = mini_gpt4.load_llama
    monkeypatch.setattr(
        mini_gpt4,
        "load_llama",
        lambda folder, dtype, _8bit, index, tokenizer: real_load(folder, dtype, False, index, tokenizer),
    )


@pytest.fixture
def low_resource_model(golden_dir: Path, no_8bit) -> MiniGPT4:
    """The golden model with ``low_resource: True`` and ``vit_precision: fp16`` asked for."""
    cfg = golden_model_config(golden_dir, low_resource=True, vit_precision="fp16")
    return MiniGPT4.from_config(cfg).eval()


def test_low_resource_encodes_in_fp32_on_the_cpu(low_resource_model, tensors):
    model = low_resource_model
    assert model.visual_encoder.blocks[0].attn.qkv.weight.dtype == torch.float32  # the reference's vit_to_cpu
    with torch.no_grad():
        inputs_llama, _ = model.encode_img(tensors["images.eval"])
    torch.testing.assert_close(inputs_llama, tensors["encode.inputs_llama"], rtol=1e-5, atol=1e-5)


def test_moving_a_low_resource_model_leaves_the_vision_tower_and_the_llm_in_place(low_resource_model, monkeypatch):
    model = low_resource_model
    touched = []
    for name in MiniGPT4.LOW_RESOURCE_PINNED:
        part = getattr(model, name)
        monkeypatch.setattr(part, "_apply", lambda *_args, name=name, **_kwargs: touched.append(name))
    assert model.to("meta") is model
    model.half()
    assert touched == []  # bitsandbytes weights are never moved nor cast
    for part in (model.Qformer, model.llama_proj):
        assert {(p.device.type, p.dtype) for p in part.parameters()} == {("meta", torch.float16)}
    assert (model.query_tokens.device.type, model.query_tokens.dtype) == ("meta", torch.float16)
    for name in ("visual_encoder", "ln_vision"):
        assert {(p.device.type, p.dtype) for p in getattr(model, name).parameters()} == {("cpu", torch.float32)}
    assert {p.device.type for p in model.llama_model.parameters()} == {"cpu"}


def test_moving_a_model_moves_every_part_without_low_resource(tokenizer):
    with torch.device("meta"):
        model = MiniGPT4.build(TINY, LlamaConfig(**TINY_LLAMA), tokenizer)
    model.to_empty(device="cpu").half()
    assert {p.dtype for p in model.parameters()} == {torch.float16}


def test_a_low_resource_model_must_run_where_its_8bit_llm_is(golden_dir: Path, no_8bit):
    cfg = golden_model_config(golden_dir, low_resource=True)
    assert MiniGPT4.from_config(cfg, device="cpu").llama_proj.weight.device.type == "cpu"
    with pytest.raises(ValueError, match=r"the 8-bit LLM was loaded onto cpu .* run on meta; set model\.device_8bit"):
        MiniGPT4.from_config(cfg, device="meta")
