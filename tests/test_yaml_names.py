"""Every registered name written in train_configs/, eval_configs/ and the default YAMLs resolves,
and every train/eval YAML loads through Config with the reference's values."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

import minigpt4
from minigpt4.common.config import Config
from minigpt4.common.registry import UnknownNameError, registry

REPO = Path(minigpt4.REPO_ROOT)
USER_YAMLS = sorted([*(REPO / "train_configs").glob("*.yaml"), *(REPO / "eval_configs").glob("*.yaml")])
DEFAULT_YAMLS = sorted((REPO / "minigpt4" / "configs").rglob("*.yaml"))
PROCESSOR_KINDS = ("vis_processor", "text_processor")
# The reference's registered names and the classes behind them.
REFERENCE_CLASSES = {
    "mini_gpt4": "MiniGPT4",
    "laion": "LaionBuilder",
    "cc_sbu": "CCSBUBuilder",
    "cc_sbu_align": "CCSBUAlignBuilder",
    "blip_caption": "BlipCaptionProcessor",
    "blip2_image_train": "Blip2ImageTrainProcessor",
    "blip2_image_eval": "Blip2ImageEvalProcessor",
    "image_text_pretrain": "ImageTextPretrainTask",
    "runner_base": "RunnerBase",
    "linear_warmup_step_lr": "LinearWarmupStepLRScheduler",
    "linear_warmup_cosine_lr": "LinearWarmupCosineLRScheduler",
}
LISTS = {
    "model": "list_models",
    "builder": "list_datasets",
    "processor": "list_processors",
    "task": "list_tasks",
    "runner": "list_runners",
    "lr_scheduler": "list_lr_schedulers",
}


def names_in(path: Path) -> list[tuple[str, str, str]]:
    """(key, kind, name) for every registered name the file uses."""
    cfg = OmegaConf.load(path)
    found = []
    model = cfg.get("model") or {}
    if "arch" in model:
        found.append(("model.arch", "model", model.arch))
    sections = [("preprocess", cfg.get("preprocess") or {})]
    for name, dataset in (cfg.get("datasets") or {}).items():
        found.append((f"datasets.{name}", "builder", name))
        sections.append((f"datasets.{name}", dataset or {}))
    for prefix, section in sections:
        for kind in PROCESSOR_KINDS:
            for split, entry in (section.get(kind) or {}).items():
                found.append((f"{prefix}.{kind}.{split}.name", "processor", entry.name))
    run = cfg.get("run") or {}
    for key, kind in (("task", "task"), ("runner", "runner"), ("lr_sched", "lr_scheduler")):
        if key in run:
            found.append((f"run.{key}", kind, run[key]))
    return found


def test_the_reference_files_are_all_there():
    relative = {str(p.relative_to(REPO)) for p in USER_YAMLS + DEFAULT_YAMLS}
    assert {
        "train_configs/minigpt4_stage1_pretrain.yaml",
        "train_configs/minigpt4_stage2_finetune.yaml",
        "eval_configs/minigpt4_eval.yaml",
        "minigpt4/configs/models/minigpt4.yaml",
        "minigpt4/configs/datasets/laion/defaults.yaml",
        "minigpt4/configs/datasets/cc_sbu/defaults.yaml",
        "minigpt4/configs/datasets/cc_sbu/align.yaml",
    } <= relative


@pytest.mark.parametrize("path", USER_YAMLS + DEFAULT_YAMLS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_name_resolves(path):
    found = names_in(path)
    for key, kind, name in found:
        cls = getattr(registry, f"get_{kind}_class")(name)  # raises UnknownNameError for an unknown name
        # The reference's names map to the classes its YAML meant (a name registered twice over,
        # or on the wrong class, shows here); names added since must be listed by their kind.
        if name in REFERENCE_CLASSES:
            assert cls.__name__ == REFERENCE_CLASSES[name], f"{path}: {key} is {cls.__name__}"
        assert name in getattr(registry, LISTS[kind])(), f"{path}: {key}"
    if path in USER_YAMLS:
        assert {kind for _, kind, _ in found} >= {"model", "builder", "processor", "task"}


@pytest.mark.parametrize("path", USER_YAMLS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_user_yaml_loads(path):
    cfg = Config(SimpleNamespace(cfg_path=str(path), options=None))
    assert cfg.model_cfg.arch in ("mini_gpt4", "minigpt4")  # the reference's name, upstream's later one
    assert len(cfg.datasets_cfg) >= 1


def load(relative: str) -> Config:
    return Config(SimpleNamespace(cfg_path=str(REPO / relative), options=None))


def test_stage1_values_of_the_reference():
    cfg = load("train_configs/minigpt4_stage1_pretrain.yaml")
    laion, cc_sbu = cfg.datasets_cfg.laion, cfg.datasets_cfg.cc_sbu
    assert (laion.sample_ratio, cc_sbu.sample_ratio) == (115, 14)
    assert laion.build_info.storage == "/path/to/laion_dataset/{00000..10488}.tar"
    assert cc_sbu.build_info.storage == "/path/to/cc_sbu_dataset/{00000..01255}.tar"
    assert laion.vis_processor.train.name == "blip2_image_train" and laion.vis_processor.train.image_size == 224
    assert cc_sbu.text_processor.train.name == "blip_caption"
    run = cfg.run_cfg
    assert (run.init_lr, run.min_lr, run.warmup_lr, run.weight_decay) == (1e-4, 8e-5, 1e-6, 0.05)
    assert (run.max_epoch, run.iters_per_epoch, run.warmup_steps) == (4, 5000, 5000)
    assert (run.batch_size_train, run.batch_size_eval, run.num_workers, run.seed) == (64, 64, 4, 42)
    assert (run.amp, run.device, run.distributed, run.output_dir) == (
        True,
        "cuda",
        True,
        "output/minigpt4_stage1_pretrain",
    )
    assert (cfg.model_cfg.max_txt_len, cfg.model_cfg.end_sym, cfg.model_cfg.prompt_path) == (32, "\n", "")


def test_stage2_values_of_the_reference():
    cfg = load("train_configs/minigpt4_stage2_finetune.yaml")
    model = cfg.model_cfg
    assert (model.max_txt_len, model.end_sym, model.prompt_path) == (160, "###", "prompts/alignment.txt")
    assert model.prompt_template == "###Human: {} ###Assistant: "
    assert cfg.datasets_cfg.cc_sbu_align.build_info.storage == "/path/to/cc_sbu_align/"
    run = cfg.run_cfg
    assert (run.init_lr, run.min_lr, run.warmup_lr) == (3e-5, 1e-5, 1e-6)
    assert (run.max_epoch, run.iters_per_epoch, run.warmup_steps, run.batch_size_train) == (5, 200, 200, 12)


def test_eval_values_of_the_reference():
    cfg = load("eval_configs/minigpt4_eval.yaml")
    assert cfg.model_cfg.low_resource is True
    assert cfg.datasets_cfg.cc_sbu_align.vis_processor.train.name == "blip2_image_eval"
    assert cfg.run_cfg.task == "image_text_pretrain"


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(UnknownNameError, match=r"unknown builder 'laoin'; registered builders: .*cc_sbu, cc_sbu_align"):
        registry.get_builder_class("laoin")
    with pytest.raises(UnknownNameError, match=r"registered processors: .*blip2_image_eval, blip2_image_train"):
        registry.get_processor_class("blip2_image")
    with pytest.raises(UnknownNameError, match=r"unknown model 'minigpt_v2'; registered models: .*mini_gpt4, minigpt4"):
        registry.get_model_class("minigpt_v2")
