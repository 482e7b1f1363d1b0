"""Benchmarks as registered dataset builders (``datasets.<name>`` in an eval YAML, run by
``evaluate.py``). Each reads its benchmark's own annotation files, named by role under
``build_info.annotations``, and its images from ``build_info.images``; ``build_datasets``
returns ``{split: BenchmarkDataset}``, limited to ``benchmark.splits`` when that is set.

The image processor is ``vis_processor.eval`` (the benchmarks' default YAMLs:
``blip2_image_eval`` at 224 px), and the question prompt is ``benchmark.prompt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from minigpt4.common.registry import registry
from minigpt4.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from minigpt4.datasets.datasets import benchmarks as bm


class BenchmarkBuilder(BaseDatasetBuilder):
    """``SPLITS``: the splits the benchmark has (each read from the annotation file of that
    role, or, for VQAv2 and OK-VQA, from the ``questions`` and ``annotations`` pair);
    ``IMAGE_NAME``: the default ``build_info.image_name``; ``NEEDS_QUESTION``: whether the prompt
    must hold ``{}`` for the question; ``dataset_class``: the split's dataset."""

    SPLITS: ClassVar[tuple[str, ...]]
    dataset_class: ClassVar[type[bm.BenchmarkDataset]]
    IMAGE_NAME: ClassVar[str] = ""
    NEEDS_QUESTION: ClassVar[bool] = True

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.settings = cfg.benchmark

    def annotation(self, role: str) -> Path:
        files = self.config.build_info.annotations
        key = f"datasets.{self.name}.build_info.annotations.{role}"
        if role not in files or not files[role]:
            raise bm.BenchmarkError(f"{key} is not set (the {self.name} {role} file; see README, Evaluation)")
        path = Path(files[role])
        if not path.is_file():
            raise bm.BenchmarkError(f"{key}: {path} is not a file (see README, Evaluation, for where it comes from)")
        return path

    def images(self) -> Path:
        folder = self.config.build_info.images
        if not folder or not Path(folder).is_dir():
            raise bm.BenchmarkError(f"datasets.{self.name}.build_info.images: {folder!r} is not a folder of images")
        return Path(folder)

    def image_name(self) -> str:
        return self.config.build_info.image_name or self.IMAGE_NAME

    def splits(self) -> list[str]:
        wanted = list(self.settings.splits) or list(self.SPLITS)
        unknown = [s for s in wanted if s not in self.SPLITS]
        if unknown:
            raise bm.BenchmarkError(
                f"datasets.{self.name}.benchmark.splits: {unknown[0]!r} is not a split of {self.name} "
                f"(its splits: {', '.join(self.SPLITS)})"
            )
        return wanted

    def prompt(self) -> str:
        prompt = self.settings.prompt
        if not prompt.strip():
            raise bm.BenchmarkError(f"datasets.{self.name}.benchmark.prompt is empty: the eval YAML sets it")
        if self.NEEDS_QUESTION and "{}" not in prompt:
            raise bm.BenchmarkError(
                f"datasets.{self.name}.benchmark.prompt has no '{{}}' where the question goes: {prompt!r}"
            )
        return prompt

    def vis_processor(self) -> Any:
        entry = self.config.vis_processor.eval
        if entry is None:
            raise bm.BenchmarkError(f"datasets.{self.name}.vis_processor.eval is not set; it decides the image size")
        return registry.get_processor_class(entry.name).from_config(entry)

    def read_split(self, split: str) -> tuple[list[bm.BenchmarkQuestion], dict[str, Any]]:
        """The split's questions and the scorer's keyword arguments for the dataset class."""
        raise NotImplementedError

    def build_datasets(self) -> dict[str, bm.BenchmarkDataset]:
        prompt, processor = self.prompt(), self.vis_processor()
        datasets = {}
        for split in self.splits():
            questions, scoring = self.read_split(split)
            bm.check_images(f"{self.name} {split}", questions, self.config.build_info.images)
            datasets[split] = self.dataset_class(self.name, split, questions, processor, prompt, **scoring)
        return datasets


@registry.register_builder("coco_caption")
class COCOCaptionBuilder(BenchmarkBuilder):
    """``annotations.test``: ``coco_karpathy_test.json``; ``images``: the COCO folder holding ``val2014/``."""

    name = "coco_caption"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/coco_caption/defaults.yaml"}  # noqa: RUF012
    SPLITS = ("test",)
    NEEDS_QUESTION = False
    dataset_class = bm.CaptionBenchmark

    def read_split(self, split: str) -> tuple[list[bm.BenchmarkQuestion], dict[str, Any]]:
        questions, references = bm.read_karpathy(self.annotation(split), self.images())
        return questions, {"references": references}


@registry.register_builder("nocaps")
class NoCapsBuilder(BenchmarkBuilder):
    """``annotations.val``: ``nocaps_val_4500_captions.json``; ``images``: the validation images."""

    name = "nocaps"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/nocaps/defaults.yaml"}  # noqa: RUF012
    SPLITS = ("val",)
    NEEDS_QUESTION = False
    dataset_class = bm.CaptionBenchmark

    def read_split(self, split: str) -> tuple[list[bm.BenchmarkQuestion], dict[str, Any]]:
        questions, references, domains = bm.read_nocaps(self.annotation(split), self.images())
        return questions, {"references": references, "domains": domains}


