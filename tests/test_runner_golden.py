"""One training step of the golden model reproduces the 2023 runner's step (golden README case g):
the stage-1 YAML through Config, the model through from_config, the runner's optimizer, schedule
and checkpoint, on the case-b batch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from golden_model import golden_model_config
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch.utils.data import Dataset

from minigpt4.common.checkpoint import load_checkpoint
from minigpt4.common.config import Config
from minigpt4.runners.runner_base import RunnerBase, setup_output_dir
from minigpt4.runners.train_step import build_optimizer
from minigpt4.tasks import setup_task

REPO_ROOT = Path(__file__).resolve().parent.parent


class CaseB(Dataset):
    """The two processed images and cleaned captions of golden case b."""

    def __init__(self, images: torch.Tensor, captions: list[str]) -> None:
        self.images, self.captions, self.name = images, captions, "case_b"

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "text_input": self.captions[i]}


def golden_config(golden_dir: Path, output_dir: Path) -> Config:
    """The reference's stage-1 YAML with the golden README's overrides, the golden files and
    architecture, one iteration of batch 2."""
    model = OmegaConf.to_container(golden_model_config(golden_dir))
    options = [
        f"model.{key}.{sub}={value}"
        for key, node in model.items()
        if isinstance(node, dict)
        for sub, value in node.items()
    ]
    options += [f"model.{key}={value}" for key, value in model.items() if not isinstance(value, dict)]
    options += ["run.device=cpu", "run.amp=False", "run.distributed=False", "run.iters_per_epoch=1"]
    options += ["run.num_workers=0", "run.max_epoch=1", "run.batch_size_train=2", f"run.output_dir={output_dir}"]
    cfg_path = REPO_ROOT / "train_configs" / "minigpt4_stage1_pretrain.yaml"
    return Config(argparse.Namespace(cfg_path=str(cfg_path), options=options))


@pytest.fixture(scope="module")
def golden_run(golden_dir, tmp_path_factory):
    expected = load_file(golden_dir / "expected.safetensors")
    captions = json.loads((golden_dir / "expected.json").read_text())["stage1"]["text_input"]
    cfg = golden_config(golden_dir, tmp_path_factory.mktemp("out"))
    task = setup_task(cfg)
    model = task.build_model(cfg)
    before = model.llama_proj.weight.detach().clone()
    setup_output_dir(cfg.run_cfg, "golden")
    datasets = {"case_b": {"train": CaseB(expected["images.eval"], captions)}}
    runner = RunnerBase(cfg=cfg, task=task, model=model, datasets=datasets, job_id="golden")
    runner.train()
    with torch.no_grad():
        loss_after = model({"image": expected["images.eval"], "text_input": captions})["loss"].item()
    return runner, expected, before, loss_after


def test_stage1_config_gives_the_reference_groups(golden_dir):
    cfg = golden_config(golden_dir, Path("unused"))
    assert cfg.run_cfg.init_lr == 1e-4 and cfg.run_cfg.warmup_lr == 1e-6 and cfg.run_cfg.warmup_steps == 5000
    model = setup_task(cfg).build_model(cfg)
    decay, no_decay = build_optimizer(model, cfg.run_cfg).param_groups
    assert decay["params"] == [model.llama_proj.weight] and decay["weight_decay"] == 0.05
    assert no_decay["params"] == [model.llama_proj.bias] and no_decay["weight_decay"] == 0.0
    assert decay["betas"] == (0.9, 0.999) and decay["eps"] == 1e-8


def test_one_step_matches_the_reference(golden_run):
    runner, expected, before, loss_after = golden_run
    (step,) = runner.history
    assert step["lr"] == pytest.approx(1e-6, rel=1e-12)  # warmup start, as the reference's step 0
    assert step["loss"] == pytest.approx(6.89738655090332, abs=1e-5)
    weight = runner.model.llama_proj.weight.detach()
    # The update is about 1e-6 per element: compare the update itself, not only the weights.
    want = expected["train.llama_proj_weight_after"]
    torch.testing.assert_close(weight - before, want - before, rtol=1e-3, atol=1e-10)
    torch.testing.assert_close(runner.model.llama_proj.bias.detach(), expected["train.llama_proj_bias_after"])
    # The step moved the loss by 3.7e-5; the reference's value after it is matched to 1e-6.
    assert loss_after == pytest.approx(expected["train.stage1_loss_after_step"].item(), abs=1e-6)


def test_checkpoint_matches_the_reference_checkpoint(golden_run, golden_dir):
    runner, *_ = golden_run
    ours = load_checkpoint(runner.output_dir / "checkpoint_0.pth")
    theirs = load_checkpoint(golden_dir / "checkpoint_0.pth")
    # The reference also kept Q-Former position_ids and LLaMA inv_freq, buffers this model does
    # not save (they are rebuilt from the config); the trainable keys are the same.
    assert sorted(ours["model"]) == ["llama_proj.bias", "llama_proj.weight"]
    assert set(theirs["model"]) - set(ours["model"]) == {
        "Qformer.bert.embeddings.position_ids",
        "llama_model.model.layers.0.self_attn.rotary_emb.inv_freq",
        "llama_model.model.layers.1.self_attn.rotary_emb.inv_freq",
    }
    for key in ours["model"]:
        torch.testing.assert_close(ours["model"][key], theirs["model"][key], rtol=0, atol=1e-9)
    assert ours["epoch"] == theirs["epoch"] == 0
    for group, ref in zip(ours["optimizer"]["param_groups"], theirs["optimizer"]["param_groups"], strict=True):
        for key in ("lr", "weight_decay", "betas", "eps", "amsgrad"):
            assert group[key] == pytest.approx(ref[key]), key
    for index in (0, 1):
        state, ref = ours["optimizer"]["state"][index], theirs["optimizer"]["state"][index]
        assert state["step"].item() == ref["step"].item() == 1
        # Other kernels sum in another order: compare relative to the largest moment.
        for moment in ("exp_avg", "exp_avg_sq"):
            scale = ref[moment].abs().max().item()
            torch.testing.assert_close(state[moment], ref[moment], rtol=0, atol=1e-4 * scale)
    assert theirs["scaler"] is None and ours["scaler"]["scale"] == 1.0  # fp32: scale 1, skipping only
