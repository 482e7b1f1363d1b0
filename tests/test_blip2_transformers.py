"""BLIP-2's vision side from a transformers ``Blip2`` folder: a tiny ``Blip2ForConditionalGeneration``
with the golden architecture, holding the golden weights (copied in through the key mapping
inverted), saved with ``save_pretrained`` and loaded through ``MiniGPT4.from_config``, reproduces
the golden image embeddings (tolerance of tests/test_golden_parity.py)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from golden_model import build_golden_model, golden_arch, golden_model_config
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import Blip2Config, Blip2ForConditionalGeneration

from minigpt4.models.blip2_hf import (
    arch_mismatches,
    file_shapes,
    fused_qkv_bias,
    ours_to_transformers,
    read_blip2_config,
    transformers_to_ours,
    weight_files,
)
from minigpt4.models.loaders import WeightLoadError
from minigpt4.models.mini_gpt4 import model_config
from minigpt4.tasks.image_text_pretrain import ImageTextPretrainTask

EMBED_TOL = {"rtol": 1e-5, "atol": 1e-5}


def golden_vision_state(golden_dir: Path) -> dict[str, torch.Tensor]:
    """The golden visual_encoder, ln_vision, Qformer and query_tokens, under MiniGPT-4's names, as
    the production loaders read them from the golden eva and BLIP-2 files."""
    model = build_golden_model(golden_dir)
    parts = ("visual_encoder.", "ln_vision.", "Qformer.", "query_tokens")
    return {key: value.clone() for key, value in model.state_dict().items() if key.startswith(parts)}


def tiny_blip2_config(golden_dir: Path) -> Blip2Config:
    arch = golden_arch(golden_dir)
    vit, qformer = arch["vit_arch"], arch["qformer_arch"]
    return Blip2Config(
        vision_config={
            "hidden_size": vit["embed_dim"],
            "intermediate_size": int(vit["embed_dim"] * vit["mlp_ratio"]),
            "num_hidden_layers": vit["depth"],
            "num_attention_heads": vit["num_heads"],
            "image_size": arch["image_size"],
            "patch_size": vit["patch_size"],
            "layer_norm_eps": 1e-6,
        },
        qformer_config={
            "hidden_size": qformer["hidden_size"],
            "num_hidden_layers": qformer["num_hidden_layers"],
            "num_attention_heads": qformer["num_attention_heads"],
            "intermediate_size": qformer["intermediate_size"],
            "cross_attention_frequency": qformer["cross_attention_freq"],
            "encoder_hidden_size": vit["embed_dim"],
        },
        text_config={
            "model_type": "llama",
            "vocab_size": 100,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        num_query_tokens=arch["num_query_token"],
    )


def to_transformers(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our weights under transformers' names, the attention bias in the fused layout."""
    theirs = {ours_to_transformers(key): value for key, value in ours.items() if not key.endswith(("q_bias", "v_bias"))}
    for key, q_bias in ours.items():
        if key.endswith(".attn.q_bias"):
            fused = ours_to_transformers(key).replace("q_bias", "qkv.bias")
            theirs[fused] = fused_qkv_bias(q_bias, ours[key.replace("q_bias", "v_bias")])
    return theirs


@pytest.fixture(scope="module")
def golden_state(golden_dir: Path) -> dict[str, torch.Tensor]:
    return golden_vision_state(golden_dir)


@pytest.fixture(scope="module")
def blip2_folder(golden_dir: Path, golden_state, tmp_path_factory) -> Path:
    """A transformers Blip2 folder holding the golden vision side (written by save_pretrained)."""
    hf = Blip2ForConditionalGeneration(tiny_blip2_config(golden_dir))
    theirs = to_transformers(golden_state)
    hf_state = hf.state_dict()
    assert set(theirs) == {k for k in hf_state if not k.startswith(("language_model.", "language_projection."))}
    hf.load_state_dict(theirs, strict=False)
    folder = tmp_path_factory.mktemp("blip2") / "blip2-tiny"
    hf.save_pretrained(folder, safe_serialization=True)
    assert (folder / "model.safetensors").is_file()
    return folder


