"""Benchmark evaluation: a model config with benchmark datasets in, predictions, metrics and one
table out.

    python evaluate.py --cfg-path eval_configs/vqav2.yaml --options model.ckpt=/data/minigpt4.pth
    torchrun --nproc-per-node 4 evaluate.py --cfg-path eval_configs/pope.yaml

Every entry of ``datasets:`` is a benchmark (a registered benchmark builder: coco_caption,
nocaps, vqav2, okvqa, vizwiz, textvqa, gqa, pope, vsr, hateful_memes, attribute_naming) with its
files, its ``benchmark.prompt`` and ``benchmark.max_new_tokens``. Each question is a fresh one-turn
conversation, answered greedily in batches of ``run.batch_size_eval``; under torchrun the
questions are shared out over the ranks and rank 0 merges and scores. Predictions go to
``run.output_dir`` as JSONL, appended as they come: run the same command again after an
interruption and only the questions not answered yet are asked. ``metrics.json`` there holds the
figures; the table is printed at the end. See minigpt4/evaluation/run.py for the files.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from minigpt4.common.cli import add_model_arguments, run_main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="evaluate.py", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser, default_device="auto")
    parser.add_argument("--limit", type=int, help="answer and score only the first N questions of each split")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Returns ``{"<benchmark>/<split>": figures}`` on rank 0 (empty on the other ranks)."""
    args = parse_args(argv)
    from minigpt4.evaluation.run import evaluate_config

    return evaluate_config(args.cfg_path, args.options, args.device, args.patch_generation, args.limit)


if __name__ == "__main__":
    run_main(lambda: main() and None, "evaluate.py")
