"""The runner's mechanics on a small real model of our own: learning, parameter groups, log lines,
log.txt, checkpoints, exact resume, accumulation, clipping, precision and the non-finite guard."""

from __future__ import annotations

import json
import math
import random
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.data import Dataset

import minigpt4  # registers every name
from minigpt4.common import logger as logger_module
from minigpt4.common.checkpoint import CheckpointError, load_checkpoint, resume_checkpoint
from minigpt4.common.config import ConfigError
from minigpt4.common.logger import uniform_loss_warning
from minigpt4.common.schema import RunConfig
from minigpt4.runners.runner_base import (
    NonFiniteLossError,
    NonFiniteWeightsError,
    ResumeError,
    RunnerBase,
    setup_output_dir,
)
from minigpt4.runners.train_step import backward_dtype, build_optimizer, step_optimizer
from minigpt4.tasks import ImageTextPretrainTask

TOKENS_PER_SAMPLE = 3  # what TinyCaptioner reports as real LLM tokens per sample
PADDED_PER_SAMPLE = 4


class TinyCaptioner(nn.Module):
    """MiniGPT-4's shape in miniature: a frozen encoder, a trainable projection (with dropout and
    a norm whose name holds ``ln``), a frozen head, a buffer. Its loss also draws from Python's
    ``random``, as MiniGPT-4's prompt choice does, so that resuming must restore that generator.
    It keeps the runner's model contract (``TrainableModel``) with no LLM and no FLOP count."""

    llm_dtype = None
    vocab_size = None
    jitter = True

    def flop_model(self) -> None:
        return None

    def checkpoint_state(self, state: dict) -> dict:
        return dict(state)

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(12, 16)
        self.proj = nn.Linear(16, 16)
        self.ln_proj = nn.LayerNorm(16)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(16, 4)
        self.register_buffer("loss_weight", torch.tensor(1.0))
        for module in (self.encoder, self.head):
            module.requires_grad_(False)
        self.dtypes: list[torch.dtype] = []
        self.seen: list[tuple[str, ...]] = []  # the text_input of every batch, in order

    def forward(self, samples: dict) -> dict:
        self.seen.append(tuple(samples["text_input"]))
        x = self.encoder(samples["image"].flatten(1))  # (B, 16)
        h = self.proj(x)
        self.dtypes.append(h.dtype)
        logits = self.head(self.drop(self.ln_proj(h)))  # (B, 4)
        jitter = 1.0 + 0.01 * random.random() if self.jitter else 1.0
        loss = F.cross_entropy(logits.float(), samples["label"], ignore_index=-100) * self.loss_weight * jitter
        batch = samples["label"].shape[0]
        return {
            "loss": loss,
            "tokens": torch.tensor(TOKENS_PER_SAMPLE * batch),
            "padded_tokens": PADDED_PER_SAMPLE * batch,
            "target_tokens": (samples["label"] != -100).sum(),
        }


class Pairs(Dataset):
    """Learnable image-label pairs; ``poison`` lists sample indices whose label is ignored (-100):
    a batch made only of them has the loss 0/0 = NaN with all-zero gradients."""

    def __init__(self, n: int = 32, poison: tuple[int, ...] = ()) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, 2, 2, generator=g)
        self.labels = self.images.flatten(1)[:, :4].argmax(1)
        self.poison = set(poison)
        self.name = "pairs"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        label = -100 if i in self.poison else int(self.labels[i])
        return {"image": self.images[i], "label": label, "text_input": f"sample {i}"}


class RunOnly:
    """The part of ``Config`` the runner reads: ``run_cfg`` and ``to_dict()``."""

    def __init__(self, **run: object) -> None:
        self.run_cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), run)

    def to_dict(self) -> dict:
        return {"run": OmegaConf.to_container(self.run_cfg)}


def run_keys(tmp_path: Path, **overrides: object) -> dict:
    keys = {
        "device": "cpu",
        "init_lr": 3e-2,
        "min_lr": 1e-3,
        "warmup_lr": 1e-3,
        "warmup_steps": 2,
        "max_epoch": 2,
        "iters_per_epoch": 6,
        "batch_size_train": 4,
        "num_workers": 0,
        "log_freq": 1,
        "output_dir": str(tmp_path / "out"),
        "amp": False,
    }
    keys.update(overrides)
    return keys


