"""The quick start: MiniGPT-4's whole pipeline on the embedded tiny default, on a CPU, learning to see.

    make quickstart      # .venv/bin/python tools/quickstart.py
    make tiny-assets     # .venv/bin/python tools/quickstart.py --assets-only

1. The assets, only where missing: the tiny world (``tools/tiny_world.py``: images of coloured
   shapes with captions, descriptions and a held-out split, and frozen tiny ViT, Q-Former and
   Vicuna files in the real formats that were taught the world) in ``assets/world``; and the
   random tiny weights and photo data that the tests and benchmarks use (``assets/tiny``).
2. Stage 1: ``torchrun --standalone --nproc-per-node 2 train.py --cfg-path
   train_configs/minigpt4_stage1_world.yaml`` with 2 CPU processes (gloo); only ``llama_proj`` trains.
3. Stage 2: ``train.py --cfg-path train_configs/minigpt4_stage2_world.yaml`` from the stage-1
   checkpoint (``model.ckpt``), one process, as the reference's single-GPU stage 2.
4. The held-out score: ``Chat`` (``eval_configs/minigpt4_world_eval.yaml``) describes every
   held-out image, once with the trained projection and once with an untrained one; the score is
   the fraction of answers that name the image's colour and shape and no other.

Each stage's first and last loss, TokensPerSec and output folder are printed at the end, with a
few held-out answers beside the images' true descriptions; the full console output of each stage
is kept in ``output/quickstart/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script, the repository root is not on the import path

from minigpt4.common.cli import add_debug_argument, run_main  # noqa: E402

logger = logging.getLogger("quickstart")

ASSETS = Path("assets/tiny")
WEIGHTS = ASSETS / "weights"
DATA = ASSETS / "data"
# What a complete set holds (checked before generating anything).
WEIGHT_FILES = ("eva_vit_tiny.pth", "blip2_tiny.pth", "vicuna_tiny/config.json", "vicuna_tiny/tokenizer.model")
DATA_FILES = ("laion", "cc_sbu", "cc_sbu_align/filter_cap.json")
WORLD = Path("assets/world")
WORLD_DONE = "world.json"  # written last, so its presence means a complete world
STAGE1_CONFIG = "train_configs/minigpt4_stage1_world.yaml"
STAGE2_CONFIG = "train_configs/minigpt4_stage2_world.yaml"
EVAL_CONFIG = "eval_configs/minigpt4_world_eval.yaml"
LOG_DIR = Path("output/quickstart")
QUESTION = "Describe this image in detail."
SHOWN_ANSWERS = 4

# A child's log records start with a timestamp (echoed without it, and without the level when it is
# INFO); a multi-line record's continuation lines do not, and are echoed with it (tqdm bars and other
# library output are not).
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?:\[INFO\] )?")
OUTPUTS = re.compile(r"Outputs go to (\S+)")
# The fields of a step line that the console shows; the whole line is in the stage's log file.
STEP_FIELDS = ("step", "epoch", "loss", "lr", "step_time", "samples/s", "TokensPerSec")


def generate(target: Path, command: list[str]) -> None:
    """Run a generator into a temporary folder, then move it into place: an interrupted run
    leaves no half-written asset set behind."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([*command, "--out", str(partial)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def ensure_assets(root: Path) -> None:
    """``root/assets/tiny/{weights,data}``, each generated only when incomplete."""
    weights, data = root / WEIGHTS, root / DATA
    if all((weights / name).exists() for name in WEIGHT_FILES):
        logger.info("tiny weights: %s (present)", weights)
    else:
        logger.info("tiny weights: writing %s (tiny EVA ViT, BLIP-2 and Vicuna files in the real formats)", weights)
        generate(weights, [sys.executable, "tools/make_tiny_weights.py"])
    if all((data / name).exists() for name in DATA_FILES):
        logger.info("tiny data: %s (present)", data)
    else:
        logger.info("tiny data: writing %s (laion and cc_sbu shards, a cc_sbu_align folder)", data)
        generate(data, [sys.executable, "dataset/make_synthetic.py"])


def ensure_world(root: Path) -> None:
    """``root/assets/world``, made only when incomplete (a few minutes on a CPU)."""
    world = root / WORLD
    if (world / WORLD_DONE).exists():
        logger.info("tiny world: %s (present)", world)
    else:
        logger.info("tiny world: writing %s (images, captions, and frozen parts taught the world)", world)
        generate(world, [sys.executable, "tools/tiny_world.py"])


def run_stage(name: str, command: list[str]) -> tuple[Path, list[str]]:
    """Run one training stage, echoing its log records; returns its output folder and step lines."""
    log_path = LOG_DIR / f"{name}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    output_dir, steps = None, []
    logger.info("%s: %s", name, " ".join(command))
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        in_record = False
        for line in process.stdout:
            log.write(line)
            if record := LOG_RECORD.match(line):
                in_record = True
                sys.stderr.write(f"    {short_step(line) if 'train: step=' in line else line[record.end() :]}")
            elif in_record and line.strip() and "\r" not in line:
                sys.stderr.write(f"        {line}")
            else:
                in_record = False
            if match := OUTPUTS.search(line):
                output_dir = Path(match.group(1))
            if "train: step=" in line:
                steps.append(line[line.index("train: step=") :])
        returncode = process.wait()
    if returncode != 0 or output_dir is None:
        raise SystemExit(f"{name} failed (exit code {returncode}); its full output is in {log_path}")
    return output_dir, steps


