"""Validation through train.py on the tiny stage-2 config: a held-out part of cc_sbu_align, its
loss after every epoch and the best checkpoint, then ``run.evaluate: True`` on that checkpoint."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from tiny_assets import STAGE2_TINY, tiny_root

import train
from minigpt4.common.checkpoint import load_checkpoint
from minigpt4.common.config import ConfigError

HELD_OUT = ["datasets.cc_sbu_align.held_out.val.fraction=0.2", "run.valid_splits=[val]", "run.batch_size_eval=5"]


def argv(*options: str) -> list[str]:
    return ["--cfg-path", str(STAGE2_TINY), "--options", "run.device=cpu", "run.num_workers=0", *options]


@pytest.fixture
def in_tiny_root(monkeypatch):
    monkeypatch.chdir(tiny_root())


@pytest.mark.slow
def test_a_run_with_a_held_out_split_logs_its_loss_and_keeps_the_best_epoch(in_tiny_root, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    options = [*HELD_OUT, "run.max_epoch=2", "run.iters_per_epoch=4", f"run.output_dir={tmp_path / 'out'}"]
    runner = train.main(argv(*options))
    # 60 described images: 12 held out (2 batches of 5 and one of 2), 48 left to train on.
    assert (len(runner.datasets["cc_sbu_align"]["train"]), len(runner.datasets["cc_sbu_align"]["val"])) == (48, 12)
    losses = [e["loss"] for e in runner.evaluations]
    assert len(losses) == 2 and all(0 < loss < 20 for loss in losses)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch: ")]
    assert [line.split()[1] for line in lines] == ["epoch=0", "epoch=1"] and all("val_loss=" in line for line in lines)
    text = (runner.output_dir / "log.txt").read_text()
    epochs = [json.loads(line) for line in text[text.index("\n}\n") + 3 :].splitlines()]
    assert [e["val_loss"] for e in epochs] == losses and all(e["val_samples"] == 12 for e in epochs)
    best = min(range(2), key=losses.__getitem__)
    kept = load_checkpoint(runner.output_dir / "checkpoint_best.pth")
    assert kept["epoch"] == best == epochs[-1]["best_epoch"]
    assert torch.equal(
        kept["model"]["llama_proj.weight"],
        load_checkpoint(runner.output_dir / f"checkpoint_{best}.pth")["model"]["llama_proj.weight"],
    )

    # Evaluation only, from that checkpoint: the same held-out loss, nothing trained or saved.
    evaluated = train.main(
        argv(
            *HELD_OUT,
            "run.evaluate=True",
            f"run.resume_ckpt_path={runner.output_dir / 'checkpoint_best.pth'}",
            f"run.output_dir={tmp_path / 'eval'}",
        )
    )
    assert evaluated.history == []
    (result,) = evaluated.evaluations
    assert result["epoch"] == best and result["samples"] == 12
    assert result["loss"] == pytest.approx(losses[best], rel=1e-5)
    assert sorted(p.name for p in evaluated.output_dir.iterdir()) == ["log.txt"]


def test_a_valid_split_that_no_dataset_holds_out_stops_the_run_before_loading(in_tiny_root, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with pytest.raises(
        ConfigError,
        match=r"run.valid_splits: no dataset holds out a split 'val'; set datasets.cc_sbu_align.held_out.val",
    ):
        train.main(argv("run.valid_splits=[val]", f"run.output_dir={tmp_path}"))
    assert not any("Loading VIT" in r.getMessage() for r in caplog.records)
