"""A benchmark scored during training, through train.py on the tiny world's stage-2 config: its
held-out split (attribute_naming, as eval_configs/world_heldout.yaml scores it) is answered by
the model being trained after each epoch, its accuracy logged beside the training loss and the
best checkpoint chosen by it; the answers are evaluate.py's for that epoch's checkpoint, and the
training is the same as without the scoring."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys

import pytest
import torch
from tiny_assets import REPO_ROOT

import evaluate
import train
from minigpt4.common.checkpoint import load_checkpoint
from minigpt4.common.config import ConfigError
from minigpt4.datasets.datasets.benchmarks import CaptionBenchmark, POPEBenchmark, VQABenchmark
from minigpt4.evaluation.pope import score_pope
from minigpt4.evaluation.run import read_lines
from minigpt4.evaluation.training import headline, scalar_figures
from tools.tiny_world import WorldSizes, make_world

STAGE2 = REPO_ROOT / "train_configs" / "minigpt4_stage2_world.yaml"
HELDOUT_EVAL = REPO_ROOT / "eval_configs" / "world_heldout.yaml"
COMMON = ["run.device=cpu", "run.distributed=False", "run.num_workers=0", "run.amp=False",
          "run.max_epoch=2", "run.iters_per_epoch=2", "run.batch_size_train=2", "run.warmup_steps=1"]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    sizes = WorldSizes(laion=20, cc_sbu=10, align=8, heldout=6, shard_size=20, vision_steps=2, vision_batch=4,
                       vision_pool=8, probe_images=16, llm_steps=2, llm_batch=2)  # fmt: skip
    make_world(root / "assets" / "world", sizes, seed=1)
    return root


def epoch_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text[text.index("\n}\n") + 3 :].splitlines()]


@pytest.mark.slow
def test_the_held_out_attribute_score_is_logged_each_epoch_and_chooses_the_best(world, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(world)  # the YAMLs' relative paths resolve as in a checkout
    caplog.set_level(logging.INFO)
    options = [*COMMON, "run.valid_splits=[heldout]", "run.batch_size_eval=4", f"run.output_dir={tmp_path / 'a'}"]
    runner = train.main(["--cfg-path", str(STAGE2), "--options", *options])
    scores = [e["accuracy"] for e in runner.evaluations]
    assert [e["split"] for e in runner.evaluations] == ["heldout", "heldout"]
    assert all(e["agg_metrics"] == e["accuracy"] and e["questions"] == 6 for e in runner.evaluations)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch: ")]
    assert len(lines) == 2 and all("train_loss=" in line and "heldout_accuracy=" in line for line in lines)
    epochs = epoch_lines((runner.output_dir / "log.txt").read_text())
    assert [e["heldout_accuracy"] for e in epochs] == scores
    best = max(range(2), key=scores.__getitem__)  # the first of equal scores
    assert load_checkpoint(runner.output_dir / "checkpoint_best.pth")["epoch"] == best == epochs[-1]["best_epoch"]

    # The answers of the last epoch are evaluate.py's for checkpoint_1.pth, and so is the score.
    answered = read_lines(runner.output_dir / "eval" / "epoch_1" / "attribute_naming_heldout.jsonl")
    assert len(answered) == 6
    results = evaluate.main(["--cfg-path", str(HELDOUT_EVAL), "--device", "cpu", "--options",
                             f"model.ckpt={runner.output_dir / 'checkpoint_1.pth'}", "run.batch_size_eval=3",
                             f"run.output_dir={tmp_path / 'eval'}"])  # fmt: skip
    alone = read_lines(tmp_path / "eval" / "attribute_naming_heldout.jsonl")
    assert [line["answer"] for line in alone] == [line["answer"] for line in answered]
    assert results["attribute_naming/heldout"]["accuracy"] == scores[1]

    # run.evaluate: True scores the checkpoint alone, and gives the same figure.
    only = train.main(["--cfg-path", str(STAGE2), "--options", *COMMON, "run.valid_splits=[heldout]",
                       "run.evaluate=True", f"run.resume_ckpt_path={runner.output_dir / 'checkpoint_1.pth'}",
                       f"run.output_dir={tmp_path / 'only'}"])  # fmt: skip
    assert only.history == [] and [e["accuracy"] for e in only.evaluations] == [scores[1]]

    # Scoring changes nothing of the training: the same losses and weights without it.
    plain = train.main(["--cfg-path", str(STAGE2), "--options", *COMMON, f"run.output_dir={tmp_path / 'b'}"])
    assert [row["loss"] for row in plain.history] == [row["loss"] for row in runner.history]
    assert torch.equal(
        load_checkpoint(plain.output_dir / "checkpoint_1.pth")["model"]["llama_proj.weight"],
        load_checkpoint(runner.output_dir / "checkpoint_1.pth")["model"]["llama_proj.weight"],
    )


@pytest.mark.slow  # the world fixture takes about 15 s
def test_a_split_held_by_a_benchmark_and_a_held_out_part_is_refused(world, tmp_path, monkeypatch):
    monkeypatch.chdir(world)
    options = [*COMMON, "run.valid_splits=[heldout]", "datasets.cc_sbu_align.held_out.heldout.fraction=0.2",
               f"run.output_dir={tmp_path}"]  # fmt: skip
    with pytest.raises(ConfigError, match="'heldout' is held by attribute_naming, cc_sbu_align"):
        train.main(["--cfg-path", str(STAGE2), "--options", *options])


@pytest.mark.dist
@pytest.mark.slow
def test_two_gloo_ranks_share_the_questions_and_agree_on_the_best_epoch(world, tmp_path, monkeypatch):
    """torchrun with 2 CPU processes: the questions are shared out, rank 0 scores, and the
    logged score and answers are evaluate.py's (one process) for the run's own checkpoint."""
    out = tmp_path / "two"
    options = [*COMMON, "run.distributed=True", "run.valid_splits=[heldout]", "run.batch_size_eval=1",
               f"run.output_dir={out}"]  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(REPO_ROOT / "train.py"), "--cfg-path", str(STAGE2), "--options", *options]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, cwd=world, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "to answer on 2 rank(s)" in result.stderr
    (run_dir,) = out.iterdir()
    epochs = epoch_lines((run_dir / "log.txt").read_text())
    answered = read_lines(run_dir / "eval" / "epoch_1" / "attribute_naming_heldout.jsonl")
    monkeypatch.chdir(world)
    results = evaluate.main(["--cfg-path", str(HELDOUT_EVAL), "--device", "cpu", "--options",
                             f"model.ckpt={run_dir / 'checkpoint_1.pth'}", "run.batch_size_eval=1",
                             f"run.output_dir={tmp_path / 'eval'}"])  # fmt: skip
    alone = read_lines(tmp_path / "eval" / "attribute_naming_heldout.jsonl")
    assert [line["answer"] for line in alone] == [line["answer"] for line in answered]
    assert epochs[1]["heldout_accuracy"] == results["attribute_naming/heldout"]["accuracy"]
    scores = [e["heldout_accuracy"] for e in epochs]
    best = max(range(2), key=scores.__getitem__)
    assert load_checkpoint(run_dir / "checkpoint_best.pth")["epoch"] == best == epochs[-1]["best_epoch"]


def test_the_headline_metric_is_f1_for_pope_cider_for_captions_accuracy_elsewhere():
    labels = {"1": "yes", "2": "yes", "3": "no", "4": "no"}
    # tp 2, fp 1, tn 1: precision 66.7, recall 100, F1 80, accuracy 75
    figures = score_pope({"1": "yes", "2": "yes", "3": "yes", "4": "no"}, labels, labels)
    assert figures["f1"] == pytest.approx(80.0) and figures["accuracy"] == 75.0
    assert headline(POPEBenchmark, figures) == figures["f1"]
    assert headline(VQABenchmark, {"accuracy": 41.5, "questions": 2, "per_answer_type": {"yes/no": 50.0}}) == 41.5
    captions = {"scores": {"CIDEr": 117.0, "Bleu_4": 30.0}, "missing": {}, "images": 2}
    assert headline(CaptionBenchmark, captions) == 117.0
    assert math.isnan(headline(CaptionBenchmark, {"scores": {}, "missing": {"CIDEr": "no Java"}, "images": 2}))
    assert scalar_figures(captions) == {"CIDEr": 117.0, "Bleu_4": 30.0, "images": 2}
    assert scalar_figures({"f1": None, "accuracy": 50.0, "per": {"a": 1.0}}) == {"accuracy": 50.0}