def short_step(line: str) -> str:
    """A step line with only ``STEP_FIELDS``."""
    fields = dict(re.findall(r"(\S+)=(\S+)", line))
    return "train: " + " ".join(f"{key}={fields[key]}" for key in STEP_FIELDS if key in fields) + "\n"


def throughput(steps: list[str]) -> dict[str, float]:
    """Means of the step lines after the first (which includes start-up), as test/*.sh report."""
    rows = [dict(re.findall(r"(\S+)=(\S+)", line)) for line in steps]
    rows = rows[1:] or rows
    return {key: sum(float(r[key]) for r in rows) / len(rows) for key in ("TokensPerSec", "samples/s", "step_time")}


def last_checkpoint(output_dir: Path) -> Path:
    checkpoints = sorted(output_dir.glob("checkpoint_[0-9]*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    if not checkpoints:
        raise SystemExit(f"no checkpoint_<epoch>.pth in {output_dir}")
    return checkpoints[-1]


def losses(steps: list[str]) -> tuple[float, float]:
    """The first and the last logged loss."""
    values = [float(re.search(r" loss=(\S+)", line).group(1)) for line in steps]
    return values[0], values[-1]


def heldout_scores(checkpoint: Path):
    """Held-out score and answers with the trained projection, then with an untrained one."""
    import torch

    from minigpt4.conversation.launch import build_chat
    from tools.tiny_world import heldout_score, read_heldout

    heldout = read_heldout(WORLD / "data" / "heldout")
    results = []
    package = logging.getLogger("minigpt4")
    level = package.level
    package.setLevel(logging.WARNING)  # the stages' consoles showed the same loads
    try:
        for options in ([f"model.ckpt={checkpoint}"], []):
            torch.manual_seed(0)  # the untrained projection's initial values
            chat = build_chat(EVAL_CONFIG, options, torch.device("cpu"))
            results.append(heldout_score(chat, heldout, QUESTION))
    finally:
        package.setLevel(level)
    return heldout, results


def main() -> None:
    parser = argparse.ArgumentParser(description="MiniGPT-4 end to end on the tiny default, on a CPU.")
    parser.add_argument("--assets-only", action="store_true", help="only make the tiny assets (make tiny-assets)")
    add_debug_argument(parser)
    args = parser.parse_args()
    from minigpt4.common.logger import setup_logger  # after parsing: --help does not wait for torch

    setup_logger()
    os.chdir(REPO)
    start = time.perf_counter()
    ensure_world(REPO)
    ensure_assets(REPO)
    if args.assets_only:
        return
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    stage1_dir, stage1_steps = run_stage(
        "stage1", [*torchrun, "train.py", "--cfg-path", STAGE1_CONFIG, "--options", "run.device=cpu"]
    )
    stage1_ckpt = last_checkpoint(stage1_dir)
    stage2_options = ["--options", f"model.ckpt={stage1_ckpt}", "run.device=cpu"]
    stage2_dir, stage2_steps = run_stage(
        "stage2", [sys.executable, "train.py", "--cfg-path", STAGE2_CONFIG, *stage2_options]
    )
    stage2_ckpt = last_checkpoint(stage2_dir)
    logger.info(
        "held-out score: the stage-2 model (%s) and an untrained projection describe each held-out image", stage2_ckpt
    )
    heldout, ((trained, answers), (untrained, untrained_answers)) = heldout_scores(stage2_ckpt)

    logger.info("quick start done in %.0f s", time.perf_counter() - start)
    for name, steps, folder, ckpt in (
        ("stage 1 (torchrun, 2 CPU processes)", stage1_steps, stage1_dir, stage1_ckpt),
        ("stage 2 (1 CPU process, from stage 1)", stage2_steps, stage2_dir, stage2_ckpt),
    ):
        rates, (first, last) = throughput(steps), losses(steps)
        logger.info(
            "%s: loss %.3f -> %.3f; TokensPerSec=%.0f samples/s=%.1f step_time=%.4f s; outputs in %s (log.txt, %s)",
            name, first, last, rates["TokensPerSec"], rates["samples/s"], rates["step_time"], folder, ckpt.name,
        )  # fmt: skip
    logger.info("Q (to each held-out image): %s", QUESTION)
    for (path, _, truth), answer, guess in list(zip(heldout, answers, untrained_answers, strict=True))[:SHOWN_ANSWERS]:
        logger.info("%s\n    true:      %s\n    trained:   %s\n    untrained: %s", path, truth, answer, guess)
    world = json.loads((WORLD / WORLD_DONE).read_text())
    logger.info(
        "what the frozen parts know (assets/world/world.json): held-out linear-probe accuracy of the "
        "vision features %s (a random vision side: %s); LLM held-out loss %.3f with the attribute words "
        "where the image goes, %.3f with another image's, ln(vocab) %.2f",
        world["probe_accuracy"], world["probe_accuracy_random_vision"], world["llm"]["heldout_loss"],
        world["llm"]["heldout_loss_uninformative_prefix"], world["llm"]["ln_vocab"],
    )  # fmt: skip
    logger.info(
        "held-out score (answers naming the right colour and shape, %d images): trained %.0f%%, "
        "untrained projection %.0f%%",
        len(heldout), 100 * trained, 100 * untrained,
    )  # fmt: skip
    logger.info(
        "the same score through evaluate.py: python evaluate.py --cfg-path eval_configs/world_heldout.yaml "
        "--device cpu --options model.ckpt=%s",
        stage2_ckpt,
    )


if __name__ == "__main__":
    run_main(main, "tools/quickstart.py")
