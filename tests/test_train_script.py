"""train.py end to end on the embedded tiny default: in-process runs (learning on a fixed batch,
checkpoint contents, exact resume through the real data loaders, fail-fast errors) and one run
as a plain ``python train.py`` process."""

from __future__ import annotations

import datetime
import json
import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_assets import REPO_ROOT, STAGE1_TINY, STAGE2_TINY, tiny_path_options, tiny_root

import train
from minigpt4.common.checkpoint import CheckpointError, load_checkpoint, trainable_state_dict
from minigpt4.runners import runner_base


def argv(config: Path, *options: str) -> list[str]:
    return ["--cfg-path", str(config), "--options", "run.device=cpu", *options]


@pytest.fixture
def in_tiny_root(monkeypatch):
    """Run with the tiny assets' folder as the working directory, as from a checkout."""
    root = tiny_root()
    monkeypatch.chdir(root)
    return root


def fixed_batch_folder(tmp_path: Path) -> Path:
    """A cc_sbu_align folder of exactly 4 described images: with batch 4 every batch is the same."""
    sizes = ["--laion-samples", "4", "--cc-sbu-samples", "4", "--align-samples", "4"]
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "dataset" / "make_synthetic.py"), "--out", str(tmp_path / "data"), *sizes],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return tmp_path / "data" / "cc_sbu_align"


@pytest.mark.slow
def test_loss_falls_on_a_fixed_batch_and_the_checkpoint_holds_the_trainable_keys(in_tiny_root, tmp_path, caplog):
    folder = fixed_batch_folder(tmp_path)
    runner = train.main(
        argv(
            STAGE2_TINY,
            f"datasets.cc_sbu_align.build_info.storage={folder}",
            "datasets.cc_sbu_align.vis_processor.train.name=blip2_image_eval",  # no random crop
            "model.max_txt_len=16",  # the first tokens: the ones the image prefix can inform most
            *("run.num_workers=0", "run.max_epoch=1", "run.iters_per_epoch=30", "run.init_lr=3e-2"),
            *("run.warmup_steps=0", "run.log_freq=1", f"run.output_dir={tmp_path / 'out'}"),
        )
    )
    losses = [h["loss"] for h in runner.history]
    assert len(losses) == 30
    # The tiny LLM is random: its first loss is that of uniform predictions, warned about once.
    vocab = runner.model.vocab_size
    assert losses[0] > 0.9 * math.log(vocab)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "ln(" in r.getMessage()]
    assert warning.startswith(f"the loss {losses[0]:.4f} is close to ln({vocab}) = {math.log(vocab):.4f}")
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.4, losses
    ckpt = load_checkpoint(runner.output_dir / "checkpoint_0.pth")
    assert sorted(ckpt["model"]) == sorted(trainable_state_dict(runner.model))
    assert sorted(ckpt["model"]) == ["llama_proj.bias", "llama_proj.weight"]
    assert torch.equal(ckpt["model"]["llama_proj.weight"], runner.model.llama_proj.weight.detach())
    assert ckpt["config"]["run"]["iters_per_epoch"] == 30 and ckpt["config"]["model"]["end_sym"] == "###"
    assert runner.output_dir.parent == tmp_path / "out"  # relative to the working directory, not the package


@pytest.mark.slow
def test_resume_through_the_real_loaders_reproduces_the_losses(in_tiny_root, tmp_path):
    # Stage 1: webdataset shards mixed 115:14, random crops drawn in a loader worker.
    options = ["run.num_workers=1", "run.max_epoch=2", "run.iters_per_epoch=4", "run.batch_size_train=4"]
    options += ["run.log_freq=1", "run.checkpoint_interval=2", "run.warmup_steps=2"]
    options += [f"run.output_dir={tmp_path / 'out'}"]
    full = train.main(argv(STAGE1_TINY, *options))
    losses = {h["step"]: h["loss"] for h in full.history}
    assert len(losses) == 8
    last = load_checkpoint(full.output_dir / "checkpoint_last.pth")
    assert (last["epoch"], last["iters"]) == (1, 2)
    for checkpoint, steps in (("checkpoint_0.pth", [5, 6, 7, 8]), ("checkpoint_last.pth", [7, 8])):
        resumed = train.main(argv(STAGE1_TINY, *options, f"run.resume_ckpt_path={full.output_dir / checkpoint}"))
        assert [h["step"] for h in resumed.history] == steps
        assert [h["loss"] for h in resumed.history] == [losses[s] for s in steps], checkpoint
        assert torch.equal(resumed.model.llama_proj.weight, full.model.llama_proj.weight)