def make_runner(tmp_path: Path, job_id: str = "job", dataset: Dataset | None = None, **overrides: object) -> RunnerBase:
    torch.manual_seed(0)
    random.seed(0)
    cfg = RunOnly(**run_keys(tmp_path, **overrides))
    job_id = setup_output_dir(cfg.run_cfg, job_id).name
    datasets = {"pairs": {"train": dataset or Pairs()}}
    return RunnerBase(cfg=cfg, task=ImageTextPretrainTask(), model=TinyCaptioner(), datasets=datasets, job_id=job_id)


def train(tmp_path: Path, job_id: str = "job", dataset: Dataset | None = None, **overrides: object) -> RunnerBase:
    runner = make_runner(tmp_path, job_id, dataset, **overrides)
    runner.train()
    return runner


def test_parameter_groups_follow_the_reference_rule():
    optimizer = build_optimizer(TinyCaptioner(), OmegaConf.structured(RunConfig(weight_decay=0.05, beta2=0.99)))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [tuple(p.shape) for p in decay["params"]] == [(16, 16)]  # proj.weight only
    assert sorted(tuple(p.shape) for p in no_decay["params"]) == [(16,), (16,), (16,)]  # proj.bias, ln_proj.*
    assert decay["betas"] == (0.9, 0.99)  # frozen encoder and head are in neither group


def test_training_learns_logs_and_checkpoints(tmp_path, caplog):
    caplog.set_level("INFO")
    runner = train(tmp_path, max_epoch=3, iters_per_epoch=8, dataset=Pairs(n=8))
    losses = [h["loss"] for h in runner.history]
    assert len(losses) == 24
    assert sum(losses[-4:]) < 0.5 * sum(losses[:4])  # the fixed 8 samples are being learnt

    # One parseable line per log_freq, throughput consistent with the model's token counts.
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train: step=")]
    assert len(lines) == 24
    fields = dict(re.findall(r"(\S+)=(\S+)", lines[-1]))
    assert fields["step"] == "24/24" and fields["epoch"] == "2" and fields["iter"] == "8/8"
    for key in ("loss", "grad_norm", "lr", "step_time", "data_time", "samples/s", "TokensPerSec"):
        float(fields[key])
    # The ratios from the unrounded figures: on a loaded machine the line's one decimal is too coarse.
    last = runner.history[-1]
    assert float(fields["TokensPerSec"]) == pytest.approx(last["TokensPerSec"], abs=0.05)
    assert last["TokensPerSec"] / last["samples_per_sec"] == pytest.approx(TOKENS_PER_SAMPLE, rel=1e-6)
    assert last["TokensPerSec_padded"] / last["TokensPerSec"] == pytest.approx(4 / 3, rel=1e-6)
    assert re.fullmatch(r"\d+:\d\d:\d\d", fields["eta"]) and fields["nonfinite"] == "0"
    assert fields["mfu"] == "n/a"  # a CPU, and a model that does not count its FLOPs
    assert int(fields["peak_mem_MiB"]) > 0
    # The examples in the README and in the logger's docstring show the fields in the logged order.
    documented = [
        (minigpt4.REPO_ROOT / "README.md").read_text().split("```\ntrain: step=")[1].split("```")[0],
        logger_module.__doc__.split("    train: step=")[1].split("\n\n")[0],
    ]
    for example in documented:
        assert re.findall(r"(\S+)=", "step=" + example) == list(fields)

    out = tmp_path / "out" / "job"
    text = (out / "log.txt").read_text()
    config_end = text.index("\n}\n") + 3
    assert json.loads(text[:config_end])["run"]["iters_per_epoch"] == 8
    epochs = [json.loads(line) for line in text[config_end:].splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    assert float(epochs[2]["train_loss"]) < float(epochs[0]["train_loss"])
    assert epochs[0]["iters"] == 8 and epochs[0]["TokensPerSec"] > 0 and "train_lr" in epochs[0]

    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint_0.pth",
        "checkpoint_1.pth",
        "checkpoint_2.pth",
        "log.txt",
        "tensorboard",  # tensorboard is a development requirement
    ]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    scalars = {"train/loss", "train/grad_norm", "train/lr", "train/TokensPerSec", "train/samples_per_sec"}
    assert scalars <= set(events.Tags()["scalars"])
    board_losses = [e.value for e in events.Scalars("train/loss")]
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 25))
    assert board_losses == pytest.approx(losses, rel=1e-6)
    ckpt = load_checkpoint(out / "checkpoint_2.pth")
    assert set(ckpt) >= {"model", "optimizer", "scaler", "config", "epoch", "iters", "global_step", "scheduler", "rng"}
    # Trainable parameters and the buffer; no frozen weight.
    assert sorted(ckpt["model"]) == ["ln_proj.bias", "ln_proj.weight", "loss_weight", "proj.bias", "proj.weight"]
    assert torch.equal(ckpt["model"]["proj.weight"], runner.model.proj.weight.detach())
    assert ckpt["epoch"] == 2 and ckpt["iters"] == 8 and ckpt["global_step"] == 24
    assert ckpt["config"]["run"]["max_epoch"] == 3
    assert ckpt["optimizer"]["state"][0]["step"].item() == 24
    assert ckpt["scheduler"]["name"] == "linear_warmup_cosine_lr" and ckpt["scheduler"]["step"] == 7
    assert len(ckpt["rng"]) == 1 and set(ckpt["rng"][0]) == {"python", "numpy", "torch"}


