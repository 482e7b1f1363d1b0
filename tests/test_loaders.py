"""The weight loaders: locations and the download cache, weights_only, the ViT and BLIP-2 files
(key mapping, pos_embed interpolation) and every error message."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from golden_model import golden_model_config

from minigpt4.models.eva_vit import build_eva_vit, load_eva_vit
from minigpt4.models.llm import load_llama_tokenizer, read_llama_config
from minigpt4.models.loaders import CACHE_ENV, WeightLoadError, check_state_dict, resolve_weights, torch_load
from minigpt4.models.mini_gpt4 import MiniGPT4
from minigpt4.models.qformer import blip2_part, is_discarded_blip2_key, load_blip2_qformer, ours_to_blip2
from tools.make_tiny_weights import TinySpec, make_tiny_weights


class NotATensor:
    """Pickled by reference: loading it would import and run code from this module."""


def build_golden(golden_dir: Path, **overrides) -> MiniGPT4:
    """The golden architecture with random weights, nothing loaded."""
    folder = golden_dir / "vicuna_tiny"
    cfg = golden_model_config(golden_dir, **overrides)
    return MiniGPT4.build(cfg, read_llama_config(folder), load_llama_tokenizer(folder))


@pytest.fixture(scope="module")
def blip2_file(golden_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(golden_dir / "blip2_tiny.pth", weights_only=True)["model"]


# --- locations, cache, weights_only ---------------------------------------------------------


def test_local_paths_are_used_as_they_are(golden_dir: Path):
    path = golden_dir / "eva_vit_tiny.pth"
    assert resolve_weights(str(path), "vit_weights") == path
    with pytest.raises(FileNotFoundError, match=r"model\.vit_weights: '.*nowhere\.pth' does not exist"):
        resolve_weights(str(golden_dir / "nowhere.pth"), "vit_weights")
    with pytest.raises(FileNotFoundError, match=r"model\.ckpt is empty"):
        resolve_weights("", "ckpt")


def test_urls_are_downloaded_once_into_the_cache(tmp_path: Path, monkeypatch, golden_dir: Path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    source = tmp_path / "served" / "minigpt4_tiny.pth"
    source.parent.mkdir()
    source.write_bytes((golden_dir / "minigpt4_tiny.pth").read_bytes())
    cached = resolve_weights(source.as_uri(), "ckpt")
    assert cached == tmp_path / "cache" / "minigpt4_tiny.pth"
    assert cached.read_bytes() == source.read_bytes()
    assert list(cached.parent.iterdir()) == [cached]  # no partial file left behind
    source.unlink()
    assert resolve_weights(source.as_uri(), "ckpt") == cached  # not fetched again
    with pytest.raises(ValueError, match="does not end in a file name"):
        resolve_weights("file:///", "ckpt")


def test_download_under_torch_distributed_waits_at_a_barrier(tmp_path: Path, monkeypatch, golden_dir: Path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    store = torch.distributed.HashStore()
    torch.distributed.init_process_group("gloo", rank=0, world_size=1, store=store)
    try:
        cached = resolve_weights((golden_dir / "minigpt4_tiny.pth").as_uri(), "ckpt")
    finally:
        torch.distributed.destroy_process_group()
    assert cached.read_bytes() == (golden_dir / "minigpt4_tiny.pth").read_bytes()


def test_files_that_would_run_code_are_refused(tmp_path: Path, golden_dir: Path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"llama_proj.weight": NotATensor()}}, path)
    with pytest.raises(WeightLoadError, match="must not be able to run code"):
        torch_load(path)
    with pytest.raises(WeightLoadError, match="must not be able to run code"):
        MiniGPT4.from_config(golden_model_config(golden_dir, ckpt=str(path)))


def test_a_folder_where_a_weight_file_belongs_is_named(tmp_path: Path, golden_dir: Path):
    # The reference's stage-2 YAML ships ckpt: '/path/to/stage1/checkpoint/', a folder.
    with pytest.raises(WeightLoadError, match=f"{re.escape(str(tmp_path))} is a folder; a weight file"):
        MiniGPT4.from_config(golden_model_config(golden_dir, ckpt=str(tmp_path)))


def test_a_prompt_template_without_a_slot_is_refused(golden_dir: Path):
    # The reference formatted every prompt into it and trained on the same constant (or on none).
    for template in ("", "###Human: <Img><ImageHere></Img> ###Assistant: "):
        with pytest.raises(ValueError, match=r"model.prompt_template must hold \{\} where each line"):
            MiniGPT4.from_config(
                golden_model_config(golden_dir, prompt_path="prompts/alignment.txt", prompt_template=template)
            )


def test_check_state_dict_lists_what_is_wrong():
    expected = {f"k{i:02d}": torch.zeros(2) for i in range(20)}
    found = {"extra": torch.zeros(1), "k00": torch.zeros(3)}
    with pytest.raises(WeightLoadError) as error:
        check_state_dict(expected, found, "the test weights", lambda key, _have, _want: f"{key} explained")
    message = str(error.value)
    assert message.startswith("cannot load the test weights:")
    assert "missing (the model needs them, the file lacks them): k01, k02," in message
    assert "(19 in all)" in message
    assert "unexpected (the file has them, the model has no place for them): extra" in message
    assert "k00: the file has shape [3], the model expects [2] (k00 explained)" in message
    check_state_dict(expected, {"k00": torch.ones(2)}, "optional keys", optional=set(expected) - {"k00"})


# --- eva_vit_g.pth ----------------------------------------------------------------------------


def test_eva_blocks_beyond_the_depth_are_ignored(golden_dir: Path, caplog):
    vit = build_golden(golden_dir).visual_encoder
    with caplog.at_level(logging.DEBUG):
        load_eva_vit(vit, golden_dir / "eva_vit_tiny.pth")
    assert "ignoring 13 keys the model does not use (blocks beyond the model's depth 2: 13)" in caplog.text
    assert "the ignored keys, by reason: blocks beyond the model's depth 2: blocks.2." in caplog.text
    file = torch.load(golden_dir / "eva_vit_tiny.pth", weights_only=True)
    for key, value in vit.state_dict().items():
        assert torch.equal(value, file[key]), key


@pytest.mark.slow
def test_eva_too_shallow_or_other_sizes_fail_in_words(golden_dir: Path, tmp_path: Path):
    deeper = build_golden(golden_dir, vit_arch={"depth": 4}).visual_encoder
    with pytest.raises(WeightLoadError, match=r"missing .*blocks\.3\.attn\.proj\.bias"):
        load_eva_vit(deeper, golden_dir / "eva_vit_tiny.pth")
    narrow = build_golden(golden_dir, vit_arch={"embed_dim": 32}).visual_encoder
    with pytest.raises(WeightLoadError, match=re.escape("the file holds a ViT of width 64; vit_arch.embed_dim is 32")):
        load_eva_vit(narrow, golden_dir / "eva_vit_tiny.pth")
    patch7 = build_golden(golden_dir, vit_arch={"patch_size": 7}).visual_encoder
    with pytest.raises(WeightLoadError, match=re.escape("trained with 14-pixel patches; vit_arch.patch_size is 7")):
        load_eva_vit(patch7, golden_dir / "eva_vit_tiny.pth")
    wide_mlp = build_golden(golden_dir, vit_arch={"mlp_ratio": 4.0}).visual_encoder
    with pytest.raises(WeightLoadError, match=re.escape("the file's MLP is 279 wide; vit_arch.mlp_ratio gives 256")):
        load_eva_vit(wide_mlp, golden_dir / "eva_vit_tiny.pth")
    with pytest.raises(WeightLoadError, match=re.escape("not an eva_vit_g.pth-format file")):
        load_eva_vit(narrow, golden_dir / "blip2_tiny.pth")


@pytest.mark.slow
def test_pos_embed_is_interpolated_from_another_image_size(golden_dir: Path, tmp_path: Path, caplog):
    """An eva file trained at 28 px (2x2 patches) loaded into a 56 px model (4x4 patches)."""
    small = make_tiny_weights(tmp_path, TinySpec(image_size=28))
    file = torch.load(small.vit_weights, weights_only=True)
    vit = build_eva_vit(small.spec.vit_arch, 56, 0.0, False, torch.float32)
    with caplog.at_level(logging.INFO):
        load_eva_vit(vit, small.vit_weights)
    assert "Position interpolate from 2x2 to 4x4" in caplog.text
    grid = file["pos_embed"][:, 1:].reshape(1, 2, 2, 64).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
    expected = torch.cat([file["pos_embed"][:, :1], resized.permute(0, 2, 3, 1).reshape(1, 16, 64)], dim=1)
    torch.testing.assert_close(vit.pos_embed.data, expected, rtol=0, atol=1e-6)
    assert torch.equal(vit.blocks[0].attn.qkv.weight, file["blocks.0.attn.qkv.weight"])
    # and the same through from_config, where the image size is a config key
    model = MiniGPT4.from_config({**small.model_config(), "image_size": 56})
    torch.testing.assert_close(model.visual_encoder.pos_embed.data, expected, rtol=0, atol=1e-6)
    assert model.encode_img(torch.randn(1, 3, 56, 56))[0].shape == (1, 8, 64)


# --- blip2_pretrained_flant5xxl.pth -----------------------------------------------------------


def test_blip2_names_map_onto_our_qformer(golden_dir: Path, blip2_file):
    model = build_golden(golden_dir)
    load_blip2_qformer(model, golden_dir / "blip2_tiny.pth")
    ours = blip2_part(model.state_dict())
    assert len(ours) > 0
    for key, value in ours.items():
        assert torch.equal(value, blip2_file[ours_to_blip2(key)]), key
    assert torch.equal(
        model.Qformer.encoder.layer[2].crossattention.attention.value.weight,
        blip2_file["Qformer.bert.encoder.layer.2.crossattention.self.value.weight"],
    )
    assert torch.equal(model.Qformer.layernorm.bias, blip2_file["Qformer.bert.embeddings.LayerNorm.bias"])
    assert torch.equal(model.ln_vision.weight, blip2_file["ln_vision.weight"])


def test_blip2_discards_exactly_the_known_unused_parts(blip2_file):
    discarded = {key for key in blip2_file if is_discarded_blip2_key(key)}
    prefixes = {re.sub(r"\.\d+\.", ".N.", key).rsplit(".", 1)[0] for key in discarded}
    assert prefixes == {
        "Qformer.cls.predictions",
        "Qformer.cls.predictions.decoder",
        "Qformer.cls.predictions.transform.dense",
        "Qformer.cls.predictions.transform.LayerNorm",
        "Qformer.bert.embeddings",  # position_ids
        "Qformer.bert.embeddings.word_embeddings",
        "Qformer.bert.embeddings.position_embeddings",
        "Qformer.bert.encoder.layer.N.intermediate.dense",
        "Qformer.bert.encoder.layer.N.output.dense",
        "Qformer.bert.encoder.layer.N.output.LayerNorm",
        "t5_proj",
    }
    assert not is_discarded_blip2_key("Qformer.bert.encoder.layer.0.output_query.dense.weight")
    assert not is_discarded_blip2_key("Qformer.bert.encoder.layer.0.intermediate_query.dense.weight")
    assert not is_discarded_blip2_key("visual_encoder.cls_token")  # loaded (see below)


def write_blip2(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({"model": state}, path)
    return path


def test_a_vision_tower_in_the_blip2_file_replaces_the_eva_one(golden_dir: Path, tmp_path: Path, blip2_file, caplog):
    """As the reference: its non-strict load of the BLIP-2 file came after the ViT's and overwrote
    whatever vision weights the file held (the golden file's equal the eva file's)."""
    changed = {key: value + 1.0 if key.startswith("visual_encoder.") else value for key, value in blip2_file.items()}
    changed["visual_encoder.blocks.2.norm1.weight"] = torch.ones(64)  # beyond the depth: ignored
    model = build_golden(golden_dir)
    load_eva_vit(model.visual_encoder, golden_dir / "eva_vit_tiny.pth")
    with caplog.at_level(logging.DEBUG, logger="minigpt4.models"):
        load_blip2_qformer(model, write_blip2(tmp_path / "with_vit.pth", changed))
    assert "also holds the vision tower" in caplog.text
    (named,) = [r for r in caplog.records if "visual_encoder.blocks.2.norm1.weight" in r.getMessage()]
    assert named.levelno == logging.DEBUG and "ignored keys" in named.getMessage()
    for key, value in model.visual_encoder.state_dict().items():
        assert torch.equal(value, changed[f"visual_encoder.{key}"]), key


def test_a_blip2_file_without_a_vision_tower_leaves_the_eva_one(golden_dir: Path, tmp_path: Path, blip2_file):
    """The released file: its vision tower comes from vit_weights alone."""
    released = {key: value for key, value in blip2_file.items() if not key.startswith("visual_encoder.")}
    model = build_golden(golden_dir)
    load_eva_vit(model.visual_encoder, golden_dir / "eva_vit_tiny.pth")
    before = {key: value.clone() for key, value in model.visual_encoder.state_dict().items()}
    load_blip2_qformer(model, write_blip2(tmp_path / "released.pth", released))
    assert all(torch.equal(value, before[key]) for key, value in model.visual_encoder.state_dict().items())


def test_a_vision_tower_in_the_blip2_file_must_fit(golden_dir: Path, tmp_path: Path, blip2_file, caplog):
    odd = {
        **blip2_file,
        "visual_encoder.cls_token": torch.zeros(1, 1, 32),
        "visual_encoder.head.weight": torch.zeros(1),
        "visual_encoder.blocks.0.attn.k_bias": torch.zeros(64),
    }
    model = build_golden(golden_dir)
    with caplog.at_level(logging.DEBUG, logger="minigpt4.models"), pytest.raises(WeightLoadError) as error:
        load_blip2_qformer(model, write_blip2(tmp_path / "odd.pth", odd))
    assert "the BLIP-2 weights" in str(error.value)
    assert "visual_encoder.cls_token: the file has shape [1, 1, 32]" in str(error.value)
    assert "the file holds a ViT of width 32; vit_arch.embed_dim is 64" in str(error.value)
    assert "also unexpected (of no known kind, not loaded): visual_encoder.blocks.0.attn.k_bias" in str(error.value)
    assert re.search(r"INFO .*ignoring 37 keys .*; the CLIP projection head: 1\)", caplog.text)
    assert re.search(
        r"DEBUG .*the ignored keys, by reason: .*; the CLIP projection head: visual_encoder\.head\.weight", caplog.text
    )


def test_blip2_errors_name_the_keys_in_the_files_own_names(golden_dir: Path, tmp_path: Path, blip2_file, caplog):
    model = build_golden(golden_dir)
    extra = write_blip2(tmp_path / "extra.pth", {**blip2_file, "Qformer.bert.pooler.dense.weight": torch.zeros(1)})
    with caplog.at_level(logging.WARNING, logger="minigpt4.models"):
        load_blip2_qformer(model, extra)  # a key of no known kind is named, not fatal
    assert re.search(r"WARNING .*1 unexpected keys.*: Qformer\.bert\.pooler\.dense\.weight", caplog.text)
    lacking = {k: v for k, v in blip2_file.items() if k != "Qformer.bert.encoder.layer.1.attention.self.key.bias"}
    with pytest.raises(
        WeightLoadError, match=r"missing .*: Qformer\.bert\.encoder\.layer\.1\.attention\.self\.key\.bias"
    ):
        load_blip2_qformer(model, write_blip2(tmp_path / "lacking.pth", lacking))
    with pytest.raises(WeightLoadError, match="expected a dict with a 'model' entry"):
        load_blip2_qformer(model, golden_dir / "eva_vit_tiny.pth")


def test_blip2_shape_mismatches_in_words(golden_dir: Path):
    fewer_queries = build_golden(golden_dir, num_query_token=4)
    with pytest.raises(WeightLoadError, match="the file holds 8 query tokens; num_query_token is 4"):
        load_blip2_qformer(fewer_queries, golden_dir / "blip2_tiny.pth")
    narrow_vit = build_golden(golden_dir, vit_arch={"embed_dim": 32, "num_heads": 2})
    with pytest.raises(WeightLoadError) as error:
        load_blip2_qformer(narrow_vit, golden_dir / "blip2_tiny.pth")
    assert "the Q-Former was trained on a vision width of 64; the ViT's width is 32" in str(error.value)
    assert "the file's ln_vision is 64 wide; the ViT's width is 32" in str(error.value)
    wider = build_golden(golden_dir, qformer_arch={"intermediate_size": 256})
    with pytest.raises(WeightLoadError, match="other sizes than qformer_arch"):
        load_blip2_qformer(wider, golden_dir / "blip2_tiny.pth")
