"""Score a predictions file against a benchmark's annotation files, without a model.

    python -m minigpt4.evaluation.score --benchmark vqav2 --predictions preds.json \\
        --annotations v2_mscoco_val2014_annotations.json \\
        [--questions v2_OpenEnded_mscoco_val2014_questions.json]
    python -m minigpt4.evaluation.score --benchmark pope \\
        --annotations coco_pope_random.json coco_pope_popular.json coco_pope_adversarial.json \\
        --predictions random.jsonl popular.jsonl adversarial.jsonl

Benchmarks: ``vqav2`` and ``okvqa`` (:mod:`.vqa`), ``gqa`` (:mod:`.gqa`), ``pope`` (:mod:`.pope`,
one predictions file per split file, in the same order), ``coco_caption`` and ``nocaps``
(:mod:`.captions`). Every annotated question must have a prediction, as in the official scorers,
unless ``--subset``. Prints one table and writes the metrics JSON (``--output``, default
``<predictions>.metrics.json``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from minigpt4.common.cli import add_debug_argument, run_main
from minigpt4.evaluation.captions import load_coco_captions, score_captions
from minigpt4.evaluation.files import ScoringInputError, match_ids, read_predictions
from minigpt4.evaluation.gqa import load_gqa_questions, score_gqa
from minigpt4.evaluation.pope import load_pope_labels, score_pope, split_name
from minigpt4.evaluation.vqa import load_vqa_annotations, score_vqa

BENCHMARKS = ("vqav2", "okvqa", "gqa", "pope", "coco_caption", "nocaps")
QUESTION_ID_KEYS = ("question_id", "questionId")
ANSWER_KEYS = ("answer", "prediction", "text")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m minigpt4.evaluation.score", description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    parser.add_argument("--predictions", required=True, nargs="+", help="predictions file(s), JSON list or JSONL")
    parser.add_argument("--annotations", required=True, nargs="+", help="the benchmark's annotation file(s)")
    parser.add_argument("--questions", help="VQA only: the questions file, checked to list the same ids")
    parser.add_argument("--subset", action="store_true", help="score only the annotated ids that have a prediction")
    parser.add_argument("--output", help="metrics JSON to write (default: <first predictions>.metrics.json)")
    add_debug_argument(parser)
    return parser


def score(args: argparse.Namespace) -> dict:
    """{"benchmark", "results": {row name: figures}} for the parsed arguments."""
    pairs = list(zip(args.annotations, args.predictions, strict=False))
    if args.benchmark == "pope":
        if len(args.annotations) != len(args.predictions):
            raise ScoringInputError(
                f"pope needs one predictions file per label file: got {len(args.predictions)} "
                f"for {len(args.annotations)}"
            )
    elif len(args.annotations) != 1 or len(args.predictions) != 1:
        raise ScoringInputError(f"{args.benchmark} takes one --annotations file and one --predictions file")
    if args.questions and args.benchmark not in ("vqav2", "okvqa"):
        raise ScoringInputError(f"--questions is for vqav2 and okvqa, not {args.benchmark}")
    results = {}
    for annotation_path, predictions_path in pairs:
        path = Path(predictions_path)
        if args.benchmark in ("vqav2", "okvqa"):
            questions = load_vqa_annotations(annotation_path, args.questions)
            predictions = read_predictions(path, QUESTION_ID_KEYS, ANSWER_KEYS)
            ids = match_ids(predictions, questions, path, args.subset)
            results[args.benchmark] = score_vqa(predictions, questions, ids)
        elif args.benchmark == "gqa":
            questions = load_gqa_questions(annotation_path)
            predictions = read_predictions(path, QUESTION_ID_KEYS, ANSWER_KEYS)
            results["gqa"] = score_gqa(predictions, questions, match_ids(predictions, questions, path, args.subset))
        elif args.benchmark == "pope":
            labels = load_pope_labels(annotation_path)
            predictions = read_predictions(path, QUESTION_ID_KEYS, ANSWER_KEYS)
            name = split_name(annotation_path)
            if name in results:
                raise ScoringInputError(f"{annotation_path}: split {name} is given twice")
            results[name] = score_pope(predictions, labels, match_ids(predictions, labels, path, args.subset))
        else:
            references = load_coco_captions(annotation_path)
            predictions = read_predictions(path, ("image_id",), ("caption",))
            results[args.benchmark] = score_captions(
                predictions, references, match_ids(predictions, references, path, args.subset)
            )
    return {"benchmark": args.benchmark, "results": results}


def _cell(value: object) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def format_table(metrics: dict) -> str:
    """One table: a row per split (POPE) or one row, a column per headline figure."""
    rows = []
    for name, figures in metrics["results"].items():
        flat = dict(figures.get("scores", {}))
        flat.update({k: v for k, v in figures.items() if not isinstance(v, dict)})
        flat.update({k: "missing" for k in figures.get("missing", {})})
        rows.append((name, flat))
    columns = list(dict.fromkeys(key for _, flat in rows for key in flat))
    table = [["", *columns]] + [[name, *(_cell(flat.get(c)) for c in columns)] for name, flat in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in table]
    for name, figures in metrics["results"].items():
        for metric, reason in figures.get("missing", {}).items():
            lines.append(f"{name} {metric} missing: {reason}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    metrics = score(args)
    output = Path(args.output or f"{args.predictions[0]}.metrics.json")
    output.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(format_table(metrics))
    print(f"metrics written to {output}")
    return 0


if __name__ == "__main__":
    run_main(main, "minigpt4.evaluation.score")
