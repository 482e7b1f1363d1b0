"""POPE (object hallucination): yes/no parsing and the benchmark's five figures, per split.

Files: one label file per split, ``coco_pope_random.json``, ``coco_pope_popular.json``,
``coco_pope_adversarial.json`` (JSONL despite the name): ``{"question_id", "image", "text",
"label": "yes"|"no"}`` per line; used: ``question_id`` and ``label``. The split is named after
the file's last ``_`` part. Predictions: JSONL (or a JSON list) of ``{"question_id", "answer"}``
(``"text"`` is accepted for ``answer``), one file per split.

Parsing, as POPE's own evaluation does it: only the text before the first period is kept, commas
are removed, and the answer is "no" when one of its space-separated words is ``No``, ``no`` or
``not``; anything else is "yes". "yes" is the positive class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from minigpt4.evaluation.files import field_of, read_json_or_jsonl

NEGATIVE_WORDS = frozenset({"No", "no", "not"})


def parse_yes_no(text: str) -> str:
    first_sentence = text.split(".", maxsplit=1)[0].replace(",", "")
    return "no" if NEGATIVE_WORDS.intersection(first_sentence.split(" ")) else "yes"


def load_pope_labels(path: str | Path) -> dict[str, str]:
    path = Path(path)
    labels = {}
    for row in read_json_or_jsonl(path):
        label = str(field_of(row, ["label"], path, "label")).strip().lower()
        labels[str(field_of(row, ["question_id"], path, "question_id"))] = "no" if label == "no" else "yes"
    return labels


def split_name(path: str | Path) -> str:
    return Path(path).stem.rsplit("_", 1)[-1]


def _ratio(numerator: int, denominator: int) -> float | None:
    # None (printed n/a) where the figure is undefined, e.g. precision with no "yes" predicted.
    return 100.0 * numerator / denominator if denominator else None


def score_pope(predictions: Mapping[str, str], labels: Mapping[str, str], ids: Iterable[str]) -> dict:
    tp = fp = tn = fn = 0
    for key in ids:
        predicted_yes = parse_yes_no(predictions[key]) == "yes"
        actual_yes = labels[key] == "yes"
        tp += predicted_yes and actual_yes
        fp += predicted_yes and not actual_yes
        tn += not predicted_yes and not actual_yes
        fn += not predicted_yes and actual_yes
    total = tp + fp + tn + fn
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    if precision is None or recall is None or precision + recall == 0:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall)
    return {
        "accuracy": _ratio(tp + tn, total),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": _ratio(tp + fp, total),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "questions": total,
    }
