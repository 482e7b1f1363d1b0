"""The scorers against values worked out by hand from each benchmark's definition."""

from __future__ import annotations

import json
import os

import pytest

from minigpt4.evaluation import captions, gqa, pope, score, vqa
from minigpt4.evaluation.files import ScoringInputError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("yes!", "yes "),  # a mark with no space next to it becomes a space (kept: no strip follows)
        ("black-and-white", "black and white"),
        ("red - white", "red  white"),  # a mark next to a space is deleted
        ("1,000", "1000"),  # digit-comma-digit: every mark is deleted
        ("1,000-2", "10002"),
        ("3.5", "3.5"),  # a period before a digit stays
        ("dog.", "dog"),
        ("e.g", "eg"),
        ("it's", "it's"),  # the apostrophe is not punctuation
    ],
)
def test_punctuation_rules(raw, expected):
    assert vqa.normalize_punctuation(raw) == expected


def test_period_removal_stops_after_32_as_the_official_code_does():
    assert vqa.normalize_punctuation("." * 40) == "." * 8


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two", "2"),
        ("none", "0"),
        ("ten dogs", "10 dogs"),
        ("eleven", "eleven"),
        ("A dog", "dog"),
        ("the an a cat", "cat"),
        ("dont", "don't"),
        ("couldnt've", "couldn't've"),
        ("couldn'tve", "couldn't've"),
        ("couldntve", "couldntve"),  # not in the official table
        ("somebody'd", "somebodyd"),
        ("  Yes\tsir\n", "yes sir"),
    ],
)
def test_answer_normalisation(raw, expected):
    assert vqa.normalize_answer(raw) == expected


@pytest.mark.parametrize(
    ("matching", "expected"),
    # k of 10 humans agree: k subsets see k-1 matches, 10-k see k; min(n/3, 1) averaged.
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)],
)
def test_leave_one_out_accuracy(matching, expected):
    humans = ["two"] * 0 + ["2"] * matching + ["other"] * (10 - matching)
    assert vqa.vqa_accuracy("Two.", humans) == pytest.approx(expected)


def test_human_answers_get_punctuation_only_when_they_differ():
    # All ten the same: left as they are, so "black-white" never matches "black white".
    assert vqa.vqa_accuracy("black white", ["black-white"] * 10) == 0.0
    # Different answers: their punctuation is normalised, but not their words ("Two" stays).
    assert vqa.vqa_accuracy("black white", ["black-white"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    assert vqa.vqa_accuracy("2", ["Two"] * 5 + ["no"] * 5) == 0.0


def test_score_vqa_breakdowns():
    questions = {
        "1": vqa.VQAQuestion("1", ("yes",) * 10, "is this", "yes/no"),
        "2": vqa.VQAQuestion("2", ("2",) * 2 + ("3",) * 8, "how many", "number"),
        "3": vqa.VQAQuestion("3", ("red",) * 10, "what color", "other"),
    }
    result = vqa.score_vqa({"1": "Yes", "2": "two", "3": "blue"}, questions, ["1", "2", "3"])
    assert result["accuracy"] == pytest.approx(100 * (1 + 0.6 + 0) / 3)
    assert result["per_answer_type"] == pytest.approx({"number": 60.0, "other": 0.0, "yes/no": 100.0})
    assert result["per_question_type"]["how many"] == pytest.approx(60.0)


def test_upstream_cleaning():
    assert vqa.clean_generated_answer(" Red<unk> ") == "red"


def test_gqa_exact_match_after_normalisation():
    questions = {
        "a": {"answer": "yes", "structural": "verify", "semantic": "attr"},
        "b": {"answer": "2", "structural": "query", "semantic": "obj"},
        "c": {"answer": "table", "structural": "query", "semantic": "obj"},
    }
    result = gqa.score_gqa({"a": "Yes.", "b": "two", "c": "the chair"}, questions, ["a", "b", "c"])
    assert result["accuracy"] == pytest.approx(200 / 3)
    assert result["exact_match_raw"] == 0.0  # upstream's figure: "yes." and "two" are not the labels
    assert result["per_structural_type"] == pytest.approx({"query": 50.0, "verify": 100.0})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes, there is a dog.", "yes"),
        ("No.", "no"),
        ("No, there is none.", "no"),
        ("There is not a dog", "no"),
        ("Yes. There is no cat.", "yes"),  # only the first sentence counts
        ("NO", "yes"),  # the benchmark's words are case-sensitive
        ("Nope", "yes"),
        ("", "yes"),
    ],
)
def test_pope_parsing(text, expected):
    assert pope.parse_yes_no(text) == expected


