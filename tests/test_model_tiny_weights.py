"""tools/make_tiny_weights.py writes the real on-disk formats, which the production loaders read."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaTokenizer

from minigpt4.models.mini_gpt4 import MiniGPT4
from tools.make_tiny_weights import TinySpec, main, make_tiny_weights


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_weights(tmp_path_factory.mktemp("tiny"))


def test_files_have_the_golden_key_layout(tiny, golden_dir: Path):
    """Same architecture as the golden set, so the same keys, shapes and file structure."""
    golden_eva = torch.load(golden_dir / "eva_vit_tiny.pth", weights_only=True)
    eva = torch.load(tiny.vit_weights, weights_only=True)
    assert {k: v.shape for k, v in eva.items()} == {k: v.shape for k, v in golden_eva.items()}
    golden_blip2 = torch.load(golden_dir / "blip2_tiny.pth", weights_only=True)
    blip2 = torch.load(tiny.q_former_model, weights_only=True)
    assert list(blip2) == ["model"]
    assert {k: v.shape for k, v in blip2["model"].items()} == {k: v.shape for k, v in golden_blip2["model"].items()}
    # the vision tower copy in the BLIP-2 file equals the eva file's used blocks
    for key, value in blip2["model"].items():
        if key.startswith("visual_encoder."):
            assert torch.equal(value, eva[key.removeprefix("visual_encoder.")])


def test_vicuna_folder_is_a_transformers_llama_folder(tiny):
    folder = tiny.llama_model
    assert (folder / "config.json").is_file()
    assert (folder / "model.safetensors.index.json").is_file()
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "LlamaTokenizer"
    tokenizer = LlamaTokenizer.from_pretrained(folder, local_files_only=True)
    assert 900 <= len(tokenizer) <= 1000
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.convert_ids_to_tokens([3, 13, 258]) == ["<0x00>", "<0x0A>", "<0xFF>"]
    assert tokenizer("a cat", add_special_tokens=False).input_ids[0] != 0
    assert tokenizer("\n", add_special_tokens=False).input_ids[-1] == 13
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == len(tokenizer)


def test_from_config_reads_the_tiny_weights(tiny):
    model = MiniGPT4.from_config(tiny.model_config()).train()
    eva = torch.load(tiny.vit_weights, weights_only=True)
    assert torch.equal(model.visual_encoder.blocks[1].attn.qkv.weight, eva["blocks.1.attn.qkv.weight"])
    images = torch.randn(2, 3, 56, 56)
    out = model({"image": images, "text_input": ["a cat on a mat", "a dog"]})
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.llama_proj.weight.grad is not None


def test_variants_and_determinism(tmp_path: Path, tiny):
    spec = TinySpec(image_size=28, llm_hidden_size=32, llm_intermediate_size=64, llm_heads=2)
    variant = make_tiny_weights(tmp_path, spec)
    eva = torch.load(variant.vit_weights, weights_only=True)
    assert eva["pos_embed"].shape == (1, 1 + 2 * 2, 64)
    assert json.loads((variant.llama_model / "config.json").read_text())["hidden_size"] == 32
    # the same seed writes the same numbers
    first = torch.load(tiny.q_former_model, weights_only=True)["model"]
    again = torch.load(make_tiny_weights(tmp_path / "again").q_former_model, weights_only=True)["model"]
    assert all(torch.equal(first[key], again[key]) for key in first)


def test_cli_prints_the_yaml_keys(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["make_tiny_weights.py", "--out", str(tmp_path), "--seed", "1"])
    main()
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.model.vit_weights == str(tmp_path / "eva_vit_tiny.pth")
    assert printed.model.q_former_model == str(tmp_path / "blip2_tiny.pth")
    assert printed.model.llama_model == str(tmp_path / "vicuna_tiny")
    assert printed.model.vit_arch.depth == 2 and printed.model.qformer_arch.num_hidden_layers == 4
    assert (printed.model.image_size, printed.model.num_query_token) == (56, 8)
    assert (tmp_path / "vicuna_tiny" / "tokenizer.model").is_file()
