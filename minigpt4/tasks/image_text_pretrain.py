"""``image_text_pretrain``: the task of both MiniGPT-4 stages (``run.task`` in the train YAMLs).

A task says what a run builds from the config and what one training step computes; the runner
owns the loop. Before anything is loaded, ``check_inputs`` makes sure that every local file the
run will read exists, so that a wrong path stops the run in seconds, naming the key and the path,
rather than after minutes of loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from minigpt4.common.checkpoint import resume_checkpoint
from minigpt4.common.config import Config
from minigpt4.common.registry import registry
from minigpt4.datasets.builders import build_datasets
from minigpt4.models.blip2_hf import names_transformers_blip2
from minigpt4.models.checkpoint_files import SAFETENSORS_NAME
from minigpt4.models.llm import llama_folder, require_llama_tokenizer
from minigpt4.models.loaders import is_url
from minigpt4.models.mini_gpt4 import REPO_ROOT
from minigpt4.runners.memory import build_model_for_sharding, check_memory_options, shards_llm


def _origin(cfg: Any, key: str) -> str:
    """`` (set in FILE)``: the YAML file (or ``--options``) that set ``model.<key>``, so that a
    placeholder from a default YAML the user never opened is found; empty where unknown."""
    origin = cfg.origin(f"model.{key}") if isinstance(cfg, Config) else None
    return f" (set in {origin})" if origin else ""


# model: keys naming weight files, each a local path or a URL (downloaded when the model loads).
WEIGHT_KEYS = ("vit_weights", "q_former_model", "ckpt")


@registry.register_task("image_text_pretrain")
class ImageTextPretrainTask:
    @classmethod
    def setup_task(cls, cfg: Any) -> ImageTextPretrainTask:
        del cfg  # the reference's signature; this task has no settings of its own
        return cls()

    def check_inputs(self, cfg: Any) -> None:
        """Raise FileNotFoundError for the first configured local input that does not exist: the
        weight files (``ckpt`` only when set, ``q_former_model`` only with a Q-Former), the LLM
        folder (and TokenizerError for a tokenizer
        that is missing, unreadable or does not fit its config.json), the prompt file (looked up in the
        working directory, then the repository, as the model does) and the resume checkpoint (a file,
        or a run folder holding one)."""
        model_cfg = cfg.model_cfg
        # a transformers Blip2 folder replaces both vision files; the model's loader checks it
        vision_folder = names_transformers_blip2(model_cfg)
        for key in WEIGHT_KEYS:
            location = model_cfg[key]
            if vision_folder and model_cfg.has_qformer and key in ("vit_weights", "q_former_model"):
                continue
            if key == "q_former_model" and not model_cfg.has_qformer:
                continue  # no Q-Former, no BLIP-2 file read
            path = Path(location).expanduser()
            # model.ckpt may also be a folder written by tools/export_checkpoint.py
            exported = key == "ckpt" and (path / SAFETENSORS_NAME).is_file()
            if (location or key != "ckpt") and not is_url(location) and not (path.is_file() or exported):
                raise FileNotFoundError(f"model.{key}: weight file '{location}' does not exist{_origin(cfg, key)}")
        try:
            folder = llama_folder(model_cfg.llama_model)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{error}{_origin(cfg, 'llama_model')}") from None
        require_llama_tokenizer(folder)
        prompt_path = model_cfg.prompt_path
        if prompt_path and not (Path(prompt_path).is_file() or (REPO_ROOT / prompt_path).is_file()):
            raise FileNotFoundError(f"model.prompt_path: '{prompt_path}' does not exist")
        if cfg.run_cfg.resume_ckpt_path:
            resume_checkpoint(cfg.run_cfg.resume_ckpt_path)

    def build_datasets(self, cfg: Any) -> dict[str, dict[str, Dataset]]:
        """``{name: {"train": dataset}}``; shard patterns that match nothing fail here."""
        return build_datasets(cfg.datasets_cfg)

    def build_model(self, cfg: Any, device: torch.device | None = None) -> nn.Module:
        """The model, loaded; given the run's device, its ``auto`` precisions are chosen for that
        device (``run.device: cpu`` on a GPU machine computes in fp32) and it is returned there."""
        model_cls = registry.get_model_class(cfg.model_cfg.arch)
        check_memory_options(cfg.model_cfg, cfg.run_cfg)
        if device is not None and shards_llm(cfg.run_cfg):
            return build_model_for_sharding(model_cls, cfg.model_cfg, device)  # FSDP places the LLM
        return model_cls.from_config(cfg.model_cfg, device)

    def train_step(self, model: nn.Module, samples: dict[str, Any]) -> dict[str, Any]:
        """The model's output for one batch: ``loss`` and the LLM token counts (``tokens``,
        ``padded_tokens``) that throughput is measured in."""
        return model(samples)
