"""The demo in a real browser: headless Chromium (Debian's) driven through Playwright, on the golden
model (every control of the page) and on the tiny world with its projection trained (a held-out
image's answer names what the image shows)."""

from __future__ import annotations

import pytest
from PIL import Image, ImageStat
from world_model import EVAL, trained_world

from minigpt4.conversation.demo_app import MSG_CHOOSE_IMAGE, MSG_EMPTY, UPLOAD_LABEL, build_demo
from tests.conftest import chromium_path
from tests.golden_model import build_golden_chat
from tools.tiny_world import names_right

pytestmark = pytest.mark.browser

# Keep Chromium off the network (it has none here) and out of any shared profile.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
TIMEOUT_MS = 60_000
QUESTION = "Describe this image in detail."


def serve(chat, max_new_tokens: int):
    demo = build_demo(chat, max_new_tokens=max_new_tokens)
    demo.queue().launch(server_name="127.0.0.1", prevent_thread_lock=True, share=False, quiet=True)
    return demo


@pytest.fixture(scope="module")
def demo_url(golden_dir):
    demo = serve(build_golden_chat(golden_dir), max_new_tokens=16)
    yield demo.local_url
    demo.close()


def open_browser(playwright, profile):
    return playwright.chromium.launch_persistent_context(
        profile,
        executable_path=chromium_path(),
        headless=True,
        args=CHROMIUM_FLAGS,
        viewport={"width": 1280, "height": 900},
    )


def test_upload_ask_answer_restart(demo_url, golden_dir, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = open_browser(playwright, tmp_path / "profile")
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(demo_url, wait_until="load")
            question = page.locator("#question textarea")
            status = page.locator("#status")
            upload = page.locator("#upload")
            answers = page.locator('#chatbot [data-testid="bot"]')

            expect(page.get_by_role("heading", name="Demo of MiniGPT-4", exact=True)).to_be_visible()
            expect(question).to_be_disabled()
            upload.click()  # no image yet
            expect(status).to_contain_text(MSG_CHOOSE_IMAGE.replace("**", ""))

            page.locator("#image input[type=file]").set_input_files(golden_dir / "astronaut.jpg")
            expect(page.locator("#image img")).to_be_visible()
            upload.click()
            expect(question).to_be_enabled()
            expect(upload).to_have_text("Start Chatting")

            question.press("Enter")  # an empty question
            expect(status).to_contain_text(MSG_EMPTY)
            question.fill("What is in this image?")
            question.press("Enter")
            expect(page.locator('#chatbot [data-testid="user"]')).to_have_text("What is in this image?")
            expect(answers).to_have_count(1)
            expect(answers.first).not_to_have_text("")
            expect(question).to_have_value("")

            shot = tmp_path / "demo.png"
            page.screenshot(path=shot, full_page=True)

            page.locator("#restart").click()
            expect(answers).to_have_count(0)
            expect(question).to_be_disabled()
            expect(upload).to_have_text(UPLOAD_LABEL)

            # the chat box's own clear button starts over as well
            page.locator("#image input[type=file]").set_input_files(golden_dir / "chelsea.jpg")
            upload.click()
            question.fill("Is it a cat?")
            question.press("Enter")
            expect(answers).to_have_count(1)
            page.locator("#chatbot").get_by_role("button", name="Clear").click()
            expect(question).to_be_disabled()
            expect(upload).to_have_text(UPLOAD_LABEL)
        finally:
            browser.close()

    assert shot.stat().st_size > 20_000
    with Image.open(shot) as image:
        assert image.width >= 1280 and image.height >= 700
        # a rendered page with a photo in it, not a blank or single-colour frame
        assert max(high - low for low, high in image.convert("RGB").getextrema()) > 200
        assert min(ImageStat.Stat(image.convert("L")).stddev) > 20


@pytest.mark.slow
def test_the_trained_world_names_a_held_out_image_uploaded_in_the_browser(tmp_path):
    """The reduced tiny world (tests/world_model.py) with its trained projection, served by the demo:
    a held-out image uploaded in the page, at the lowest temperature the page offers, gets an answer
    that names the image's colour (what the reduced world's vision side sees; its shape as well where
    Chat's greedy answer names it) and no other."""
    import torch
    from playwright.sync_api import expect, sync_playwright

    from minigpt4.conversation.launch import build_chat

    world = trained_world()
    chat = build_chat(str(EVAL), world.eval_options(), torch.device("cpu"))
    heldout = world.heldout()[:20]
    greedy = chat.answer_batch([str(path) for path, _, _ in heldout], [QUESTION] * len(heldout), max_new_tokens=60,
                               do_sample=False)  # fmt: skip
    # The image to upload: one whose colour and shape the greedy answer names, else its colour.
    picks = [
        (path, thing, attributes)
        for attributes in (("colour", "shape"), ("colour",))
        for (path, thing, _), answer in zip(heldout, greedy, strict=True)
        if names_right(answer, thing, attributes)
    ]
    assert picks, f"the trained projection names no held-out colour: {greedy}"
    path, thing, attributes = picks[0]

    demo = serve(chat, max_new_tokens=60)
    expect.set_options(timeout=TIMEOUT_MS)
    try:
        with sync_playwright() as playwright:
            browser = open_browser(playwright, tmp_path / "profile")
            try:
                page = browser.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(demo.local_url, wait_until="load")
                temperature = page.get_by_label("number input for Temperature")
                temperature.fill("0.1")
                temperature.press("Enter")
                page.locator("#image input[type=file]").set_input_files(path)
                expect(page.locator("#image img")).to_be_visible()
                page.locator("#upload").click()
                question = page.locator("#question textarea")
                expect(question).to_be_enabled()
                question.fill(QUESTION)
                question.press("Enter")
                answers = page.locator('#chatbot [data-testid="bot"]')
                expect(answers).to_have_count(1)
                # The world's descriptions end with the background; the answer is complete by then.
                expect(answers.first).to_contain_text("background.")
                answer = answers.first.inner_text()
            finally:
                browser.close()
    finally:
        demo.close()
    assert names_right(answer, thing, attributes), f"{path.name} shows {thing}; the page answered {answer!r}"
