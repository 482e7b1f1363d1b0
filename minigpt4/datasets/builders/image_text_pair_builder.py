"""The three datasets of MiniGPT-4, under the reference's names: ``laion`` and ``cc_sbu`` (stage 1,
webdataset shards) and ``cc_sbu_align`` (stage 2, a folder of described images)."""

from __future__ import annotations

import logging

from torch.utils.data import Dataset

from minigpt4.common.registry import registry
from minigpt4.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from minigpt4.datasets.datasets.cc_sbu_dataset import CCSBUAlignDataset
from minigpt4.datasets.datasets.held_out import HeldOutError, choose_held_out
from minigpt4.datasets.datasets.image_text_shards import ImageTextShards, resolve_shards

logger = logging.getLogger(__name__)


class ShardBuilder(BaseDatasetBuilder):
    """Shards in img2dataset's layout, read as an endless resampled stream."""

    def build_datasets(self) -> dict[str, Dataset]:
        if self.config.held_out:
            raise HeldOutError(
                f"datasets.{self.name}.held_out: a stream of shards has no held-out split; hold out part of "
                "cc_sbu_align instead"
            )
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
        """``{"train": dataset}``, plus one dataset per ``held_out`` split, whose images leave ``train``."""
        vis_processor, _ = self.train_processors()
        dataset = CCSBUAlignDataset(
            vis_processor, self.config.build_info.storage, name=self.name, sample_ratio=self.config.sample_ratio
        )
        if not self.config.held_out:
            return {"train": dataset}
        held_out = choose_held_out(list(dataset.img_ids), self.config.held_out, self.config.held_out_seed, self.name)
        eval_processor = self.eval_processor()
        splits = {split: dataset.subset(ids, eval_processor) for split, ids in held_out.items()}
        taken = {i for ids in held_out.values() for i in ids}
        splits["train"] = dataset.subset([i for i in dataset.img_ids if i not in taken])
        logger.info(
            "%s: %s", self.name, ", ".join(f"{split} {len(part)} samples" for split, part in sorted(splits.items()))
        )
        return splits
