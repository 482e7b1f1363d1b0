"""``Chat`` on the golden tiny MiniGPT-4: parity of the context embeddings, answers, truncation,
streaming and batches."""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import StoppingCriteriaList

from minigpt4.conversation.conversation import CONV_VISION, Decoding, StopOnSequences, postprocess_answer
from tests.golden_model import build_golden_chat

QUESTION = "What is in this image?"
GREEDY = {"do_sample": False, "max_new_tokens": 12}


@pytest.fixture(scope="module")
def chat(golden_dir):
    return build_golden_chat(golden_dir)


@pytest.fixture(scope="module")
def expected(golden_dir):
    return json.loads((golden_dir / "expected.json").read_text()), load_file(golden_dir / "expected.safetensors")


def start(chat, image, question=QUESTION):
    conv, img_list = CONV_VISION.copy(), []
    assert chat.upload_img(image, conv, img_list) == "Received."
    chat.ask(question, conv)
    return conv, img_list


def test_context_embeddings_match_golden(chat, expected, golden_dir):
    record, tensors = expected
    conv, img_list = start(chat, str(golden_dir / "astronaut.jpg"), record["chat_1turn"]["question"])
    torch.testing.assert_close(img_list[0], tensors["chat.img_emb"], atol=1e-5, rtol=0)
    conv.append_message(conv.roles[1], None)
    assert conv.messages == record["chat_1turn"]["messages"]
    assert conv.get_prompt() == record["chat_1turn"]["prompt"]
    torch.testing.assert_close(chat.get_context_emb(conv, img_list), tensors["chat1.context_emb"], atol=1e-5, rtol=0)

    conv.messages[-1][1] = record["chat_2turn"]["assistant_reply_turn1"]
    chat.ask(record["chat_2turn"]["question2"], conv)
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == record["chat_2turn"]["prompt"]
    torch.testing.assert_close(chat.get_context_emb(conv, img_list), tensors["chat2.context_emb"], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="1 image placeholder"):
        chat.get_context_emb(conv, img_list * 2)


@pytest.mark.slow
def test_upload_accepts_path_pil_and_tensor(chat, golden_dir, tmp_path):
    path = golden_dir / "chelsea.jpg"
    pil = Image.open(path)
    tensor = chat.vis_processor(pil.convert("RGB"))
    embs = [chat.encode_images([x])[0] for x in (str(path), path, pil, tensor, tensor[None])]
    for emb in embs[1:]:
        torch.testing.assert_close(emb, embs[0])
    with pytest.raises(FileNotFoundError, match="not found"):
        chat.encode_images([tmp_path / "missing.jpg"])
    (tmp_path / "notes.jpg").write_text("not a picture")
    with pytest.raises(ValueError, match="not an image"):
        chat.encode_images([tmp_path / "notes.jpg"])
    with pytest.raises(TypeError, match="path, a PIL image or a tensor"):
        chat.encode_images([np.zeros((56, 56, 3))])
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        chat.encode_images([torch.zeros(2, 3, 56, 56)])


def test_answer_greedy_is_deterministic_and_stored(chat, golden_dir):
    answers = []
    for _ in range(2):
        conv, img_list = start(chat, golden_dir / "astronaut.jpg")
        text, tokens = chat.answer(conv, img_list, **GREEDY)
        assert conv.messages[-1] == ["Assistant", text]
        assert text == postprocess_answer(chat.tokenizer.decode(tokens, skip_special_tokens=True))
        assert 0 < len(tokens) <= GREEDY["max_new_tokens"]
        answers.append((text, tokens.tolist()))
    assert answers[0] == answers[1]


@pytest.mark.slow
def test_sampling_is_seeded_and_differs_from_greedy(chat, golden_dir):
    runs = []
    for _ in range(2):
        conv, img_list = start(chat, golden_dir / "astronaut.jpg")
        torch.manual_seed(7)
        runs.append(chat.answer(conv, img_list, max_new_tokens=12)[1].tolist())
    conv, img_list = start(chat, golden_dir / "astronaut.jpg")
    assert runs[0] == runs[1] != chat.answer(conv, img_list, **GREEDY)[1].tolist()


@pytest.mark.slow
def test_long_context_is_truncated_on_the_left(chat, golden_dir, caplog):
    conv, img_list = start(chat, golden_dir / "astronaut.jpg")
    settings = {"max_new_tokens": 10, "max_length": 50, "do_sample": False}
    assert chat.overflow(conv, img_list, **settings) == 86 - 40
    assert chat.overflow(conv, img_list, **GREEDY) == 0
    pending = conv.copy()
    pending.append_message(pending.roles[1], None)
    kept = chat.get_context_emb(pending, img_list)[:, -40:]
    direct = chat.model.llama_model.generate(
        inputs_embeds=kept,
        attention_mask=torch.ones(kept.shape[:2], dtype=torch.long),
        do_sample=False,
        max_new_tokens=10,
    )
    with caplog.at_level(logging.WARNING):
        _, tokens = chat.answer(conv, img_list, **settings)
    assert "dropping the oldest 46 positions" in caplog.text
    assert tokens.tolist() == chat._strip_leading(direct[0]).tolist()[: len(tokens)]


