"""A ``Chat`` from a YAML config, as ``demo.py`` and ``inference.py`` build it.

The model comes from ``model:`` (``registry.get_model_class(arch).from_config``) and the image
processor from ``datasets.cc_sbu_align.vis_processor.train``, as in the reference's demo (the eval
configs name ``blip2_image_eval`` there).

The Ascend generation edits (``transformers_modify``) are switched on here: always on an NPU, and
elsewhere with ``--patch-generation``. A command-line switch, not a YAML key, because they patch
transformers for the whole process that generates.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import SimpleNamespace

import torch

from minigpt4.common.cli import add_model_arguments
from minigpt4.common.config import Config, ConfigError, options_to_dotlist
from minigpt4.common.device import init_device
from minigpt4.common.registry import registry
from minigpt4.conversation.conversation import Chat

logger = logging.getLogger(__name__)

# The parser's options live in common/cli.py (light).
__all__ = ["add_model_arguments", "build_chat", "generation_config"]


def generation_config(
    cfg_path: str, options: Sequence[str] | None, device: torch.device, patch_generation: bool = False
) -> Config:
    """The config of a process that generates on ``device`` (the demo, ``inference.py``,
    ``evaluate.py``): the Ascend generation edits applied where needed, and on a CUDA device the
    8-bit LLM (``low_resource``) placed on that GPU."""
    import transformers_modify

    if transformers_modify.needed_for(device.type, patch_generation):
        transformers_modify.apply()
    dotlist = options_to_dotlist(options)
    if device.type == "cuda":
        dotlist.append(f"model.device_8bit={device.index or 0}")
    return Config(SimpleNamespace(cfg_path=cfg_path, options=dotlist))


def build_chat(
    cfg_path: str, options: Sequence[str] | None, device: torch.device, patch_generation: bool = False
) -> Chat:
    """Loads the model and processor named by the config onto ``device``."""
    init_device(device)
    cfg = generation_config(cfg_path, options, device, patch_generation)
    if "cc_sbu_align" not in cfg.datasets_cfg or cfg.datasets_cfg.cc_sbu_align.vis_processor.train is None:
        raise ConfigError(f"{cfg_path}: the image processor is read from datasets.cc_sbu_align.vis_processor.train")
    if not cfg.model_cfg.ckpt:
        logger.warning(
            "%s: model.ckpt is empty, so llama_proj (the projection into the LLM) is untrained and random: "
            "the answers mean nothing; set model.ckpt to a MiniGPT-4 checkpoint (--options model.ckpt=...)",
            cfg_path,
        )
    logger.info("Initializing Chat")
    # Built for the device (which decides the `auto` precisions) and moved there; with low_resource
    # the vision tower stays on the CPU and the 8-bit LLM on its GPU (see MiniGPT4._apply).
    model = registry.get_model_class(cfg.model_cfg.arch).from_config(cfg.model_cfg, device).eval()
    processor_cfg = cfg.datasets_cfg.cc_sbu_align.vis_processor.train
    vis_processor = registry.get_processor_class(processor_cfg.name).from_config(processor_cfg)
    chat = Chat(model, vis_processor, device=device)
    logger.info("Initialization Finished (conversation template %s)", chat.conv_template)
    return chat
