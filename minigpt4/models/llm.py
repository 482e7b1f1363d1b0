"""The frozen Vicuna/LLaMA: its config, tokenizer and weights, read from a local folder.

A Vicuna folder as users have it: ``config.json``, weights as sharded ``pytorch_model-*.bin`` with
an index or as safetensors, and ``tokenizer.model`` with a ``LlamaTokenizer``-era
``tokenizer_config.json``. Nothing is ever fetched from a model hub (``local_files_only``).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM, LlamaTokenizer

from minigpt4.common.device import DeviceError, resolve_device
from minigpt4.models.loaders import WeightLoadError

logger = logging.getLogger(__name__)

# LLaMA sizes by hidden width, to say what a width mismatch means.
LLAMA_SIZES = {4096: "7B", 5120: "13B", 6656: "33B", 8192: "65B"}


def llama_size_name(hidden_size: int) -> str:
    """``4096`` -> ``"a 7B LLM"``; widths of no released LLaMA are described by the number alone."""
    size = LLAMA_SIZES.get(hidden_size)
    return f"a {size} LLM" if size else f"an LLM of width {hidden_size}"


def llama_folder(location: str) -> Path:
    """The Vicuna/LLaMA folder named by ``model.llama_model``, checked to exist."""
    if not location:
        raise FileNotFoundError("model.llama_model is empty: set it to the Vicuna/LLaMA weight folder")
    folder = Path(location).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"model.llama_model: '{location}' is not a Vicuna/LLaMA folder (no config.json in it); "
            "names of model-hub repositories are not fetched"
        )
    return folder


def read_llama_config(folder: Path) -> LlamaConfig:
    return LlamaConfig.from_pretrained(folder, local_files_only=True)


def load_llama_tokenizer(folder: Path) -> LlamaTokenizer:
    """The LLaMA tokenizer, with the reference's settings: pad = eos, right padding.

    transformers 5 converts ``tokenizer.model`` into a fast tokenizer. ``legacy=True`` keeps the
    sentencepiece behaviour of the reference's slow tokenizer of transformers 4.28, which gives
    text after a special token written in the text (``a</s>b``) a fresh dummy prefix.
    """
    tokenizer = LlamaTokenizer.from_pretrained(folder, legacy=True, local_files_only=True)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def build_llama(config: LlamaConfig, dtype: torch.dtype) -> LlamaForCausalLM:
    """A LLaMA with random weights, on the current default device (``torch.device`` context)."""
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=dtype)


def _check_8bit_possible(device_8bit: int) -> torch.device:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise DeviceError(
            "low_resource: True loads the LLM in 8 bit through bitsandbytes, which is not installed; "
            "install bitsandbytes on a CUDA machine, or set low_resource: False"
        )
    try:
        return resolve_device(f"cuda:{device_8bit}")
    except RuntimeError as error:
        raise DeviceError(
            f"low_resource: True needs a CUDA GPU for the 8-bit LLM (bitsandbytes runs on CUDA only): {error}; "
            "set low_resource: False on CPU or NPU"
        ) from error


def load_llama(folder: Path, dtype: torch.dtype, low_resource: bool, device_8bit: int) -> LlamaForCausalLM:
    """The LLaMA of ``folder`` with its weights, frozen, in eval mode.

    ``low_resource`` loads it in 8 bit (bitsandbytes) onto GPU ``device_8bit``. Every weight the
    model needs must be in the folder: a missing one is an error, not a random initialisation.
    The ``rotary_emb.inv_freq`` buffers that 2023 checkpoints carry are recomputed by transformers
    and need not be present.
    """
    extra = {}
    if low_resource:
        device = _check_8bit_possible(device_8bit)
        extra = {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "device_map": {"": device.index}}
    llama, info = LlamaForCausalLM.from_pretrained(
        folder,
        dtype=dtype,
        attn_implementation="sdpa",
        local_files_only=True,
        output_loading_info=True,
        # reported below, in this project's words, instead of raised by transformers
        ignore_mismatched_sizes=True,
        **extra,
    )
    problems = []
    if info["missing_keys"]:
        problems.append(f"missing: {', '.join(sorted(info['missing_keys']))}")
    unexpected = [key for key in info["unexpected_keys"] if not key.endswith("rotary_emb.inv_freq")]
    if unexpected:
        problems.append(f"unexpected: {', '.join(sorted(unexpected))}")
    for key, file_shape, model_shape in sorted(info["mismatched_keys"]):
        problems.append(f"{key}: the folder has shape {list(file_shape)}, config.json asks for {list(model_shape)}")
    if info["error_msgs"]:
        problems.extend(info["error_msgs"])
    if problems:
        raise WeightLoadError(f"cannot load the LLM from {folder}:\n  " + "\n  ".join(problems))
    llama.requires_grad_(False)
    llama.eval()
    logger.info("Loaded the LLM from %s (%s)", folder, llama_size_name(llama.config.hidden_size))
    return llama