class VQAFilesBuilder(BenchmarkBuilder):
    """``annotations.questions`` and ``annotations.annotations``, the official pair of files."""

    SPLITS = ("val",)
    IMAGE_NAME = "COCO_val2014_{image_id:012d}.jpg"
    dataset_class = bm.VQABenchmark

    def read_split(self, _split: str) -> tuple[list[bm.BenchmarkQuestion], dict[str, Any]]:
        questions, answers = bm.read_vqa(
            self.annotation("questions"), self.annotation("annotations"), self.images(), self.image_name()
        )
        return questions, {"answers": answers}


@registry.register_builder("vqav2")
class VQAv2Builder(VQAFilesBuilder):
    name = "vqav2"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/vqav2/defaults.yaml"}  # noqa: RUF012


@registry.register_builder("okvqa")
class OKVQABuilder(VQAFilesBuilder):
    name = "okvqa"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/okvqa/defaults.yaml"}  # noqa: RUF012


@registry.register_builder("vizwiz")
class VizWizBuilder(BenchmarkBuilder):
    """``annotations.val``: ``val.json``; ``images``: the ``val/`` image folder."""

    name = "vizwiz"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/vizwiz/defaults.yaml"}  # noqa: RUF012
    SPLITS = ("val",)
    dataset_class = bm.VQABenchmark

    def read_split(self, split: str) -> tuple[list[bm.BenchmarkQuestion], dict[str, Any]]:
        questions, answers = bm.read_vizwiz(self.annotation(split), self.images())
        return questions, {"answers": answers}


@registry.register_builder("textvqa")
class TextVQABuilder(BenchmarkBuilder):
    """``annotations.val``: ``TextVQA_0.5.1_val.json``; ``images``: ``train_images/``."""

    name = "textvqa"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/textvqa/defaults.yaml"}  # noqa: RUF012
    SPLITS = ("val",)
    IMAGE_NAME = "{image_id}.jpg"
    dataset_class = bm.VQABenchmark

    def read_split(self, split: str) -> tuple[list[bm.BenchmarkQuestion], dict[str, Any]]:
        questions, answers = bm.read_textvqa(self.annotation(split), self.images(), self.image_name())
        return questions, {"answers": answers}


@registry.register_builder("gqa")
class GQABuilder(BenchmarkBuilder):
    """``annotations.testdev``: ``testdev_balanced_questions.json``; ``images``: GQA's ``images/``."""

    name = "gqa"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/gqa/defaults.yaml"}  # noqa: RUF012
    SPLITS = ("testdev",)
    IMAGE_NAME = "{image_id}.jpg"
    dataset_class = bm.GQABenchmark

    def read_split(self, split: str) -> tuple[list[bm.BenchmarkQuestion], dict[str, Any]]:
        questions, truths = bm.read_gqa(self.annotation(split), self.images(), self.image_name())
        return questions, {"truths": truths}


@registry.register_builder("pope")
class POPEBuilder(BenchmarkBuilder):
    """``annotations.{adversarial,popular,random}``: ``coco_pope_<split>.json``; ``images``: COCO ``val2014/``."""

    name = "pope"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/pope/defaults.yaml"}  # noqa: RUF012
    SPLITS = ("adversarial", "popular", "random")
    dataset_class = bm.POPEBenchmark

    def read_split(self, split: str) -> tuple[list[bm.BenchmarkQuestion], dict[str, Any]]:
        questions, labels = bm.read_pope(self.annotation(split), self.images())
        return questions, {"labels": labels}


@registry.register_builder("vsr")
class VSRBuilder(BenchmarkBuilder):
    """``annotations.test``: VSR's zero-shot ``test.jsonl``; ``images``: the VSR (COCO 2017) images."""

    name = "vsr"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/vsr/defaults.yaml"}  # noqa: RUF012
    SPLITS = ("test",)
    dataset_class = bm.LabelBenchmark

    def read_split(self, split: str) -> tuple[list[bm.BenchmarkQuestion], dict[str, Any]]:
        questions, labels = bm.read_vsr(self.annotation(split), self.images())
        return questions, {"labels": labels}


@registry.register_builder("hateful_memes")
class HatefulMemesBuilder(BenchmarkBuilder):
    """``annotations.dev``: ``dev.jsonl``; ``images``: the dataset folder (holding ``img/``)."""

    name = "hateful_memes"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/hateful_memes/defaults.yaml"}  # noqa: RUF012
    SPLITS = ("dev",)
    dataset_class = bm.LabelBenchmark

    def read_split(self, split: str) -> tuple[list[bm.BenchmarkQuestion], dict[str, Any]]:
        questions, labels = bm.read_hateful_memes(self.annotation(split), self.images())
        return questions, {"labels": labels}


@registry.register_builder("attribute_naming")
class AttributeNamingBuilder(BenchmarkBuilder):
    """``annotations.heldout``: a ``filter_cap.json`` with attributes (the tiny world's held-out
    split); ``images``: its ``image/`` folder; ``benchmark.scored_attributes``: what to score."""

    name = "attribute_naming"
    DATASET_CONFIG_DICT = {"default": "configs/datasets/attribute_naming/defaults.yaml"}  # noqa: RUF012
    SPLITS = ("heldout",)
    IMAGE_NAME = "{image_id}.jpg"
    NEEDS_QUESTION = False
    dataset_class = bm.AttributeBenchmark

    def read_split(self, split: str) -> tuple[list[bm.BenchmarkQuestion], dict[str, Any]]:
        questions, truths, vocabulary = bm.read_attributes(
            self.annotation(split), self.images(), self.image_name(), list(self.settings.scored_attributes)
        )
        return questions, {"truths": truths, "vocabulary": vocabulary}
