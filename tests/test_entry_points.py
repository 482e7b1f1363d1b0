"""Every entry point ends a user's error in one line through ``minigpt4.common.cli.run_main``:
train.py, inference.py, demo.py and test/benchmark.py on the same bad inputs (in-process, through
their real ``main``), a few as real processes (the line, the status, no traceback; ``--debug`` and
``MINIGPT4_DEBUG`` give it back), the untrained-projection warning and the CPU thread default."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tiny_assets import REPO_ROOT, STAGE1_TINY, tiny_path_options, tiny_root

import demo
import train
from minigpt4.common.cli import DEBUG_ENV, run_main
from minigpt4.conversation import batch_inference
from minigpt4.conversation.launch import build_chat
from tests.golden_model import golden_model_config

spec = importlib.util.spec_from_file_location("minigpt4_benchmark_cli", REPO_ROOT / "test" / "benchmark.py")
bench = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)


@pytest.fixture
def bad_files(tmp_path):
    """A malformed YAML, a text file given as weights, a checkpoint of another model size."""
    (tmp_path / "bad.yaml").write_text("model:\n  arch: [mini_gpt4\n")
    (tmp_path / "weights.txt").write_text("version https://git-lfs.github.com/spec/v1\nsize 123\n")
    (tmp_path / "file").write_text("")
    proj = {"llama_proj.weight": torch.zeros(3, 3), "llama_proj.bias": torch.zeros(3)}
    torch.save({"model": proj, "optimizer": {"state": {}, "param_groups": []}, "epoch": 0}, tmp_path / "other.pth")
    return tmp_path


def one_line(prog: str, main, argv: list[str]) -> str:
    """What ``run_main`` prints for ``main(argv)``: it must exit with one line naming ``prog``."""
    with pytest.raises(SystemExit) as ended:
        run_main(lambda: main(argv), prog)
    message = ended.value.code
    assert isinstance(message, str), f"exit status {message!r} instead of a message"
    assert message.startswith(f"{prog}: ") and "\n" not in message
    return message


# (options, what the line must say); {tmp} is the folder of bad_files.
MODEL_CASES = {
    "missing Vicuna folder": ("model.llama_model={tmp}/no_vicuna", r"no_vicuna' is not a Vicuna/LLaMA folder"),
    "low_resource without bitsandbytes": ("model.low_resource=True", "low_resource: True .*bitsandbytes"),
    "text file as vit_weights": ("model.vit_weights={tmp}/weights.txt", r"weights\.txt"),
}


@pytest.fixture(scope="module")
def eval_cfg(golden_dir, tmp_path_factory):
    """An eval config like the demo's on the golden files, with no projection checkpoint."""
    config = {
        "model": OmegaConf.to_container(golden_model_config(golden_dir, ckpt="")),
        "datasets": {"cc_sbu_align": {"vis_processor": {"train": {"name": "blip2_image_eval", "image_size": 56}}}},
        "run": {"task": "image_text_pretrain"},
    }
    path = tmp_path_factory.mktemp("config") / "untrained_eval.yaml"
    OmegaConf.save(config, path)
    return str(path)


