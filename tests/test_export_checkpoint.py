"""tools/export_checkpoint.py and loading its safetensors export through model.ckpt."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from golden_model import build_golden_model
from safetensors import safe_open
from tiny_assets import STAGE2_TINY, tiny_path_options, tiny_root

from minigpt4.common.config import Config
from minigpt4.models.checkpoint_files import METADATA_KEY, METADATA_NAME, SAFETENSORS_NAME, project_version
from minigpt4.models.loaders import WeightLoadError
from minigpt4.tasks.image_text_pretrain import ImageTextPretrainTask
from tools.export_checkpoint import main

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOL = REPO_ROOT / "tools" / "export_checkpoint.py"


def run_checkpoint(path: Path, proj_shape: tuple[int, int], **model_cfg) -> Path:
    """A runner-style checkpoint with a llama_proj of ``proj_shape`` and a saved ``model:`` config."""
    state = {
        "llama_proj.weight": torch.randn(proj_shape, generator=torch.Generator().manual_seed(0)),
        "llama_proj.bias": torch.zeros(proj_shape[0]),
    }
    torch.save({"model": state, "config": {"model": model_cfg}, "epoch": 0}, path)
    return path


def test_export_loads_through_ckpt_as_the_pth_does(golden_dir: Path, tmp_path: Path):
    source = golden_dir / "checkpoint_0.pth"
    assert main([str(source), str(tmp_path / "export")]) == 0
    metadata = json.loads((tmp_path / "export" / METADATA_NAME).read_text())
    assert metadata["llm_hidden_size"] == 64 and metadata["qformer_hidden_size"] == 64
    assert metadata["llm_name"] == "vicuna_tiny" and metadata["num_query_token"] == 8
    assert metadata["project_version"] == project_version()
    with safe_open(str(tmp_path / "export" / SAFETENSORS_NAME), "pt") as handle:
        # this model's names: the reference runner's extra buffers are not exported
        assert sorted(handle.keys()) == ["llama_proj.bias", "llama_proj.weight"]
        assert json.loads(handle.metadata()[METADATA_KEY]) == metadata

    from_pth = build_golden_model(golden_dir, ckpt=str(source))
    for location in (tmp_path / "export", tmp_path / "export" / SAFETENSORS_NAME):
        model = build_golden_model(golden_dir, ckpt=str(location))
        assert torch.equal(model.llama_proj.weight, from_pth.llama_proj.weight)
        assert torch.equal(model.llama_proj.bias, from_pth.llama_proj.bias)


def test_a_mismatch_is_explained_from_the_metadata(golden_dir: Path, tmp_path: Path):
    source = run_checkpoint(tmp_path / "ckpt13b.pth", (5120, 64), llama_model="/weights/vicuna-13b/", num_query_token=8)
    assert main([str(source), str(tmp_path / "export")]) == 0
    # the .safetensors file alone, away from its JSON, still says what it was trained for
    alone = tmp_path / "alone.safetensors"
    shutil.copy(tmp_path / "export" / SAFETENSORS_NAME, alone)
    for location in (tmp_path / "export", alone):
        with pytest.raises(WeightLoadError) as error:
            build_golden_model(golden_dir, ckpt=str(location))
        message = str(error.value)
        assert "was trained for an LLM of hidden size 5120 (a 13B LLM, vicuna-13b), a Q-Former of width 64" in message
        assert f"model.llama_model '{golden_dir / 'vicuna_tiny'}' has hidden size 64" in message


def test_settings_that_differ_from_the_training_are_warned_about(golden_dir: Path, tmp_path: Path, caplog):
    source = run_checkpoint(tmp_path / "c.pth", (64, 64), num_query_token=8, end_sym="\n", prompt_template="")
    assert main([str(source), str(tmp_path / "export")]) == 0
    with caplog.at_level(logging.WARNING):
        build_golden_model(golden_dir, ckpt=str(tmp_path / "export"), end_sym="###")
    assert "was trained with end_sym '\\n'; model.end_sym is '###'" in caplog.text
    assert "num_query_token" not in caplog.text


def test_a_non_finite_weight_is_not_exported(tmp_path: Path, capsys):
    source = tmp_path / "nan.pth"
    torch.save(
        {"model": {"llama_proj.weight": torch.tensor([[float("nan")]]), "llama_proj.bias": torch.zeros(1)}}, source
    )
    assert main([str(source), str(tmp_path / "export")]) == 2
    assert "non-finite values (NaN or inf) in llama_proj.weight; not exported" in capsys.readouterr().err
    assert not (tmp_path / "export" / SAFETENSORS_NAME).exists()


def test_a_folder_without_an_export_is_named(golden_dir: Path, tmp_path: Path):
    with pytest.raises(WeightLoadError, match=f"is a folder; .* a folder holding {SAFETENSORS_NAME}"):
        build_golden_model(golden_dir, ckpt=str(tmp_path))


@pytest.mark.slow
def test_entry_point_help_and_bad_input(tmp_path: Path, capsys):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=120)

    result = run("--help")
    assert result.returncode == 0 and "out_dir" in result.stdout
    result = run(str(tmp_path / "missing.pth"), str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"export_checkpoint: {tmp_path / 'missing.pth'}: no such checkpoint file"
    )
    flat = tmp_path / "flat.pth"
    torch.save({"llama_proj.weight": torch.zeros(2, 2)}, flat)
    assert main([str(flat), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.endswith(
        "is not a MiniGPT-4 checkpoint: expected a dict with a 'model' entry, got ['llama_proj.weight']\n"
    )


def test_training_accepts_an_exported_folder_as_ckpt(golden_dir: Path, tmp_path: Path):
    assert main([str(golden_dir / "checkpoint_0.pth"), str(tmp_path / "export")]) == 0
    options = [*tiny_path_options(tiny_root(), ()), f"model.ckpt={tmp_path / 'export'}"]
    cfg = Config(SimpleNamespace(cfg_path=str(STAGE2_TINY), options=options))
    ImageTextPretrainTask().check_inputs(cfg)  # raises for a path that does not exist
    cfg = Config(SimpleNamespace(cfg_path=str(STAGE2_TINY), options=[*options[:-1], f"model.ckpt={tmp_path}"]))
    with pytest.raises(FileNotFoundError, match=r"model\.ckpt: weight file"):
        ImageTextPretrainTask().check_inputs(cfg)