def test_pope_figures():
    labels = {"1": "yes", "2": "yes", "3": "yes", "4": "no", "5": "no"}
    answers = {"1": "Yes", "2": "Yes", "3": "No", "4": "Yes", "5": "no"}
    result = pope.score_pope(answers, labels, labels)
    assert (result["tp"], result["fp"], result["tn"], result["fn"]) == (2, 1, 1, 1)
    assert result["accuracy"] == pytest.approx(60.0)
    assert result["precision"] == pytest.approx(200 / 3)
    assert result["recall"] == pytest.approx(200 / 3)
    assert result["f1"] == pytest.approx(200 / 3)
    assert result["yes_ratio"] == pytest.approx(60.0)
    undefined = pope.score_pope({"1": "no"}, {"1": "yes"}, ["1"])
    assert undefined["precision"] is None and undefined["f1"] is None


def test_caption_scores_missing_without_pycocoevalcap(monkeypatch, tmp_path):
    if captions.missing_requirements():
        result = captions.score_captions({"1": "a dog"}, {"1": ["a dog runs"]}, ["1"])
        assert result["scores"] == {}
        assert set(result["missing"]) == set(captions.CAPTION_METRICS)
    monkeypatch.setenv("PATH", str(tmp_path))
    reasons = captions.missing_requirements()
    assert any("java" in reason for reason in reasons)
    result = captions.score_captions({"1": "a dog"}, {"1": ["a dog runs"]}, ["1"])
    assert result["scores"] == {} and "java" in result["missing"]["CIDEr"]


@pytest.mark.slow
def test_caption_scores_with_pycocoevalcap():
    pytest.importorskip("pycocoevalcap")
    if captions.missing_requirements():
        pytest.skip("; ".join(captions.missing_requirements()))
    references = {"1": ["a dog runs on the grass"], "2": ["a red car parked in the street"]}
    result = captions.score_captions(
        {"1": "a dog runs on the grass", "2": "a red car parked in the street"}, references, ["1", "2"]
    )
    assert result["scores"]["BLEU-4"] == pytest.approx(100.0, abs=1e-3)
    assert result["scores"]["ROUGE-L"] == pytest.approx(100.0)


def _write(path, data, jsonl=False):
    path.write_text("\n".join(json.dumps(row) for row in data) if jsonl else json.dumps(data))
    return str(path)


def _vqa_files(tmp_path):
    def answers(*texts):
        return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1} for i, t in enumerate(texts)]

    annotations = {
        "annotations": [
            {
                "question_id": 11,
                "image_id": 1,
                "question_type": "how many",
                "answer_type": "number",
                "multiple_choice_answer": "2",
                "answers": answers(*["2"] * 3, *["3"] * 7),
            },
            {
                "question_id": 12,
                "image_id": 1,
                "question_type": "is the",
                "answer_type": "yes/no",
                "multiple_choice_answer": "yes",
                "answers": answers(*["yes"] * 10),
            },
        ]
    }
    questions = {
        "questions": [
            {"question_id": 11, "image_id": 1, "question": "How many?"},
            {"question_id": 12, "image_id": 1, "question": "Is the sky blue?"},
        ]
    }
    return _write(tmp_path / "ann.json", annotations), _write(tmp_path / "q.json", questions)


