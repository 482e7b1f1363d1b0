"""The quick start: MiniGPT-4's whole pipeline on the embedded tiny default, on a CPU.

    make quickstart      # .venv/bin/python tools/quickstart.py
    make tiny-assets     # .venv/bin/python tools/quickstart.py --assets-only

1. The tiny assets, only where missing: ``tools/make_tiny_weights.py`` writes tiny EVA ViT, BLIP-2
   and Vicuna files in the real formats (with a trained sentencepiece tokenizer) to
   ``assets/tiny/weights``; ``dataset/make_synthetic.py`` writes laion and cc_sbu shards and a
   cc_sbu_align folder made from real photos to ``assets/tiny/data``.
2. Stage 1: ``torchrun --standalone --nproc-per-node 2 train.py --cfg-path
   train_configs/minigpt4_stage1_tiny.yaml`` with 2 CPU processes (gloo).
3. Stage 2: ``train.py --cfg-path train_configs/minigpt4_stage2_tiny.yaml`` from the stage-1
   checkpoint (``model.ckpt``), one process, as the reference's single-GPU stage 2.
4. Chat: the stage-2 model answers one question about a real photo through ``Chat``.

Each stage's TokensPerSec and output folder are printed at the end; the full console output of
each stage is kept in ``output/quickstart/``. The tiny LLM is random and trains for seconds, so
the answer is not meaningful: what the quick start shows is every piece running end to end on
the real formats.
"""

from __future__ import annotations

import argparse
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
STAGE1_CONFIG = "train_configs/minigpt4_stage1_tiny.yaml"
STAGE2_CONFIG = "train_configs/minigpt4_stage2_tiny.yaml"
EVAL_CONFIG = "eval_configs/minigpt4_tiny_eval.yaml"
LOG_DIR = Path("output/quickstart")
QUESTION = "Describe this image in detail."

# A child's log records start with a timestamp; a multi-line record's continuation lines do not,
# and are echoed with it (tqdm bars and other library output are not).
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
OUTPUTS = re.compile(r"Outputs go to (\S+)")


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
            if LOG_RECORD.match(line):
                in_record = True
                sys.stderr.write(f"    {line}")
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


def chat_about_a_photo(checkpoint: Path) -> str:
    import torch
    from PIL import Image
    from skimage import data as photos

    from minigpt4.conversation.conversation import CONV_VISION
    from minigpt4.conversation.launch import build_chat

    torch.manual_seed(0)
    chat = build_chat(EVAL_CONFIG, [f"model.ckpt={checkpoint}"], torch.device("cpu"))
    conv, img_list = CONV_VISION.copy(), []
    chat.upload_img(Image.fromarray(photos.astronaut()), conv, img_list)
    chat.ask(QUESTION, conv)
    answer, _ = chat.answer(conv, img_list, max_new_tokens=40)
    return answer


def main() -> None:
    parser = argparse.ArgumentParser(description="MiniGPT-4 end to end on the tiny default, on a CPU.")
    parser.add_argument("--assets-only", action="store_true", help="only make the tiny assets (make tiny-assets)")
    add_debug_argument(parser)
    args = parser.parse_args()
    from minigpt4.common.logger import setup_logger  # after parsing: --help does not wait for torch

    setup_logger()
    os.chdir(REPO)
    start = time.perf_counter()
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
    logger.info("chat: the stage-2 model (%s) looks at scikit-image's astronaut photo", stage2_ckpt)
    answer = chat_about_a_photo(stage2_ckpt)

    logger.info("quick start done in %.0f s", time.perf_counter() - start)
    for name, steps, folder, ckpt in (
        ("stage 1 (torchrun, 2 CPU processes)", stage1_steps, stage1_dir, stage1_ckpt),
        ("stage 2 (1 CPU process, from stage 1)", stage2_steps, stage2_dir, stage2_ckpt),
    ):
        rates = throughput(steps)
        logger.info(
            "%s: TokensPerSec=%.0f samples/s=%.1f step_time=%.4f s; outputs in %s (log.txt, %s)",
            name, rates["TokensPerSec"], rates["samples/s"], rates["step_time"], folder, ckpt.name,
        )  # fmt: skip
    logger.info("chat: Q: %s", QUESTION)
    logger.info("chat: A: %s", answer)
    logger.info("(a random tiny LLM trained for seconds: the answer shows the pipeline runs, not that it sees)")


if __name__ == "__main__":
    run_main(main, "tools/quickstart.py")
