"""The demo in a real browser: headless Chromium (Debian's) driven through Playwright."""

from __future__ import annotations

import pytest
from PIL import Image, ImageStat

from minigpt4.conversation.demo_app import MSG_CHOOSE_IMAGE, MSG_EMPTY, UPLOAD_LABEL, build_demo
from tests.conftest import chromium_path
from tests.golden_model import build_golden_chat

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


@pytest.fixture(scope="module")
def demo_url(golden_dir):
    chat = build_golden_chat(golden_dir)
    demo = build_demo(chat, max_new_tokens=16)
    demo.queue().launch(server_name="127.0.0.1", prevent_thread_lock=True, share=False, quiet=True)
    yield demo.local_url
    demo.close()


def test_upload_ask_answer_restart(demo_url, golden_dir, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            tmp_path / "profile",
            executable_path=chromium_path(),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
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
