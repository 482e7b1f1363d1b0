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

import numpy as np
import torch

import minigpt4  # noqa: F401  (registers every YAML name)
from minigpt4.common.config import Config, ConfigError
from minigpt4.common.dist_utils import (
    broadcast_object,
    destroy_process_group,
    get_rank,
    init_distributed_mode,
    is_main_process,
)
from minigpt4.common.logger import setup_logger
from minigpt4.common.registry import registry
from minigpt4.models.loaders import WeightLoadError
from minigpt4.runners.runner_base import RunnerBase, discard_output_dir, setup_output_dir
from minigpt4.tasks import setup_task

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train MiniGPT-4 from a YAML config.")
    parser.add_argument("--cfg-path", required=True, help="the YAML config (train_configs/...)")
    parser.add_argument(
        "--options", nargs="+", help="overrides merged last, as key=value (or key value) pairs: run.max_epoch=1 ..."
    )
    return parser.parse_args(argv)


def setup_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def main(argv: list[str] | None = None) -> RunnerBase:
    """Train as the config says; returns the runner (its ``history`` holds every log line's figures)."""
    cfg = Config(parse_args(argv))
    run_cfg = cfg.run_cfg
    setup_logger(int(os.environ.get("RANK", "0")))
    device = init_distributed_mode(run_cfg.device, run_cfg.dist_url)
    setup_seeds(run_cfg.seed + get_rank())
    output_dir = runner = None
    if is_main_process():
        output_dir = setup_output_dir(run_cfg, datetime.datetime.now().strftime("%Y%m%d%H%M%S"))
        logger.info("Outputs go to %s", output_dir.resolve())
    # One job id for all ranks: the folder rank 0 created (the reference let each rank read its own clock).
    job_id = broadcast_object(output_dir.name if output_dir else None)
    try:
        task = setup_task(cfg)
        task.check_inputs(cfg)
        runner_cls = registry.get_runner_class(run_cfg.runner)
        runner_cls.check_config(run_cfg)
        cfg.pretty_print()
        datasets = task.build_datasets(cfg)
        model = task.build_model(cfg, device)
        runner = runner_cls(cfg=cfg, job_id=job_id, task=task, model=model, datasets=datasets)
        runner.train()
    except BaseException:
        if output_dir is not None and not getattr(runner, "history", None):
            discard_output_dir(output_dir)  # a failed start leaves no empty job folder behind
        raise
    return runner


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, FileNotFoundError, WeightLoadError) as error:
        # A wrong key, path or weight file: one clear line (under torchrun, from every rank)
        # instead of a traceback that buries it.
        sys.exit(f"train.py: {error}")
    finally:
        destroy_process_group()
