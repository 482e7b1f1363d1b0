"""Benchmarks as map-style datasets: each split of a benchmark is a list of questions about images,
read from the benchmark's own public annotation files, with the benchmark's answer
post-processing and its official scorer (``minigpt4/evaluation/``).

An item is ``{"key", "image" (3, H, W), "prompt"}``: ``key`` identifies the question in the split
(a string), ``prompt`` is the configured ``benchmark.prompt`` with ``{}`` replaced by the
question. ``prediction`` turns an answer into one line of the predictions file, in the
benchmark's own results format (so that ``python -m minigpt4.evaluation.score`` and the official
scorers read it), and ``score`` computes the metrics from ``{key: answer}``.

The readers (``read_*``) take the files exactly as the benchmarks publish them; the file layouts
are in each reader's docstring and in README's Evaluation section.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from minigpt4.common.errors import MiniGPT4Error
from minigpt4.conversation.conversation import load_image
from minigpt4.evaluation.captions import score_captions
from minigpt4.evaluation.files import field_of, read_json, read_json_or_jsonl
from minigpt4.evaluation.gqa import score_gqa
from minigpt4.evaluation.labels import score_attribute_naming, score_exact_match
from minigpt4.evaluation.pope import load_pope_labels, score_pope
from minigpt4.evaluation.vqa import VQAQuestion, clean_generated_answer, load_vqa_annotations, score_vqa


class BenchmarkError(MiniGPT4Error, ValueError):
    """A benchmark's files or settings that evaluation cannot use."""


@dataclass(frozen=True)
class BenchmarkQuestion:
    key: str  # unique in its split
    image: Path
    question: str  # "" where the benchmark asks none (captions)
    record: dict[str, Any] = field(default_factory=dict)  # the benchmark's own id fields


def first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


class BenchmarkDataset(Dataset):
    """One split of a benchmark. Subclasses set the scorer and the predictions format."""

    answer_field = "answer"
    # The figure that ranks a model on this benchmark (higher is better): the split's agg_metrics
    # when training scores it (run.valid_splits), which checkpoint_best.pth is chosen by.
    headline_metric = "accuracy"

    def __init__(
        self, name: str, split: str, questions: Sequence[BenchmarkQuestion], vis_processor: Any, prompt: str
    ) -> None:
        if not questions:
            raise BenchmarkError(f"{name} {split}: the annotation files list no questions")
        keys = [q.key for q in questions]
        if len(set(keys)) != len(keys):
            duplicate = next(k for k in keys if keys.count(k) > 1)
            raise BenchmarkError(f"{name} {split}: question {duplicate} is listed twice")
        self.name, self.split, self.questions = name, split, list(questions)
        self.vis_processor, self.prompt = vis_processor, prompt

    def __len__(self) -> int:
        return len(self.questions)

    def prompt_for(self, question: BenchmarkQuestion) -> str:
        return self.prompt.replace("{}", question.question)

    def __getitem__(self, index: int) -> dict[str, Any]:
        question = self.questions[index]
        return {
            "key": question.key,
            "image": self.vis_processor(load_image(question.image)),
            "prompt": self.prompt_for(question),
        }

    def postprocess(self, text: str) -> str:
        """A generated answer as the benchmark's results file wants it: for short-answer
        benchmarks, upstream MiniGPT-v2's clean-up (lower case, ``<unk>`` removed, stripped);
        the official scorer then applies the benchmark's own normalisation."""
        return clean_generated_answer(first_line(text))

    def prediction(self, question: BenchmarkQuestion, answer: str) -> dict[str, Any]:
        return {**question.record, self.answer_field: answer}

    def score(self, predictions: Mapping[str, str], keys: Iterable[str]) -> dict:
        raise NotImplementedError


def check_images(name: str, questions: Sequence[BenchmarkQuestion], images: str) -> None:
    missing = [q.image for q in questions if not q.image.is_file()]
    if missing:
        raise BenchmarkError(
            f"{name}: {len(missing)} of {len(questions)} images are missing under build_info.images "
            f"({images!r}), e.g. {missing[0]}"
        )


