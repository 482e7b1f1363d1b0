"""lmms-eval's generate_until requests answered by the real Chat of the tiny model: the request
tuples lmms-eval builds (context, gen_kwargs, doc_to_visual, doc_id, task, split), one fresh
conversation per question, batching, order, and the request's until / max_new_tokens / temperature."""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image
from tiny_assets import REPO_ROOT, tiny_path_options, tiny_root

from minigpt4.conversation.launch import build_chat
from minigpt4.evaluation.lmms_requests import (
    LmmsRequestError,
    RequestAnswerer,
    cut_at_stops,
    generation_settings,
    question_text,
)

TINY_EVAL = REPO_ROOT / "eval_configs" / "minigpt4_tiny_eval.yaml"
GREEDY = {"until": ["\n\n"], "max_new_tokens": 8, "temperature": 0, "do_sample": False}
QUESTIONS = ["What colour is the square?", "Is there a circle?", "Describe the picture.", "What is in the corner?"]
COLOURS = ["red", "white", "blue", "green"]


@pytest.fixture(scope="module")
def chat():
    return build_chat(str(TINY_EVAL), tiny_path_options(tiny_root(), ()), torch.device("cpu"))


@pytest.fixture(scope="module")
def task_dict():
    docs = [
        {"image": Image.new("RGB", (64, 48), colour), "question": q}
        for colour, q in zip(COLOURS, QUESTIONS, strict=True)
    ]
    return {"tiny_vqa": {"test": docs}}


def doc_to_visual(doc):
    return [doc["image"]]


def request(doc_id, gen_kwargs, context=None):
    return (context or QUESTIONS[doc_id], gen_kwargs, doc_to_visual, doc_id, "tiny_vqa", "test")


def alone(chat, task_dict, doc_id, question=None, **decoding):
    """The answer to one question asked on its own, straight through Chat."""
    image = task_dict["tiny_vqa"]["test"][doc_id]["image"]
    return chat.answer_batch([image], [question or QUESTIONS[doc_id]], **decoding)[0]


def test_batched_answers_are_each_questions_own_answer_in_request_order(chat, task_dict):
    greedy = {"max_new_tokens": 8, "do_sample": False, "num_beams": 1}
    expected = [alone(chat, task_dict, i, **greedy) for i in range(4)]
    assert len(set(expected)) > 1, expected  # distinct questions and images give distinct answers
    short = {**GREEDY, "max_new_tokens": 3}
    requests = [request(0, GREEDY), request(1, short), request(2, GREEDY), request(3, GREEDY), request(1, GREEDY)]
    answers = RequestAnswerer(chat, batch_size=2).answer(requests, task_dict)
    # No answer depends on the questions batched or asked before it: each is a fresh conversation.
    assert answers[0] == cut_at_stops(expected[0], ["\n\n"])
    assert answers[2:] == [cut_at_stops(expected[i], ["\n\n"]) for i in (2, 3, 1)]
    assert answers[1] == alone(chat, task_dict, 1, max_new_tokens=3, do_sample=False)
    assert RequestAnswerer(chat, batch_size=5).answer(requests, task_dict) == answers


def test_until_cuts_the_answer_before_the_first_stop(chat, task_dict):
    full = RequestAnswerer(chat).answer([request(2, {"max_new_tokens": 12})], task_dict)[0]
    assert len(full) >= 6, full
    stop = full[3:5]
    two_stops = {"max_new_tokens": 12, "until": [full[-1:] + "never", stop]}
    cut = RequestAnswerer(chat).answer([request(2, two_stops), request(2, {**two_stops, "until": stop})], task_dict)
    assert cut == [full[: full.index(stop)]] * 2


def test_temperature_samples_as_chat_does_with_it(chat, task_dict):
    torch.manual_seed(7)
    expected = alone(chat, task_dict, 0, max_new_tokens=8, do_sample=True, temperature=0.7, top_p=0.5)
    torch.manual_seed(7)
    sampled = {"max_new_tokens": 8, "temperature": 0.7, "top_p": 0.5}
    answer = RequestAnswerer(chat).answer([request(0, sampled)], task_dict)
    assert answer == [expected]


def test_the_image_placeholder_of_a_task_is_dropped(chat, task_dict):
    assert question_text("<image>\nIs there a circle?\n") == "Is there a circle?"
    tagged = request(1, GREEDY, context="<image>\nIs there a circle?")
    assert RequestAnswerer(chat).answer([tagged], task_dict) == [
        cut_at_stops(alone(chat, task_dict, 1, max_new_tokens=8, do_sample=False), ["\n\n"])
    ]


def greedy(max_new_tokens=300, beams=1):
    return {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": beams}


@pytest.mark.parametrize(
    ("gen_kwargs", "decoding", "until"),
    [
        (None, greedy(), ()),
        ({"until": None, "do_sample": False}, greedy(), ()),
        ({"until": "\n", "max_new_tokens": 16}, greedy(16), ("\n",)),
        ({"until": ["", "###"], "temperature": 0.0, "top_p": None}, greedy(), ("###",)),
        ({"temperature": 0.2, "top_p": 0.8}, {**greedy(), "do_sample": True, "temperature": 0.2, "top_p": 0.8}, ()),
        ({"temperature": 0.2, "do_sample": False}, greedy(), ()),
        ({"num_beams": 3, "max_new_tokens": 5}, greedy(5, beams=3), ()),
    ],
)
def test_generation_settings(gen_kwargs, decoding, until):
    assert generation_settings(gen_kwargs) == (decoding, until)


def test_settings_chat_would_refuse_fail_before_any_image_is_encoded():
    with pytest.raises(ValueError, match="max_length"):
        generation_settings({"max_new_tokens": 4096})
    with pytest.raises(LmmsRequestError, match="until"):
        generation_settings({"until": [3]})
    with pytest.raises(LmmsRequestError, match="batch_size"):
        RequestAnswerer(None, batch_size=0)


@pytest.mark.parametrize("visuals", [[], [Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8))]])
def test_a_document_without_exactly_one_image_is_refused_in_words(chat, visuals):
    requests = [("Which?", GREEDY, lambda _doc: visuals, 0, "multi", "val")]
    message = f"task multi, document 0: .*exactly one image, this document has {len(visuals)}"
    with pytest.raises(LmmsRequestError, match=message):
        RequestAnswerer(chat).answer(requests, {"multi": {"val": [{}]}})


def test_unknown_generation_settings_are_reported_once(chat, task_dict, caplog):
    answerer = RequestAnswerer(chat)
    settings = {"max_new_tokens": 2, "image_aspect_ratio": "pad", "use_cache": True}
    with caplog.at_level(logging.WARNING, logger="minigpt4.evaluation.lmms_requests"):
        answerer.answer([request(0, settings)], task_dict)
        answerer.answer([request(1, settings)], task_dict)
    reports = [r.getMessage() for r in caplog.records if "ignores" in r.getMessage()]
    assert reports == ["minigpt4 ignores these generation settings of the task: image_aspect_ratio, use_cache"]
