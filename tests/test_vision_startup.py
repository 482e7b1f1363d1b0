"""The vision side's start-up: ``from_config`` does not initialise at random what the files load
(``loaders.skip_random_init``), and the ViT and BLIP-2 files are memory-mapped, each tensor copied
once into the model and never left a view of the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from golden_model import build_golden_model, golden_arch

from minigpt4.common.schema import QFormerArch, VitArch
from minigpt4.models import eva_vit as eva_vit_module
from minigpt4.models import mini_gpt4
from minigpt4.models import qformer as qformer_module
from minigpt4.models.eva_vit import build_eva_vit, load_eva_vit
from minigpt4.models.loaders import WeightLoadError, check_no_meta, skip_random_init, torch_load
from minigpt4.models.qformer import build_qformer, load_blip2_qformer


def mapped_from(tensor: torch.Tensor, path: Path) -> bool:
    """Whether ``tensor``'s memory lies in a mapping of the file ``path`` (``/proc/self/maps``)."""
    address, target = tensor.data_ptr(), str(path.resolve())
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            if start <= address < end:
                return True
    return False


def golden_vit(golden_dir: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    arch = golden_arch(golden_dir)
    return build_eva_vit(VitArch(**arch["vit_arch"]), arch["image_size"], 0.0, False, dtype)


def small_vision() -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Parameter]:
    vit = build_eva_vit(VitArch(embed_dim=64, depth=2, num_heads=4), 56, 0.0, False, torch.float32)
    qformer, query_tokens = build_qformer(QFormerArch(64, 2, 4, 128, 2), 8, 64)
    return vit, qformer, query_tokens


def test_skipping_the_init_draws_no_random_number_and_holds_no_values():
    state = torch.get_rng_state()
    with skip_random_init():
        vit, qformer, query_tokens = small_vision()
    assert torch.equal(torch.get_rng_state(), state)
    parameters = [*vit.parameters(), *qformer.parameters(), query_tokens]
    assert all(p.is_meta for p in parameters)
    # buffers no file holds keep the values their module gives them (EVA has no k bias)
    assert all(torch.equal(block.attn.k_bias, torch.zeros(64)) for block in vit.blocks)
    # outside the context the build initialises at random again
    vit, qformer, query_tokens = small_vision()
    assert not torch.equal(torch.get_rng_state(), state)
    assert not any(p.is_meta for p in [*vit.parameters(), *qformer.parameters(), query_tokens])
    assert vit.blocks[0].mlp.fc1.weight.std() > 0 and query_tokens.std() > 0


def test_from_config_loads_into_a_vision_side_that_was_never_initialised(golden_dir: Path, monkeypatch):
    """Through ``from_config``: when the loaders start, the ViT and the Q-Former hold no values (so
    no random init ran for them), each file they read is mapped, and afterwards everything holds
    the files' values."""
    seen = {}

    def spy_vit(vit: torch.nn.Module, path: Path) -> None:
        seen["vit"] = all(p.is_meta for p in vit.parameters())
        load_eva_vit(vit, path)

    def spy_qformer(model: torch.nn.Module, path: Path) -> None:
        seen["qformer"] = all(p.is_meta for p in [*model.Qformer.parameters(), model.query_tokens])
        load_blip2_qformer(model, path)

    def spy_load(module):
        def load(path: Path, **kwargs):
            loaded = torch_load(path, **kwargs)
            state = loaded.get("model", loaded)
            seen[path.name] = all(mapped_from(value, path) for value in state.values() if value.numel())
            return loaded

        monkeypatch.setattr(module, "torch_load", load)

    monkeypatch.setattr(mini_gpt4, "load_eva_vit", spy_vit)
    monkeypatch.setattr(mini_gpt4, "load_blip2_qformer", spy_qformer)
    spy_load(eva_vit_module)
    spy_load(qformer_module)
    model = build_golden_model(golden_dir)
    assert seen == {"vit": True, "qformer": True, "eva_vit_tiny.pth": True, "blip2_tiny.pth": True}
    check_no_meta(model, "the golden model")  # everything got a value, the LLM included
    # the values are the files' (the golden parity tests check the outputs)
    eva = torch.load(golden_dir / "eva_vit_tiny.pth", weights_only=True)
    assert torch.equal(model.visual_encoder.pos_embed, eva["pos_embed"])
    blip2 = torch.load(golden_dir / "blip2_tiny.pth", weights_only=True)["model"]
    assert torch.equal(model.query_tokens, blip2["query_tokens"])
    assert not model.query_tokens.requires_grad and not model.visual_encoder.cls_token.requires_grad
    assert all(not p.requires_grad for p in model.Qformer.parameters())
    assert model.llama_proj.weight.requires_grad


def test_a_file_lacking_a_key_is_refused_before_anything_is_left_without_a_value(golden_dir: Path, tmp_path: Path):
    state = torch.load(golden_dir / "eva_vit_tiny.pth", weights_only=True)
    del state["blocks.0.attn.q_bias"]
    torch.save(state, tmp_path / "lacking.pth")
    with skip_random_init():
        vit = golden_vit(golden_dir)
    with pytest.raises(WeightLoadError, match=r"missing .*blocks\.0\.attn\.q_bias"):
        load_eva_vit(vit, tmp_path / "lacking.pth")
    with pytest.raises(WeightLoadError, match=r"left without values .*blocks\.0\.attn\.q_bias"):
        check_no_meta(vit, "the half-loaded ViT")


def test_zip_files_are_mapped_and_legacy_ones_read(tmp_path: Path):
    tensor = torch.arange(1000, dtype=torch.float16)
    torch.save({"x": tensor}, tmp_path / "zip.pth")
    torch.save({"x": tensor}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    mapped = torch_load(tmp_path / "zip.pth", mmap=True)["x"]
    assert mapped_from(mapped, tmp_path / "zip.pth") and torch.equal(mapped, tensor)
    assert not mapped_from(torch_load(tmp_path / "zip.pth")["x"], tmp_path / "zip.pth")  # read whole
    legacy = torch_load(tmp_path / "legacy.pth", mmap=True)["x"]
    assert not mapped_from(legacy, tmp_path / "legacy.pth") and torch.equal(legacy, tensor)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_mapped_fp16_file_becomes_the_models_own_copy(golden_dir: Path, tmp_path: Path, dtype: torch.dtype):
    """The file's tensors are copied once into the model's dtypes (fp16 file -> fp32 ViT, or fp16
    Linear weights and fp32 norms as the half-precision ViT has them), and no parameter is a view of
    the mapped file, whichever dtype it has."""
    half = {key: value.half() for key, value in torch.load(golden_dir / "eva_vit_tiny.pth").items()}
    path = tmp_path / "eva_fp16.pth"
    torch.save(half, path)
    assert all(mapped_from(value, path) for value in torch_load(path, mmap=True).values())
    reference = golden_vit(golden_dir, dtype)
    with skip_random_init():
        vit = golden_vit(golden_dir, dtype)
    load_eva_vit(vit, path)
    load_eva_vit(reference, path)  # the ordinary load into a randomly initialised ViT
    for (name, ours), theirs in zip(vit.state_dict().items(), reference.state_dict().values(), strict=True):
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), name
        assert not mapped_from(ours, path), name
    assert vit.blocks[0].mlp.fc1.weight.dtype == dtype and vit.pos_embed.dtype == torch.float32