class LengthPairs(Pairs):
    """Pairs that know their captions' lengths, as run.length_grouping needs."""

    def text_lengths(self) -> list[int]:
        return [len(f"sample {i}") for i in range(len(self))]


@pytest.mark.parametrize("grouping", [0, 3])
def test_resume_reproduces_the_uninterrupted_losses(tmp_path, grouping):
    keys = {"max_epoch": 2, "iters_per_epoch": 6, "checkpoint_interval": 2, "length_grouping": grouping}
    keys["dataset"] = LengthPairs()
    full = train(tmp_path, job_id="full", **keys)
    losses = {h["step"]: h["loss"] for h in full.history}
    out = tmp_path / "out" / "full"
    # checkpoint_last.pth was last written at step 10 (epoch 1, 4 iterations in).
    last = load_checkpoint(out / "checkpoint_last.pth")
    assert (last["epoch"], last["iters"], last["global_step"]) == (1, 4, 10)

    from_epoch = train(tmp_path, job_id="from_epoch", resume_ckpt_path=str(out / "checkpoint_0.pth"), **keys)
    assert [h["step"] for h in from_epoch.history] == list(range(7, 13))
    assert [h["loss"] for h in from_epoch.history] == [losses[s] for s in range(7, 13)]

    from_middle = train(tmp_path, job_id="from_middle", resume_ckpt_path=str(out / "checkpoint_last.pth"), **keys)
    assert [h["step"] for h in from_middle.history] == [11, 12]
    assert [h["loss"] for h in from_middle.history] == [losses[11], losses[12]]
    assert from_middle.model.seen == full.model.seen[-2:]  # the same batches
    assert torch.equal(from_middle.model.proj.weight, full.model.proj.weight)


def test_resume_from_a_run_folder_takes_the_checkpoint_furthest_into_training(tmp_path):
    keys = {"max_epoch": 2, "iters_per_epoch": 6, "checkpoint_interval": 2}
    full = train(tmp_path, job_id="full", **keys)
    losses = {h["step"]: h["loss"] for h in full.history}
    out = tmp_path / "out" / "full"
    # A run killed in epoch 1: checkpoint_0.pth (step 6) and checkpoint_last.pth (step 10) remain.
    (out / "checkpoint_1.pth").unlink()
    assert resume_checkpoint(out) == out / "checkpoint_last.pth"
    resumed = train(tmp_path, job_id="resumed", resume_ckpt_path=str(out), **keys)
    assert [h["step"] for h in resumed.history] == [11, 12]
    assert [h["loss"] for h in resumed.history] == [losses[11], losses[12]]
    (out / "checkpoint_last.pth").unlink()
    assert resume_checkpoint(out) == out / "checkpoint_0.pth"
    (out / "checkpoint_0.pth").unlink()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint_"):
        resume_checkpoint(out)


def test_the_stream_restarted_at_each_checkpoint_reads_new_batches(tmp_path):
    # The loader restarts at every epoch and every checkpoint_interval, seeded by the global step:
    # a restart must not replay the batches the run began with.
    runner = train(tmp_path, max_epoch=2, iters_per_epoch=6, checkpoint_interval=2)
    assert len(runner.model.seen) == 12
    restarts = runner.model.seen[::2]  # steps 1, 3, 5, 7, 9, 11
    assert len(set(restarts)) == len(restarts), restarts


