"""The three datasets of MiniGPT-4, under the reference's names: ``laion`` and ``cc_sbu`` (stage 1,
webdataset shards) and ``cc_sbu_align`` (stage 2, a folder of described images)."""

from __future__ import annotations

from torch.utils.data import Dataset

from minigpt4.common.registry import registry
from minigpt4.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from minigpt4.datasets.datasets.cc_sbu_dataset import CCSBUAlignDataset
from minigpt4.datasets.datasets.image_text_shards import ImageTextShards, resolve_shards


class ShardBuilder(BaseDatasetBuilder):
    """Shards in img2dataset's layout, read as an endless resampled stream."""

    def build_datasets(self) -> dict[str, Dataset]:
        vis_processor, text_processor = self.train_processors()
        urls = resolve_shards(self.config.build_info.storage, self.name)
        dataset = ImageTextShards(
            urls, vis_processor, text_processor, name=self.name, sample_ratio=self.config.sample_ratio
        )
        return {"train": dataset}


@registry.register_builder("laion")
class LaionBuilder(ShardBuilder):
    name = "laion"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/laion/defaults.yaml"}  # noqa: RUF012


@registry.register_builder("cc_sbu")
class CCSBUBuilder(ShardBuilder):
    name = "cc_sbu"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/cc_sbu/defaults.yaml"}  # noqa: RUF012


@registry.register_builder("cc_sbu_align")
class CCSBUAlignBuilder(BaseDatasetBuilder):
    """``build_info.storage`` is the folder with ``filter_cap.json`` and ``image/``."""

    name = "cc_sbu_align"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/cc_sbu/align.yaml"}  # noqa: RUF012

    def build_datasets(self) -> dict[str, Dataset]:
        vis_processor, _ = self.train_processors()
        dataset = CCSBUAlignDataset(
            vis_processor, self.config.build_info.storage, name=self.name, sample_ratio=self.config.sample_ratio
        )
        return {"train": dataset}