@pytest.fixture
def photo_list(golden_dir, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{golden_dir / 'astronaut.jpg'}\n")
    return str(listing)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
@pytest.mark.parametrize("case", MODEL_CASES)
def test_model_errors_are_one_line_in_inference_and_demo(case, eval_cfg, photo_list, bad_files):
    option, expected = MODEL_CASES[case]
    option = option.format(tmp=bad_files)
    inference = ["--cfg-path", eval_cfg, "--input", photo_list, "--question", "q", "--device", "cpu"]
    line = one_line("inference.py", batch_inference.main, [*inference, "--options", option])
    assert re.search(expected, line), line
    line = one_line("demo.py", demo.main, ["--cfg-path", eval_cfg, "--device", "cpu", "--options", option])
    assert re.search(expected, line), line


def test_a_malformed_yaml_is_one_line_everywhere(bad_files, photo_list):
    bad = str(bad_files / "bad.yaml")
    expected = f"{bad}, line 3, column 1: not valid YAML"
    assert expected in one_line("train.py", train.main, ["--cfg-path", bad])
    inference = ["--cfg-path", bad, "--input", photo_list, "--question", "q", "--device", "cpu"]
    assert expected in one_line("inference.py", batch_inference.main, inference)
    assert expected in one_line("demo.py", demo.main, ["--cfg-path", bad, "--device", "cpu"])


@NO_CUDA
def test_no_cuda_is_one_line_that_says_how_to_use_the_cpu(eval_cfg, photo_list, monkeypatch):
    monkeypatch.chdir(tiny_root())
    hint = "--device cpu"
    train_argv = ["--cfg-path", str(STAGE1_TINY), "--options", "run.device=cuda"]
    assert "run.device=cpu" in one_line("train.py", train.main, train_argv)
    inference = ["--cfg-path", eval_cfg, "--input", photo_list, "--question", "q", "--device", "cuda"]
    assert hint in one_line("inference.py", batch_inference.main, inference)
    assert hint in one_line("demo.py", demo.main, ["--cfg-path", eval_cfg])  # the demo's default is cuda
    assert hint in one_line("test/benchmark.py", bench.main, ["--size", "tiny", "--device", "cuda"])


def test_train_errors_are_one_line(bad_files, monkeypatch):
    monkeypatch.chdir(tiny_root())
    base = ["--cfg-path", str(STAGE1_TINY), "--options", *tiny_path_options(tiny_root(), ("laion", "cc_sbu"))]
    base += ["run.device=cpu", f"run.output_dir={bad_files / 'out'}"]
    cases = {
        f"run.output_dir={bad_files / 'file' / 'out'}": r"run.output_dir: cannot write to",
        "run.iters_per_epoch=0": r"run.iters_per_epoch must be at least 1, got 0",
        "run.max_epoch=0": r"run.max_epoch must be at least 1, got 0",
        f"run.resume_ckpt_path={bad_files / 'other.pth'}": r"other.pth was saved from a model of another size: "
        r"llama_proj.weight is \(3, 3\) in the file",
        f"model.llama_model={bad_files / 'no_vicuna'}": r"no_vicuna' is not a Vicuna/LLaMA folder",
        f"model.vit_weights={bad_files / 'weights.txt'}": r"weights\.txt",
    }
    for option, expected in cases.items():
        line = one_line("train.py", train.main, [*base, option])
        assert re.search(expected, line), line


def test_a_bug_keeps_its_traceback_and_debug_shows_every_one(monkeypatch):
    def buggy():
        return {}["key"]

    with pytest.raises(KeyError):
        run_main(buggy, "x.py")

    def missing():
        raise FileNotFoundError(2, "No such file or directory", "gone.pth")

    with pytest.raises(SystemExit, match=r"^x.py: gone.pth: No such file or directory$"):
        run_main(missing, "x.py")
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(FileNotFoundError):
        run_main(missing, "x.py")


def script(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    """``python *args`` without the debug switch or a thread count from the calling environment."""
    unset = (DEBUG_ENV, "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")
    env = {k: v for k, v in os.environ.items() if k not in unset} | {"HF_HUB_OFFLINE": "1"} | (env or {})
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_processes_print_one_line_and_give_the_traceback_on_request(bad_files):
    bad = str(bad_files / "bad.yaml")
    done = script("train.py", "--cfg-path", bad)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    expected = f"train.py: {bad}, line 3, column 1: not valid YAML (did not find expected ',' or ']')"
    assert done.stderr.strip().splitlines() == [expected]
    debugs = (
        script("train.py", "--cfg-path", bad, "--debug"),
        script("train.py", "--cfg-path", bad, env={DEBUG_ENV: "1"}),
    )
    for debug in debugs:
        assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr
    done = script(str(REPO_ROOT / "dataset" / "make_synthetic.py"), "--out", str(bad_files / "file" / "data"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"dataset/make_synthetic.py: {bad_files / 'file'}/") and line.endswith(": Not a directory")


@pytest.mark.slow
def test_inference_refuses_an_unwritable_output_before_the_model_loads(eval_cfg, photo_list, bad_files):
    output = bad_files / "file" / "answers.jsonl"  # under a plain file
    inputs = ["--input", photo_list, "--question", "q", "--output", str(output)]
    done = script("inference.py", "--cfg-path", eval_cfg, *inputs)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"--output {output} cannot be written" in done.stderr
    assert "Initializing Chat" not in done.stderr and "Loading" not in done.stderr


def test_an_empty_ckpt_warns_that_the_projection_is_untrained(eval_cfg, golden_dir, caplog):
    with caplog.at_level(logging.WARNING):
        build_chat(eval_cfg, None, torch.device("cpu"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    (warning,) = [w for w in warnings if "llama_proj" in w]
    assert "model.ckpt is empty" in warning and "untrained" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build_chat(eval_cfg, [f"model.ckpt={golden_dir / 'minigpt4_tiny.pth'}"], torch.device("cpu"))
    assert not any("untrained" in r.getMessage() for r in caplog.records)


THREADS = (
    "from minigpt4.common.dist_utils import init_distributed_mode; import torch; "
    "init_distributed_mode('cpu'); print(torch.get_num_threads())"
)


@pytest.mark.slow
def test_cpu_processes_share_the_cores_and_an_explicit_count_wins():
    """As train.py (and through init_device, inference, the demo and the benchmark) set up a CPU."""
    cores = len(os.sched_getaffinity(0))
    two_ranks = script("-c", THREADS, env={"LOCAL_WORLD_SIZE": "2"})
    assert two_ranks.returncode == 0, two_ranks.stderr
    assert int(two_ranks.stdout) == max(1, cores // 2)
    explicit = script("-c", THREADS, env={"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "3"})
    assert int(explicit.stdout) == 3


# Every entry point: its --help must answer without importing torch (about a second) and give every
# option a line of help.
ENTRY_POINTS = tuple(
    str(path.relative_to(REPO_ROOT))
    for pattern in ("*.py", "dataset/*.py", "tools/*.py", "test/benchmark*.py")
    for path in sorted(REPO_ROOT.glob(pattern))
)
HELP_PROBE = """
import argparse, os, runpy, sys
script = sys.argv[1]
sys.argv = [script, "--help"]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python script` does
parsers = []
parse_known_args = argparse.ArgumentParser.parse_known_args
def recording(self, *args, **kwargs):
    parsers.append(self)
    return parse_known_args(self, *args, **kwargs)
argparse.ArgumentParser.parse_known_args = recording
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as ended:
    assert ended.code in (0, None), ended.code
for parser in parsers:
    for action in parser._actions:
        if not (action.help or "").strip():
            print("NO_HELP", "/".join(action.option_strings) or action.dest)
print("TORCH_LOADED" if "torch" in sys.modules else "TORCH_NOT_LOADED")
"""


def test_the_entry_points_are_all_there():
    assert {"train.py", "demo.py", "inference.py", "tools/check_weights.py", "dataset/check_data.py"} <= set(
        ENTRY_POINTS
    )
    assert "test/benchmark_loading.py" in ENTRY_POINTS


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_help_answers_without_loading_torch_and_explains_every_option(script):
    result = subprocess.run(
        [sys.executable, "-c", HELP_PROBE, script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout and "--help" in result.stdout, result.stdout
    assert result.stdout.rstrip().endswith("TORCH_NOT_LOADED"), f"{script} --help imported torch"
    assert "NO_HELP" not in result.stdout, f"options of {script} without help text: {result.stdout}"
