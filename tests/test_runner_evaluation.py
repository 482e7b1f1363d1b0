"""Held-out evaluation in the runner: the loss of run.valid_splits after every epoch (log line,
log.txt, TensorBoard), checkpoint_best.pth, run.test_splits after training, run.evaluate alone,
and that none of it changes the training or its exact resume."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from golden_model import build_golden_model, golden_arch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_runner import Pairs, RunOnly, TinyCaptioner, run_keys

import minigpt4
from minigpt4.common.checkpoint import load_checkpoint
from minigpt4.common.config import ConfigError
from minigpt4.common.schema import RunConfig
from minigpt4.runners.contract import check_model
from minigpt4.runners.runner_base import RunnerBase, setup_output_dir
from minigpt4.tasks import ImageTextPretrainTask

KEYS = {"max_epoch": 3, "iters_per_epoch": 4, "valid_splits": ["val"], "batch_size_eval": 3}


class Shifted(Pairs):
    """Pairs of another seed: held-out samples the model never trains on."""

    def __init__(self, n: int) -> None:
        super().__init__(n=n + 32)
        self.images, self.labels = self.images[32:], self.labels[32:]


def runner_for(tmp_path, job_id="job", splits=None, **overrides) -> RunnerBase:
    torch.manual_seed(0)
    random.seed(0)
    cfg = RunOnly(**run_keys(tmp_path, **overrides))
    job_id = setup_output_dir(cfg.run_cfg, job_id).name
    datasets = {"pairs": {"train": Pairs(), **(splits or {"val": Shifted(8)})}}
    return RunnerBase(cfg, ImageTextPretrainTask(), TinyCaptioner(), datasets, job_id)


def held_out_loss(model: TinyCaptioner, dataset: Pairs, batch_size: int, seed: int = 42) -> float:
    """The split's loss per target by hand: batches in order, each drawing its jitter from
    Python's random seeded with run.seed, as the runner's evaluation does."""
    random.seed(seed)
    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            logits = model.head(
                model.ln_proj(model.proj(model.encoder(torch.stack([b["image"] for b in batch]).flatten(1))))
            )
            labels = torch.tensor([b["label"] for b in batch])
            loss = F.cross_entropy(logits, labels, ignore_index=-100) * (1.0 + 0.01 * random.random())
            targets = int((labels != -100).sum())
            total, count = total + float(loss) * targets, count + targets
    model.train()
    return total / count


def test_the_held_out_loss_is_logged_each_epoch_and_the_best_epoch_kept(tmp_path, caplog):
    caplog.set_level("INFO")
    runner = runner_for(tmp_path, **KEYS)
    runner.train()
    out = tmp_path / "out" / "job"
    evaluations = runner.evaluations
    assert [(e["epoch"], e["split"], e["samples"]) for e in evaluations] == [
        (0, "val", 8),
        (1, "val", 8),
        (2, "val", 8),
    ]
    losses = [e["loss"] for e in evaluations]
    assert all(e["agg_metrics"] == -e["loss"] for e in evaluations)
    # The last epoch's figure is the loss of the final weights, worked out by hand (3 + 3 + 2 samples).
    assert losses[-1] == pytest.approx(held_out_loss(runner.model, Shifted(8), 3), rel=1e-6)

    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch: ")]
    assert len(lines) == 3
    fields = dict(re.findall(r"(\S+)=(\S+)", lines[-1]))
    best = min(range(3), key=losses.__getitem__)
    assert fields["epoch"] == "2" and float(fields["val_loss"]) == pytest.approx(losses[-1], abs=1e-4)
    assert fields["best_epoch"] == str(best) and float(fields["train_loss"]) > 0
    example = (minigpt4.REPO_ROOT / "README.md").read_text().split("```\nepoch: ")[1].split("\n")[0]
    assert re.findall(r"(\S+)=", example) == list(fields)  # the README shows the logged fields

    text = (out / "log.txt").read_text()
    epochs = [json.loads(line) for line in text[text.index("\n}\n") + 3 :].splitlines()]
    assert [e["val_loss"] for e in epochs] == losses and [e["val_samples"] for e in epochs] == [8, 8, 8]
    assert all("train_loss" in e for e in epochs) and epochs[-1]["best_epoch"] == best

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("val/loss")] == [
        (4 * (epoch + 1), pytest.approx(loss, rel=1e-6)) for epoch, loss in enumerate(losses)
    ]

    kept = load_checkpoint(out / "checkpoint_best.pth")
    same_epoch = load_checkpoint(out / f"checkpoint_{best}.pth")
    assert kept["epoch"] == best and kept["best"] == {"epoch": best, "split": "val", "agg_metrics": -losses[best]}
    assert set(kept) == set(same_epoch)
    assert all(torch.equal(kept["model"][k], same_epoch["model"][k]) for k in kept["model"])


def test_evaluation_changes_neither_the_training_nor_its_exact_resume(tmp_path):
    plain = runner_for(tmp_path, job_id="plain", **{**KEYS, "valid_splits": []})
    plain.train()
    evaluated = runner_for(tmp_path, job_id="evaluated", **KEYS)
    evaluated.train()
    assert [h["loss"] for h in evaluated.history] == [h["loss"] for h in plain.history]
    assert torch.equal(evaluated.model.proj.weight, plain.model.proj.weight)

    resumed = runner_for(
        tmp_path, job_id="resumed", resume_ckpt_path=str(tmp_path / "out/evaluated/checkpoint_0.pth"), **KEYS
    )
    resumed.train()
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in evaluated.history[4:]]
    assert [e["loss"] for e in resumed.evaluations] == [e["loss"] for e in evaluated.evaluations[1:]]
    # The best epoch so far travelled in the checkpoint: the resumed run keeps the same best.
    final = load_checkpoint(tmp_path / "out/resumed/checkpoint_2.pth")["best"]
    assert final == load_checkpoint(tmp_path / "out/evaluated/checkpoint_2.pth")["best"]


def test_test_splits_are_evaluated_with_the_best_weights(tmp_path):
    runner = runner_for(tmp_path, splits={"val": Shifted(8), "test": Shifted(5)}, test_splits=["test"], **KEYS)
    runner.train()
    (test,) = [e for e in runner.evaluations if e["split"] == "test"]
    best = runner.best["epoch"]
    assert test["epoch"] == best and test["samples"] == 5
    best_model = TinyCaptioner()
    best_model.load_state_dict(runner.model.state_dict())  # the runner's model holds the best weights now
    assert torch.equal(
        best_model.proj.weight, load_checkpoint(tmp_path / "out/job/checkpoint_best.pth")["model"]["proj.weight"]
    )
    assert test["loss"] == pytest.approx(held_out_loss(best_model, Shifted(5), 3), rel=1e-6)
    log = (tmp_path / "out" / "job" / "log.txt").read_text().splitlines()
    assert json.loads(log[-1]) == {
        "epoch": best,
        "test_loss": test["loss"],
        "test_samples": 5,
        "test_agg_metrics": -test["loss"],
    }


def test_evaluate_only_scores_a_checkpoint_and_trains_nothing(tmp_path, caplog):
    trained = runner_for(tmp_path, job_id="trained", **KEYS)
    trained.train()
    caplog.set_level("INFO")
    ckpt = tmp_path / "out" / "trained" / "checkpoint_1.pth"
    # batch_size_eval does not change the loss per target token.
    evaluating = runner_for(
        tmp_path, job_id="eval", evaluate=True, resume_ckpt_path=str(ckpt), **{**KEYS, "batch_size_eval": 8}
    )
    before = evaluating.model.proj.weight.detach().clone()
    assert evaluating.train() == []
    (result,) = evaluating.evaluations
    assert result["epoch"] == 1 and result["samples"] == 8
    assert torch.equal(evaluating.model.proj.weight, load_checkpoint(ckpt)["model"]["proj.weight"])
    assert not torch.equal(before, evaluating.model.proj.weight)
    expected = held_out_loss(evaluating.model, Shifted(8), 8)
    assert result["loss"] == pytest.approx(expected, rel=1e-6)
    out = tmp_path / "out" / "eval"
    assert sorted(p.name for p in out.iterdir()) == ["log.txt"]  # no checkpoint, no training
    assert any(r.getMessage().startswith("evaluate: split=val epoch=1 loss=") for r in caplog.records)


def test_the_held_out_loss_is_the_same_in_one_batch_or_many(tmp_path):
    def loss_with(batch_size: int) -> float:
        runner = runner_for(tmp_path, job_id=f"b{batch_size}", evaluate=True, **{**KEYS, "batch_size_eval": batch_size})
        runner.datasets["pairs"]["val"] = Pairs(n=6, poison=(1, 4))  # two samples without a target
        runner.model.jitter = False
        runner.train()
        return runner.evaluations[0]["loss"]

    assert loss_with(1) == pytest.approx(loss_with(6), rel=1e-6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"evaluate": True, "valid_splits": []}, r"run.evaluate: True evaluates run.valid_splits and run.test_splits"),
        ({"valid_splits": ["train"]}, r"train is also in run.train_splits"),
        ({"batch_size_eval": 0}, r"run.batch_size_eval must be at least 1"),
    ],
)
def test_evaluation_settings_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        RunnerBase.check_config(OmegaConf.merge(OmegaConf.structured(RunConfig), overrides))


def test_a_split_no_dataset_has_is_named(tmp_path):
    runner = runner_for(tmp_path, **{**KEYS, "valid_splits": ["dev"]})
    with pytest.raises(ConfigError, match=r"no dataset has a split 'dev' .*'pairs': \['train', 'val'\]"):
        runner.train()


def test_a_model_without_the_contract_is_refused_in_words(tmp_path):
    with pytest.raises(TypeError, match=r"Linear lacks llm_dtype, vocab_size, flop_model, checkpoint_state of "):
        check_model(torch.nn.Linear(2, 2))
    model = TinyCaptioner()
    assert check_model(model) is model


def evaluate_on_rank(rank: int, init_file: str, out: str, world_size: int) -> None:
    """One rank of an evaluate-only run over the 7 samples of a held-out split."""
    if world_size > 1:
        torch.distributed.init_process_group(
            "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
        )
    try:
        torch.manual_seed(0)
        cfg = RunOnly(**run_keys(Path(out), evaluate=True, valid_splits=["val"], batch_size_eval=2))
        if rank == 0:
            setup_output_dir(cfg.run_cfg, "job")
        model = TinyCaptioner()
        model.jitter = False
        datasets = {"pairs": {"train": Pairs(), "val": Pairs(n=7, poison=(3,))}}
        runner = RunnerBase(cfg, ImageTextPretrainTask(), model, datasets, "job", device=torch.device("cpu"))
        runner.train()
        torch.save(runner.evaluations, Path(out) / f"rank{rank}.pt")
    finally:
        if world_size > 1:
            torch.distributed.destroy_process_group()


@pytest.mark.dist
@pytest.mark.slow
def test_two_ranks_give_the_held_out_loss_of_one(tmp_path):
    (tmp_path / "one").mkdir()
    evaluate_on_rank(0, "", str(tmp_path / "one"), 1)
    (alone,) = torch.load(tmp_path / "one" / "rank0.pt")
    (tmp_path / "two").mkdir()
    torch.multiprocessing.spawn(evaluate_on_rank, args=(str(tmp_path / "init"), str(tmp_path / "two"), 2), nprocs=2)
    for rank in range(2):
        (shared,) = torch.load(tmp_path / "two" / f"rank{rank}.pt")
        assert shared["samples"] == alone["samples"] == 7
        assert shared["loss"] == pytest.approx(alone["loss"], rel=1e-6)


def test_minigpt4_counts_the_target_tokens_its_loss_averages_over(golden_dir):
    model = build_golden_model(golden_dir).eval()
    size = golden_arch(golden_dir)["image_size"]
    samples = {"image": torch.randn(2, 3, size, size), "text_input": ["a cat", "a dog walks on a long road"]}
    with torch.no_grad():
        out = model(samples)
        inputs = model.prepare_llm_inputs(samples)
        logits = model.llama_model(inputs_embeds=inputs.inputs_embeds).logits.float()  # (B, L, V)
    labels = inputs.labels[:, 1:]  # each position predicts the next token
    summed = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    assert int(out["target_tokens"]) == int((labels != -100).sum()) > 2
    assert float(out["loss"]) * int(out["target_tokens"]) == pytest.approx(float(summed), rel=1e-4)