def test_accumulation_steps_every_n_iterations(tmp_path):
    runner = train(tmp_path, max_epoch=1, iters_per_epoch=6, accum_grad_iters=3)
    assert load_checkpoint(tmp_path / "out" / "job" / "checkpoint_0.pth")["optimizer"]["state"][0]["step"].item() == 2
    assert len(runner.history) == 6
    with pytest.raises(ValueError, match=r"multiples of run.accum_grad_iters \(4\)"):
        train(tmp_path, job_id="bad", max_epoch=1, iters_per_epoch=6, accum_grad_iters=4)


@pytest.mark.parametrize("key", ["max_epoch", "iters_per_epoch", "accum_grad_iters", "batch_size_train", "log_freq"])
def test_counts_below_one_are_refused(tmp_path, key):
    # max_epoch 0 would otherwise end at once with status 0 and nothing trained.
    with pytest.raises(ConfigError, match=rf"run.{key} must be at least 1, got 0"):
        RunnerBase.check_config(RunOnly(**run_keys(tmp_path, **{key: 0})).run_cfg)


def test_gradient_clipping_bounds_the_norm(tmp_path):
    norms: list[float] = []

    def record(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    handle = register_optimizer_step_pre_hook(record)
    try:
        train(tmp_path, job_id="clipped", max_epoch=1, max_grad_norm=1e-3)
        clipped, norms[:] = list(norms), []
        train(tmp_path, job_id="free", max_epoch=1)
    finally:
        handle.remove()
    assert len(clipped) == 6 and max(clipped) <= 1e-3 * (1 + 1e-4)
    assert min(norms) > 1e-2  # the same run without clipping has much larger gradients


@pytest.mark.parametrize("overrides", [{}, {"max_grad_norm": 1e-3}, {"precision": "fp16"}])
def test_the_logged_gradient_norm_is_unscaled_and_taken_before_clipping(tmp_path, overrides):
    seen: list[float] = []  # the norm of the gradients the optimizer step applies

    def record(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        seen.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    handle = register_optimizer_step_pre_hook(record)
    try:
        runner = train(tmp_path, max_epoch=1, **overrides)  # log_freq 1: one optimizer step per line
    finally:
        handle.remove()
    logged = [h["grad_norm"] for h in runner.history]
    assert len(logged) == len(seen) == 6
    if "max_grad_norm" in overrides:
        assert min(logged) > 1e-2 and max(seen) <= 1e-3 * (1 + 1e-4)
    else:  # fp16: the loss scale (65536) is divided out before the norm is taken
        assert logged == pytest.approx(seen, rel=1e-5)


def test_gradients_whose_norm_overflows_leave_the_weights_finite():
    # Each gradient is finite, so the step is taken; only their norm is beyond float32.
    weight = nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.AdamW([weight], lr=0.1, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    scaler.scale((weight * 1e20).sum()).backward()
    norm = step_optimizer(optimizer, scaler, 1.0, [weight], max_grad_norm=None)
    assert torch.isinf(norm) and torch.isfinite(weight).all() and (weight != 0).all()


@pytest.mark.parametrize(
    ("overrides", "dtype", "scale"),
    [
        ({"amp": True}, torch.float32, 1.0),  # CPU: fp32 unless configured
        ({"precision": "bf16"}, torch.bfloat16, 1.0),
        ({"precision": "fp16"}, torch.float16, 2.0**16),  # dynamic scaler (no overflow here)
        ({"precision": "fp16", "static_loss_scale": 1024.0}, torch.float16, 1024.0),
    ],
)
def test_precision_and_loss_scale(tmp_path, overrides, dtype, scale):
    runner = train(tmp_path, max_epoch=1, **overrides)
    assert set(runner.model.dtypes) == {dtype}
    ckpt = load_checkpoint(tmp_path / "out" / "job" / "checkpoint_0.pth")
    assert ckpt["scaler"]["scale"] == scale
    assert runner.history[-1]["loss"] < runner.history[0]["loss"] * 1.5


def test_a_model_computing_in_fp16_gets_a_loss_scaler_whatever_the_run_says():
    bf16_llm, fp16_llm = TinyCaptioner(), TinyCaptioner()
    bf16_llm.llm_dtype, fp16_llm.llm_dtype = torch.bfloat16, torch.float16
    assert backward_dtype(None, TinyCaptioner()) is None
    assert backward_dtype(torch.bfloat16, bf16_llm) is torch.bfloat16
    assert backward_dtype(torch.bfloat16, fp16_llm) is torch.float16
    assert backward_dtype(None, fp16_llm) is torch.float16


def test_isolated_nonfinite_steps_are_skipped_and_counted(tmp_path):
    # Batches of 4 without shuffling effects: make every sample of the data poisoned except a few,
    # so some batches are entirely ignored (NaN loss, zero gradients) and others are not.
    poison = tuple(i for i in range(32) if i % 8 < 6)
    runner = train(tmp_path, max_epoch=1, iters_per_epoch=12, dataset=Pairs(poison=poison), max_nonfinite_steps=50)
    nonfinite = sum(h["nonfinite"] for h in runner.history)
    assert 0 < nonfinite < 12
    ckpt = load_checkpoint(tmp_path / "out" / "job" / "checkpoint_0.pth")
    assert ckpt["optimizer"]["state"][0]["step"].item() == 12 - nonfinite  # skipped steps left no trace
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_consecutive_nonfinite_steps_stop_the_run(tmp_path):
    runner = make_runner(tmp_path, max_epoch=1, dataset=Pairs(poison=tuple(range(32))), max_nonfinite_steps=3)
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    with pytest.raises(
        NonFiniteLossError,
        match=r"3 consecutive optimizer steps were skipped .* \(by step 3;.* this run wrote no checkpoint",
    ):
        runner.train()
    after = runner.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no step reached the weights
    assert not (tmp_path / "out" / "job" / "checkpoint_0.pth").exists()


def test_output_folder_that_cannot_be_written(tmp_path):
    (tmp_path / "a_file").write_text("")
    cfg = RunOnly(output_dir=str(tmp_path / "a_file" / "out"))
    with pytest.raises(PermissionError, match=r"run.output_dir: cannot write to .*a_file/out/job"):
        setup_output_dir(cfg.run_cfg, "job")


def test_a_first_loss_near_uniform_predictions_is_warned_about():
    assert uniform_loss_warning(5.0, 32000) is None  # a working LLM at the start of stage 1
    assert uniform_loss_warning(float("nan"), 32000) is None
    warning = uniform_loss_warning(10.375, 32000)  # the "loss is still 10.3750" of broken set-ups
    assert warning.startswith("the loss 10.3750 is close to ln(32000) = 10.3735")
    assert "model.llama_model" in warning and "bf16" in warning


def all_finite(ckpt: dict) -> bool:
    return all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_a_step_that_would_make_the_weights_non_finite_is_undone(tmp_path):
    # lr 1e39 is beyond float32: the gradients are finite, every step would make the weights inf.
    keys = {"init_lr": 1e39, "warmup_lr": 1e39, "min_lr": 1e39, "checkpoint_interval": 2}
    runner = make_runner(tmp_path, max_nonfinite_steps=1000, **keys)
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    runner.train()
    assert all(math.isfinite(h["loss"]) for h in runner.history)  # the undone steps left the model as it was
    # every step was undone, and the log lines say so
    run = runner.config.run_cfg
    assert sum(h["nonfinite"] for h in runner.history) == run.max_epoch * run.iters_per_epoch // run.accum_grad_iters
    out = tmp_path / "out" / "job"
    checkpoints = sorted(out.glob("checkpoint_*.pth"))
    assert [p.name for p in checkpoints] == ["checkpoint_0.pth", "checkpoint_1.pth", "checkpoint_last.pth"]
    for path in checkpoints:
        ckpt = load_checkpoint(path)
        assert all(torch.equal(v, before[k]) for k, v in ckpt["model"].items()), path
        assert all(torch.count_nonzero(state["step"]) == 0 for state in ckpt["optimizer"]["state"].values())
    with pytest.raises(
        NonFiniteLossError,
        match=r"^5 consecutive optimizer steps were skipped .* the last checkpoint written is .*checkpoint_last.pth "
        r"\(step 4\)",
    ):
        train(tmp_path, job_id="stops", **keys)


def test_a_checkpoint_is_never_written_from_non_finite_weights(tmp_path):
    runner = make_runner(tmp_path, max_epoch=1)
    # A buffer the loss does not read (no step is skipped for it) and no optimizer step puts back.
    runner.model.register_buffer("running_scale", torch.tensor([1.0, float("nan")]))
    with pytest.raises(NonFiniteWeightsError, match=r"not writing .*checkpoint_0.pth: the weights running_scale"):
        runner.train()
    assert not list((tmp_path / "out" / "job").glob("checkpoint_*"))


def test_a_truncated_checkpoint_is_named_and_skipped_in_a_run_folder(tmp_path, caplog):
    keys = {"max_epoch": 2, "iters_per_epoch": 6, "checkpoint_interval": 2}
    full = train(tmp_path, job_id="full", **keys)
    losses = {h["step"]: h["loss"] for h in full.history}
    out = tmp_path / "out" / "full"
    (out / "checkpoint_1.pth").unlink()
    last = out / "checkpoint_last.pth"
    last.write_bytes(last.read_bytes()[:1000])  # a copy cut short
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(last))}: not a readable checkpoint, truncated"):
        train(tmp_path, job_id="file", resume_ckpt_path=str(last), **keys)
    with caplog.at_level("WARNING"):
        resumed = train(tmp_path, job_id="folder", resume_ckpt_path=str(out), **keys)
    (warning,) = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert warning.startswith(f"run.resume_ckpt_path: skipping {last}: not a readable checkpoint")
    assert [h["step"] for h in resumed.history] == list(range(7, 13))  # from checkpoint_0.pth
    assert [h["loss"] for h in resumed.history] == [losses[s] for s in range(7, 13)]
    (out / "checkpoint_0.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* loads: .*checkpoint_0.pth.*checkpoint_last.pth"):
        resume_checkpoint(out)


def resume_warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "resume_ckpt_path" in r.getMessage()]


