"""The Vicuna folder loader and the MiniGPT-4 checkpoint loader, with their error messages."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from golden_model import build_golden_model, golden_model_config

from minigpt4.models.llm import llama_folder, load_llama, load_llama_tokenizer
from minigpt4.models.loaders import WeightLoadError
from minigpt4.models.mini_gpt4 import MiniGPT4, explain_checkpoint_shape, load_minigpt4_checkpoint
from tools.make_tiny_weights import TinySpec, make_tiny_weights


@pytest.fixture(scope="module")
def model(golden_dir: Path) -> MiniGPT4:
    return build_golden_model(golden_dir)


def edited_vicuna(golden_dir: Path, target: Path, edit) -> Path:
    """A copy of the golden Vicuna folder whose shard holding model.norm.weight went through ``edit``."""
    shutil.copytree(golden_dir / "vicuna_tiny", target)
    index_path = target / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    shard = target / index["weight_map"]["model.norm.weight"]
    state = torch.load(shard, weights_only=True)
    edit(state, index["weight_map"], shard.name)
    torch.save(state, shard)
    index_path.write_text(json.dumps(index))
    return target


# --- the Vicuna folder ----------------------------------------------------------------------


def test_vicuna_folder_with_2023_inv_freq_buffers_loads(golden_dir: Path):
    shard = torch.load(golden_dir / "vicuna_tiny" / "pytorch_model-00001-of-00002.bin", weights_only=True)
    assert any(key.endswith("rotary_emb.inv_freq") for key in shard)
    llama = load_llama(golden_dir / "vicuna_tiny", torch.float32, low_resource=False, device_8bit=0)
    assert torch.equal(llama.model.embed_tokens.weight, shard["model.embed_tokens.weight"])
    assert not llama.training
    assert not any(p.requires_grad for p in llama.parameters())


def test_vicuna_folder_problems_are_reported(golden_dir: Path, tmp_path: Path):
    def drop(state, weight_map, _shard):
        del state["model.norm.weight"], weight_map["model.norm.weight"]

    def add(state, weight_map, shard):
        state["model.extra.weight"] = torch.zeros(3)
        weight_map["model.extra.weight"] = shard

    def shrink(state, _weight_map, _shard):
        state["model.norm.weight"] = torch.zeros(32)

    with pytest.raises(WeightLoadError, match=r"missing: model\.norm\.weight"):
        load_llama(edited_vicuna(golden_dir, tmp_path / "missing", drop), torch.float32, False, 0)
    with pytest.raises(WeightLoadError, match=r"unexpected: model\.extra\.weight"):
        load_llama(edited_vicuna(golden_dir, tmp_path / "unexpected", add), torch.float32, False, 0)
    with pytest.raises(WeightLoadError, match=re.escape("model.norm.weight: the folder has shape [32], config.json")):
        load_llama(edited_vicuna(golden_dir, tmp_path / "shape", shrink), torch.float32, False, 0)


def test_llama_model_must_be_a_local_folder(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="is not a Vicuna/LLaMA folder"):
        llama_folder("lmsys/vicuna-7b-v0")
    with pytest.raises(FileNotFoundError, match=r"model\.llama_model is empty"):
        llama_folder("")
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        llama_folder(str(tmp_path))


def test_tokenizer_gets_the_reference_settings(golden_dir: Path):
    tokenizer = load_llama_tokenizer(golden_dir / "vicuna_tiny")
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert tokenizer.padding_side == "right"
    # legacy sentencepiece behaviour: text after a special token gets a fresh dummy prefix
    assert tokenizer.convert_ids_to_tokens(tokenizer("a</s>b", add_special_tokens=False).input_ids) == [
        "\u2581a",
        "</s>",
        "\u2581b",
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where 8-bit cannot run")
def test_low_resource_fails_clearly_without_cuda(golden_dir: Path):
    with pytest.raises(RuntimeError, match="low_resource: True"):
        load_llama(golden_dir / "vicuna_tiny", torch.float16, low_resource=True, device_8bit=0)


# --- MiniGPT-4 checkpoints ------------------------------------------------------------------


def test_released_projection_file_loads(model, golden_dir: Path):
    file = torch.load(golden_dir / "minigpt4_tiny.pth", weights_only=True)["model"]
    assert set(file) == {"llama_proj.weight", "llama_proj.bias"}
    assert torch.equal(model.llama_proj.weight, file["llama_proj.weight"])
    assert torch.equal(model.llama_proj.bias, file["llama_proj.bias"])


def test_reference_runner_checkpoint_buffers_are_dropped(golden_dir: Path):
    model = build_golden_model(golden_dir, ckpt="")
    load_minigpt4_checkpoint(model, golden_dir / "checkpoint_0.pth")
    file = torch.load(golden_dir / "checkpoint_0.pth", weights_only=True)["model"]
    assert "Qformer.bert.embeddings.position_ids" in file
    assert torch.equal(model.llama_proj.weight, file["llama_proj.weight"])


@pytest.mark.slow
def test_our_runner_checkpoints_load_with_unfrozen_parts(golden_dir: Path, tmp_path: Path):
    """Trainable parameters and buffers under this model's names, as this project's runner saves
    them; here with an unfrozen Q-Former."""
    trained = build_golden_model(golden_dir, freeze_qformer=False)
    with torch.no_grad():
        for param in trained.parameters():
            if param.requires_grad:
                param.add_(1.0)
    trainable = {name for name, p in trained.named_parameters() if p.requires_grad}
    buffers = {name for name, _ in trained.named_buffers()}
    state = {k: v for k, v in trained.state_dict().items() if k in trainable | buffers}
    assert "Qformer.encoder.layer.0.attention.attention.query.weight" in state
    path = tmp_path / "checkpoint_3.pth"
    torch.save({"model": state, "optimizer": {}, "epoch": 3}, path)
    fresh = MiniGPT4.from_config(golden_model_config(golden_dir, freeze_qformer=False, ckpt=str(path)))
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_reference_named_qformer_parameters_in_a_checkpoint_are_mapped(golden_dir: Path, tmp_path: Path):
    model = build_golden_model(golden_dir)
    weight = torch.randn(64, 64)
    path = tmp_path / "ref.pth"
    projection = torch.load(golden_dir / "minigpt4_tiny.pth", weights_only=True)["model"]
    torch.save({"model": {**projection, "Qformer.bert.encoder.layer.0.attention.self.query.weight": weight}}, path)
    load_minigpt4_checkpoint(model, path)
    assert torch.equal(model.Qformer.encoder.layer[0].attention.attention.query.weight, weight)


def test_checkpoint_errors(model, golden_dir: Path, tmp_path: Path):
    projection = torch.load(golden_dir / "minigpt4_tiny.pth", weights_only=True)["model"]
    cases = {
        "flat.pth": (projection, "expected a dict with a 'model' entry"),
        "no_bias.pth": (
            {"model": {"llama_proj.weight": projection["llama_proj.weight"]}},
            r"missing .*llama_proj\.bias",
        ),
        "unknown.pth": ({"model": {**projection, "t5_proj.weight": torch.zeros(1)}}, r"unexpected .*t5_proj\.weight"),
    }
    for name, (content, message) in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(WeightLoadError, match=message):
            load_minigpt4_checkpoint(model, tmp_path / name)


def test_projection_for_another_llm_width_is_explained(golden_dir: Path, tmp_path: Path):
    wider = make_tiny_weights(tmp_path, TinySpec(llm_hidden_size=96, llm_intermediate_size=128))
    cfg = {**wider.model_config(), "ckpt": str(golden_dir / "minigpt4_tiny.pth")}
    with pytest.raises(WeightLoadError) as error:
        MiniGPT4.from_config(cfg)
    assert "llama_proj was trained for hidden size 64 (an LLM of width 64) but the LLM has 96" in str(error.value)
    assert explain_checkpoint_shape("llama_proj.weight", (5120, 768), (4096, 768)) == (
        "llama_proj was trained for hidden size 5120 (a 13B LLM) but the LLM has 4096 (a 7B LLM)"
    )
    assert explain_checkpoint_shape("llama_proj.weight", (4096, 64), (4096, 768)) == (
        "llama_proj was trained on a Q-Former of width 64; qformer_arch.hidden_size is 768"
    )
