"""The prompt format, the stop on ``###`` and the answer clean-up (tokenizer only, no model)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaTokenizer

from minigpt4.conversation.conversation import (
    CONV_VISION,
    IMAGE_MESSAGE,
    Conversation,
    Decoding,
    SeparatorStyle,
    StopOnSequences,
    postprocess_answer,
    stop_sequences,
    token_texts,
)


@pytest.fixture(scope="module")
def expected(golden_dir):
    return json.loads((golden_dir / "expected.json").read_text())


@pytest.fixture(scope="module")
def tokenizer(golden_dir):
    return LlamaTokenizer.from_pretrained(golden_dir / "vicuna_tiny")


def golden_conversation(case: dict) -> Conversation:
    conv = CONV_VISION.copy()
    for role, message in case["messages"]:
        conv.append_message(role, message)
    return conv


def test_conv_vision_is_the_reference_template(expected):
    assert CONV_VISION.system == expected["chat_system"]
    assert tuple(CONV_VISION.roles) == ("Human", "Assistant")
    assert (CONV_VISION.sep, CONV_VISION.sep2, CONV_VISION.offset) == ("###", None, 2)
    assert CONV_VISION.sep_style is SeparatorStyle.SINGLE
    assert CONV_VISION.messages == []


@pytest.mark.parametrize("case", ["chat_1turn", "chat_2turn"])
def test_prompt_and_segments_match_golden(expected, tokenizer, case):
    record = expected[case]
    conv = golden_conversation(record)
    assert conv.messages[0][1].startswith(IMAGE_MESSAGE)
    prompt = conv.get_prompt()
    assert prompt == record["prompt"]
    segments = prompt.split("<ImageHere>")
    assert segments == record["segments"]
    ids = [tokenizer(s, add_special_tokens=False).input_ids for s in segments]
    ids[0] = [tokenizer.bos_token_id, *ids[0]]
    assert ids == record["segment_ids"]


def test_prompt_styles():
    conv = Conversation(system="S", roles=("A", "B"), messages=[], offset=0, sep=" ", sep2="</s>")
    conv.append_message("A", "hi")
    conv.append_message("B", "yo")
    conv.append_message("A", None)
    assert conv.get_prompt() == "S A: hi B: yo A:"
    conv.sep_style = SeparatorStyle.TWO
    assert conv.get_prompt() == "S A: hi B: yo</s>A:"
    conv.sep2 = None
    with pytest.raises(ValueError, match="sep2"):
        conv.get_prompt()


def test_copy_dict_and_gradio_messages():
    conv = CONV_VISION.copy()
    conv.skip_next = True
    for role, message in [("Human", "a"), ("Assistant", "b"), ("Human", "c"), ("Assistant", "d"), ("Human", "e")]:
        conv.append_message(role, message)
    conv.append_message("Assistant", None)
    other = conv.copy()
    other.messages[0][1] = "changed"
    assert conv.messages[0][1] == "a"
    assert other.skip_next is False
    assert CONV_VISION.messages == []
    assert conv.dict() == {
        "system": CONV_VISION.system,
        "roles": ("Human", "Assistant"),
        "messages": conv.messages,
        "offset": 2,
        "sep": "###",
        "sep2": None,
        "conv_id": None,
    }
    # offset 2 skips the first exchange, as the reference's pairs did
    assert conv.to_gradio_chatbot() == [
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
        {"role": "user", "content": "e"},
    ]


@pytest.mark.parametrize(
    ("raw", "answer"),
    [
        ("The image shows a cat.###Human: and then", "The image shows a cat."),
        (" Assistant: It is red.###", "It is red."),
        ("Human: what?###Assistant: A dog", "Human: what?"),
        ("no separator at all  ", "no separator at all"),
        ("###", ""),
    ],
)
def test_postprocess_answer(raw, answer):
    assert postprocess_answer(raw) == answer


def test_stop_sequences_cover_every_spelling_of_the_separator(tokenizer, expected):
    stops = set(stop_sequences(tokenizer, "###"))
    pieces = expected["tokenizer"]["piece_to_id"]
    # the single pieces the golden README names: ▁###, .### (and ?### from the chat prompt)
    for piece in ("▁###", ".###", "###"):
        assert (pieces[piece],) in stops
    assert (tokenizer.convert_tokens_to_ids("?###"),) in stops
    assert (pieces["##"], pieces["#"]) in stops  # the reference's second form, "##" then "#"
    texts = token_texts(tokenizer)
    for seq in stops:
        text = "".join(texts[i] for i in seq)
        assert text.endswith("###")
        assert not "".join(texts[i] for i in seq[:-1]).endswith("###")
    # any text that ends with the separator ends with one of the sequences
    for text in ["Hello.###", "ok###", " ###", "why?###", "x\n###", "a ##" + "#", "1#" + "##", "C#" + "#" + "#"]:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert any(tuple(ids[-len(s) :]) == s for s in stops), (text, tokenizer.convert_ids_to_tokens(ids))
    # and texts that do not, do not
    for text in ["C##", "a # # #", "## #", "#"]:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert not any(tuple(ids[-len(s) :]) == s for s in stops), text


def test_stop_criterion_checks_every_row():
    stop = StopOnSequences([(7,), (5, 6)])
    ids = torch.tensor([[1, 2, 7], [1, 5, 6], [5, 6, 1], [1, 1, 6]])
    assert stop(ids, None).tolist() == [True, True, False, False]
    assert stop(torch.tensor([[7]]), None).tolist() == [True]
    assert stop(torch.zeros((2, 0), dtype=torch.long), None).tolist() == [False, False]
    with pytest.raises(ValueError, match="at least one"):
        StopOnSequences([])


def test_decoding_defaults_and_checks():
    decoding = Decoding()
    assert decoding.generate_kwargs() == {
        "max_new_tokens": 300,
        "num_beams": 1,
        "do_sample": True,
        "min_new_tokens": 0,
        "repetition_penalty": 1.0,
        "top_p": 0.9,
        "top_k": 50,
        "temperature": 1.0,
    }
    greedy = Decoding(do_sample=False, num_beams=2, min_length=5).generate_kwargs()
    assert "temperature" not in greedy
    assert greedy["length_penalty"] == 1.0
    assert greedy["min_new_tokens"] == 4
    with pytest.raises(ValueError, match="max_length"):
        Decoding(max_new_tokens=300, max_length=300)
    with pytest.raises(ValueError, match="temperature"):
        Decoding(temperature=0)
    with pytest.raises(TypeError):
        Decoding(beams=2)
