"""The installed environment: every library the project needs imports in a fresh interpreter."""

import subprocess
import sys

import pytest

MODULES = ["torchvision.transforms", "timm", "transformers", "webdataset", "omegaconf", "gradio", "sentencepiece"]


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_module_imports_in_a_fresh_interpreter(module):
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_transformers_modeling_and_timm_models_import():
    code = (
        "from transformers import Blip2QFormerModel, LlamaForCausalLM; "
        "from timm.models.eva import Eva; "
        "from torchvision.transforms import InterpolationMode, RandomResizedCrop"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
