"""The LLM folder's tokenizer is checked against its config.json before anything trains."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from golden_model import golden_model_config
from tiny_assets import STAGE2_TINY, tiny_root

import train
from minigpt4.models.llm import TokenizerError, check_llama_tokenizer, require_llama_tokenizer
from minigpt4.models.mini_gpt4 import MiniGPT4


def vicuna_copy(golden_dir: Path, target: Path, **config_edits) -> Path:
    """The golden Vicuna folder with ``config.json`` keys replaced (``None`` removes a key)."""
    shutil.copytree(golden_dir / "vicuna_tiny", target)
    config_path = target / "config.json"
    config = json.loads(config_path.read_text())
    for key, value in config_edits.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    config_path.write_text(json.dumps(config, indent=2))
    return target


def test_report_of_a_good_folder(golden_dir: Path):
    report = check_llama_tokenizer(golden_dir / "vicuna_tiny")
    assert report.ok and not report.corrections, report.problems
    assert report.file == golden_dir / "vicuna_tiny" / "tokenizer.model"
    assert (report.vocab_size, report.config_vocab_size) == (600, 600)
    assert (report.bos_token_id, report.eos_token_id) == (1, 2)
    assert report.config_ids == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    assert report.generation_ids == report.config_ids
    assert report.encodings["</s>"] == [2]
    assert report.encodings["###"] and 0 not in report.encodings["###"]


def test_missing_tokenizer_is_refused_by_train_before_the_model_loads(golden_dir, tmp_path, monkeypatch, caplog):
    folder = vicuna_copy(golden_dir, tmp_path / "vicuna")
    (folder / "tokenizer.model").unlink()
    root = tiny_root()
    monkeypatch.chdir(root)
    caplog.set_level(logging.INFO)
    options = ["run.device=cpu", f"model.llama_model={folder}", f"run.output_dir={tmp_path / 'out'}"]
    with pytest.raises(TokenizerError) as error:
        train.main(["--cfg-path", str(STAGE2_TINY), "--options", *options])
    message = str(error.value)
    assert "\n" not in message
    assert f"{folder / 'tokenizer.model'}" in message and "there is no tokenizer.model" in message
    assert any(entry.name == "check_inputs" for entry in error.traceback)  # the start-up check, not the load
    logged = [record.getMessage() for record in caplog.records]
    assert not any(line.startswith(("Loading VIT", "Start training")) for line in logged), logged


def test_garbage_tokenizer_is_refused_in_words(golden_dir, tmp_path):
    folder = vicuna_copy(golden_dir, tmp_path / "vicuna")
    (folder / "tokenizer.model").write_bytes(b"not a sentencepiece model\n" * 20)
    report = check_llama_tokenizer(folder)
    assert not report.ok
    assert report.problems[0].startswith("tokenizer.model is not a sentencepiece model")
    with pytest.raises(TokenizerError, match="not a sentencepiece model") as error:
        MiniGPT4.from_config(golden_model_config(golden_dir, llama_model=str(folder)))
    assert str(folder) in str(error.value) and "tiktoken" not in str(error.value)


@pytest.mark.parametrize(
    ("edits", "words"),
    [
        ({"vocab_size": 900}, "it has 600 tokens but config.json has vocab_size 900"),
        ({"vocab_size": 599}, "it has 600 tokens but config.json has vocab_size 599"),
        ({"bos_token_id": 5}, "config.json has bos_token_id 5, the tokenizer has <s> = 1"),
        ({"eos_token_id": 0}, "config.json has eos_token_id 0, the tokenizer has </s> = 2"),
        # only the exact v0 pair is the known quirk: a half-shifted pair is refused
        ({"bos_token_id": 0, "eos_token_id": 2}, "config.json has bos_token_id 0"),
    ],
)
def test_config_that_disagrees_with_the_tokenizer_is_refused(golden_dir, tmp_path, edits, words):
    folder = vicuna_copy(golden_dir, tmp_path / "vicuna", **edits)
    with pytest.raises(TokenizerError, match="does not fit the folder") as error:
        require_llama_tokenizer(folder)
    assert words in str(error.value) and str(folder / "tokenizer.model") in str(error.value)


def test_a_few_embedding_rows_beyond_the_tokenizer_are_accepted(golden_dir, tmp_path):
    # Vicuna v0 13B: an embedding of 32001 rows for LLaMA's 32000 tokens.
    report = require_llama_tokenizer(vicuna_copy(golden_dir, tmp_path / "vicuna", vocab_size=601))
    assert report.ok and (report.vocab_size, report.config_vocab_size) == (600, 601)