def test_context_limit_is_capped_by_the_llm_positions(chat):
    assert chat.model.llama_model.config.max_position_embeddings == 512
    assert chat.context_limit(Decoding()) == 512 - 300
    assert chat.context_limit(Decoding(max_length=400, max_new_tokens=100)) == 300
    with pytest.raises(ValueError, match="no room for the context"):
        chat.context_limit(Decoding(max_new_tokens=600, max_length=2000))


def test_stream_ends_with_the_answer(chat, golden_dir):
    conv, img_list = start(chat, golden_dir / "chelsea.jpg")
    torch.manual_seed(3)
    text, _ = chat.answer(conv, img_list, max_new_tokens=15)
    conv, img_list = start(chat, golden_dir / "chelsea.jpg")
    torch.manual_seed(3)
    parts = list(chat.stream_answer(conv, img_list, max_new_tokens=15))
    assert len(parts) > 2
    assert parts[-1] == text == conv.messages[-1][1]
    conv, img_list = start(chat, golden_dir / "chelsea.jpg")
    assert len(list(chat.stream_answer(conv, img_list, num_beams=2, max_new_tokens=5))) == 1


def test_closing_a_stream_stops_generation(chat, golden_dir):
    conv, img_list = start(chat, golden_dir / "chelsea.jpg")
    stream = chat.stream_answer(conv, img_list, max_new_tokens=280, max_length=512)
    next(stream)
    stream.close()
    assert not any(t.name == "chat-generate" for t in threading.enumerate())


@pytest.mark.slow
def test_batch_equals_one_by_one_with_greedy(chat, golden_dir):
    images = [golden_dir / "astronaut.jpg", golden_dir / "chelsea.jpg", golden_dir / "chelsea.jpg"]
    questions = [QUESTION, "Describe the animal in this picture in a few words please.", "Colour?"]
    one_by_one = []
    for image, question in zip(images, questions, strict=True):
        conv, img_list = start(chat, image, question)
        one_by_one.append(chat.answer(conv, img_list, **GREEDY)[0])
    assert chat.answer_batch(images, questions, **GREEDY) == one_by_one
    assert len(set(one_by_one)) == 3
    with pytest.raises(ValueError, match="3 images but 2 questions"):
        chat.answer_batch(images, questions[:2])


def test_each_row_stops_on_its_own(chat):
    llm = chat.model.llama_model
    prompts = torch.tensor([[1, 304, 383, 319], [1, 313, 559, 341]])
    free = llm.generate(prompts, do_sample=False, max_new_tokens=12, pad_token_id=0)[:, 4:]
    stop = tuple(free[0, 4:6].tolist())  # a pair row 0 really generates
    end = next(i + 2 for i in range(11) if tuple(free[0, i : i + 2].tolist()) == stop)
    assert all(stop != tuple(free[1, i : i + 2].tolist()) for i in range(11))
    stopped = llm.generate(
        prompts,
        do_sample=False,
        max_new_tokens=12,
        pad_token_id=0,
        stopping_criteria=StoppingCriteriaList([StopOnSequences([stop])]),
    )[:, 4:]
    assert stopped.shape[1] == 12  # row 1 went on to the end
    assert stopped[1].tolist() == free[1].tolist()
    assert stopped[0, :end].tolist() == free[0, :end].tolist()
    assert set(stopped[0, end:].tolist()) == {0}  # row 0 is padded after its stop
    assert set(free[0, end:].tolist()) != {0}


def test_a_failed_answer_leaves_the_conversation_as_it_was(chat, golden_dir, monkeypatch):
    conv, img_list = start(chat, str(golden_dir / "chelsea.jpg"))
    before = [list(m) for m in conv.messages]

    def broken(**_kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(chat.model.llama_model, "generate", broken)
    with pytest.raises(RuntimeError, match="device lost"):
        chat.answer(conv, img_list, **GREEDY)
    assert conv.messages == before
    with pytest.raises(RuntimeError, match="device lost"):
        list(chat.stream_answer(conv, img_list, **GREEDY))
    assert conv.messages == before


def test_a_refused_answer_leaves_the_conversation_as_it_was(chat, golden_dir):
    conv, img_list = start(chat, str(golden_dir / "chelsea.jpg"))
    before = [list(m) for m in conv.messages]
    with pytest.raises(ValueError, match="no room for the context"):
        chat.answer(conv, img_list, max_new_tokens=600)
    assert conv.messages == before
    with pytest.raises(ValueError, match="1 image placeholder"):
        list(chat.stream_answer(conv, img_list * 2, **GREEDY))
    assert conv.messages == before
    chat.answer(conv, img_list, **GREEDY)  # a later answer sees the prompt of one pending turn
    assert [role for role, _ in conv.messages] == ["Human", "Assistant"]
