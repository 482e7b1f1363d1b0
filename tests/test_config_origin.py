"""Config.origin names the file that set a key; a shipped placeholder path is warned about, naming it."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

from minigpt4.common.config import Config

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
