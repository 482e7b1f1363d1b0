"""What the vision-side weight files may carry beyond what the model needs: the key reports
(names and shapes only, on a meta-device model) and the loaders that act on them, with tiny files
that carry the quirks of the released ``eva_vit_g.pth`` and ``blip2_pretrained_flant5xxl.pth``."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
from golden_model import build_golden_model, golden_model_config
from safetensors.torch import load_file, save_file

from minigpt4.models.eva_vit import load_eva_vit, report_vit_keys
from minigpt4.models.llm import load_llama_tokenizer, read_llama_config
from minigpt4.models.loaders import KeyReport, WeightLoadError, report_keys, shapes_of, torch_load
from minigpt4.models.mini_gpt4 import MiniGPT4
from minigpt4.models.qformer import report_blip2_keys

EMBED_TOL = {"rtol": 1e-5, "atol": 1e-5}


def meta_model(golden_dir: Path, **overrides) -> MiniGPT4:
    folder = golden_dir / "vicuna_tiny"
    with torch.device("meta"):
        return MiniGPT4.build(
            golden_model_config(golden_dir, **overrides), read_llama_config(folder), load_llama_tokenizer(folder)
        )


@pytest.fixture(scope="module")
def model_shapes(golden_dir: Path) -> dict[str, tuple[int, ...]]:
    return shapes_of(meta_model(golden_dir).state_dict())


@pytest.fixture(scope="module")
def eva_file(golden_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(golden_dir / "eva_vit_tiny.pth", weights_only=True)


@pytest.fixture(scope="module")
def blip2_file(golden_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(golden_dir / "blip2_tiny.pth", weights_only=True)["model"]


@pytest.fixture(scope="module")
def golden_encode(golden_dir: Path) -> torch.Tensor:
    return load_file(golden_dir / "expected.safetensors")["encode.inputs_llama"]


def vit_shapes(model_shapes: dict) -> dict[str, tuple[int, ...]]:
    return {k.removeprefix("visual_encoder."): v for k, v in model_shapes.items() if k.startswith("visual_encoder.")}


def encode(model: MiniGPT4, golden_dir: Path) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().encode_img(load_file(golden_dir / "expected.safetensors")["images.eval"])[0]


# --- the pure policy ----------------------------------------------------------------------------


def test_report_keys_sorts_every_key_once():
    report = report_keys(
        "the test file",
        {"a": (2,), "b": (3,), "old.x": (1,), "odd": (1,), "grid": (5,)},
        {"a": (2,), "b": (2,), "c": (1,), "d": (1,), "grid": (9,)},
        ignore=lambda key: "an old part" if key.startswith("old.") else None,
        explain=lambda key, have, want: f"{key} is {have[0]}, not {want[0]}",
        optional={"d"},
        adapts=lambda key, _have, _want: key == "grid",
    )
    assert report.used == ["a", "grid"]
    assert report.ignored == {"old.x": "an old part"}
    assert report.unexpected == ["odd"]
    assert report.missing == ["c"]
    assert report.mismatched == {"b": ((3,), (2,), "b is 3, not 2")}
    assert not report.ok
    with pytest.raises(WeightLoadError) as error:
        report.raise_if_refused()
    assert str(error.value).splitlines() == [
        "cannot load the test file:",
        "  missing (the model needs them, the file lacks them): c",
        "  b: the file has shape [3], the model expects [2] (b is 3, not 2)",
        "  also unexpected (of no known kind, not loaded): odd",
    ]
    fine = KeyReport("fine", used=["a"], unexpected=["odd"])
    assert fine.ok
    fine.raise_if_refused()  # unexpected keys alone do not refuse a file


def test_vit_report_of_an_eva_clip_export(model_shapes, eva_file):
    """The keys of an EVA-CLIP-g export: a final norm, fc_norm, the CLIP head and one extra block."""
    shapes = shapes_of(eva_file) | {
        "norm.weight": (64,),
        "norm.bias": (64,),
        "fc_norm.weight": (64,),
        "fc_norm.bias": (64,),
        "head.weight": (32, 64),
        "head.bias": (32,),
        "rope.freqs": (8,),
    }
    report = report_vit_keys(shapes, vit_shapes(model_shapes), "eva")
    assert report.ok
    assert set(report.used) == set(vit_shapes(model_shapes))
    assert report.ignored_by_reason() == {
        "blocks beyond the model's depth 2": sorted(k for k in eva_file if k.startswith("blocks.2.")),
        "the tower's pooled-output norm (the model does not pool)": ["fc_norm.bias", "fc_norm.weight"],
        "the CLIP projection head": ["head.bias", "head.weight"],
        "the tower's final norm (the model applies ln_vision instead)": ["norm.bias", "norm.weight"],
    }
    assert report.unexpected == ["rope.freqs"]
    assert report_vit_keys(shapes, model_shapes, "eva") == report  # the whole model's shapes will do
    # another square patch grid is interpolated, a non-square one or another width is refused
    assert report_vit_keys({**shapes, "pos_embed": (1, 5, 64)}, vit_shapes(model_shapes)).ok
    odd = report_vit_keys({**shapes, "pos_embed": (1, 6, 64)}, vit_shapes(model_shapes))
    assert (
        odd.mismatched["pos_embed"][2]
        == "the file's pos_embed does not hold a square grid of patches after the class token"
    )
    narrow = report_vit_keys({**shapes, "pos_embed": (1, 17, 32)}, vit_shapes(model_shapes))
    assert "vit_arch.embed_dim is 64" in narrow.mismatched["pos_embed"][2]


def test_blip2_report_without_the_text_branch_and_with_other_heads(model_shapes, blip2_file):
    released = {
        key: shape
        for key, shape in shapes_of(blip2_file).items()
        if not re.match(
            r"Qformer\.(cls|bert\.embeddings\.(word|position)_embeddings\.|bert\.encoder\.layer\.\d+\.(intermediate|output)\.)",
            key,
        )
        and not key.startswith("visual_encoder.")
    } | {
        "vision_proj.weight": (256, 64),
        "text_proj.weight": (256, 64),
        "itm_head.weight": (2, 64),
        "temp": (),
    }
    report = report_blip2_keys(released, model_shapes, "blip2")
    assert report.ok and not report.unexpected
    assert report.ignored_by_reason() == {
        "a head of BLIP-2's contrastive and matching objectives": [
            "itm_head.weight",
            "temp",
            "text_proj.weight",
            "vision_proj.weight",
        ],
        "the Q-Former's text branch (MiniGPT-4 uses the query branch only)": ["Qformer.bert.embeddings.position_ids"],
        "the projection into FlanT5 (MiniGPT-4 has llama_proj instead)": ["t5_proj.bias", "t5_proj.weight"],
    }
    needed = {k for k in model_shapes if k.startswith(("Qformer.", "ln_vision.", "query_tokens"))}
    assert len(report.used) == len(needed)


# --- loading through from_config ----------------------------------------------------------------


def test_an_eva_clip_export_loads_and_names_what_it_ignores(golden_dir, tmp_path, eva_file, golden_encode, caplog):
    path = tmp_path / "eva_vit_g.pth"
    torch.save(
        {
            **eva_file,
            "norm.weight": torch.ones(64),
            "norm.bias": torch.zeros(64),
            "fc_norm.weight": torch.ones(64),
            "fc_norm.bias": torch.zeros(64),
            "head.weight": torch.ones(32, 64),
            "head.bias": torch.zeros(32),
        },
        path,
    )
    with caplog.at_level(logging.DEBUG, logger="minigpt4.models"):
        model = build_golden_model(golden_dir, vit_weights=str(path))
    torch.testing.assert_close(encode(model, golden_dir), golden_encode, **EMBED_TOL)
    lines = [r for r in caplog.records if "ignor" in r.getMessage() and str(path) in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.INFO, logging.DEBUG]
    assert "the CLIP projection head: 2" in lines[0].getMessage()
    for key in ("norm.weight", "fc_norm.bias", "head.weight", "blocks.2.attn.qkv.weight"):
        assert key in lines[1].getMessage() and key not in lines[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_unknown_vit_key_is_a_warning_not_an_error(golden_dir, tmp_path, eva_file, golden_encode, caplog):
    path = tmp_path / "eva_vit_g.pth"
    torch.save({**eva_file, "mask_token": torch.zeros(1, 1, 64)}, path)
    with caplog.at_level(logging.INFO, logger="minigpt4.models"):
        model = build_golden_model(golden_dir, vit_weights=str(path))
    torch.testing.assert_close(encode(model, golden_dir), golden_encode, **EMBED_TOL)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"the EVA ViT weights {path}: 1 unexpected keys, of no kind this loader knows, are not loaded: mask_token"
    ]


def test_a_missing_vit_key_or_a_wrong_shape_is_an_error_in_words(golden_dir, tmp_path, eva_file):
    vit = meta_model(golden_dir).visual_encoder.to_empty(device="cpu")
    lacking = tmp_path / "lacking.pth"
    torch.save({k: v for k, v in eva_file.items() if k != "blocks.1.attn.v_bias"}, lacking)
    with pytest.raises(
        WeightLoadError, match=r"missing \(the model needs them, the file lacks them\): blocks\.1\.attn\.v_bias"
    ):
        load_eva_vit(vit, lacking)
    wide = tmp_path / "wide.pth"
    torch.save({**eva_file, "blocks.0.mlp.fc1.weight": torch.zeros(300, 64)}, wide)
    with pytest.raises(
        WeightLoadError,
        match=re.escape(
            "blocks.0.mlp.fc1.weight: the file has shape [300, 64], the model expects [279, 64] "
            "(the file's MLP is 300 wide; vit_arch.mlp_ratio gives 279)"
        ),
    ):
        load_eva_vit(vit, wide)


def test_the_released_blip2_file_loads_without_the_text_branch(golden_dir, tmp_path, blip2_file, golden_encode, caplog):
    """What the LAVIS runner saved (trainable parts plus buffers): no text branch, no vision
    tower, the heads of BLIP-2's other objectives."""
    released = {
        key: value
        for key, value in blip2_file.items()
        if not re.match(
            r"Qformer\.(cls|bert\.embeddings\.(word|position)_embeddings\.|bert\.encoder\.layer\.\d+\.(intermediate|output)\.)",
            key,
        )
        and not key.startswith("visual_encoder.")
    }
    extra = {
        "vision_proj.weight": torch.zeros(256, 64),
        "vision_proj.bias": torch.zeros(256),
        "text_proj.weight": torch.zeros(256, 64),
        "text_proj.bias": torch.zeros(256),
        "itm_head.weight": torch.zeros(2, 64),
        "itm_head.bias": torch.zeros(2),
        "temp": torch.tensor(0.07),
    }
    path = tmp_path / "blip2_pretrained_flant5xxl.pth"
    torch.save({"model": released | extra}, path)
    with caplog.at_level(logging.DEBUG, logger="minigpt4.models"):
        model = build_golden_model(golden_dir, q_former_model=str(path))
    torch.testing.assert_close(encode(model, golden_dir), golden_encode, **EMBED_TOL)
    (line,) = [
        r.getMessage() for r in caplog.records if "ignored keys" in r.getMessage() and str(path) in r.getMessage()
    ]
    for key in ("itm_head.weight", "temp", "text_proj.bias", "vision_proj.weight", "t5_proj.weight"):
        assert key in line
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- files that are not torch checkpoints ---------------------------------------------------------


