"""The demo's callbacks, driven through ``gradio_client`` against the app served on 127.0.0.1."""

from __future__ import annotations

import struct
import zlib

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from minigpt4.conversation.demo_app import (
    MSG_ASK_AFTER_IMAGE,
    MSG_CHOOSE_IMAGE,
    MSG_EMPTY,
    UploadError,
    build_demo,
    open_upload,
)
from tests.golden_model import build_golden_chat

# Small limits so that the golden photos exercise both paths: astronaut (512x512) is refused,
# chelsea (451x300) is downscaled.
LIMITS = {"max_image_side": 400, "max_image_pixels": 200_000}


@pytest.fixture(scope="module")
def chat(golden_dir):
    return build_golden_chat(golden_dir)


@pytest.fixture(scope="module")
def app(chat):
    demo = build_demo(chat, max_new_tokens=12, max_length=100, **LIMITS)
    demo.queue().launch(server_name="127.0.0.1", prevent_thread_lock=True, share=False, quiet=True)
    yield demo
    demo.close()


def client(app):
    return Client(app.local_url, verbose=False)


def texts(chatbot):
    return [(m["role"], "".join(part["text"] for part in m["content"])) for m in chatbot]


def png_header(width, height):
    """A PNG that declares a size and holds no pixels: enough for PIL to read the size."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def test_open_upload_with_the_default_limits(tmp_path):
    wide = tmp_path / "wide.png"
    Image.new("RGB", (5000, 40), "red").save(wide)
    image, note = open_upload(wide, 4096, Image.MAX_IMAGE_PIXELS)
    assert image.size == (4096, 33)
    assert "downscaled to 4096x33" in note
    small = tmp_path / "small.png"
    Image.new("L", (30, 20)).save(small)
    image, note = open_upload(small, 4096, Image.MAX_IMAGE_PIXELS)
    assert (image.mode, image.size, note) == ("RGB", (30, 20), "")
    large = tmp_path / "large.png"
    large.write_bytes(png_header(12000, 10000))
    with pytest.raises(UploadError, match="120,000,000 pixels"):
        open_upload(large, 4096, Image.MAX_IMAGE_PIXELS)
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header(30000, 30000))
    with pytest.raises(UploadError, match="too large to open safely"):
        open_upload(huge, 4096, 10**10)  # past PIL's own decompression-bomb limit
    text = tmp_path / "photo.jpg"
    text.write_text("not a photo")
    with pytest.raises(UploadError, match=r"photo\.jpg is not an image"):
        open_upload(text, 4096, Image.MAX_IMAGE_PIXELS)


def test_bad_input_gets_a_message(app, golden_dir):
    user = client(app)
    *_, status = user.predict("hello", api_name="/ask")
    assert status == MSG_ASK_AFTER_IMAGE
    *_, status = user.predict(None, api_name="/upload")
    assert status == MSG_CHOOSE_IMAGE
    *_, status = user.predict(handle_file(str(golden_dir / "tokenizer_corpus.txt")), api_name="/upload")
    assert "tokenizer_corpus.txt is not an image" in status
    *_, status = user.predict(handle_file(str(golden_dir / "astronaut.jpg")), api_name="/upload")
    assert "512x512 (262,144 pixels)" in status
    assert user.predict("What now?", api_name="/ask")[-1] == MSG_ASK_AFTER_IMAGE  # still no image


def test_conversation_streams_and_restarts(app, golden_dir):
    user = client(app)
    image, text_input, status = user.predict(handle_file(str(golden_dir / "chelsea.jpg")), api_name="/upload")
    assert image["interactive"] is False
    assert text_input["interactive"] is True
    assert status == "The image (451x300) was downscaled to 400x266 before encoding."

    text_input, chatbot, status = user.predict("   ", api_name="/ask")
    assert (text_input["placeholder"], status, chatbot) == ("Input should not be empty!", MSG_EMPTY, [])
    chatbot, status = user.predict(1, 1.0, api_name="/answer")  # nothing asked: nothing answered
    assert chatbot == []

    text_input, chatbot, status = user.predict("What is in this image?", api_name="/ask")
    assert texts(chatbot) == [("user", "What is in this image?")]
    job = user.submit(1, 1.0, api_name="/answer")
    chatbot, status = job.result()
    assert len(job.outputs()) > 2  # the answer came in pieces
    (role, answer) = texts(chatbot)[-1]
    assert role == "assistant" and answer
    assert status == ""

    # the second turn no longer fits max_length=100: the oldest part is dropped, and the page says so
    user.predict("And what else can you see there?", api_name="/ask")
    chatbot, status = user.predict(2, 0.5, api_name="/answer")
    assert [role for role, _ in texts(chatbot)] == ["user", "assistant", "user", "assistant"]
    assert "longer than the model's context" in status

    chatbot, image, text_input, status = user.predict(api_name="/restart")
    assert chatbot == [] and image["value"] is None and text_input["interactive"] is False
    assert user.predict("hello", api_name="/ask")[-1] == MSG_ASK_AFTER_IMAGE


def test_each_user_has_a_conversation(app, golden_dir):
    alice, bob = client(app), client(app)
    alice.predict(handle_file(str(golden_dir / "chelsea.jpg")), api_name="/upload")
    assert bob.predict("Is there a cat?", api_name="/ask")[-1] == MSG_ASK_AFTER_IMAGE
    _, chatbot, status = alice.predict("Is there a cat?", api_name="/ask")
    assert status == "" and texts(chatbot) == [("user", "Is there a cat?")]


def test_a_failed_answer_takes_back_the_question_and_keeps_the_image(app, chat, golden_dir, monkeypatch):
    user = client(app)
    user.predict(handle_file(str(golden_dir / "chelsea.jpg")), api_name="/upload")
    user.predict("What is in this image?", api_name="/ask")
    real, calls = chat.stream_answer, []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("device lost")
        yield from real(*args, **kwargs)

    monkeypatch.setattr(chat, "stream_answer", fails_once)
    chatbot, status = user.predict(1, 1.0, api_name="/answer")
    assert chatbot == [] and status == "The answer failed (RuntimeError: device lost). Please try again."
    user.predict("What is in this image?", api_name="/ask")  # asked again, about the same image
    chatbot, status = user.predict(1, 1.0, api_name="/answer")
    assert status == "" and [role for role, _ in texts(chatbot)] == ["user", "assistant"]