def test_resuming_with_other_data_settings_or_schedule_warns(tmp_path, caplog):
    keys = {"max_epoch": 2, "iters_per_epoch": 6, "checkpoint_interval": 2}
    train(tmp_path, job_id="full", **keys)
    last = str(tmp_path / "out" / "full" / "checkpoint_last.pth")  # epoch 1, 4 iterations in
    caplog.set_level("WARNING")
    train(tmp_path, job_id="same", resume_ckpt_path=last, **keys)
    assert resume_warnings_of(caplog) == []
    changed = {**keys, "batch_size_train": 2, "checkpoint_interval": 0}
    train(tmp_path, job_id="batch", resume_ckpt_path=last, **changed)
    (warning,) = resume_warnings_of(caplog)
    assert "other data settings (run.batch_size_train 4 -> 2, run.checkpoint_interval 2 -> 0)" in warning
    caplog.clear()
    shorter = {**keys, "iters_per_epoch": 4, "max_epoch": 3}
    runner = train(tmp_path, job_id="shorter", resume_ckpt_path=last, **shorter)
    assert [h["step"] for h in runner.history] == [9, 10, 11, 12]  # epoch 1 is complete at 4 iterations
    data, schedule = resume_warnings_of(caplog)
    assert data.endswith("the rest of epoch 1 (2 iterations) is skipped")
    assert "the learning-rate schedule differs" in schedule
    caplog.clear()
    train(tmp_path, job_id="longer", resume_ckpt_path=last, **{**keys, "max_epoch": 3})
    (schedule,) = resume_warnings_of(caplog)
    assert "at epoch 1, iteration 3 it gave" in schedule and "max_epoch" in schedule
    caplog.clear()
    two_ranks = load_checkpoint(last)
    two_ranks["rng"] = two_ranks["rng"] * 2  # as a 2-rank run writes it
    torch.save(two_ranks, tmp_path / "two_ranks.pth")
    train(tmp_path, job_id="ranks", resume_ckpt_path=str(tmp_path / "two_ranks.pth"), **keys)
    (warning,) = resume_warnings_of(caplog)
    assert "other data settings (2 -> 1 ranks)" in warning


def test_resuming_a_finished_run_says_so(tmp_path):
    train(tmp_path, job_id="full", max_epoch=2)
    done = str(tmp_path / "out" / "full" / "checkpoint_1.pth")
    with pytest.raises(ResumeError, match=r"checkpoint_1.pth ends a finished run \(epoch 1 complete, run.max_epoch"):
        RunnerBase.check_config(RunOnly(**run_keys(tmp_path, max_epoch=2, resume_ckpt_path=done)).run_cfg)


def test_run_folders_are_created_exclusively(tmp_path):
    cfg = RunOnly(output_dir=str(tmp_path / "out")).run_cfg
    with ThreadPoolExecutor(8) as pool:
        folders = list(pool.map(lambda _: setup_output_dir(cfg, "20260101000000"), range(8)))
    names = sorted(f.name for f in folders)
    assert names == sorted(["20260101000000", *(f"20260101000000_{n}" for n in range(2, 9))])
