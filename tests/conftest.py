"""Shared fixtures and the rules that skip what cannot run on this machine."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
# Every golden set (a folder with an expected.json, copied byte for byte from the reference runs);
# the tests that use one run once per set.
GOLDEN_SETS = sorted(path.parent for path in (TESTS_DIR / "assets" / "golden").glob("*/expected.json"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    require_browser = os.environ.get("MINIGPT4_REQUIRE_BROWSER") == "1"
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "npu" in item.keywords:
            from minigpt4.common.device import npu_available

            if not npu_available():
                item.add_marker(pytest.mark.skip(reason="needs an Ascend NPU and torch_npu"))
        if "browser" in item.keywords and chromium_path() is None and not require_browser:
            item.add_marker(pytest.mark.skip(reason="needs Debian's chromium (make browser-deps)"))


@pytest.fixture(scope="session", params=GOLDEN_SETS, ids=[path.name for path in GOLDEN_SETS])
def golden_dir(request: pytest.FixtureRequest) -> Path:
    return request.param
