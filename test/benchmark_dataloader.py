"""How fast the stage-1 loader turns shards into batches: images/s per worker process for JPEG
decode + the training transforms at the real size (224), then through DataLoader workers.

    python test/benchmark_dataloader.py                       # on synthetic 256-px shards
    python test/benchmark_dataloader.py --data /data/laion_dataset --workers 1 4 8 --step-time 0.45

A GPU step of ``--batch-size`` images every ``--step-time`` seconds consumes batch/step_time
images/s per GPU; the last line says how many workers per GPU keep up with that.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import tempfile
import time
from pathlib import Path

# Run as a script from anywhere: the package and dataset/ live one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf

from minigpt4.common.cli import add_debug_argument, run_main
from minigpt4.common.schema import DatasetConfig, RunConfig

# torch and the data pipeline are imported where they are used, so that --help answers at once.


def laion(storage: str, image_size: int) -> dict:
    from minigpt4.datasets.builders import build_datasets

    cfg = OmegaConf.merge(
        OmegaConf.structured(DatasetConfig),
        {
            "build_info": {"storage": storage},
            "vis_processor": {"train": {"name": "blip2_image_train", "image_size": image_size}},
            "text_processor": {"train": {"name": "blip_caption"}},
        },
    )
    return build_datasets({"laion": cfg})


def per_worker(datasets: dict, samples: int) -> float:
    """Images/s of one process doing what one worker does (one torch thread, as in a worker)."""
    stream = iter(datasets["laion"]["train"])
    for _ in range(50):  # fill the shuffle buffer, open the first shards
        next(stream)
    start = time.perf_counter()
    for _ in range(samples):
        next(stream)
    return samples / (time.perf_counter() - start)


def through_loader(datasets: dict, workers: int, batch_size: int, batches: int, length_grouping: int) -> float:
    from minigpt4.datasets.datasets.dataloader_utils import build_train_loader

    keys = {"device": "cpu", "num_workers": workers, "batch_size_train": batch_size, "length_grouping": length_grouping}
    loader = build_train_loader(datasets, OmegaConf.merge(OmegaConf.structured(RunConfig), keys))
    for _ in range(max(2, workers)):  # workers started, first batches ready (with grouping: pools filled)
        next(loader)
    start = time.perf_counter()
    for _ in itertools.repeat(None, batches):
        next(loader)
    return batches * batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="shards to read (folder, pattern or list); default: synthetic 256-px shards")
    parser.add_argument("--image-size", type=int, default=224, help="training image side (default: 224)")
    parser.add_argument("--samples", type=int, default=400, help="images timed in the one-process measurement")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="DataLoader worker counts to time")
    parser.add_argument("--batch-size", type=int, default=64, help="stage 1 uses 64 per GPU")
    parser.add_argument("--batches", type=int, default=10, help="batches timed per worker count")
    parser.add_argument("--length-grouping", type=int, default=0, metavar="N", help="run.length_grouping")
    parser.add_argument("--step-time", type=float, default=None, help="seconds per GPU training step, if known")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    import torch

    from dataset.make_synthetic import make_synthetic

    with tempfile.TemporaryDirectory() as scratch:
        storage = args.data
        if storage is None:
            make_synthetic(Path(scratch), size=256, laion_samples=400, cc_sbu_samples=0, align_samples=0)
            storage = str(Path(scratch) / "laion")
        datasets = laion(storage, args.image_size)
        torch.set_num_threads(1)
        rate = per_worker(datasets, args.samples)
        print(
            f"decode + blip2_image_train({args.image_size}) + blip_caption: {rate:.0f} images/s per worker "
            f"({1000 / rate:.2f} ms/image), data: {storage}"
        )
        for workers in args.workers:
            total = through_loader(datasets, workers, args.batch_size, args.batches, args.length_grouping)
            grouping = f", length_grouping {args.length_grouping}" if args.length_grouping else ""
            print(f"DataLoader, {workers} workers, batch {args.batch_size}{grouping}: {total:.0f} images/s")
        if args.step_time:
            need = args.batch_size / args.step_time
            print(
                f"a GPU step of {args.batch_size} images every {args.step_time} s needs {need:.0f} images/s: "
                f"{math.ceil(need / rate)} workers per GPU"
            )


if __name__ == "__main__":
    run_main(main, "test/benchmark_dataloader.py")
