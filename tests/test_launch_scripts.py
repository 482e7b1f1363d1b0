"""The launch scripts in test/: they parse, they stop on the first error, and on a CPU with the
tiny configs they run a few iterations, write a log file and end with the summary line."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_assets import REPO_ROOT, STAGE1_TINY, STAGE2_TINY, tiny_path_options, tiny_root

SCRIPTS = REPO_ROOT / "test"
LAUNCHERS = ("pretrain_gpt_4p.sh", "finetune_gpt_1p.sh")
SUMMARY = re.compile(
    r"^summary: TokensPerSec=(\d+\.\d) samples/s=(\d+\.\d\d) step_time=(\d+\.\d{4}) loss=\S+ step=(\d+)/(\d+) "
    r"wall=\d+s log=(\S+)$"
)


@pytest.mark.parametrize("name", [*LAUNCHERS, "launch_train.sh", "env_npu.sh"])
def test_scripts_parse_with_lf_line_endings(name):
    path = SCRIPTS / name
    assert b"\r" not in path.read_bytes()  # the Ascend port's scripts had CRLF endings
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if name in LAUNCHERS:
        assert os.access(path, os.X_OK) and "set -euo pipefail" in path.read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(script: str, tmp_path: Path, config: Path, options: str, *args: str, **env: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "GPUS_PER_NODE": "1",
        "MASTER_PORT": str(free_port()),
        "CONFIG": str(config),
        "OPTIONS": options,
        "LOG_DIR": str(tmp_path / "logs"),
        "HF_HUB_OFFLINE": "1",
        "PYTHON": sys.executable,  # the interpreter under test, not whatever .venv the checkout has
        **env,
    }
    command = ["bash", str(SCRIPTS / script), *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def launch(script: str, tmp_path: Path, config: Path, options: str, *args: str) -> subprocess.CompletedProcess:
    process = start(script, tmp_path, config, options, *args)
    stdout, _ = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout)


@pytest.mark.slow
@pytest.mark.dist
def test_pretrain_then_finetune_on_cpu(tmp_path):
    root = tiny_root()
    pretrain = launch(
        "pretrain_gpt_4p.sh",
        tmp_path,
        STAGE1_TINY,
        "run.max_epoch=1 run.iters_per_epoch=3 run.batch_size_train=4",
        *tiny_path_options(root, ("laion", "cc_sbu")),
        "run.log_freq=1",  # arguments pass through as options
        f"run.output_dir={tmp_path / 'stage1'}",
    )
    assert pretrain.returncode == 0, pretrain.stdout[-4000:]
    summary = SUMMARY.match(pretrain.stdout.splitlines()[-1])
    assert summary, pretrain.stdout[-2000:]
    assert float(summary[1]) > 0 and float(summary[2]) > 0 and float(summary[3]) > 0
    assert summary.group(4, 5) == ("3", "3")
    log = Path(summary[6]).read_text()
    assert log.count("train: step=") == 3 and log.startswith("launch: ") and log.endswith(summary[0] + "\n")
    (stage1_job,) = (tmp_path / "stage1").iterdir()

    finetune = launch(
        "finetune_gpt_1p.sh",
        tmp_path,
        STAGE2_TINY,
        "run.max_epoch=1 run.iters_per_epoch=2 run.batch_size_train=2 run.num_workers=0",
        *tiny_path_options(root, ("cc_sbu_align",)),
        f"model.ckpt={stage1_job / 'checkpoint_0.pth'}",
        f"run.output_dir={tmp_path / 'stage2'}",
    )
    assert finetune.returncode == 0, finetune.stdout[-4000:]
    assert "Load BLIP2-LLM Checkpoint" in finetune.stdout
    assert SUMMARY.match(finetune.stdout.splitlines()[-1]), finetune.stdout[-2000:]


@pytest.mark.dist
@pytest.mark.parametrize("script", ["pretrain_gpt_4p.sh", "finetune_gpt_1p.sh"])
def test_the_ascend_overrides_apply_to_the_default_config_only(tmp_path, script):
    """The launch line shows the options; an unknown key then stops train.py before anything loads."""
    env = {key: value for key, value in os.environ.items() if key not in ("CONFIG", "OPTIONS")}
    env.update(LOG_DIR=str(tmp_path / "logs"), HF_HUB_OFFLINE="1", PYTHON=sys.executable, GPUS_PER_NODE="1")
    env["MASTER_PORT"] = str(free_port())
    launch_lines = {}
    for config in (None, STAGE1_TINY if script.startswith("pretrain") else STAGE2_TINY):
        run_env = env if config is None else {**env, "CONFIG": str(config)}
        result = subprocess.run(
            ["bash", str(SCRIPTS / script), "run.no_such_key=1"],
            env=run_env,
            cwd=SCRIPTS.parent,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode != 0 and "unknown key 'run.no_such_key'" in result.stdout + result.stderr
        launch_lines[config] = result.stdout.splitlines()[0]
    default, tiny = launch_lines.values()
    assert "run.batch_size_train=" in default and "run.max_epoch=" in default, default
    assert "run.batch_size_train=" not in tiny and "run.max_epoch=" not in tiny, tiny
    assert tiny.endswith("--options run.device=auto run.no_such_key=1"), tiny


@pytest.mark.slow
def test_the_first_error_stops_the_script(tmp_path):
    result = launch("finetune_gpt_1p.sh", tmp_path, STAGE2_TINY, "", "run.no_such_key=1")
    assert result.returncode != 0
    assert "unknown key 'run.no_such_key'" in result.stdout
    assert "summary:" not in result.stdout


@pytest.mark.slow
@pytest.mark.dist
def test_two_nodes_by_environment(tmp_path):
    options = "run.max_epoch=1 run.iters_per_epoch=2 run.batch_size_train=2"
    args = [*tiny_path_options(tiny_root(), ("laion", "cc_sbu")), f"run.output_dir={tmp_path / 'out'}"]
    node = {"NNODES": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    nodes = [
        start("pretrain_gpt_4p.sh", tmp_path, STAGE1_TINY, options, *args, NODE_RANK=str(rank), **node)
        for rank in (0, 1)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in nodes]
    assert [process.returncode for process in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert SUMMARY.match(outputs[0].splitlines()[-1]) and "rank 0 of 2" in outputs[0]
    assert outputs[1].splitlines()[-1].startswith("summary: node 1 logs no step lines (rank 0 on node 0 does)")
