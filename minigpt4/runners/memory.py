"""Memory for the big LLMs: activation checkpointing and FSDP2 sharding of the frozen LLM.

Both are ``run:`` options, off by default, applied by the runner before the model is wrapped in
DDP (:func:`prepare_model`):

* ``run.llm_activation_checkpointing``: every decoder layer of the frozen LLM keeps only its
  input during the forward and recomputes the rest in the backward (non-reentrant
  ``torch.utils.checkpoint``). The layers' weights stay frozen; the gradient of the projection
  still flows through the whole LLM, as without checkpointing.
* ``run.shard_llm``: under torchrun with several ranks, the frozen LLM's parameters are sharded
  across the ranks with PyTorch's FSDP2 (``fully_shard``): one unit per decoder layer, gathered for
  its forward and again for its backward, and the embedding, final norm and LM head in the root
  unit. Every trainable parameter (``llama_proj``; an adapter inside the LLM is passed to FSDP as
  ignored) and everything outside the LLM stays a whole tensor on each rank, reduced by DDP as
  before, so checkpoints, the optimizer and resume are unchanged. The model is then loaded on the
  CPU and placed on the device shard by shard (:func:`build_model_for_sharding`), so that no rank
  ever holds the whole LLM on its device. The root unit gathers the embedding and the LM head when
  the model's ``forward`` starts, so a sharded model is run through ``forward`` (training, a
  validation loss); calling ``embed_tokens`` or ``generate`` on it directly finds those two sharded.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.checkpoint import checkpoint

from minigpt4.common.config import ConfigError
from minigpt4.common.dist_utils import get_world_size, is_dist_avail_and_initialized

logger = logging.getLogger(__name__)

# The attribute under which a model holds its frozen LLM (MiniGPT4's name, kept from the reference).
LLM_ATTRIBUTE = "llama_model"


def check_memory_options(model_cfg: Any, run_cfg: Any) -> None:
    """Refuse combinations the memory options cannot work with, before anything is loaded."""
    if run_cfg.shard_llm and model_cfg.low_resource:
        raise ConfigError(
            "run.shard_llm: the 8-bit LLM of model.low_resource cannot be sharded (FSDP shards plain "
            "tensors); set one of them to False"
        )


def shards_llm(run_cfg: Any) -> bool:
    """Whether this run shards the LLM: ``run.shard_llm`` and a process group of several ranks."""
    return bool(run_cfg.shard_llm) and is_dist_avail_and_initialized() and get_world_size() > 1


def build_model_for_sharding(model_cls: Any, model_cfg: DictConfig, device: torch.device) -> nn.Module:
    """``model_cls.from_config`` for a run that shards the LLM: the model stays on the CPU (the
    runner's :func:`prepare_model` places the LLM shard by shard, then the rest), with its ``auto``
    precisions resolved for ``device`` as ``from_config(cfg, device)`` would."""
    from minigpt4.models.mini_gpt4 import llm_dtype, vit_dtype

    resolved = OmegaConf.to_container(model_cfg, resolve=True)
    resolved["vit_precision"] = str(vit_dtype(model_cfg, device)).removeprefix("torch.")
    resolved["llm_precision"] = str(llm_dtype(model_cfg, device)).removeprefix("torch.")
    return model_cls.from_config(resolved, None)


def decoder_layers(llm: nn.Module) -> list[nn.Module]:
    """The LLM's decoder layers: the modules of the classes transformers names in
    ``_no_split_modules`` (``LlamaDecoderLayer``, ``MistralDecoderLayer``, ``Qwen2DecoderLayer``)."""
    names = set(getattr(llm, "_no_split_modules", None) or ())
    layers = [m for m in llm.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(
            f"run.llm_activation_checkpointing / run.shard_llm: {type(llm).__name__} names no decoder layer class "
            "(transformers' _no_split_modules), so its layers cannot be found"
        )
    return layers


def _checkpointed(forward: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    run.activation_checkpointed = True
    return run


def checkpoint_layers(layers: Iterable[nn.Module]) -> int:
    """Run each layer's forward under non-reentrant activation checkpointing; returns the count.
    The module tree, the parameter names and the state_dict keys stay as they are (no wrapper
    module), so the checkpoint format and DDP's parameter list do not change. A layer already
    checkpointed (a model trained a second time) is left as it is."""
    count = 0
    for layer in layers:
        if not getattr(layer.forward, "activation_checkpointed", False):
            layer.forward = _checkpointed(layer.forward)
        count += 1
    return count


def shard_frozen_llm(model: nn.Module, llm: nn.Module, device: torch.device) -> None:
    """FSDP2 over the frozen parameters of ``llm`` across all ranks: one unit per decoder layer,
    the root unit on ``model`` for the LLM's other parameters (embedding, final norm, LM head,
    tied or not). ``model`` is the root so that it is the first unit to run forward: the embedding
    is also called outside the LLM's own forward (the prompt and text tokens). Trainable parameters
    and every parameter outside ``llm`` are left to the caller (``ignored_params``), whole."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (get_world_size(),))
    trainable = {p for p in model.parameters() if p.requires_grad}
    for layer in decoder_layers(llm):
        fully_shard(layer, mesh=mesh, ignored_params=trainable)
    in_llm = set(llm.parameters())
    outside = {p for p in model.parameters() if p not in in_llm}
    fully_shard(model, mesh=mesh, ignored_params=trainable | outside)


def _is_sharded(model: nn.Module) -> bool:
    """Whether an earlier run sharded ``model`` already (FSDP is imported only here: it is slow)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def prepare_model(model: nn.Module, device: torch.device, run_cfg: Any) -> nn.Module:
    """The model as the runner trains it, on ``device``: activation checkpointing of the LLM's
    layers (``run.llm_activation_checkpointing``), then the frozen LLM sharded across the ranks
    (``run.shard_llm``, before anything is moved, so that the LLM reaches the device one layer's
    shard at a time), then the rest moved to ``device``. Returns the same module (its class
    extended by FSDP when sharded); DDP is applied by the caller."""
    llm = getattr(model, LLM_ATTRIBUTE, None)
    if (run_cfg.llm_activation_checkpointing or run_cfg.shard_llm) and llm is None:
        raise ConfigError(
            f"run.llm_activation_checkpointing / run.shard_llm: {type(model).__name__} has no {LLM_ATTRIBUTE}"
        )
    if run_cfg.llm_activation_checkpointing:
        count = checkpoint_layers(decoder_layers(llm))
        logger.info("Activation checkpointing on the LLM's %d decoder layers", count)
    if run_cfg.shard_llm and not _is_sharded(model):
        if shards_llm(run_cfg):
            shard_frozen_llm(model, llm, device)
            logger.info("The frozen LLM is sharded across %d ranks (FSDP2)", get_world_size())
        else:
            logger.warning("run.shard_llm: one process, nothing to shard across; the LLM is held whole")
    return model.to(device)


__all__ = [
    "build_model_for_sharding",
    "check_memory_options",
    "checkpoint_layers",
    "decoder_layers",
    "prepare_model",
    "shard_frozen_llm",
    "shards_llm",
]
