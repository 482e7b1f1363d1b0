"""The demo page: the reference's layout and callbacks on gradio 6, over a ``Chat``.

Each browser session keeps its own conversation and images in ``gr.State``. Bad input gets a
message in the page (the status line under the chat box) instead of an exception: no image yet, an
empty question, a file that is not an image, an image too large to open, and a conversation longer
than the model's context (whose oldest part is then dropped, as the reference does).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, UnidentifiedImageError

from minigpt4.conversation.conversation import IMAGE_MESSAGE, Chat, Conversation, Decoding

logger = logging.getLogger(__name__)

TITLE = """<h1 align="center">Demo of MiniGPT-4</h1>"""
DESCRIPTION = """<h3>This is the demo of MiniGPT-4. Upload your images and start chatting!</h3>"""
ARTICLE = (
    "[Project Page](https://minigpt-4.github.io) · [Code](https://github.com/Vision-CAIR/MiniGPT-4) · "
    "[Paper](https://raw.githubusercontent.com/Vision-CAIR/MiniGPT-4/main/MiniGPT_4.pdf)"
)
PLACEHOLDER_NO_IMAGE = "Please upload your image first"
PLACEHOLDER_READY = "Type and press Enter"
PLACEHOLDER_EMPTY = "Input should not be empty!"
UPLOAD_LABEL = "Upload & Start Chat"

MSG_CHOOSE_IMAGE = "Please choose an image first, then press **Upload & Start Chat**."
MSG_ASK_AFTER_IMAGE = "Please upload an image and press **Upload & Start Chat** before asking a question."
MSG_EMPTY = "Input should not be empty! Type a question about the image."


class UploadError(ValueError):
    """An upload the demo cannot use; the message is shown in the page."""


def open_upload(path: str | Path, max_side: int, max_pixels: int) -> tuple[Image.Image, str]:
    """Opens an uploaded file as RGB. Images over ``max_pixels`` are refused before decoding; images
    whose longer side exceeds ``max_side`` are downscaled (the model sees 224x224 anyway).
    Returns the image and a note for the page (empty when nothing was changed)."""
    name = Path(path).name
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise UploadError(
                    f"The image {name} is {width}x{height} ({width * height:,} pixels); this demo accepts up to "
                    f"{max_pixels:,} pixels. Please upload a smaller image."
                )
            if max(width, height) <= max_side:
                return image.convert("RGB"), ""
            image.draft("RGB", (max_side, max_side))  # JPEG decodes directly at a smaller scale
            rgb = image.convert("RGB")
    except Image.DecompressionBombError as err:
        raise UploadError(
            f"The image {name} is too large to open safely ({err}). Please upload a smaller image."
        ) from err
    except (UnidentifiedImageError, OSError) as err:
        raise UploadError(
            f"The file {name} is not an image that can be read. Please upload a photo (JPEG, PNG, WebP ...)."
        ) from err
    rgb.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return rgb, f"The image ({width}x{height}) was downscaled to {rgb.width}x{rgb.height} before encoding."


def chatbot_messages(conv: Conversation | None) -> list[dict[str, str]]:
    """What the chat box shows: the turns as typed (the image marker is left out)."""
    if conv is None:
        return []
    shown = []
    for role, message in conv.messages:
        text = (message or "").removeprefix(IMAGE_MESSAGE).strip()
        if text:
            shown.append({"role": "user" if role == conv.roles[0] else "assistant", "content": text})
    return shown


def has_question(conv: Conversation) -> bool:
    """Whether the last message is a question still to answer (not the image alone)."""
    if not conv.messages:
        return False
    role, message = conv.messages[-1]
    return role == conv.roles[0] and message not in (None, IMAGE_MESSAGE)


def take_back_question(conv: Conversation) -> None:
    """Removes the last question (after a failed answer). A first question was joined to the image
    message (``Chat.ask``); the image message itself stays, so that the image still has its place."""
    role, message = conv.messages[-1]
    if message is not None and message.startswith(IMAGE_MESSAGE) and message != IMAGE_MESSAGE:
        conv.messages[-1] = [role, IMAGE_MESSAGE]
    else:
        conv.messages.pop()


def build_demo(
    chat: Chat,
    *,
    max_new_tokens: int = Decoding.max_new_tokens,
    max_length: int = Decoding.max_length,
    max_image_side: int = 4096,
    max_image_pixels: int = Image.MAX_IMAGE_PIXELS,
) -> gr.Blocks:
    """The page. ``max_new_tokens`` and ``max_length`` are the reference demo's; an image larger than
    ``max_image_pixels`` is refused and one whose longer side exceeds ``max_image_side`` is downscaled."""

    def upload(image_data: dict[str, Any] | None) -> tuple[Any, ...]:
        if image_data is None:
            return gr.update(), gr.update(), gr.update(interactive=True), None, None, MSG_CHOOSE_IMAGE
        try:
            image, note = open_upload(image_data["path"], max_image_side, max_image_pixels)
        except UploadError as err:
            logger.info("upload refused: %s", err)
            return gr.update(value=None), gr.update(), gr.update(interactive=True), None, None, str(err)
        conv, img_list = chat.new_conversation(), []  # in the model's template
        chat.upload_img(image, conv, img_list)
        return (
            gr.update(interactive=False),
            gr.update(interactive=True, placeholder=PLACEHOLDER_READY),
            gr.update(value="Start Chatting", interactive=False),
            conv,
            img_list,
            note,
        )

    def ask(text: str, conv: Conversation | None, img_list: list | None) -> tuple[Any, ...]:
        if conv is None or not img_list:
            return gr.update(), chatbot_messages(conv), conv, MSG_ASK_AFTER_IMAGE
        if not text.strip():
            return gr.update(value="", placeholder=PLACEHOLDER_EMPTY), chatbot_messages(conv), conv, MSG_EMPTY
        chat.ask(text, conv)
        return gr.update(value="", placeholder=PLACEHOLDER_READY), chatbot_messages(conv), conv, ""

    def answer(
        conv: Conversation | None, img_list: list | None, num_beams: float, temperature: float
    ) -> Iterator[tuple[Any, ...]]:
        if conv is None or not img_list or not has_question(conv):
            yield chatbot_messages(conv), conv, gr.update()  # nothing was asked (refused question)
            return
        settings = {
            "num_beams": int(num_beams),
            "temperature": float(temperature),
            "max_new_tokens": max_new_tokens,
            "max_length": max_length,
        }
        before = [list(m) for m in conv.messages]
        try:
            dropped = chat.overflow(conv, img_list, **settings)
            status = (
                f"This conversation is longer than the model's context: its oldest {dropped} positions were "
                "left out of this answer. Press **Restart** to start afresh."
                if dropped
                else ""
            )
            for text in chat.stream_answer(conv, img_list, **settings):
                shown = chatbot_messages(conv)
                if shown and shown[-1]["role"] == "assistant":
                    shown[-1]["content"] = text
                yield shown, conv, status
        except Exception as err:  # the page must stay usable: undo the turn and say what happened
            logger.exception("answer failed")
            conv.messages = before
            take_back_question(conv)
            yield chatbot_messages(conv), conv, f"The answer failed ({type(err).__name__}: {err}). Please try again."

    def reset() -> tuple[Any, ...]:
        return (
            [],
            gr.update(value=None, interactive=True),
            gr.update(value="", placeholder=PLACEHOLDER_NO_IMAGE, interactive=False),
            gr.update(value=UPLOAD_LABEL, interactive=True),
            None,
            None,
            "",
        )

    with gr.Blocks(title="MiniGPT-4", analytics_enabled=False) as demo:
        gr.Markdown(TITLE)
        gr.Markdown(DESCRIPTION)
        gr.Markdown(ARTICLE)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", label="Image", elem_id="image")
                upload_button = gr.Button(UPLOAD_LABEL, interactive=True, variant="primary", elem_id="upload")
                clear = gr.Button("Restart", elem_id="restart")
                num_beams = gr.Slider(1, 10, value=1, step=1, interactive=True, label="beam search numbers")
                temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.1, interactive=True, label="Temperature")
            with gr.Column(scale=2):
                chat_state = gr.State()
                img_list = gr.State()
                chatbot = gr.Chatbot(label="MiniGPT-4", elem_id="chatbot", buttons=["copy", "copy_all"])
                text_input = gr.Textbox(
                    label="User", placeholder=PLACEHOLDER_NO_IMAGE, interactive=False, elem_id="question"
                )
                status = gr.Markdown(elem_id="status")

        upload_button.click(
            upload,
            [image],
            [image, text_input, upload_button, chat_state, img_list, status],
            preprocess=False,  # the file is opened (and checked) by open_upload, not by gradio
            api_name="upload",
        )
        answering = text_input.submit(
            ask, [text_input, chat_state, img_list], [text_input, chatbot, chat_state, status], api_name="ask"
        ).then(answer, [chat_state, img_list, num_beams, temperature], [chatbot, chat_state, status], api_name="answer")
        restart_outputs = [chatbot, image, text_input, upload_button, chat_state, img_list, status]
        clear.click(reset, None, restart_outputs, queue=False, cancels=[answering], api_name="restart")
        # the chat box's own clear button restarts too, so that what it shows and the state agree
        chatbot.clear(reset, None, restart_outputs, queue=False, cancels=[answering], api_name=False)
    return demo
