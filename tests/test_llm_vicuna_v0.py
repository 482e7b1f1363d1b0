"""A Vicuna v0 folder as converted in 2023 trains and chats with the tokenizer's special ids.

The fixture has exactly the quirks of such folders: ``config.json`` with ``pad_token_id: -1``,
``bos_token_id: 0``, ``eos_token_id: 1`` (the tokenizer has <s>=1, </s>=2), ``max_sequence_length``
instead of ``max_position_embeddings``, ``torch_dtype: float16`` and ``transformers_version:
4.28.0.dev0``, a ``generation_config.json`` with the same ids, and fp16 ``.bin`` shards with
``pytorch_model.bin.index.json``. Its twin has the same shards and a correct config.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
from golden_model import golden_arch, golden_model_config
from tiny_assets import STAGE2_TINY, tiny_root

import train
from minigpt4.common.registry import registry
from minigpt4.conversation.conversation import CONV_VISION, Chat
from minigpt4.models.llm import check_llama_tokenizer
from minigpt4.models.mini_gpt4 import MiniGPT4

V0_WARNING = "2023 Vicuna v0 conversions"
QUESTION = "What is in this image?"


def fp16_copy(golden_dir: Path, target: Path) -> Path:
    """The golden Vicuna folder with its .bin shards re-saved in fp16, as v0 folders ship them."""
    shutil.copytree(golden_dir / "vicuna_tiny", target)
    index_path = target / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    total = 0
    for shard in sorted(set(index["weight_map"].values())):
        state = torch.load(target / shard, weights_only=True)
        state = {key: value.half() if value.is_floating_point() else value for key, value in state.items()}
        total += sum(value.numel() * value.element_size() for value in state.values())
        torch.save(state, target / shard)
    index["metadata"]["total_size"] = total
    index_path.write_text(json.dumps(index, indent=2))
    return target


@pytest.fixture(scope="module")
def folders(golden_dir: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(the v0-quirk folder, its twin with a correct config)."""
    root = tmp_path_factory.mktemp("vicuna_v0")
    twin = fp16_copy(golden_dir, root / "twin")
    v0 = root / "v0"
    shutil.copytree(twin, v0)
    config = json.loads((v0 / "config.json").read_text())
    config.update(pad_token_id=-1, bos_token_id=0, eos_token_id=1, torch_dtype="float16")
    config["max_sequence_length"] = config.pop("max_position_embeddings")
    config["transformers_version"] = "4.28.0.dev0"
    (v0 / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"_from_model_config": True, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": -1}
    (v0 / "generation_config.json").write_text(json.dumps({**generation, "transformers_version": "4.28.0.dev0"}))
    return v0, twin


def v0_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and V0_WARNING in r.getMessage()]


def special_id_warnings(caplog) -> list[str]:
    """Every warning about special ids, the project's and transformers' (which would otherwise
    complain about pad_token_id -1 on top of the one warning)."""
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "_token_id" in r.getMessage()]


def test_the_v0_quirks_are_corrections_not_problems(folders):
    v0, _ = folders
    report = check_llama_tokenizer(v0)
    assert report.ok, report.problems
    assert report.config_ids == {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": -1}
    assert report.corrections == [
        "config.json pad_token_id -1 -> 2 (</s>)",
        "config.json bos_token_id/eos_token_id 0/1 -> 1/2",
        "generation_config.json pad_token_id -1 -> 2 (</s>)",
        "generation_config.json bos_token_id/eos_token_id 0/1 -> 1/2",
    ]


def train_one_step(folder: Path, tmp_path: Path, monkeypatch) -> tuple[float, object]:
    monkeypatch.chdir(tiny_root())
    options = ["run.device=cpu", f"model.llama_model={folder}", f"run.output_dir={tmp_path / folder.name}"]
    options += ["run.num_workers=0", "run.max_epoch=1", "run.iters_per_epoch=1", "run.log_freq=1"]
    runner = train.main(["--cfg-path", str(STAGE2_TINY), "--options", *options])
    (record,) = runner.history
    llama = runner.model.llama_model
    assert (llama.config.bos_token_id, llama.config.eos_token_id) == (1, 2)
    assert llama.config.max_position_embeddings == 512  # max_sequence_length, not transformers' 2048
    assert llama.dtype == torch.float32  # the run's precision, not config.json's torch_dtype
    return record["loss"], llama


@pytest.mark.slow
def test_the_v0_folder_trains_like_its_twin_with_one_warning(folders, tmp_path, monkeypatch, caplog):
    v0, twin = folders
    caplog.set_level(logging.WARNING)
    v0_loss, llama = train_one_step(v0, tmp_path, monkeypatch)
    assert llama.config.pad_token_id == 2  # config.json's -1 is no id: the tokenizer's pad (</s>)
    assert len(v0_warnings(caplog)) == 1, v0_warnings(caplog)
    (warning,) = special_id_warnings(caplog)
    assert str(v0) in warning and "bos_token_id/eos_token_id 0/1 -> 1/2" in warning
    caplog.clear()
    twin_loss, llama = train_one_step(twin, tmp_path, monkeypatch)
    assert llama.config.pad_token_id == 0  # a pad id in the vocabulary is kept
    assert not v0_warnings(caplog)
    assert math.isfinite(v0_loss) and v0_loss == twin_loss


@pytest.mark.slow
def test_chat_on_the_v0_folder_stops_on_the_tokenizers_eos(folders, golden_dir, caplog):
    v0, _ = folders
    caplog.set_level(logging.WARNING)
    model = MiniGPT4.from_config(golden_model_config(golden_dir, llama_model=str(v0))).eval()
    assert len(special_id_warnings(caplog)) == 1 and len(v0_warnings(caplog)) == 1, special_id_warnings(caplog)
    llama = model.llama_model
    generation = llama.generation_config
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (1, 2, 2)
    processor = registry.get_processor_class("blip2_image_eval").from_config(
        {"image_size": golden_arch(golden_dir)["image_size"]}
    )
    chat = Chat(model, processor, device="cpu")

    def conversation():
        conv, img_list = CONV_VISION.copy(), []
        chat.upload_img(str(golden_dir / "astronaut.jpg"), conv, img_list)
        chat.ask(QUESTION, conv)
        return conv, img_list

    conv, img_list = conversation()
    conv.append_message(conv.roles[1], None)
    with torch.no_grad():
        first = int(llama(inputs_embeds=chat.get_context_emb(conv, img_list)).logits[0, -1].argmax())
        # Make </s> the greedy first token: the answer must end there, on id 2, not run on to
        # max_new_tokens as with config.json's eos_token_id 1.
        weight = llama.lm_head.weight
        weight[[first, 2]] = weight[[2, first]].clone()
    conv, img_list = conversation()
    text, ids = chat.answer(conv, img_list, max_new_tokens=8, do_sample=False)
    assert ids.tolist() == [2] and text == ""
