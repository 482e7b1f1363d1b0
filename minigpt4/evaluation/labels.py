"""Scorers for benchmarks answered with a label or a description: exact match against a label
(upstream MiniGPT-v2's VSR and Hateful Memes figures) and attribute naming (the tiny world's
held-out score).

* exact match: the answer after :func:`~minigpt4.evaluation.vqa.clean_generated_answer` (lower
  case, ``<unk>`` removed, stripped) equals the label; accuracy in percent;
* attribute naming: an answer is right when, for each scored attribute, the values of that
  attribute it names (its words, lower case, with ``.`` and ``,`` read as spaces, that are one of
  the attribute's values) are exactly the right one: "a red circle" names colour red and shape
  circle; "a red circle and a blue one" names two colours and is wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from minigpt4.evaluation.vqa import clean_generated_answer


def score_exact_match(predictions: Mapping[str, str], labels: Mapping[str, str], ids: Iterable[str]) -> dict:
    hits = [clean_generated_answer(predictions[key]) == labels[key] for key in ids]
    return {"accuracy": 100.0 * sum(hits) / len(hits), "questions": len(hits)}


def named_values(text: str, values: Iterable[str]) -> set[str]:
    """The ``values`` (one attribute's, e.g. the colours) that ``text`` names."""
    words = set(text.lower().replace(".", " ").replace(",", " ").split())
    return words & {value.lower() for value in values}


def names_attributes(text: str, truth: Mapping[str, str], vocabulary: Mapping[str, Sequence[str]]) -> bool:
    """True when ``text`` names each attribute of ``truth`` with its value and no other value."""
    return all(named_values(text, vocabulary[name]) == {value.lower()} for name, value in truth.items())


def score_attribute_naming(
    predictions: Mapping[str, str],
    truths: Mapping[str, Mapping[str, str]],
    vocabulary: Mapping[str, Sequence[str]],
    ids: Iterable[str],
) -> dict:
    """``accuracy``: answers naming every scored attribute right; ``per_attribute``: each alone."""
    ids = list(ids)
    right = [names_attributes(predictions[key], truths[key], vocabulary) for key in ids]
    result = {"accuracy": 100.0 * sum(right) / len(right), "questions": len(right)}
    attributes = sorted({name for key in ids for name in truths[key]})
    result["per_attribute"] = {
        name: 100.0
        * sum(names_attributes(predictions[key], {name: truths[key][name]}, vocabulary) for key in ids)
        / len(ids)
        for name in attributes
    }
    return result
