"""``image_text_pretrain``: the task of both MiniGPT-4 stages (``run.task`` in the train YAMLs).

A task says what a run builds from the config, what one training step computes and how a
held-out split is evaluated (``valid_step`` per batch, ``evaluation`` over a split on all ranks,
``after_evaluation`` into the figures logged, ``evaluate_split`` choosing between them); the
runner owns the loops. A held-out part of a training dataset gives its loss: the mean over every
target token of the split, whatever the batch size and the number of ranks. A benchmark's split
(a benchmark configured under ``datasets:``) is answered by the model and scored, its headline
metric the split's ``agg_metrics`` (``minigpt4.evaluation.training``). Before anything is
loaded, ``check_inputs`` makes sure that every local file the run will read exists and every
held-out split named in ``run:`` is configured, so that a wrong path stops the run in seconds,
naming the key and the path, rather than after minutes of loading.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from minigpt4.common.checkpoint import resume_checkpoint
from minigpt4.common.config import Config, ConfigError
from minigpt4.common.device import autocast, move_to_device
from minigpt4.common.dist_utils import all_reduce, get_rank, get_world_size
from minigpt4.common.registry import registry
from minigpt4.datasets.builders import build_datasets
from minigpt4.datasets.datasets.dataloader_utils import build_eval_loader
from minigpt4.evaluation.training import (
    benchmark_of_split,
    check_benchmark_splits,
    configured_benchmark_splits,
    evaluate_benchmark_split,
    scalar_figures,
)
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
        for key, splits in (("valid_splits", cfg.run_cfg.valid_splits), ("test_splits", cfg.run_cfg.test_splits)):
            held_out = set()
            if splits:
                held_out = {split for dataset in cfg.datasets_cfg.values() for split in dataset.held_out}
                held_out |= set(configured_benchmark_splits(cfg.datasets_cfg))
            if missing := [split for split in splits if split not in held_out]:
                raise ConfigError(
                    f"run.{key}: no dataset holds out a split {', '.join(map(repr, missing))}; "
                    f"set datasets.cc_sbu_align.held_out.{missing[0]} (a fraction or image_ids), or configure "
                    "a benchmark with that split under datasets:"
                )
        if cfg.run_cfg.valid_splits or cfg.run_cfg.test_splits:
            check_benchmark_splits(cfg, shards_llm(cfg.run_cfg))

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

    def valid_step(self, model: nn.Module, samples: dict[str, Any]) -> torch.Tensor:
        """(loss summed over the batch's target tokens, their number, samples): a float64 device
        tensor (3,). A batch without targets adds nothing; a non-finite loss stays non-finite."""
        out = model(samples)
        if "target_tokens" not in out:
            raise TypeError(
                f"{type(model).__name__} returns no target_tokens, which the held-out loss is averaged over"
            )
        loss = out["loss"].detach().double()
        targets = torch.as_tensor(out["target_tokens"], dtype=torch.float64, device=loss.device)
        loss_sum = torch.where(targets > 0, loss * targets, 0.0)
        return torch.stack([loss_sum, targets, torch.tensor(float(samples["image"].shape[0]), device=loss.device)])

    def evaluation(
        self,
        model: nn.Module,
        data_loader: Iterable[dict[str, Any]],
        *,
        device: torch.device,
        dtype: torch.dtype | None,
    ) -> dict[str, float]:
        """``valid_step`` over this rank's share of a split, under no_grad and the run's autocast,
        summed over all ranks (one host read at the end): ``loss_sum``, ``target_tokens``, ``samples``."""
        totals = torch.zeros(3, dtype=torch.float64, device=device)
        with torch.no_grad():
            for samples in data_loader:
                with autocast(device, dtype):
                    totals += self.valid_step(model, move_to_device(samples, device))
        loss_sum, targets, count = all_reduce(totals).tolist()
        return {"loss_sum": loss_sum, "target_tokens": targets, "samples": count}

    def evaluate_split(
        self,
        model: nn.Module,
        datasets: dict[str, dict[str, Any]],
        split: str,
        cfg: Any,
        *,
        device: torch.device,
        dtype: torch.dtype | None,
        epoch: int | None,
        output_dir: Path,
    ) -> dict[str, float]:
        """The figures of one held-out split (``after_evaluation``), computed on all ranks with
        ``model`` unwrapped and in eval mode: a benchmark's split is answered and scored
        (``minigpt4.evaluation.training``; predictions under ``output_dir/eval/epoch_<n>/``),
        any other split gives its held-out loss (``evaluation``)."""
        benchmark = benchmark_of_split(datasets, split)
        if benchmark is not None:
            folder = output_dir / "eval" / ("evaluate" if epoch is None else f"epoch_{epoch}")
            result = evaluate_benchmark_split(model, benchmark, cfg, device=device, dtype=dtype, output_dir=folder)
        else:
            run = cfg.run_cfg
            loader = build_eval_loader(
                datasets, split, run, get_rank(), get_world_size(), pin_memory=device.type != "cpu"
            )
            result = self.evaluation(model, loader, device=device, dtype=dtype)
        return self.after_evaluation(val_result=result, split_name=split, epoch=epoch)

    def after_evaluation(self, val_result: dict[str, Any], split_name: str, epoch: int | None) -> dict[str, float]:
        """The figures of a split and ``agg_metrics``, the one the best checkpoint is chosen by
        (higher is better, as in LAVIS). A benchmark's split: its scores (every top-level number)
        and, as ``agg_metrics``, its headline metric (accuracy; CIDEr for captions; F1 for POPE).
        A loss split: ``loss`` (per target token), ``samples`` and minus the loss."""
        del split_name, epoch  # LAVIS's signature; the figures need neither
        if "benchmark" in val_result:
            return {**scalar_figures(val_result["figures"]), "agg_metrics": val_result["agg_metrics"]}
        targets = val_result["target_tokens"]
        loss = val_result["loss_sum"] / targets if targets else math.nan
        return {"loss": loss, "samples": int(val_result["samples"]), "agg_metrics": -loss}
