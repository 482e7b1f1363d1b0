"""The README's Python API example, run as written on the tiny assets: the lines that build
``model`` and ``vis_processor`` from a config, with the tiny eval config and the CPU swapped in."""

from __future__ import annotations

import re

import torch
from PIL import Image
from tiny_assets import REPO_ROOT, tiny_root

from minigpt4.conversation.conversation import Chat
from minigpt4.models.mini_gpt4 import MiniGPT4


def readme_api_lines() -> str:
    """The README's Python API block, up to the line that makes ``chat``."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Python API") :]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    return block[: block.index("\n", block.index("chat = Chat("))]


def test_the_readme_builds_model_and_processor_from_a_config(monkeypatch):
    code = readme_api_lines()
    assert 'cfg_path="eval_configs/minigpt4_eval.yaml"' in code and code.count('"cuda:0"') == 2
    monkeypatch.chdir(tiny_root())
    tiny = str(REPO_ROOT / "eval_configs" / "minigpt4_tiny_eval.yaml")
    namespace: dict = {}
    exec(code.replace("eval_configs/minigpt4_eval.yaml", tiny).replace('"cuda:0"', '"cpu"'), namespace)
    assert isinstance(namespace["model"], MiniGPT4) and not namespace["model"].training
    assert isinstance(namespace["chat"], Chat)
    image = namespace["vis_processor"](Image.new("RGB", (80, 60), "white"))
    assert image.shape == (3, 56, 56) and image.dtype == torch.float32
