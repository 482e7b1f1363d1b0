"""VQA accuracy as the official VQA evaluation defines it (VQAv2, OK-VQA).

Files (VQAv2 and OK-VQA publish the same layout):

* annotations, e.g. ``v2_mscoco_val2014_annotations.json`` / ``mscoco_val2014_annotations.json``:
  ``{"annotations": [{"question_id", "image_id", "question_type", "answer_type",
  "multiple_choice_answer", "answers": [{"answer", "answer_confidence", "answer_id"}, x10]}]}``;
  used: ``question_id``, ``answers[].answer``, ``question_type``, ``answer_type``;
* questions (optional), e.g. ``v2_OpenEnded_mscoco_val2014_questions.json``:
  ``{"questions": [{"question_id", "image_id", "question"}]}``; only checked to cover the same ids;
* predictions: the official results format, a JSON list of ``{"question_id", "answer"}``, or the
  same objects one per line (JSONL).

The rules, in the order the official evaluation applies them:

1. the prediction's newlines and tabs become spaces and it is stripped;
2. punctuation: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when the text has
   it next to a space or contains a digit-comma-digit ("1,000"), otherwise it becomes a space; a
   period is deleted unless a digit follows it ("3.5" stays);
3. lower case; number words zero..ten and "none" become digits; the articles a, an, the go;
   contractions written without their apostrophe get it back ("dont" -> "don't");
4. the human answers get rule 2 only, and only when the ten are not all the same;
5. for each of the ten humans, the other nine are counted for an exact match: min(matches / 3, 1);
   the question's accuracy is the mean of the ten. Figures are reported in percent.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from minigpt4.evaluation.files import ScoringInputError, field_of, read_json

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The official code passes re.UNICODE (32) where re.sub takes its count: at most 32 periods go.
PERIOD_REMOVAL_LIMIT = 32
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})

# The contractions the official evaluation restores. Each is found with exactly one of its
# apostrophes missing ("couldnt've" and "couldn'tve", not "couldntve"), which is how its table reads.
CONTRACTED_FORMS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't
he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've
mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't
shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's
something'd something'd've something'll that's there'd there'd've there're there's they'd they'd've
they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's
where'd where's where've who'd who'd've who'll who's who've why'll why're why's won't would've
wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've
""".split()  # noqa: SIM905


def _contractions() -> dict[str, str]:
    table = {}
    for form in CONTRACTED_FORMS:
        for at in (i for i, char in enumerate(form) if char == "'"):
            table[form[:at] + form[at + 1 :]] = form
    # The official table maps this one the other way round; kept so that scores agree.
    table["somebody'd"] = "somebodyd"
    return table


CONTRACTIONS = _contractions()


def normalize_punctuation(text: str) -> str:
    """Rule 2 of the module docstring."""
    out = text
    drop_all = DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        # Decided on the original text, for each mark, as the official code does.
        delete = drop_all or mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if delete else " ")
    return PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=PERIOD_REMOVAL_LIMIT)


def normalize_words(text: str) -> str:
    """Rule 3 of the module docstring: case, number words, articles, contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_answer(text: str) -> str:
    """A predicted answer as the official evaluation compares it (rules 1 to 3)."""
    return normalize_words(normalize_punctuation(text.replace("\n", " ").replace("\t", " ").strip()))


def clean_generated_answer(text: str) -> str:
    """Upstream MiniGPT-v2's post-processing of a generated short answer, before it is written to
    a predictions file: lower case, ``<unk>`` removed, stripped."""
    return text.lower().replace("<unk>", "").strip()


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """One question's accuracy in [0, 1] (rules 1 to 5)."""
    if not human_answers:
        raise ScoringInputError("a VQA question has no human answers")
    predicted = normalize_answer(prediction)
    humans = list(human_answers)
    if len(set(humans)) > 1:
        humans = [normalize_punctuation(answer) for answer in humans]
    matches = [answer == predicted for answer in humans]
    total = sum(matches)
    return sum(min((total - left_out) / 3, 1.0) for left_out in matches) / len(humans)


@dataclass(frozen=True)
class VQAQuestion:
    question_id: str
    answers: tuple[str, ...]
    question_type: str | None = None
    answer_type: str | None = None


def load_vqa_annotations(path: str | Path, questions_path: str | Path | None = None) -> dict[str, VQAQuestion]:
    """{question id (as a string): VQAQuestion} from the official annotation file."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ScoringInputError(f"{path}: a VQA annotation file is a JSON object with an 'annotations' list")
    questions = {}
    for row in data["annotations"]:
        key = str(field_of(row, ["question_id"], path, "question_id"))
        answers = field_of(row, ["answers"], path, "answers")
        questions[key] = VQAQuestion(
            question_id=key,
            answers=tuple(str(field_of(answer, ["answer"], path, "answer")) for answer in answers),
            question_type=row.get("question_type"),
            answer_type=row.get("answer_type"),
        )
    if questions_path is not None:
        questions_path = Path(questions_path)
        listed = read_json(questions_path)
        if not isinstance(listed, dict) or not isinstance(listed.get("questions"), list):
            raise ScoringInputError(f"{questions_path}: a VQA questions file is a JSON object with a 'questions' list")
        ids = {str(field_of(row, ["question_id"], questions_path, "question_id")) for row in listed["questions"]}
        if ids != set(questions):
            raise ScoringInputError(
                f"{questions_path} and {path} list different question ids "
                f"({len(ids - set(questions))} only in the questions, "
                f"{len(set(questions) - ids)} only in the annotations)"
            )
    return questions


def _percent(values: Iterable[float]) -> float:
    values = list(values)
    return 100.0 * sum(values) / len(values)


def score_vqa(predictions: Mapping[str, str], questions: Mapping[str, VQAQuestion], ids: Iterable[str]) -> dict:
    """Overall accuracy and, where the annotation gives the types, per answer type and question type."""
    per_question = {}
    by_answer_type: dict[str, list[float]] = defaultdict(list)
    by_question_type: dict[str, list[float]] = defaultdict(list)
    for key in ids:
        question = questions[key]
        accuracy = vqa_accuracy(predictions[key], question.answers)
        per_question[key] = accuracy
        if question.answer_type is not None:
            by_answer_type[question.answer_type].append(accuracy)
        if question.question_type is not None:
            by_question_type[question.question_type].append(accuracy)
    result = {"accuracy": _percent(per_question.values()), "questions": len(per_question)}
    if by_answer_type:
        result["per_answer_type"] = {name: _percent(v) for name, v in sorted(by_answer_type.items())}
    if by_question_type:
        result["per_question_type"] = {name: _percent(v) for name, v in sorted(by_question_type.items())}
    return result
