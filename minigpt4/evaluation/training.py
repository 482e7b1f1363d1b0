"""Benchmark splits scored during training: a benchmark configured under the training YAML's
``datasets:`` (as in the eval YAMLs) whose split ``run.valid_splits`` or ``run.test_splits``
names is answered after each epoch with the model being trained, through the loop evaluate.py
uses (``evaluate_benchmarks``: a fresh one-turn conversation per question, ``Chat.answer_batch``,
greedy, ``run.batch_size_eval``, shared out over the ranks, rank 0 scoring), and its headline
metric becomes the split's ``agg_metrics`` (higher is better), which ``checkpoint_best.pth`` is
chosen by. Predictions and figures (``<benchmark>_<split>.metrics.json``) go to
``<run folder>/eval/epoch_<n>/``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minigpt4.common.config import ConfigError
from minigpt4.common.device import autocast
from minigpt4.common.dist_utils import broadcast_object, get_rank, get_world_size
from minigpt4.common.registry import registry
from minigpt4.datasets.datasets.benchmarks import BenchmarkDataset
from minigpt4.evaluation.run import EvalOptions, evaluate_benchmarks, model_settings


def is_benchmark(name: str) -> bool:
    from minigpt4.datasets.builders.benchmark_builder import BenchmarkBuilder

    return issubclass(registry.get_builder_class(name), BenchmarkBuilder)


def configured_benchmark_splits(datasets_cfg: Any) -> dict[str, list[str]]:
    """``{split: [benchmark names]}`` for every benchmark under ``datasets:`` (its
    ``benchmark.splits``, else all the builder's splits)."""
    splits: dict[str, list[str]] = {}
    for name, dataset in datasets_cfg.items():
        if is_benchmark(name):
            for split in list(dataset.benchmark.splits) or registry.get_builder_class(name).SPLITS:
                splits.setdefault(split, []).append(name)
    return splits


def check_benchmark_splits(cfg: Any, shards_llm: bool) -> None:
    """Refuse a split that the run evaluates and more than one dataset holds where one is a
    benchmark (its figures would be ambiguous), and benchmark generation with the LLM sharded."""
    run = cfg.run_cfg
    wanted = [*run.valid_splits, *run.test_splits]
    benchmarks = configured_benchmark_splits(cfg.datasets_cfg)
    for split in wanted:
        if split not in benchmarks:
            continue
        holders = [*benchmarks[split], *(n for n, d in cfg.datasets_cfg.items() if split in d.held_out)]
        if len(holders) > 1:
            raise ConfigError(
                f"run.valid_splits / test_splits: split {split!r} is held by {', '.join(holders)}; a benchmark's "
                "split must be the only one of its name (set datasets.<name>.benchmark.splits)"
            )
        if shards_llm:
            raise ConfigError(
                f"run.valid_splits / test_splits: benchmark split {split!r} is answered by generation, which "
                "run.shard_llm does not support (each rank generates alone); evaluate with evaluate.py instead"
            )


def benchmark_of_split(datasets: dict[str, dict[str, Any]], split: str) -> BenchmarkDataset | None:
    """The benchmark dataset holding ``split``, or None where no benchmark holds it."""
    found = [by_split[split] for by_split in datasets.values() if isinstance(by_split.get(split), BenchmarkDataset)]
    if len(found) > 1:
        raise ConfigError(f"split {split!r} is held by several benchmarks; set datasets.<name>.benchmark.splits")
    return found[0] if found else None


def headline(dataset: BenchmarkDataset, figures: dict[str, Any]) -> float:
    """The benchmark's headline figure (``dataset.headline_metric``), NaN where it is undefined."""
    name = dataset.headline_metric
    value = figures.get(name, (figures.get("scores") or {}).get(name))
    return float(value) if isinstance(value, int | float) else math.nan


def scalar_figures(figures: dict[str, Any]) -> dict[str, float]:
    """The figures the epoch line, log.txt and TensorBoard take: every top-level number (caption
    benchmarks: each score); the full figures are in ``metrics.json`` beside the predictions."""
    flat = {**(figures.get("scores") or {}), **figures}
    return {k: v for k, v in flat.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def evaluate_benchmark_split(
    model: nn.Module,
    dataset: BenchmarkDataset,
    cfg: Any,
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    output_dir: Path,
) -> dict[str, Any]:
    """Answers ``dataset`` with ``model`` (unwrapped, in eval mode) on every rank's share, scores on
    rank 0 and returns the figures on every rank: ``benchmark``, ``figures`` and ``agg_metrics``."""
    from minigpt4.conversation.conversation import Chat

    run = cfg.run_cfg
    max_new_tokens = int(cfg.datasets_cfg[dataset.name].benchmark.max_new_tokens)
    chat = Chat(model, dataset.vis_processor, device=device)

    def answer_batch(_dataset: BenchmarkDataset, images: list[torch.Tensor], prompts: list[str]) -> list[str]:
        with torch.no_grad(), autocast(device, dtype):
            return chat.answer_batch(images, prompts, max_new_tokens=max_new_tokens, do_sample=False)

    options = EvalOptions(
        batch_size=int(run.batch_size_eval),
        num_workers=int(run.num_workers),
        rank=get_rank(),
        world_size=get_world_size(),
    )
    results = evaluate_benchmarks(
        answer_batch,
        {dataset.name: {dataset.split: dataset}},
        output_dir,
        lambda d: model_settings(cfg, d, max_new_tokens),
        options,
    )
    outcome = None
    if results is not None:
        figures = results[f"{dataset.name}/{dataset.split}"]
        outcome = {"benchmark": dataset.name, "figures": figures, "agg_metrics": headline(dataset, figures)}
        metrics = {"results": {f"{dataset.name}/{dataset.split}": figures}}
        path = output_dir / f"{dataset.name}_{dataset.split}.metrics.json"
        path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return broadcast_object(outcome)