def test_score_entry_point_vqa(tmp_path, capsys):
    annotations, questions = _vqa_files(tmp_path)
    predictions = _write(
        tmp_path / "pred.json", [{"question_id": 11, "answer": "two"}, {"question_id": 12, "answer": "Yes"}]
    )
    assert (
        score.main(
            [
                "--benchmark",
                "vqav2",
                "--predictions",
                predictions,
                "--annotations",
                annotations,
                "--questions",
                questions,
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "pred.json.metrics.json").read_text())
    assert metrics["results"]["vqav2"]["accuracy"] == pytest.approx(95.0)
    assert "95.00" in capsys.readouterr().out


def test_score_entry_point_refuses_partial_predictions(tmp_path):
    annotations, _ = _vqa_files(tmp_path)
    predictions = _write(tmp_path / "pred.jsonl", [{"question_id": 11, "answer": "2"}], jsonl=True)
    args = ["--benchmark", "okvqa", "--predictions", predictions, "--annotations", annotations]
    with pytest.raises(ScoringInputError, match="1 of 2 annotated ids have no prediction"):
        score.main(args)
    assert score.main([*args, "--subset"]) == 0
    metrics = json.loads((tmp_path / "pred.jsonl.metrics.json").read_text())
    assert metrics["results"]["okvqa"]["accuracy"] == pytest.approx(90.0)


def test_score_entry_point_gqa_and_pope(tmp_path):
    questions = {
        "201": {
            "imageId": "n1",
            "question": "Is it red?",
            "answer": "yes",
            "fullAnswer": "Yes, it is.",
            "types": {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"},
            "isBalanced": True,
        },
        "202": {
            "imageId": "n1",
            "question": "What is it?",
            "answer": "table",
            "fullAnswer": "It is a table.",
            "types": {"structural": "query", "semantic": "obj", "detailed": "objQuery"},
            "isBalanced": True,
        },
    }
    gqa_preds = _write(
        tmp_path / "gqa.json",
        [{"questionId": "201", "prediction": "yes"}, {"questionId": "202", "prediction": "a table"}],
    )
    out = tmp_path / "gqa_metrics.json"
    score.main(
        [
            "--benchmark",
            "gqa",
            "--predictions",
            gqa_preds,
            "--annotations",
            _write(tmp_path / "testdev_balanced_questions.json", questions),
            "--output",
            str(out),
        ]
    )
    assert json.loads(out.read_text())["results"]["gqa"]["accuracy"] == 100.0

    rows = [
        {"question_id": 1, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a dog?", "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a cat?", "label": "no"},
    ]
    labels = [_write(tmp_path / f"coco_pope_{s}.json", rows, jsonl=True) for s in ("random", "adversarial")]
    preds = [
        _write(tmp_path / "r.jsonl", [{"question_id": 1, "text": "Yes."}, {"question_id": 2, "text": "No."}], True),
        _write(tmp_path / "a.jsonl", [{"question_id": 1, "answer": "Yes"}, {"question_id": 2, "answer": "Yes"}], True),
    ]
    score.main(["--benchmark", "pope", "--annotations", *labels, "--predictions", *preds])
    results = json.loads((tmp_path / "r.jsonl.metrics.json").read_text())["results"]
    assert results["random"]["accuracy"] == 100.0
    assert results["adversarial"]["accuracy"] == 50.0 and results["adversarial"]["yes_ratio"] == 100.0


def test_score_entry_point_captions_report_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java: reported, whatever else is installed
    gt = {
        "images": [{"id": 7, "file_name": "COCO_val2014_000000000007.jpg"}],
        "annotations": [{"image_id": 7, "id": 1, "caption": "A dog on grass."}],
    }
    preds = _write(tmp_path / "caps.json", [{"image_id": 7, "caption": "a dog"}])
    score.main(
        ["--benchmark", "coco_caption", "--predictions", preds, "--annotations", _write(tmp_path / "gt.json", gt)]
    )
    metrics = json.loads((tmp_path / "caps.json.metrics.json").read_text())
    assert metrics["results"]["coco_caption"]["scores"] == {}
    assert "java" in metrics["results"]["coco_caption"]["missing"]["SPICE"]
    assert "SPICE missing" in capsys.readouterr().out


def test_score_as_a_module_gives_one_line_errors(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "minigpt4.evaluation.score",
            "--benchmark",
            "gqa",
            "--predictions",
            str(bad),
            "--annotations",
            str(bad),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "MINIGPT4_DEBUG": ""},
    )
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        f"minigpt4.evaluation.score: {bad}: not valid JSON "
        "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"
    ]
