"""The batch inference command, on the golden tiny model loaded through a YAML config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from omegaconf import OmegaConf
from PIL import Image

from minigpt4.common.registry import registry
from minigpt4.conversation.batch_inference import InputError, main, read_requests
from minigpt4.conversation.conversation import CONV_VISION, Chat
from tests.conftest import REPO_ROOT
from tests.golden_model import build_golden_model, golden_model_config
from tests.test_demo import png_header

QUESTION = "What is in this image?"
COMMON = ["--device", "cpu", "--max-new-tokens", "10"]


@pytest.fixture(scope="module")
def cfg_path(golden_dir, tmp_path_factory):
    """An eval config like the demo's, naming the golden files."""
    config = {
        "model": OmegaConf.to_container(golden_model_config(golden_dir)),
        "datasets": {"cc_sbu_align": {"vis_processor": {"train": {"name": "blip2_image_eval", "image_size": 56}}}},
        "run": {"task": "image_text_pretrain"},
    }
    path = tmp_path_factory.mktemp("config") / "golden_eval.yaml"
    OmegaConf.save(config, path)
    return str(path)


@pytest.fixture(scope="module")
def photos(golden_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    shutil.copy(golden_dir / "astronaut.jpg", folder / "a.jpg")
    shutil.copy(golden_dir / "chelsea.jpg", folder / "b.jpg")
    Image.open(golden_dir / "chelsea.jpg").crop((100, 50, 300, 250)).save(folder / "c.png")
    (folder / "notes.txt").write_text("not an image, not listed")
    return folder


@pytest.fixture(scope="module")
def expected_answers(golden_dir, photos):
    """Greedy answers of Chat, one conversation at a time."""
    processor = registry.get_processor_class("blip2_image_eval").from_config({"image_size": 56})
    chat = Chat(build_golden_model(golden_dir).eval(), processor, device="cpu")
    answers = {}
    for name in ("a.jpg", "b.jpg", "c.png"):
        conv, img_list = CONV_VISION.copy(), []
        chat.upload_img(photos / name, conv, img_list)
        chat.ask(QUESTION, conv)
        answers[name] = chat.answer(conv, img_list, do_sample=False, max_new_tokens=10)[0]
    return answers


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_folder_in_batches_equals_one_by_one(cfg_path, photos, expected_answers, tmp_path):
    out = tmp_path / "answers.jsonl"
    argv = ["--cfg-path", cfg_path, "--input", str(photos), "--question", QUESTION, "--batch-size", "2", *COMMON]
    assert main([*argv, "--output", str(out)]) == 0
    lines = read_jsonl(out)
    assert [line["image"] for line in lines] == ["a.jpg", "b.jpg", "c.png"]
    assert {line["image"]: line["answer"] for line in lines} == expected_answers
    assert all(line["question"] == QUESTION for line in lines)
    again = tmp_path / "again.jsonl"
    assert main([*argv, "--batch-size", "3", "--output", str(again)]) == 0
    assert again.read_text() == out.read_text()


def test_jsonl_keeps_extra_keys_and_reports_unreadable_images(cfg_path, photos, expected_answers, tmp_path):
    (tmp_path / "broken.jpg").write_text("not a picture")
    (tmp_path / "huge.png").write_bytes(png_header(30000, 30000))  # past PIL's decompression-bomb limit
    source = tmp_path / "questions.jsonl"
    rows = [
        {"id": 1, "image": str(photos / "b.jpg"), "question": QUESTION},
        {"id": 2, "image": "broken.jpg"},
        {"id": 3, "image": str(photos / "c.png")},
        {"id": 4, "image": "huge.png"},
    ]
    source.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    out = tmp_path / "out" / "answers.jsonl"
    argv = ["--cfg-path", cfg_path, "--input", str(source), "--question", QUESTION, "--output", str(out)]
    assert main([*argv, *COMMON]) == 1
    first, broken, third, huge = read_jsonl(out)
    assert (first["id"], first["answer"]) == (1, expected_answers["b.jpg"])
    assert broken["id"] == 2 and "not an image" in broken["error"] and "answer" not in broken
    assert (third["id"], third["question"], third["answer"]) == (3, QUESTION, expected_answers["c.png"])
    assert huge["id"] == 4 and "too large to open safely" in huge["error"] and "answer" not in huge


def test_inputs_are_checked_before_the_model_loads(photos, tmp_path, caplog):
    with pytest.raises(InputError, match="--question is needed"):
        read_requests(photos, None)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{photos / 'a.jpg'}\nmissing.jpg\n")
    with pytest.raises(InputError, match=r"1 image\(s\) of .* not found .*: missing\.jpg$"):
        read_requests(listing, QUESTION)
    listing.write_text(f"{photos / 'b.jpg'}\n\n{photos / 'a.jpg'}\n")
    assert [(r.path, r.question) for r in read_requests(listing, QUESTION)] == [
        (photos / "b.jpg", QUESTION),
        (photos / "a.jpg", QUESTION),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.jpg"}\n')
    with pytest.raises(InputError, match='line 1: no "question"'):
        read_requests(bad, None)
    bad.write_text(f'{{"image": "{photos / "a.jpg"}", "question": "q"}}\n{{"image": "a.jpg", "question": "  "}}\n')
    with pytest.raises(InputError, match='line 2: the "question" is empty'):
        read_requests(bad, None)
    with pytest.raises(InputError, match="--question is empty"):
        read_requests(photos, " ")
    assert main(["--cfg-path", "unused.yaml", "--input", str(tmp_path / "nowhere"), "--question", "q"]) == 2
    assert "does not exist" in caplog.text


def test_too_many_new_tokens_for_the_llm_is_refused_before_any_output(cfg_path, photos, tmp_path, caplog):
    out = tmp_path / "answers.jsonl"
    argv = ["--cfg-path", cfg_path, "--input", str(photos), "--question", QUESTION, "--output", str(out)]
    assert main([*argv, "--device", "cpu", "--max-new-tokens", "600"]) == 2
    assert "leaves no room for the context in the LLM's 512 positions" in caplog.text
    assert not out.exists()


@pytest.mark.slow
def test_command_line(cfg_path, photos, expected_answers, tmp_path):
    out = tmp_path / "cli.jsonl"
    command = [sys.executable, "inference.py", "--cfg-path", cfg_path, "--input", str(photos), "--question", QUESTION]
    result = subprocess.run(
        [*command, *COMMON, "--output", str(out)],
        cwd=REPO_ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "3/3" in result.stderr  # the progress bar
    assert {line["image"]: line["answer"] for line in read_jsonl(out)} == expected_answers