def test_files_that_are_not_checkpoints_are_named(golden_dir, tmp_path):
    text = tmp_path / "eva_vit_g.pth"
    text.write_text("<html>404 Not Found</html>\n")
    with pytest.raises(
        WeightLoadError, match=rf"{re.escape(str(text))} is not a torch checkpoint \(\.pth\): it starts with b'<html>"
    ):
        torch_load(text)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(WeightLoadError, match=rf"{re.escape(str(empty))} is empty"):
        torch_load(empty)
    safetensors = tmp_path / "model.pth"
    save_file({"a": torch.zeros(2)}, safetensors)
    with pytest.raises(WeightLoadError, match="is a safetensors file, not a torch checkpoint"):
        torch_load(safetensors)
    data = (golden_dir / "blip2_tiny.pth").read_bytes()
    for name, cut in (("half.pth", data[: len(data) // 2]), ("head.pth", data[:100])):
        truncated = tmp_path / name
        truncated.write_bytes(cut)
        with pytest.raises(
            WeightLoadError,
            match=rf"{re.escape(str(truncated))} cannot be read as a torch checkpoint; it is probably truncated",
        ):
            torch_load(truncated)
    legacy = tmp_path / "legacy.pth"
    torch.save({"a": torch.zeros(100)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(torch_load(legacy)["a"], torch.zeros(100))
    cut_legacy = tmp_path / "cut_legacy.pth"
    cut_legacy.write_bytes(legacy.read_bytes()[:-50])
    with pytest.raises(WeightLoadError, match="probably truncated"):
        torch_load(cut_legacy)
    with pytest.raises(WeightLoadError, match="is not a torch checkpoint"):
        MiniGPT4.from_config(golden_model_config(golden_dir, q_former_model=str(text)))