# --- captions ------------------------------------------------------------------------------------


def coco_image_id(file_name: str) -> int:
    """``val2014/COCO_val2014_000000391895.jpg`` -> 391895 (the COCO id the captions file uses)."""
    stem = Path(file_name).stem
    try:
        return int(stem.rsplit("_", 1)[-1])
    except ValueError:
        raise BenchmarkError(f"{file_name}: not a COCO image file name (..._<12-digit id>.jpg)") from None


def read_karpathy(path: Path, images: Path) -> tuple[list[BenchmarkQuestion], dict[str, list[str]]]:
    """``coco_karpathy_test.json`` (the Karpathy test split as LAVIS and BLIP publish it): a JSON
    list of ``{"image": "val2014/COCO_val2014_<12 digits>.jpg", "caption": [5 captions]}``;
    the image path is relative to the COCO folder (``build_info.images``)."""
    rows = read_json(path)
    if not isinstance(rows, list):
        raise BenchmarkError(f"{path}: the Karpathy split file is a JSON list of {{image, caption}} objects")
    questions, references = [], {}
    for row in rows:
        image = str(field_of(row, ["image"], path, "image"))
        captions = field_of(row, ["caption"], path, "caption")
        image_id = coco_image_id(image)
        questions.append(BenchmarkQuestion(str(image_id), images / image, "", {"image_id": image_id}))
        references[str(image_id)] = [captions] if isinstance(captions, str) else [str(c) for c in captions]
    return questions, references


