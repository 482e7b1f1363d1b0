"""What every dataset builder shares: its default YAML and its processors, read from a
``datasets.<name>`` config section (``minigpt4.common.schema.DatasetConfig``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from torch.utils.data import Dataset

from minigpt4.common.registry import UnknownNameError, registry
from minigpt4.processors.base_processor import BaseProcessor


class BaseDatasetBuilder:
    """``name`` is the registered name; it becomes the built dataset's ``.name``.
    ``DATASET_CONFIG_DICT`` maps a ``type`` to the default YAML, relative to the package."""

    name: ClassVar[str]
    DATASET_CONFIG_DICT: ClassVar[dict[str, str]]

    def __init__(self, cfg: Any) -> None:
        self.config = cfg

    @classmethod
    def default_config_path(cls, type: str = "default") -> str:
        if type not in cls.DATASET_CONFIG_DICT:
            valid = ", ".join(cls.DATASET_CONFIG_DICT)
            raise UnknownNameError(f"unknown type '{type}' for dataset '{cls.name}'; its types: {valid}")
        return str(Path(registry.get_path("library_root")) / cls.DATASET_CONFIG_DICT[type])

    def train_processors(self) -> tuple[BaseProcessor, BaseProcessor]:
        """The ``train`` image processor (required: it decides the image size) and ``train`` text
        processor (the identity when none is configured)."""
        vis_entry = self.config.vis_processor.train
        text_entry = self.config.text_processor.train
        if vis_entry is None:
            raise ValueError(f"datasets.{self.name}.vis_processor.train is not set; it decides the image size")
        vis_processor = registry.get_processor_class(vis_entry.name).from_config(vis_entry)
        if text_entry is None:
            return vis_processor, BaseProcessor()
        return vis_processor, registry.get_processor_class(text_entry.name).from_config(text_entry)

    def eval_processor(self) -> BaseProcessor:
        """The ``eval`` image processor of the held-out splits; when none is configured,
        ``blip2_image_eval`` at the ``train`` processor's size and normalisation (no random crop)."""
        entry = self.config.vis_processor.eval
        if entry is None:
            train = self.config.vis_processor.train
            if train is None:
                raise ValueError(f"datasets.{self.name}.vis_processor.train is not set; it decides the image size")
            entry = {"image_size": train.image_size, "mean": train.mean, "std": train.std}
            return registry.get_processor_class("blip2_image_eval").from_config(entry)
        return registry.get_processor_class(entry.name).from_config(entry)

    def build_datasets(self) -> dict[str, Dataset]:
        raise NotImplementedError
