"""Reading annotation and prediction files (JSON or JSONL) with one-line errors."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from minigpt4.common.errors import MiniGPT4Error


class ScoringInputError(MiniGPT4Error, ValueError):
    """An annotation or predictions file the scorer cannot use."""


def read_json(path: str | Path) -> Any:
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as error:
            raise ScoringInputError(f"{path}: not valid JSON ({error})") from None


def read_json_or_jsonl(path: str | Path) -> list[Any]:
    """A JSON list, or one JSON object per line (blank lines skipped)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return read_json(path)
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ScoringInputError(f"{path} line {number}: not valid JSON ({error})") from None
    return rows


def field_of(row: Mapping[str, Any], names: Iterable[str], path: Path, what: str) -> Any:
    """The first of ``names`` present in ``row``, or an error naming the file and the keys."""
    names = tuple(names)
    if not isinstance(row, Mapping):
        raise ScoringInputError(f"{path}: each entry must be a JSON object, got {type(row).__name__}")
    for name in names:
        if name in row:
            return row[name]
    raise ScoringInputError(f"{path}: an entry has no {what} (looked for {', '.join(names)}): {row}")


def read_predictions(path: str | Path, id_keys: Iterable[str], text_keys: Iterable[str]) -> dict[str, str]:
    """{id (as a string): predicted text}; ids are compared as strings so that 1 and "1" agree."""
    path = Path(path)
    id_keys, text_keys = tuple(id_keys), tuple(text_keys)
    predictions: dict[str, str] = {}
    for row in read_json_or_jsonl(path):
        key = str(field_of(row, id_keys, path, "id"))
        text = field_of(row, text_keys, path, "predicted text")
        if key in predictions:
            raise ScoringInputError(f"{path}: id {key} is predicted twice")
        predictions[key] = str(text)
    return predictions


def match_ids(predictions: Mapping[str, Any], annotated: Iterable[str], path: Path, subset: bool) -> list[str]:
    """The ids to score: every annotated one (the official scorers' rule), or with ``subset`` only
    the predicted ones. A predicted id that is not annotated is always an error."""
    annotated = list(annotated)
    known = set(annotated)
    unknown = [key for key in predictions if key not in known]
    if unknown:
        raise ScoringInputError(f"{path}: {len(unknown)} predicted ids are not in the annotations, e.g. {unknown[0]}")
    missing = [key for key in annotated if key not in predictions]
    if missing and not subset:
        raise ScoringInputError(
            f"{path}: {len(missing)} of {len(annotated)} annotated ids have no prediction, e.g. {missing[0]} "
            "(pass --subset to score only the predicted ones)"
        )
    ids = [key for key in annotated if key in predictions]
    if not ids:
        raise ScoringInputError(f"{path}: no prediction matches an annotated id")
    return ids