def read_nocaps(path: Path, images: Path) -> tuple[list[BenchmarkQuestion], dict[str, list[str]], dict[str, str]]:
    """``nocaps_val_4500_captions.json`` (nocaps.org): ``{"images": [{"id", "file_name",
    "domain", ...}], "annotations": [{"image_id", "id", "caption"}]}``; images by ``file_name``.
    Returns the questions, the references and each image's domain (in-, near-, out-domain)."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise BenchmarkError(f"{path}: a nocaps file is a JSON object with 'images' and 'annotations' lists")
    questions = [
        BenchmarkQuestion(
            str(field_of(row, ["id"], path, "id")),
            images / str(field_of(row, ["file_name"], path, "file_name")),
            "",
            {"image_id": row["id"]},
        )
        for row in data["images"]
    ]
    references: dict[str, list[str]] = {q.key: [] for q in questions}
    for row in data.get("annotations", []):
        key = str(field_of(row, ["image_id"], path, "image_id"))
        if key in references:
            references[key].append(str(field_of(row, ["caption"], path, "caption")))
    domains = {str(row["id"]): str(row["domain"]) for row in data["images"] if row.get("domain")}
    return questions, references, domains


class CaptionBenchmark(BenchmarkDataset):
    """Predictions: the COCO results format, ``{"image_id", "caption"}``. With ``domains``
    (NoCaps), each domain is also scored alone, as NoCaps reports it (``per_domain``)."""

    answer_field = "caption"
    headline_metric = "CIDEr"

    def __init__(
        self, *args: Any, references: Mapping[str, list[str]], domains: Mapping[str, str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.references, self.domains = references, domains or {}

    def postprocess(self, text: str) -> str:
        return first_line(text)

    def score(self, predictions: Mapping[str, str], keys: Iterable[str]) -> dict:
        keys = list(keys)
        result = score_captions(predictions, self.references, keys)
        groups: dict[str, list[str]] = {}
        for key in keys:
            if key in self.domains:
                groups.setdefault(self.domains[key], []).append(key)
        if groups:
            result["per_domain"] = {
                domain: score_captions(predictions, self.references, group)["scores"]
                for domain, group in sorted(groups.items())
            }
        return result


# --- VQA: VQAv2, OK-VQA, VizWiz, TextVQA --------------------------------------------------------


def read_vqa(
    questions_path: Path, annotations_path: Path, images: Path, image_name: str
) -> tuple[list[BenchmarkQuestion], dict[str, VQAQuestion]]:
    """VQAv2 / OK-VQA: the questions file, ``{"questions": [{"image_id", "question",
    "question_id"}]}`` (or such a bare list, as upstream MiniGPT-v2's ``okvqa_test_split.json``),
    and the annotations file, ``{"annotations": [{"question_id", "answers": [{"answer"}] x 10,
    "question_type", "answer_type", ...}]}``. Images by ``image_name`` (``image_id``)."""
    listed = read_json(questions_path)
    rows = listed.get("questions") if isinstance(listed, dict) else listed
    if not isinstance(rows, list):
        raise BenchmarkError(f"{questions_path}: a VQA questions file is a JSON object with a 'questions' list")
    answers = load_vqa_annotations(annotations_path)
    questions = []
    for row in rows:
        question_id = field_of(row, ["question_id"], questions_path, "question_id")
        if str(question_id) not in answers:
            raise BenchmarkError(f"{questions_path}: question {question_id} has no answers in {annotations_path}")
        image_id = field_of(row, ["image_id"], questions_path, "image_id")
        questions.append(
            BenchmarkQuestion(
                str(question_id),
                images / image_name.format(image_id=image_id),
                str(field_of(row, ["question"], questions_path, "question")),
                {"question_id": question_id},
            )
        )
    return questions, answers


def read_vizwiz(path: Path, images: Path) -> tuple[list[BenchmarkQuestion], dict[str, VQAQuestion]]:
    """VizWiz-VQA ``val.json`` (vizwiz.org): a JSON list of ``{"image": "VizWiz_val_<8 digits>.jpg",
    "question", "answers": [{"answer", "answer_confidence"}] x 10, "answer_type", "answerable"}``;
    one question per image, so the image name is its id (as in VizWiz's results format)."""
    rows = read_json(path)
    if not isinstance(rows, list):
        raise BenchmarkError(f"{path}: the VizWiz file is a JSON list of {{image, question, answers}} objects")
    questions, answers = [], {}
    for row in rows:
        image = str(field_of(row, ["image"], path, "image"))
        humans = field_of(row, ["answers"], path, "answers")
        answers[image] = VQAQuestion(
            image, tuple(str(field_of(a, ["answer"], path, "answer")) for a in humans), None, row.get("answer_type")
        )
        text = str(field_of(row, ["question"], path, "question"))
        questions.append(BenchmarkQuestion(image, images / image, text, {"image": image}))
    return questions, answers


def read_textvqa(path: Path, images: Path, image_name: str) -> tuple[list[BenchmarkQuestion], dict[str, VQAQuestion]]:
    """TextVQA ``TextVQA_0.5.1_val.json`` (textvqa.org): ``{"data": [{"question_id", "image_id",
    "question", "answers": [10 strings], ...}]}``; images by ``image_name`` (``image_id``)."""
    data = read_json(path)
    rows = data.get("data") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise BenchmarkError(f"{path}: a TextVQA file is a JSON object with a 'data' list")
    questions, answers = [], {}
    for row in rows:
        question_id = field_of(row, ["question_id"], path, "question_id")
        key = str(question_id)
        answers[key] = VQAQuestion(key, tuple(str(a) for a in field_of(row, ["answers"], path, "answers")))
        image_id = field_of(row, ["image_id"], path, "image_id")
        questions.append(
            BenchmarkQuestion(
                key,
                images / image_name.format(image_id=image_id),
                str(field_of(row, ["question"], path, "question")),
                {"question_id": question_id},
            )
        )
    return questions, answers


class VQABenchmark(BenchmarkDataset):
    """Predictions: the VQA results format, ``{"question_id", "answer"}`` (VizWiz: ``{"image",
    "answer"}``); the official VQA accuracy."""

    def __init__(self, *args: Any, answers: Mapping[str, VQAQuestion], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answers = answers

    def score(self, predictions: Mapping[str, str], keys: Iterable[str]) -> dict:
        return score_vqa(predictions, self.answers, keys)


# --- GQA -----------------------------------------------------------------------------------------


def read_gqa(path: Path, images: Path, image_name: str) -> tuple[list[BenchmarkQuestion], dict[str, dict]]:
    """GQA ``testdev_balanced_questions.json`` (the GQA site): ``{"<question id>": {"imageId",
    "question", "answer", "types": {"structural", "semantic"}, ...}}``, images by ``image_name``
    (``image_id`` = ``imageId``); or upstream MiniGPT-v2's converted list of ``{"image",
    "question", "answer"}`` (the position in the list is then the id)."""
    data = read_json(path)
    questions, truths = [], {}
    if isinstance(data, dict):
        for key, row in data.items():
            types = (row.get("types") or {}) if isinstance(row, dict) else {}
            image = image_name.format(image_id=field_of(row, ["imageId"], path, "imageId"))
            truths[str(key)] = {
                "answer": str(field_of(row, ["answer"], path, "answer")),
                "structural": types.get("structural"),
                "semantic": types.get("semantic"),
            }
            questions.append(
                BenchmarkQuestion(
                    str(key), images / image, str(field_of(row, ["question"], path, "question")), {"questionId": key}
                )
            )
    elif isinstance(data, list):
        for index, row in enumerate(data):
            key = str(index)
            answer = str(field_of(row, ["answer"], path, "answer"))
            truths[key] = {"answer": answer, "structural": None, "semantic": None}
            image = images / str(field_of(row, ["image"], path, "image"))
            questions.append(
                BenchmarkQuestion(key, image, str(field_of(row, ["question"], path, "question")), {"questionId": key})
            )
    else:
        raise BenchmarkError(f"{path}: a GQA questions file is a JSON object keyed by question id (or a list)")
    return questions, truths


class GQABenchmark(BenchmarkDataset):
    """Predictions: GQA's submission format, ``{"questionId", "prediction"}``; exact match."""

    answer_field = "prediction"

    def __init__(self, *args: Any, truths: Mapping[str, dict], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.truths = truths

    def score(self, predictions: Mapping[str, str], keys: Iterable[str]) -> dict:
        return score_gqa(predictions, self.truths, keys)


# --- POPE ----------------------------------------------------------------------------------------


def read_pope(path: Path, images: Path) -> tuple[list[BenchmarkQuestion], dict[str, str]]:
    """POPE ``coco_pope_<split>.json`` (the POPE repository's ``output/coco/``): one JSON object
    per line, ``{"question_id", "image": "COCO_val2014_<12 digits>.jpg", "text": "Is there a
    <object> in the image?", "label": "yes"|"no"}``; images in COCO ``val2014/``."""
    questions = [
        BenchmarkQuestion(
            str(field_of(row, ["question_id"], path, "question_id")),
            images / str(field_of(row, ["image"], path, "image")),
            str(field_of(row, ["text"], path, "text")),
            {"question_id": row["question_id"]},
        )
        for row in read_json_or_jsonl(path)
    ]
    return questions, load_pope_labels(path)


class POPEBenchmark(BenchmarkDataset):
    """Predictions: ``{"question_id", "answer"}`` with the answer as generated (first line); the
    scorer parses yes/no as POPE does."""

    headline_metric = "f1"

    def __init__(self, *args: Any, labels: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.labels = labels

    def postprocess(self, text: str) -> str:
        return first_line(text)

    def score(self, predictions: Mapping[str, str], keys: Iterable[str]) -> dict:
        return score_pope(predictions, self.labels, keys)


# --- upstream MiniGPT-v2's VSR and Hateful Memes -------------------------------------------------


def read_vsr(path: Path, images: Path) -> tuple[list[BenchmarkQuestion], dict[str, str]]:
    """VSR's zero-shot split (``vsr/data/splits/zeroshot/test.jsonl``): one JSON object per line,
    ``{"image", "caption", "label": 1|0, "relation", ...}``; the question is the caption (a
    statement), the label 1 is ``true``, else ``false`` (upstream MiniGPT-v2's reading)."""
    questions, labels = [], {}
    for index, row in enumerate(read_json_or_jsonl(path)):
        key = str(index)
        image = str(field_of(row, ["image"], path, "image"))
        labels[key] = "true" if field_of(row, ["label"], path, "label") in (1, "1", True) else "false"
        questions.append(
            BenchmarkQuestion(key, images / image, str(field_of(row, ["caption"], path, "caption")), {"index": index})
        )
    return questions, labels


def read_hateful_memes(path: Path, images: Path) -> tuple[list[BenchmarkQuestion], dict[str, str]]:
    """Hateful Memes ``dev.jsonl`` (or ``dev_seen.jsonl``): one JSON object per line, ``{"id",
    "img": "img/<id>.png", "label": 1|0, "text"}``; images relative to the dataset folder; the
    question is the meme's text, the label 1 is ``yes`` (hateful), else ``no``."""
    questions, labels = [], {}
    for row in read_json_or_jsonl(path):
        key = str(field_of(row, ["id"], path, "id"))
        labels[key] = "yes" if field_of(row, ["label"], path, "label") in (1, "1", True) else "no"
        questions.append(
            BenchmarkQuestion(
                key,
                images / str(field_of(row, ["img"], path, "img")),
                str(field_of(row, ["text"], path, "text")),
                {"id": row["id"]},
            )
        )
    return questions, labels


class LabelBenchmark(BenchmarkDataset):
    """Predictions: the benchmark's id and ``answer``; accuracy by exact match with the label."""

    def __init__(self, *args: Any, labels: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.labels = labels

    def score(self, predictions: Mapping[str, str], keys: Iterable[str]) -> dict:
        return score_exact_match(predictions, self.labels, keys)


# --- attribute naming (the tiny world's held-out split) -----------------------------------------


def read_attributes(
    path: Path, images: Path, image_name: str, attributes: Sequence[str]
) -> tuple[list[BenchmarkQuestion], dict[str, dict[str, str]], dict[str, list[str]]]:
    """A ``cc_sbu_align``-format ``filter_cap.json`` whose entries also carry each image's
    attributes, ``{"annotations": [{"image_id", "caption", "<attribute>": "<value>", ...}]}``,
    optionally with ``"attribute_values": {"<attribute>": [every value]}`` (else the values
    found in the file); images by ``image_name`` (``image_id``)."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise BenchmarkError(f"{path}: expected a JSON object with an 'annotations' list (filter_cap.json)")
    if not attributes:
        raise BenchmarkError(f"{path}: benchmark.scored_attributes names no attribute to score")
    questions, truths = [], {}
    for row in data["annotations"]:
        key = str(field_of(row, ["image_id"], path, "image_id"))
        truths[key] = {name: str(field_of(row, [name], path, f"attribute {name!r}")) for name in attributes}
        image = images / image_name.format(image_id=row["image_id"])
        questions.append(BenchmarkQuestion(key, image, "", {"image_id": row["image_id"]}))
    listed = data.get("attribute_values") or {}
    vocabulary = {
        name: list(listed.get(name) or sorted({truth[name] for truth in truths.values()})) for name in attributes
    }
    return questions, truths, vocabulary


class AttributeBenchmark(BenchmarkDataset):
    """Predictions: ``{"image_id", "answer"}``; the share of answers naming the right values."""

    def __init__(
        self, *args: Any, truths: Mapping[str, dict[str, str]], vocabulary: Mapping[str, list[str]], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.truths, self.vocabulary = truths, vocabulary

    def postprocess(self, text: str) -> str:
        return text.strip()

    def score(self, predictions: Mapping[str, str], keys: Iterable[str]) -> dict:
        return score_attribute_naming(predictions, self.truths, self.vocabulary, keys)