@pytest.fixture(scope="module")
def golden_encode(golden_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(golden_dir / "expected.safetensors")


def encode(model, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    image = tensors["images.eval"]
    with torch.no_grad():
        vit_out = model.visual_encoder.forward_features(image)
        return {
            "encode.vit_out": vit_out,
            "encode.ln_vision_out": model.ln_vision(vit_out),
            "encode.inputs_llama": model.eval().encode_img(image)[0],
        }


def assert_golden(model, tensors: dict[str, torch.Tensor]) -> None:
    for name, value in encode(model, tensors).items():
        torch.testing.assert_close(value, tensors[name], **EMBED_TOL, msg=name)


def test_the_mapping_covers_the_transformers_model_both_ways(golden_state):
    for key in golden_state:
        theirs = ours_to_transformers(key)
        assert theirs is not None and transformers_to_ours(theirs) == key, key
    assert ours_to_transformers("visual_encoder.blocks.1.attn.proj.weight") == (
        "vision_model.encoder.layers.1.self_attn.projection.weight"
    )
    assert ours_to_transformers("ln_vision.bias") == "vision_model.post_layernorm.bias"
    assert transformers_to_ours("language_model.model.embed_tokens.weight") is None


def test_a_transformers_blip2_folder_gives_the_golden_embeddings(golden_dir, blip2_folder, golden_encode, caplog):
    with caplog.at_level(logging.DEBUG, logger="minigpt4.models"):
        model = build_golden_model(golden_dir, q_former_model=str(blip2_folder), vit_weights="")
    assert_golden(model, golden_encode)
    (line,) = [r.getMessage() for r in caplog.records if "ignored keys" in r.getMessage() and "Blip2" in r.getMessage()]
    assert "the language model (MiniGPT-4 uses the Vicuna of llama_model): language_model." in line
    assert "language_projection.weight" in line
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # vit_weights may also name the same folder
    same = build_golden_model(golden_dir, q_former_model=str(blip2_folder), vit_weights=str(blip2_folder))
    assert_golden(same, golden_encode)


def test_the_older_qkv_bias_layout_and_shards_without_the_language_model(
    golden_dir, blip2_folder, golden_encode, tmp_path
):
    """q_bias/v_bias as files converted with older transformers hold them; the language model in
    its own shard, which is deleted: the load must not open it."""
    tensors = load_file(blip2_folder / "model.safetensors")
    vision_side, language = {}, {}
    for name, value in tensors.items():
        if match := re.match(r"(.*self_attn\.)qkv\.bias$", name):
            q_bias, _k, v_bias = value.chunk(3)
            vision_side[match.group(1) + "q_bias"] = q_bias.clone()
            vision_side[match.group(1) + "v_bias"] = v_bias.clone()
        elif name.startswith("language_"):
            language[name] = value
        else:
            vision_side[name] = value
    folder = tmp_path / "blip2-sharded"
    folder.mkdir()
    (folder / "config.json").write_text((blip2_folder / "config.json").read_text())
    save_file(vision_side, folder / "model-00001-of-00002.safetensors", metadata={"format": "pt"})
    weight_map = dict.fromkeys(vision_side, "model-00001-of-00002.safetensors")
    weight_map |= dict.fromkeys(language, "model-00002-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model = build_golden_model(golden_dir, q_former_model=str(folder), vit_weights="")
    assert_golden(model, golden_encode)


def test_a_folder_that_does_not_fit_is_refused_in_words(golden_dir, blip2_folder, tmp_path):
    with pytest.raises(WeightLoadError, match="it has 8 query tokens; num_query_token is 4"):
        build_golden_model(golden_dir, q_former_model=str(blip2_folder), vit_weights="", num_query_token=4)
    with pytest.raises(WeightLoadError) as error:
        build_golden_model(
            golden_dir, q_former_model=str(blip2_folder), vit_weights="", qformer_arch={"intermediate_size": 256}
        )
    assert "its Q-Former's FFN is 128 wide; qformer_arch.intermediate_size is 256" in str(error.value)
    with pytest.raises(WeightLoadError, match=re.escape("its ViT has 2 layers; vit_arch.depth is 3")):
        build_golden_model(golden_dir, q_former_model=str(blip2_folder), vit_weights="", vit_arch={"depth": 3})
    with pytest.raises(WeightLoadError, match="which holds the vision tower too: set vit_weights to '' or to that"):
        build_golden_model(golden_dir, q_former_model=str(blip2_folder))  # vit_weights: the eva file
    # a tensor missing from the weights, and a key of no known kind
    tensors = load_file(blip2_folder / "model.safetensors")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((blip2_folder / "config.json").read_text())
    tensors.pop("qformer.encoder.layer.1.attention.attention.key.bias")
    tensors["vision_model.encoder.layers.0.self_attn.k_scale"] = torch.ones(1)
    save_file(tensors, broken / "model.safetensors")
    with pytest.raises(WeightLoadError) as error:
        build_golden_model(golden_dir, q_former_model=str(broken), vit_weights="")
    message = str(error.value)
    assert (
        "missing (the model needs them, the file lacks them): qformer.encoder.layer.1.attention.attention.key.bias"
        in message
    )
    assert "also unexpected (of no known kind, not loaded): vision_model.encoder.layers.0.self_attn.k_scale" in message
    # not a Blip2 folder at all
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(
        WeightLoadError, match=re.escape("is not a transformers Blip2 folder: its config.json has model_type 'llama'")
    ):
        build_golden_model(golden_dir, q_former_model=str(other), vit_weights="")
    (other / "config.json").unlink()
    with pytest.raises(WeightLoadError, match=re.escape("is a folder without config.json")):
        build_golden_model(golden_dir, q_former_model=str(other), vit_weights="")


def test_only_the_needed_tensors_are_read(blip2_folder):
    """The folder written by save_pretrained holds the language model next to the vision side;
    the report works from headers, and the tensors read are the vision side's alone."""
    files = weight_files(blip2_folder)
    shapes = file_shapes(files)
    with safe_open(str(blip2_folder / "model.safetensors"), framework="pt") as file:
        assert set(shapes) == set(file.keys())
        for name, shape in shapes.items():
            if not name.startswith("language_"):
                assert shape == tuple(file.get_slice(name).get_shape()), name


def test_the_training_input_check_accepts_the_folder(golden_dir, blip2_folder):
    """train.py checks every configured input before it builds anything: a transformers Blip2
    folder stands for both vision files there too."""
    run = SimpleNamespace(resume_ckpt_path="", valid_splits=[], test_splits=[])
    for vit_weights in ("", str(blip2_folder)):
        model_cfg = model_config(
            golden_model_config(golden_dir, q_former_model=str(blip2_folder), vit_weights=vit_weights)
        )
        ImageTextPretrainTask().check_inputs(SimpleNamespace(model_cfg=model_cfg, run_cfg=run))
    missing = model_config(golden_model_config(golden_dir, vit_weights=""))
    with pytest.raises(FileNotFoundError, match=re.escape("model.vit_weights: weight file '' does not exist")):
        ImageTextPretrainTask().check_inputs(SimpleNamespace(model_cfg=missing, run_cfg=run))


def test_a_hub_style_config_with_only_the_differences_fits_the_default_model(tmp_path):
    """transformers writes only the values that differ from the defaults (a released BLIP-2's
    qformer_config is {"classifier_dropout": null, "model_type": "blip_2_qformer"}): the sizes
    come from transformers' defaults, which are BLIP-2's and fit the default model config."""
    folder = tmp_path / "blip2-flan-t5-xxl"
    folder.mkdir()
    config = {
        "architectures": ["Blip2ForConditionalGeneration"],
        "model_type": "blip-2",
        "num_query_tokens": 32,
        "qformer_config": {"classifier_dropout": None, "model_type": "blip_2_qformer"},
        "vision_config": {"dropout": 0.0, "layer_norm_eps": 1e-5, "model_type": "blip_2_vision_model"},
        "text_config": {"model_type": "t5", "d_model": 64, "num_layers": 1, "num_heads": 2},
    }
    (folder / "config.json").write_text(json.dumps(config))
    assert arch_mismatches(read_blip2_config(folder), model_config({})) == []
    small = model_config({"num_query_token": 8, "vit_arch": {"depth": 40}})
    assert arch_mismatches(read_blip2_config(folder), small) == [
        "it has 32 query tokens; num_query_token is 8",
        "its ViT has 39 layers; vit_arch.depth is 40",
    ]
