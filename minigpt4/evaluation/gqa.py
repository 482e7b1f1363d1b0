"""GQA accuracy: exact match after the VQA answer normalisation.

Files:

* questions, e.g. ``testdev_balanced_questions.json``: a JSON object keyed by question id,
  ``{"<id>": {"imageId", "question", "answer", "fullAnswer", "types": {"structural", "semantic",
  "detailed"}, "isBalanced", ...}}``; used: the key, ``answer``, ``types.structural``, ``types.semantic``;
* predictions: GQA's submission format, a JSON list of ``{"questionId", "prediction"}``, or
  ``{"question_id", "answer"}`` objects one per line (JSONL).

``accuracy`` compares :func:`~minigpt4.evaluation.vqa.normalize_answer` of both sides;
``exact_match_raw`` is upstream MiniGPT-v2's figure (its cleaned answer equal to the label). GQA's
consistency, validity, plausibility, grounding and distribution scores are not computed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

from minigpt4.evaluation.files import ScoringInputError, field_of, read_json
from minigpt4.evaluation.vqa import clean_generated_answer, normalize_answer


def gqa_match(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)


def load_gqa_questions(path: str | Path) -> dict[str, dict]:
    """{question id: {"answer", "structural", "semantic"}} from a GQA questions file."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise ScoringInputError(f"{path}: a GQA questions file is a JSON object keyed by question id")
    questions = {}
    for key, row in data.items():
        types = (row.get("types") or {}) if isinstance(row, dict) else {}
        questions[str(key)] = {
            "answer": str(field_of(row, ["answer"], path, "answer")),
            "structural": types.get("structural"),
            "semantic": types.get("semantic"),
        }
    return questions


def score_gqa(predictions: Mapping[str, str], questions: Mapping[str, dict], ids: Iterable[str]) -> dict:
    hits, raw_hits = [], []
    by_type: dict[str, dict[str, list[bool]]] = {"structural": defaultdict(list), "semantic": defaultdict(list)}
    for key in ids:
        answer = questions[key]["answer"]
        hit = gqa_match(predictions[key], answer)
        hits.append(hit)
        raw_hits.append(clean_generated_answer(predictions[key]) == answer)
        for kind, groups in by_type.items():
            if questions[key][kind] is not None:
                groups[questions[key][kind]].append(hit)
    result = {
        "accuracy": 100.0 * sum(hits) / len(hits),
        "exact_match_raw": 100.0 * sum(raw_hits) / len(raw_hits),
        "questions": len(hits),
    }
    for kind, groups in by_type.items():
        if groups:
            result[f"per_{kind}_type"] = {name: 100.0 * sum(v) / len(v) for name, v in sorted(groups.items())}
    return result