def test_missing_inputs_fail_before_anything_loads(in_tiny_root, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with pytest.raises(FileNotFoundError, match=r"model.vit_weights: weight file 'nowhere/eva.pth' does not exist"):
        train.main(argv(STAGE1_TINY, "model.vit_weights=nowhere/eva.pth", f"run.output_dir={tmp_path}"))
    with pytest.raises(FileNotFoundError, match=r"model.llama_model: 'no_llm' is not a Vicuna/LLaMA folder"):
        train.main(argv(STAGE1_TINY, "model.llama_model=no_llm", f"run.output_dir={tmp_path}"))
    with pytest.raises(FileNotFoundError, match=r"run.resume_ckpt_path: checkpoint 'gone.pth' does not exist"):
        train.main(argv(STAGE1_TINY, "run.resume_ckpt_path=gone.pth", f"run.output_dir={tmp_path}"))
    with pytest.raises(FileNotFoundError, match=r"datasets.laion: none of the 2 shards .*nowhere/00000.tar"):
        storage = "datasets.laion.build_info.storage=nowhere/{00000..00001}.tar"
        train.main(argv(STAGE1_TINY, storage, f"run.output_dir={tmp_path}"))
    with pytest.raises(ValueError, match=r"must be multiples of run.accum_grad_iters \(3\)"):
        train.main(argv(STAGE1_TINY, "run.accum_grad_iters=3", f"run.output_dir={tmp_path}"))
    assert not any("Loading VIT" in r.getMessage() for r in caplog.records)


def test_an_unwritable_output_folder_fails_first(in_tiny_root, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(PermissionError, match=r"run.output_dir: cannot write to .*file/out/\d{14}"):
        # The missing weight file is checked later: the folder fails first.
        train.main(argv(STAGE1_TINY, f"run.output_dir={tmp_path / 'file' / 'out'}", "model.vit_weights=nowhere.pth"))


def run_script(tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    """``python train.py`` on the tiny stage-1 config on the CPU, outputs under ``tmp_path``."""
    options = (
        *tiny_path_options(tiny_root(), ("laion", "cc_sbu")),
        "run.device=cpu",
        f"run.output_dir={tmp_path / 'out'}",
        *options,
    )
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), "--cfg-path", str(STAGE1_TINY), "--options", *options],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_plain_python_process(tmp_path):
    """One process without torchrun, although the tiny config says ``distributed: True``."""
    result = run_script(tmp_path, "run.max_epoch=1", "run.iters_per_epoch=3", "run.log_freq=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train: step=3/3 " in result.stderr
    (job,) = (tmp_path / "out").iterdir()
    assert sorted(p.name for p in job.iterdir()) == ["checkpoint_0.pth", "log.txt", "tensorboard"]
    # The console gets a one-line summary and no config dump or library progress bar; log.txt the config.
    (summary,) = [line for line in result.stderr.splitlines() if "[INFO] Training mini_gpt4" in line]
    assert "datasets laion (" in summary and ", cc_sbu (" in summary and "batch 8 x 1 ranks" in summary, summary
    assert "precision float32, device cpu" in summary and "vicuna_tiny" in summary, summary
    assert f"Outputs go to {job.resolve()} (log.txt there holds the full config)" in result.stderr
    assert "Running Parameters" not in result.stderr and '"init_lr"' not in result.stderr
    assert "Loading weights" not in result.stderr and "it/s]" not in result.stderr
    assert len(result.stderr.splitlines()) < 30, result.stderr
    assert json.loads(job.joinpath("log.txt").read_text().split("\n}\n")[0] + "}")["run"]["iters_per_epoch"] == 3


@pytest.mark.slow
def test_a_wrong_key_or_path_ends_the_script_with_one_line(tmp_path):
    """The command line gets the message alone, not a traceback around it."""
    for option, message in [
        ("run.max_epochs=1", "unknown key 'run.max_epochs'"),
        (f"model.ckpt={tmp_path / 'nowhere.pth'}", "model.ckpt: weight file"),
    ]:
        result = run_script(tmp_path, option)
        assert result.returncode == 1
        assert message in result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())  # no empty job folder


@pytest.mark.slow
def test_length_grouping_trains_on_batches_with_less_padding(in_tiny_root, tmp_path):
    options = ["run.num_workers=0", "run.max_epoch=1", "run.iters_per_epoch=15", "run.batch_size_train=4"]
    options += ["run.log_freq=15", f"run.output_dir={tmp_path / 'out'}"]

    def real_share(grouping: int) -> float:
        """Real tokens over padded positions the LLM ran, over one pass of the 60 descriptions."""
        runner = train.main(argv(STAGE2_TINY, *options, f"run.length_grouping={grouping}"))
        (line,) = runner.history
        return line["TokensPerSec"] / line["TokensPerSec_padded"]

    assert real_share(5) > real_share(0) + 0.02  # measured: 0.946 and 0.900


def test_mfu_is_logged_on_an_accelerator_whose_peak_is_known(in_tiny_root, tmp_path, monkeypatch, caplog):
    # The run is on the CPU; the runner is told it runs on an H100 (989 TFLOP/s), the rest is real.
    monkeypatch.setattr(runner_base, "accelerator_name", lambda _device: "NVIDIA H100 80GB HBM3")
    options = ["run.num_workers=0", "run.max_epoch=1", "run.iters_per_epoch=2", "run.batch_size_train=4"]
    with caplog.at_level(logging.INFO):
        runner = train.main(argv(STAGE1_TINY, *options, "run.log_freq=2", f"run.output_dir={tmp_path / 'out'}"))
    (line,) = runner.history
    samples, padded = line["samples_per_sec"], line["TokensPerSec_padded"]  # per second: MFU is linear in both
    flops = runner.model.flop_model().step_flops(images=samples, tokens=padded, seq_len=padded / samples)
    assert line["mfu"] == pytest.approx(flops / 989e12, rel=1e-9)
    (logged,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train: step=")]
    assert f" mfu={line['mfu']:.4f} " in logged


def stage2(tmp_path: Path, *options: str) -> list[str]:
    keys = ["run.num_workers=0", "run.max_epoch=1", "run.iters_per_epoch=4", "run.log_freq=2"]
    return argv(STAGE2_TINY, *keys, f"run.output_dir={tmp_path / 'out'}", *options)


def job_folders(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else []


@pytest.mark.slow
def test_a_diverging_run_stops_with_finite_checkpoints_and_a_true_message(in_tiny_root, tmp_path):
    options = ["run.init_lr=1e30", "run.warmup_lr=1e30", "run.checkpoint_interval=2", "run.iters_per_epoch=10"]
    with pytest.raises(runner_base.NonFiniteLossError) as stop:
        train.main(stage2(tmp_path, *options, "run.log_freq=5"))
    (job,) = job_folders(tmp_path)
    checkpoints = sorted(job.glob("checkpoint_*.pth"))
    assert [p.name for p in checkpoints] == ["checkpoint_last.pth"]
    for path in checkpoints:
        assert all(torch.isfinite(v).all() for v in load_checkpoint(path)["model"].values() if v.is_floating_point())
    message = str(stop.value)
    assert "None of them was applied: the weights hold no non-finite value" in message
    assert re.search(rf"the last checkpoint written is {re.escape(str(checkpoints[-1]))} \(step \d+\)\.", message)


@pytest.mark.slow
def test_folder_resume_skips_a_truncated_checkpoint(in_tiny_root, tmp_path, caplog):
    keys = ["run.max_epoch=2", "run.checkpoint_interval=2"]
    full = train.main(stage2(tmp_path, *keys))
    losses = {h["step"]: h["loss"] for h in full.history}
    (full.output_dir / "checkpoint_1.pth").unlink()
    last = full.output_dir / "checkpoint_last.pth"  # epoch 1, 2 iterations in
    last.write_bytes(last.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(last))}: not a readable checkpoint"):
        train.main(stage2(tmp_path, *keys, f"run.resume_ckpt_path={last}"))
    with caplog.at_level(logging.WARNING):
        resumed = train.main(stage2(tmp_path, *keys, f"run.resume_ckpt_path={full.output_dir}"))
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert skipped == [f"run.resume_ckpt_path: skipping {last}: " + skipped[0].split(": ", 2)[2]]
    assert [h["step"] for h in resumed.history] == [6, 8]  # from checkpoint_0.pth
    assert [h["loss"] for h in resumed.history] == [losses[6], losses[8]]


@pytest.mark.slow
def test_two_runs_started_in_the_same_second_get_two_folders(in_tiny_root, tmp_path, monkeypatch):
    class SameSecond(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 2, 3, 4, 5, tzinfo=tz)

    monkeypatch.setattr(train.datetime, "datetime", SameSecond)
    first = train.main(stage2(tmp_path, "run.iters_per_epoch=2"))
    second = train.main(stage2(tmp_path, "run.iters_per_epoch=2"))
    assert [p.name for p in job_folders(tmp_path)] == ["20260102030405", "20260102030405_2"]
    assert (first.job_id, second.job_id) == ("20260102030405", "20260102030405_2")
    for runner in (first, second):
        assert (runner.output_dir / "checkpoint_0.pth").is_file()
        assert (runner.output_dir / "log.txt").read_text().count('"run": {') == 1  # its own config only


def test_a_failed_start_leaves_no_folder(in_tiny_root, tmp_path):
    with pytest.raises(FileNotFoundError):
        train.main(stage2(tmp_path, "model.vit_weights=nowhere/eva.pth"))
    with pytest.raises(FileNotFoundError):  # found by the dataset builder, after the input check
        train.main(stage2(tmp_path, "datasets.cc_sbu_align.build_info.storage=nowhere"))
    assert job_folders(tmp_path) == []


@pytest.mark.slow
def test_resume_warns_about_other_data_settings_and_refuses_a_finished_run(in_tiny_root, tmp_path, caplog):
    full = train.main(stage2(tmp_path, "run.checkpoint_interval=2"))
    last = full.output_dir / "checkpoint_last.pth"
    with caplog.at_level(logging.WARNING):
        train.main(stage2(tmp_path, f"run.resume_ckpt_path={last}", "run.batch_size_train=2"))
    (warning,) = [r.getMessage() for r in caplog.records if "other data settings" in r.getMessage()]
    assert warning == (
        f"run.resume_ckpt_path: {last} was written with other data settings (run.batch_size_train 4 -> 2, "
        "run.checkpoint_interval 2 -> 0): the resumed run reads other batches and random draws than the "
        "interrupted run would have"
    )
    before = job_folders(tmp_path)
    finished = full.output_dir / "checkpoint_0.pth"
    with pytest.raises(runner_base.ResumeError, match=r"ends a finished run \(epoch 0 complete, run.max_epoch is 1\)"):
        train.main(stage2(tmp_path, f"run.resume_ckpt_path={finished}"))
    assert job_folders(tmp_path) == before  # and no folder for the refused run
