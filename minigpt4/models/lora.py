"""LoRA adapters on the frozen LLM (``model.lora_r`` > 0), through the ``peft`` library.

Upstream's later keys: ``lora_r`` (0: no adapters, the reference), ``lora_target_modules``
(``[q_proj, v_proj]``), ``lora_alpha`` (16) and ``lora_dropout`` (0.05). Every LLM module whose
name is one of the targets or ends with ``.<target>`` gets a LoRA pair (``lora_A``: in -> r,
kaiming-uniform; ``lora_B``: r -> out, zeros; no bias), which adds
``lora_B(lora_A(dropout(x))) * lora_alpha / lora_r`` to its output. The adapters are injected in
place (``peft.inject_adapter_in_model``): the LLM stays the transformers model it was, only the
targeted Linears become peft's LoRA Linears holding the original one as ``base_layer``. The
adapter weights are fp32 whatever the LLM's dtype (as upstream's, and so that the loss scaler
unscales fp32 gradients); they are the only trainable LLM parameters.

State-dict names (under ``llama_model.``): ``model.layers.{i}.self_attn.q_proj.lora_A.default.weight``.
Upstream's (peft 0.2.0 inside a ``PeftModel``) were
``base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight``; :func:`checkpoint_name` maps
them, so its LoRA checkpoints load strictly instead of being skipped by name.

:func:`merge_lora` folds the adapters into the base weights (peft's ``merge``) and puts the plain
Linears back: the result is an ordinary LLM, saved by :func:`save_merged_llm` as a Hugging Face
folder that ``model.llama_model`` can name with ``lora_r: 0``.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minigpt4.common.errors import MiniGPT4Error

logger = logging.getLogger(__name__)

ADAPTER = "default"  # peft's adapter name; the one adapter this project trains
# A parameter of an adapter (``...q_proj.lora_A.default.weight``), under any prefix.
ADAPTER_KEY = re.compile(r"\.lora_(?:A|B|embedding_A|embedding_B)\.")
# Upstream's names: inside a PeftModel, without the adapter level.
_UPSTREAM_PREFIX = "llama_model.base_model.model."
_UPSTREAM_ADAPTER = re.compile(r"\.(lora_(?:A|B))\.weight$")
# Files of an LLM folder that the merged folder takes over unchanged: the tokenizer and chat template.
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


class LoraError(MiniGPT4Error, ValueError):
    """A LoRA setting that cannot work: a bad value, a target module the LLM lacks, peft missing,
    or a checkpoint whose adapters do not fit the model."""


def lora_enabled(cfg: Any) -> bool:
    return cfg.lora_r > 0


def is_adapter_key(key: str) -> bool:
    return ADAPTER_KEY.search(key) is not None


def checkpoint_name(key: str) -> str:
    """A checkpoint key under this model's names: upstream's peft-0.2.0 LoRA names
    (``llama_model.base_model.model.<name>.lora_A.weight``) become ``llama_model.<name>.lora_A.default.weight``;
    any other key is returned as it is."""
    if not key.startswith(_UPSTREAM_PREFIX):
        return key
    key = "llama_model." + key[len(_UPSTREAM_PREFIX) :]
    return _UPSTREAM_ADAPTER.sub(rf".\1.{ADAPTER}.weight", key)


def _matches(name: str, target: str) -> bool:
    """peft's rule for a list of target names: the module's full name, or its last components."""
    return name == target or name.endswith(f".{target}")


def _linear_names(llm: nn.Module) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, m in llm.named_modules() if isinstance(m, nn.Linear)})


def check_lora(cfg: Any, llm: nn.Module) -> None:
    """Raise :class:`LoraError` for LoRA values that cannot work on ``llm`` (its modules' names are
    read; a weightless stand-in on the meta device does). Nothing is checked with ``lora_r: 0``."""
    if cfg.lora_r < 0:
        raise LoraError(f"model.lora_r must be 0 (no LoRA) or the adapters' rank, got {cfg.lora_r}")
    if not lora_enabled(cfg):
        return
    if cfg.lora_alpha <= 0:
        raise LoraError(
            f"model.lora_alpha must be positive (the adapters' scale is lora_alpha / lora_r), got {cfg.lora_alpha}"
        )
    if not 0.0 <= cfg.lora_dropout < 1.0:
        raise LoraError(f"model.lora_dropout must be in [0, 1), got {cfg.lora_dropout}")
    targets = list(cfg.lora_target_modules)
    if not targets:
        raise LoraError("model.lora_target_modules is empty: name the LLM's Linear layers to adapt (q_proj, v_proj)")
    modules = dict(llm.named_modules())
    for target in targets:
        found = [m for name, m in modules.items() if _matches(name, target)]
        if not found or not all(isinstance(m, (nn.Linear, nn.Embedding)) for m in found):
            what = "matches no module" if not found else "is not a Linear (or Embedding) layer"
            raise LoraError(
                f"model.lora_target_modules: {target!r} {what} of the LLM ({type(llm).__name__}); its Linear "
                f"layers are {', '.join(_linear_names(llm))}"
            )


def _require_peft(cfg: Any) -> None:
    if importlib.util.find_spec("peft") is None:
        raise LoraError(
            f"model.lora_r {cfg.lora_r} adds LoRA adapters through the peft library, which is not installed; "
            "install peft, or set model.lora_r: 0"
        )


def _is_lora_layer(module: nn.Module) -> bool:
    return isinstance(getattr(module, "lora_A", None), nn.ModuleDict) or isinstance(
        getattr(module, "lora_embedding_A", None), nn.ParameterDict
    )


def lora_layers(llm: nn.Module) -> Iterator[nn.Module]:
    """The LLM's modules that carry adapters (peft's LoRA layers)."""
    return (module for module in llm.modules() if _is_lora_layer(module))


def add_lora(llm: nn.Module, cfg: Any) -> nn.Module:
    """``llm`` with LoRA adapters injected as ``cfg`` (the ``model:`` config) says, or unchanged
    with ``lora_r: 0``. Only the adapters train. An 8-bit LLM (``low_resource``) is first prepared
    as peft expects for k-bit training (its non-quantized weights in fp32, the int8 ones frozen);
    activation checkpointing is not switched on here."""
    check_lora(cfg, llm)
    if not lora_enabled(cfg):
        return llm
    _require_peft(cfg)
    from peft import LoraConfig, inject_adapter_in_model, prepare_model_for_kbit_training

    if getattr(llm, "is_loaded_in_8bit", False) or getattr(llm, "is_loaded_in_4bit", False):
        llm = prepare_model_for_kbit_training(llm, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=int(cfg.lora_r),
        lora_alpha=cfg.lora_alpha,
        lora_dropout=float(cfg.lora_dropout),
        target_modules=list(cfg.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    llm.requires_grad_(False)
    inject_adapter_in_model(config, llm, adapter_name=ADAPTER)
    layers = list(lora_layers(llm))
    for layer in layers:
        for part in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
            if hasattr(layer, part):
                getattr(layer, part).float()
    trainable = sum(p.numel() for p in llm.parameters() if p.requires_grad)
    total = sum(p.numel() for p in llm.parameters())
    logger.info(
        "LoRA r=%d alpha=%s dropout=%s on %s: %d layers, %d trainable parameters (%.3f%% of the LLM's %d)",
        cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, ", ".join(cfg.lora_target_modules),
        len(layers), trainable, 100.0 * trainable / max(total, 1), total,
    )  # fmt: skip
    return llm


def set_adapter_mode(llm: nn.Module, mode: bool) -> None:
    """Put the adapters (their dropout) in training or eval mode; the frozen LLM around them stays
    in eval mode."""
    for layer in lora_layers(llm):
        layer.train(mode)


def adapter_rank(state: Mapping[str, torch.Tensor]) -> int | None:
    """The rank of the adapters in a checkpoint (from a ``lora_A`` weight), None without adapters."""
    for key, value in state.items():
        if ".lora_A." in key:
            return int(value.shape[0])
    return None


def check_checkpoint_adapters(state: Mapping[str, torch.Tensor], llm: nn.Module, source: object) -> None:
    """Refuse, in words, a checkpoint with LoRA adapters for a model without them. (A model with
    adapters may load a checkpoint without: a stage-1 projection; its adapters start fresh.)"""
    rank = adapter_rank(state)
    if rank is not None and next(lora_layers(llm), None) is None:
        count = sum(is_adapter_key(key) for key in state)
        raise LoraError(
            f"{source} holds LoRA adapters for the LLM ({count} tensors, rank {rank}) but model.lora_r is 0: set "
            f"model.lora_r: {rank} and the lora_target_modules and lora_alpha it was trained with, or merge the "
            "adapters into the LLM with tools/export_checkpoint.py --merge-llm"
        )
    if rank is None and next(lora_layers(llm), None) is not None:
        logger.info("%s holds no LoRA adapters: they start from their initial values", source)


def explain_adapter_shape(key: str, have: tuple[int, ...], want: tuple[int, ...]) -> str | None:
    """An adapter shape mismatch in words: another rank, or another LLM."""
    if ".lora_A." in key and have[1:] == want[1:]:
        return f"the adapters were trained with lora_r {have[0]}; model.lora_r is {want[0]}"
    if ".lora_B." in key and have[:1] == want[:1]:
        return f"the adapters were trained with lora_r {have[1]}; model.lora_r is {want[1]}"
    if is_adapter_key(key):
        return "the adapters were trained on an LLM of other widths"
    return None


def merge_lora(llm: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights (``W + B A * alpha / r``) and put the plain layers
    back, in place; returns ``llm``, now without any peft module. An 8-bit LLM is refused: merging
    into rounded weights loses the adapters' precision; merge into the 16- or 32-bit LLM."""
    if getattr(llm, "is_loaded_in_8bit", False) or getattr(llm, "is_loaded_in_4bit", False):
        raise LoraError("cannot merge LoRA adapters into an 8-bit LLM; load it in fp16, bf16 or fp32 to merge")
    for name, module in list(llm.named_modules()):
        if _is_lora_layer(module):
            module.merge(safe_merge=True)
            parent, _, child = name.rpartition(".")
            setattr(llm.get_submodule(parent), child, module.get_base_layer())
    if hasattr(llm, "peft_config"):
        del llm.peft_config
    return llm


def save_merged_llm(llm: nn.Module, source_folder: Path, out_folder: Path, dtype: torch.dtype) -> Path:
    """Write ``llm`` (merged, see :func:`merge_lora`) in ``dtype`` as a Hugging Face folder:
    ``config.json``, ``generation_config.json``, safetensors weights, and the tokenizer and chat
    template files of ``source_folder`` (the LLM the adapters were trained on), copied unchanged."""
    if next(lora_layers(llm), None) is not None:
        raise LoraError("the LLM still holds LoRA adapters: merge them first (merge_lora)")
    out_folder.mkdir(parents=True, exist_ok=True)
    llm.to(dtype).save_pretrained(out_folder)
    copied = []
    for name in TOKENIZER_FILES:
        if (source_folder / name).is_file():
            shutil.copy2(source_folder / name, out_folder / name)
            copied.append(name)
    if not copied:
        raise LoraError(f"{source_folder} holds no tokenizer file ({', '.join(TOKENIZER_FILES)}) to copy")
    return out_folder
