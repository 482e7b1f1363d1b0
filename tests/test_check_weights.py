"""tools/check_weights.py on the tiny assets and on broken copies of them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_blip2_transformers import golden_vision_state, tiny_blip2_config, to_transformers
from tiny_assets import tiny_path_options, tiny_root
from transformers import Blip2ForConditionalGeneration, LlamaForCausalLM

from tools.check_weights import DELTA_NONPOSITIVE, main
from tools.export_checkpoint import main as export_main

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOL = REPO_ROOT / "tools" / "check_weights.py"
TINY_EVAL = "eval_configs/minigpt4_tiny_eval.yaml"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def weights() -> Path:
    return tiny_root() / "assets" / "tiny" / "weights"


def check(weights: Path, capsys, *options: str) -> tuple[int, str]:
    """The checker through main(argv) on the tiny eval config, with ``options`` after the tiny
    paths; returns its exit status and its output."""
    status = main(["--cfg-path", TINY_EVAL, "--options", *tiny_path_options(weights.parents[2], ()), *options])
    return status, capsys.readouterr().out


def failures(output: str) -> list[str]:
    return [line.removeprefix("FAIL ") for line in output.splitlines() if line.startswith("FAIL ")]


@pytest.mark.slow
def test_the_tiny_assets_pass_and_every_file_is_in_the_table(weights: Path):
    # the real entry point, as a user runs it
    result = subprocess.run(
        [sys.executable, str(TOOL), "--cfg-path", TINY_EVAL, "--options", *tiny_path_options(weights.parents[2], ())],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    rows = {line.split()[0] + " " + line.split()[1] for line in out.splitlines() if line.startswith("model.")}
    assert rows == {
        f"model.vit_weights {weights / 'eva_vit_tiny.pth'}",
        f"model.q_former_model {weights / 'blip2_tiny.pth'}",
        f"model.llama_model {weights / 'vicuna_tiny'}",
        f"model.llama_model {weights / 'vicuna_tiny' / 'tokenizer.model'}",
    }
    assert "safetensors, 4 file(s)" in out and "pth (flat)" in out
    assert "hidden size 64 (a 210K llama LLM), 2 layers" in out
    assert "'###' -> [" in out and "'</s>' -> [2]" in out and "<s> = 1, </s> = 2" in out
    assert "delta check: a model, not a delta (0.0% of its 320 RMSNorm weights are <= 0)" in out
    assert "ignored, blocks beyond the model's depth 2: 13 keys" in out
    assert out.rstrip().endswith("OK: a run with this config would load these weights")


def test_bin_shards_and_a_fitting_projection(golden_dir: Path, weights: Path, capsys, tmp_path: Path):
    """The golden Vicuna folder: .bin shards with an index and the 2023 inv_freq buffers; its
    MiniGPT-4 projection file and an export of the runner checkpoint."""
    assert export_main([str(golden_dir / "checkpoint_0.pth"), str(tmp_path / "export")]) == 0
    for ckpt in (golden_dir / "minigpt4_tiny.pth", tmp_path / "export"):
        status, out = check(weights, capsys, f"model.llama_model={golden_dir / 'vicuna_tiny'}", f"model.ckpt={ckpt}")
        assert status == 0, out
        assert "bin, 2 file(s)" in out
        assert "projection: llama_proj [64, 64] fits the LLM's hidden size 64" in out
    assert "was trained for an LLM of hidden size 64 (an LLM of width 64, vicuna_tiny)" in out
    [llm_row] = [
        line.split()
        for line in out.splitlines()
        if line.split()[:2] == ["model.llama_model", str(golden_dir / "vicuna_tiny")]
    ]
    assert llm_row[-4:] == ["21", "2", "0", "ok"]  # used, ignored (inv_freq), refused


def test_a_missing_shard(weights: Path, capsys, tmp_path: Path):
    folder = shutil.copytree(weights / "vicuna_tiny", tmp_path / "vicuna")
    (folder / "model-00002-of-00004.safetensors").unlink()
    status, out = check(weights, capsys, f"model.llama_model={folder}")
    assert status == 1
    assert failures(out) == [
        f"{folder / 'model-00002-of-00004.safetensors'} is missing: model.safetensors.index.json names it"
    ]


def test_a_truncated_pth(weights: Path, capsys, tmp_path: Path):
    data = (weights / "eva_vit_tiny.pth").read_bytes()
    (tmp_path / "eva.pth").write_bytes(data[: len(data) // 2])
    status, out = check(weights, capsys, f"model.vit_weights={tmp_path / 'eva.pth'}")
    assert status == 1
    [reason] = failures(out)
    assert reason.startswith(f"{tmp_path / 'eva.pth'} cannot be read as a torch checkpoint; it is probably truncated")


def test_a_projection_for_another_width(weights: Path, capsys, tmp_path: Path):
    wide = {"llama_proj.weight": torch.zeros(5120, 64), "llama_proj.bias": torch.zeros(5120)}
    torch.save({"model": wide, "config": {"model": {"llama_model": "/w/vicuna-13b"}}}, tmp_path / "13b.pth")
    status, out = check(weights, capsys, f"model.ckpt={tmp_path / '13b.pth'}")
    assert status == 1
    assert "llama_proj was trained for hidden size 5120 (a 13B LLM) but the LLM has 64" in failures(out)[0]
    # the export says it from its metadata
    assert export_main([str(tmp_path / "13b.pth"), str(tmp_path / "export")]) == 0
    status, out = check(weights, capsys, f"model.ckpt={tmp_path / 'export'}")
    assert status == 1
    assert failures(out) == [
        f"{tmp_path / 'export' / 'model.safetensors'} was trained for an LLM of hidden size 5120 (a 13B LLM, "
        f"vicuna-13b), a Q-Former of width 64; model.llama_model '{weights / 'vicuna_tiny'}' has hidden size 64 "
        "(a 210K llama LLM)"
    ]


def finetuned(base: LlamaForCausalLM, steps: int = 3) -> LlamaForCausalLM:
    """``base`` after a few AdamW steps of language modelling on random tokens, as a finetune."""
    model = LlamaForCausalLM(base.config)
    model.load_state_dict(base.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = torch.randint(3, base.config.vocab_size, (2, 16), generator=generator)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


def test_a_vicuna_delta_is_caught_and_the_merged_model_is_not(weights: Path, capsys, tmp_path: Path):
    base = LlamaForCausalLM.from_pretrained(weights / "vicuna_tiny", local_files_only=True)
    tuned = finetuned(base)
    delta = LlamaForCausalLM(base.config)
    delta.load_state_dict({key: value - base.state_dict()[key] for key, value in tuned.state_dict().items()})
    for name, model in (("merged", tuned), ("delta", delta)):
        model.save_pretrained(tmp_path / name)
        for file in TOKENIZER_FILES:
            shutil.copy(weights / "vicuna_tiny" / file, tmp_path / name)
    status, out = check(weights, capsys, f"model.llama_model={tmp_path / 'merged'}")
    assert status == 0, out
    status, out = check(weights, capsys, f"model.llama_model={tmp_path / 'delta'}")
    assert status == 1
    [reason] = failures(out)
    assert reason.startswith(f"{tmp_path / 'delta'} looks like a Vicuna delta, not a model: ")
    fraction = float(reason.split("not a model: ")[1].split("%")[0]) / 100
    assert fraction > DELTA_NONPOSITIVE
    assert reason.endswith("apply it to the LLaMA weights first (FastChat's apply_delta)")


def test_a_bad_tokenizer(weights: Path, capsys, tmp_path: Path):
    folder = shutil.copytree(weights / "vicuna_tiny", tmp_path / "vicuna")
    (folder / "tokenizer.model").unlink()
    status, out = check(weights, capsys, f"model.llama_model={folder}")
    assert status == 1
    [reason] = failures(out)
    assert reason.startswith(f"the LLM tokenizer {folder / 'tokenizer.model'} does not fit the folder {folder}")
    assert "there is no tokenizer.model" in reason


def test_placeholders_name_the_yaml_they_come_from(capsys):
    assert main(["--cfg-path", "eval_configs/minigpt4_eval.yaml"]) == 1
    reasons = failures(capsys.readouterr().out)
    assert reasons[0].startswith("model.llama_model: '/path/to/vicuna/weights/' is not a Vicuna/LLaMA folder")
    assert reasons[0].endswith("(set in minigpt4/configs/models/minigpt4.yaml)")
    assert (
        reasons[1] == "model.ckpt: '/path/to/pretrained/ckpt/' does not exist (set in eval_configs/minigpt4_eval.yaml)"
    )


def test_help_and_an_unreadable_config(tmp_path: Path, capsys):
    result = subprocess.run([sys.executable, str(TOOL), "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "--cfg-path" in result.stdout
    assert main(["--cfg-path", str(tmp_path / "none.yaml")]) == 2
    assert capsys.readouterr().err == f"check_weights: config file {tmp_path / 'none.yaml'} not found\n"


def test_a_train_config_and_a_legacy_format_pth(weights: Path, capsys, tmp_path: Path):
    """Stage 1 names no ckpt; a ViT file in torch's pre-zip format cannot be memory-mapped and is
    read whole."""
    torch.save(torch.load(weights / "eva_vit_tiny.pth"), tmp_path / "eva.pth", _use_new_zipfile_serialization=False)
    options = [*tiny_path_options(weights.parents[2], ()), f"model.vit_weights={tmp_path / 'eva.pth'}"]
    assert main(["--cfg-path", "train_configs/minigpt4_stage1_tiny.yaml", "--options", *options]) == 0
    out = capsys.readouterr().out
    assert "projection: model.ckpt is not set (llama_proj starts untrained)" in out
    [vit_row] = [line.split() for line in out.splitlines() if line.startswith("model.vit_weights")]
    assert vit_row[-4:] == ["30", "13", "0", "ok"]


def test_a_transformers_blip2_folder(golden_dir: Path, weights: Path, capsys, tmp_path: Path):
    hf = Blip2ForConditionalGeneration(tiny_blip2_config(golden_dir))
    hf.load_state_dict(to_transformers(golden_vision_state(golden_dir)), strict=False)
    hf.save_pretrained(tmp_path / "blip2", safe_serialization=True)
    status, out = check(weights, capsys, f"model.q_former_model={tmp_path / 'blip2'}", "model.vit_weights=''")
    assert status == 0, out
    [row] = [line.split() for line in out.splitlines() if line.startswith("model.q_former_model")]
    assert row[1:5] == [str(tmp_path / "blip2"), "transformers", "Blip2,", "1"] and row[-1] == "ok"
    assert not any(line.startswith("model.vit_weights") for line in out.splitlines())
    # the vision tower comes from the folder, so another vit_weights is refused as the loader does
    status, out = check(weights, capsys, f"model.q_former_model={tmp_path / 'blip2'}")
    assert status == 1
    assert failures(out)[0].startswith("model.vit_weights is ") and "holds the vision tower too" in failures(out)[0]
