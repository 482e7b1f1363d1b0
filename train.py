"""Train MiniGPT-4 (either stage) from a YAML config.

    python train.py --cfg-path train_configs/minigpt4_stage1_pretrain.yaml [--options run.max_epoch=1 ...]
    torchrun --nproc-per-node 4 train.py --cfg-path train_configs/minigpt4_stage1_pretrain.yaml

Set-up order: config, logging, process group, seeds, output folder (created for this run alone,
checked writable; its name is the job id), every input path and the runner's keys checked,
datasets, model, then the runner's loop. A wrong path, an unusable ``run:`` value or an
unwritable output folder stops the run before anything heavy is loaded; a run that stops before
it logged a step or wrote a checkpoint removes its folder again. Outputs go to
``run.output_dir/<job_id>/`` relative to the working directory: ``log.txt``, ``checkpoint_*.pth``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import random
import sys
import time
from typing import TYPE_CHECKING

from minigpt4.common.cli import add_debug_argument, run_main

if TYPE_CHECKING:
    from minigpt4.runners.runner_base import RunnerBase

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train MiniGPT-4 from a YAML config.")
    parser.add_argument("--cfg-path", required=True, help="the YAML config (train_configs/...)")
    parser.add_argument(
        "--options", nargs="+", help="overrides merged last, as key=value (or key value) pairs: run.max_epoch=1 ..."
    )
    add_debug_argument(parser)
    return parser.parse_args(argv)


def setup_seeds(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def main(argv: list[str] | None = None) -> RunnerBase:
    """Train as the config says; returns the runner (its ``history`` holds every log line's figures)."""
    args = parse_args(argv)
    # Imported once the arguments are parsed, so that --help answers without loading torch.
    import torch

    from minigpt4.common.config import Config
    from minigpt4.common.dist_utils import (
        broadcast_object,
        get_rank,
        get_world_size,
        init_distributed_mode,
        is_main_process,
    )
    from minigpt4.common.logger import setup_logger
    from minigpt4.common.registry import registry
    from minigpt4.runners.runner_base import discard_output_dir, setup_output_dir
    from minigpt4.runners.train_step import resolve_precision
    from minigpt4.tasks import setup_task

    cfg = Config(args)
    run_cfg = cfg.run_cfg
    setup_logger(int(os.environ.get("RANK", "0")))
    device = init_distributed_mode(run_cfg.device, run_cfg.dist_url)
    setup_seeds(run_cfg.seed + get_rank())
    output_dir = runner = None
    if is_main_process():
        output_dir = setup_output_dir(run_cfg, datetime.datetime.now().strftime("%Y%m%d%H%M%S"))
        logger.info("Outputs go to %s (log.txt there holds the full config)", output_dir.resolve())
    # One job id for all ranks: the folder rank 0 created (the reference let each rank read its own clock).
    job_id = broadcast_object(output_dir.name if output_dir else None)
    try:
        task = setup_task(cfg)
        task.check_inputs(cfg)
        runner_cls = registry.get_runner_class(run_cfg.runner)
        runner_cls.check_config(run_cfg)
        precision = str(resolve_precision(run_cfg, device) or torch.float32).removeprefix("torch.")
        logger.info("Training %s", cfg.summary(get_world_size(), precision, str(device)))
        start = time.perf_counter()
        datasets = task.build_datasets(cfg)
        model = task.build_model(cfg, device)
        logger.info("Datasets and model ready in %.1f s", time.perf_counter() - start)
        runner = runner_cls(cfg=cfg, job_id=job_id, task=task, model=model, datasets=datasets, device=device)
        runner.train()
    except BaseException:
        if output_dir is not None and not getattr(runner, "history", None):
            discard_output_dir(output_dir)  # a failed start leaves no empty job folder behind
        raise
    return runner


def leave_process_group() -> None:
    # Only a run that got as far as the process group has one (and --help never loads torch).
    dist_utils = sys.modules.get("minigpt4.common.dist_utils")
    if dist_utils is not None:
        dist_utils.destroy_process_group()


if __name__ == "__main__":
    # A wrong key, path, device or weight file ends in one line (under torchrun, from every rank).
    run_main(main, "train.py", cleanup=leave_process_group)
