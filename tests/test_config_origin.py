"""Config.origin names the file that set a key; a shipped placeholder path is warned about, and
the training input check's error names it."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from minigpt4.common.config import Config
from minigpt4.tasks.image_text_pretrain import ImageTextPretrainTask

REPO_ROOT = Path(__file__).resolve().parent.parent
EVAL = str(REPO_ROOT / "eval_configs" / "minigpt4_eval.yaml")


def test_origin_is_the_last_source_that_set_the_key(caplog):
    with caplog.at_level(logging.WARNING):
        cfg = Config(SimpleNamespace(cfg_path=EVAL, options=None))
    assert cfg.origin("model.llama_model") == "minigpt4/configs/models/minigpt4.yaml"
    assert cfg.origin("model.ckpt") == "eval_configs/minigpt4_eval.yaml"
    assert cfg.origin("model.vit_weights") is None  # the schema's default
    assert (
        "model.llama_model is still the placeholder '/path/to/vicuna/weights/' of "
        "minigpt4/configs/models/minigpt4.yaml: set it there, in your YAML or with --options model.llama_model=..."
    ) in caplog.text
    assert (
        "model.ckpt is still the placeholder '/path/to/pretrained/ckpt/' of eval_configs/minigpt4_eval.yaml"
        in caplog.text
    )

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        cfg = Config(SimpleNamespace(cfg_path=EVAL, options=["model.llama_model=/data/vicuna", "model.ckpt=x.pth"]))
    assert cfg.origin("model.llama_model") == "--options"
    assert "placeholder" not in caplog.text


def test_trainings_input_check_names_the_yaml_of_a_placeholder():
    cfg = Config(
        SimpleNamespace(cfg_path=str(REPO_ROOT / "train_configs" / "minigpt4_stage1_pretrain.yaml"), options=None)
    )
    with pytest.raises(FileNotFoundError) as error:
        ImageTextPretrainTask().check_inputs(cfg)
    assert str(error.value).startswith("model.llama_model: '/path/to/vicuna/weights/' is not a Vicuna/LLaMA folder")
    assert str(error.value).endswith(" (set in minigpt4/configs/models/minigpt4.yaml)")
    cfg = Config(SimpleNamespace(cfg_path=EVAL, options=["model.vit_weights=/none/eva.pth"]))
    with pytest.raises(
        FileNotFoundError,
        match=r"^model\.vit_weights: weight file '/none/eva.pth' does not exist \(set in --options\)$",
    ):
        ImageTextPretrainTask().check_inputs(cfg)
