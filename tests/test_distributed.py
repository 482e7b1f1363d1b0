"""DDP on CPU with gloo through torchrun: two processes on one node, and a simulated two-node
launch (two torchrun invocations sharing a master port). The ranks must end with identical
trainable weights, and only rank 0 may write."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_assets import REPO_ROOT, STAGE1_TINY, tiny_path_options, tiny_root

from minigpt4.common.checkpoint import load_checkpoint
from minigpt4.common.logger import StepMetrics

pytestmark = [pytest.mark.dist, pytest.mark.slow]

# Trains through train.main, then saves what this rank ended with (the test's own instrumentation).
DRIVER = f"""
import os, sys
import torch
sys.path.insert(0, {str(REPO_ROOT)!r})
import train
from minigpt4.common.checkpoint import trainable_state_dict
runner = train.main(sys.argv[1:])
torch.save(trainable_state_dict(runner.model), f"rank{{os.environ['RANK']}}.pt")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_argv(tmp_path: Path) -> list[str]:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    options = [*tiny_path_options(tiny_root(), ("laion", "cc_sbu")), "run.device=cpu", "run.max_epoch=1"]
    options += ["run.iters_per_epoch=4", "run.batch_size_train=4", "run.log_freq=2", "run.output_dir=out"]
    return [str(driver), "--cfg-path", str(STAGE1_TINY), "--options", *options]


def torchrun(tmp_path: Path, name: str, *launch: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", *launch]
    command += ["--log-dir", str(tmp_path / "logs" / name), "--redirects", "3", *train_argv(tmp_path)]
    return subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-4000:]


def rank_logs(tmp_path: Path) -> list[str]:
    """Each process's stderr, in the order of the global rank (local rank within each launch)."""
    files = sorted(tmp_path.glob("logs/*/*/attempt_0/*/stderr.log"))
    return [f.read_text() for f in files]


def check_ranks_agree_and_only_rank0_writes(tmp_path: Path, world_size: int) -> None:
    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
    assert sorted(weights[0]) == ["llama_proj.bias", "llama_proj.weight"]
    for other in weights[1:]:
        assert all(torch.equal(weights[0][k], other[k]) for k in weights[0])  # DDP kept the ranks in sync
    (job,) = (tmp_path / "out").iterdir()
    assert sorted(p.name for p in job.iterdir()) == ["checkpoint_0.pth", "log.txt", "tensorboard"]
    saved = load_checkpoint(job / "checkpoint_0.pth")
    assert torch.equal(saved["model"]["llama_proj.weight"], weights[0]["llama_proj.weight"])
    assert len(saved["rng"]) == world_size  # every rank's generators, for an exact resume
    logs = rank_logs(tmp_path)
    assert len(logs) == world_size
    assert f"rank 0 of {world_size}" in logs[0] and f"batch 4 x {world_size} ranks" in logs[0]
    assert "train: step=4/4 " in logs[0]
    assert logs[0].count("is close to ln(") == 1  # the tiny random LLM's first loss, warned about once
    for log in logs[1:]:
        assert "train: step=" not in log and "[INFO]" not in log  # rank 0 alone logs
        assert "is close to ln(" not in log


def window_of_rank(rank: int, init_file: str, out: str) -> None:
    """One rank of ``test_throughput_is_summed_over_ranks``: rank r reports (r + 1) * 10 tokens,
    r + 1 samples and a batch whose loader skipped r + 1 samples for one iteration, then every
    rank reads the window."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        metrics = StepMetrics(torch.device("cpu"))
        n = rank + 1
        skipped = torch.tensor([n, 0])  # a batch's ``skipped``: per sample, the skips before it
        counts = {"tokens": 10 * n, "padded_tokens": 12 * n, "samples": n, "skipped": skipped}
        metrics.update(torch.tensor(float(n)), **counts, lr=0.1, data_time=0.0)
        stats = metrics.read()
        figures = [stats.tokens, stats.padded_tokens, stats.samples, stats.loss, stats.iters, stats.skipped]
        torch.save(figures, f"{out}{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_throughput_is_summed_over_ranks(tmp_path):
    out = str(tmp_path / "window")
    torch.multiprocessing.spawn(window_of_rank, args=(str(tmp_path / "init"), out), nprocs=2)
    for rank in range(2):
        # Tokens, padded tokens and samples of both ranks; the mean loss of both; iterations per
        # rank; the skipped samples of both.
        assert torch.load(f"{out}{rank}.pt") == [30.0, 36.0, 3.0, 1.5, 1, 3]


def test_two_processes_on_one_node(tmp_path):
    finish(torchrun(tmp_path, "node", "--standalone", "--nproc-per-node", "2"))
    check_ranks_agree_and_only_rank0_writes(tmp_path, 2)


def test_simulated_two_node_launch(tmp_path):
    port = str(free_port())
    nodes = [
        torchrun(
            tmp_path,
            f"node{rank}",
            *("--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1"),
            *("--master-addr", "127.0.0.1", "--master-port", port),
        )
        for rank in (0, 1)
    ]
    for node in nodes:
        finish(node)
    check_ranks_agree_and_only_rank0_writes(tmp_path, 2)
