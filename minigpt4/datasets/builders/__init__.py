"""Dataset builders by registered name, and ``build_datasets`` for a whole ``datasets:`` section."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from minigpt4.common.registry import registry
from minigpt4.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from minigpt4.datasets.builders.image_text_pair_builder import CCSBUAlignBuilder, CCSBUBuilder, LaionBuilder


def build_datasets(datasets_cfg: Any) -> dict[str, dict[str, Dataset]]:
    """``{name: {"train": dataset}}`` for every entry of ``datasets:`` (``Config.datasets_cfg``)."""
    if not datasets_cfg:
        raise ValueError("the config has no datasets")
    return {name: registry.get_builder_class(name)(datasets_cfg[name]).build_datasets() for name in datasets_cfg}


__all__ = ["BaseDatasetBuilder", "CCSBUAlignBuilder", "CCSBUBuilder", "LaionBuilder", "build_datasets"]
