"""The benchmark builders without a model: each reads its fixture (the benchmark's real file
format) through Config and the registry, asks the YAML's prompt, post-processes as the benchmark
expects, writes its results format, and scores known answers with the values worked out by hand;
upstream MiniGPT-v2's file layouts load too."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from benchmark_fixtures import BENCHMARKS, tiny_eval_config, write_fixtures, write_json

from minigpt4.common.config import Config
from minigpt4.common.registry import registry
from minigpt4.datasets.datasets.benchmarks import read_attributes, read_gqa, read_vqa
from minigpt4.evaluation.labels import score_attribute_naming

QUESTION_COUNTS = {"coco_caption": 3, "nocaps": 3, "vqav2": 5, "okvqa": 5, "vizwiz": 4, "textvqa": 4, "gqa": 4,
                   "pope": 4, "vsr": 3, "hateful_memes": 3}  # fmt: skip


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return write_fixtures(tmp_path_factory.mktemp("benchmarks"))


def build(name: str, build_info: dict, tmp_path) -> dict:
    # The model section is never built here; only Config and the builder run.
    config = tiny_eval_config(name, build_info, tmp_path, tmp_path / "out")
    cfg = Config(SimpleNamespace(cfg_path=str(config), options=None))
    return registry.get_builder_class(name)(cfg.datasets_cfg[name]).build_datasets()


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_builder_reads_its_files(name, fixtures, tmp_path):
    splits = build(name, fixtures[name], tmp_path)
    for dataset in splits.values():
        assert len(dataset) == QUESTION_COUNTS[name]
        item = dataset[0]
        assert tuple(item["image"].shape) == (3, 56, 56)
        question = dataset.questions[0]
        assert question.image.is_file()
        assert item["prompt"] == dataset.prompt.replace("{}", question.question)
        if "{}" in dataset.prompt:
            assert question.question and question.question in item["prompt"]


def test_vqa_scores_known_answers_as_worked_out_by_hand(fixtures, tmp_path):
    dataset = build("vqav2", fixtures["vqav2"], tmp_path)["val"]
    answers = ["Red.", "One", "no", "The square", "green\nmore text"]
    cleaned = [dataset.postprocess(a) for a in answers]
    assert cleaned == ["red.", "one", "no", "the square", "green"]
    predictions = {q.key: a for q, a in zip(dataset.questions, cleaned, strict=True)}
    figures = dataset.score(predictions, predictions)
    # Per question, the mean over the ten humans left out of min(matches among the other nine / 3, 1):
    per_question = {
        "red": (3 * 2 / 3 + 7 * 1) / 10,  # humans: 3 x "red", 7 x "dark red"
        "one": 1.0,  # "one" -> "1"; humans: "one", 9 x "1" (theirs keep their words)
        "no": (2 * 1 / 3 + 8 * 2 / 3) / 10,  # humans: 2 x "no", 8 x "yes"
        "square": (1 / 3 + 0 + 8 * 1 / 3) / 10,  # "the square" -> "square"; humans: "a square", "square", 8 x "box"
        "green": 1.0,  # the first line only; 10 x "green"
    }
    assert figures["accuracy"] == pytest.approx(100 * sum(per_question.values()) / 5)
    first = dataset.questions[0]
    assert dataset.prediction(first, "red") == {"question_id": first.record["question_id"], "answer": "red"}


def test_pope_keeps_the_answer_for_the_yes_no_parser(fixtures, tmp_path):
    dataset = build("pope", fixtures["pope"], tmp_path)["random"]
    assert set(build("pope", fixtures["pope"], tmp_path)) == {"adversarial", "popular", "random"}
    assert dataset.postprocess("No, there is not.\nYes") == "No, there is not."
    labels = [dataset.labels[q.key] for q in dataset.questions]
    assert labels == ["yes", "no", "yes", "no"]
    predictions = dict(zip((q.key for q in dataset.questions), ["Yes.", "No, none.", "No", "yes"], strict=True))
    figures = dataset.score(predictions, predictions)
    # tp 1, fn 1, tn 1, fp 1
    assert (figures["accuracy"], figures["precision"], figures["recall"], figures["yes_ratio"]) == (50, 50, 50, 50)


def test_label_benchmarks_read_their_labels(fixtures, tmp_path):
    vsr = build("vsr", fixtures["vsr"], tmp_path)["test"]
    assert [vsr.labels[q.key] for q in vsr.questions] == ["true", "false", "true"]
    memes = build("hateful_memes", fixtures["hateful_memes"], tmp_path)["dev"]
    assert [memes.labels[q.key] for q in memes.questions] == ["no", "yes", "no"]
    predictions = dict(zip((q.key for q in memes.questions), ["No", "yes.", " no "], strict=True))
    assert memes.score(predictions, predictions)["accuracy"] == pytest.approx(200 / 3)  # "yes." is not "yes"


def test_upstream_minigptv2_layouts_load(tmp_path):
    """OK-VQA's okvqa_test_split.json (a bare list of questions, COCO 2017 names) and GQA's
    converted list of {image, question, answer}."""
    images = tmp_path / "images"
    images.mkdir()
    questions = write_json(tmp_path / "okvqa_test_split.json", [{"image_id": 9, "question": "Why?", "question_id": 90}])
    humans = [{"answer": "because"}] * 10
    annotations = write_json(tmp_path / "a.json", {"annotations": [{"question_id": 90, "answers": humans}]})
    listed, answers = read_vqa(questions, annotations, images, "{image_id:012d}.jpg")
    assert listed[0].image == images / "000000000009.jpg" and answers["90"].answers[0] == "because"
    gqa = write_json(tmp_path / "gqa.json", [{"image": "n1.jpg", "question": "What?", "answer": "cat"}])
    listed, truths = read_gqa(gqa, images, "{image_id}.jpg")
    assert listed[0].image == images / "n1.jpg" and truths["0"]["answer"] == "cat"


def test_attribute_vocabulary_comes_from_the_file(tmp_path):
    rows = [{"image_id": "0", "caption": "", "colour": "red", "shape": "circle"}]
    path = write_json(tmp_path / "a.json", {"annotations": rows})
    _, truths, vocabulary = read_attributes(path, tmp_path, "{image_id}.jpg", ["colour", "shape"])
    assert vocabulary == {"colour": ["red"], "shape": ["circle"]}
    listed = {"colour": ["red", "blue"], "shape": ["circle", "square"]}
    path.write_text(json.dumps({"annotations": rows, "attribute_values": listed}))
    _, _, vocabulary = read_attributes(path, tmp_path, "{image_id}.jpg", ["colour", "shape"])
    assert vocabulary == listed
    figures = score_attribute_naming({"0": "A red circle, not a blue one."}, truths, vocabulary, ["0"])
    assert figures["accuracy"] == 0 and figures["per_attribute"] == {"colour": 0, "shape": 100}
