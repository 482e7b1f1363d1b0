"""Any causal LM in a local Hugging Face folder: tiny LLaMA-3, Mistral and Qwen2 folders
(``tests/tiny_llms.py``) load through the Auto classes, train both stages through train.py, and
chat; what differs between the families (BOS, pad, tied embeddings, end-of-turn ids, rotary and
sliding-window settings) is read from the folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from tiny_assets import REPO_ROOT, STAGE1_TINY, STAGE2_TINY, quickstart, tiny_path_options
from tiny_llms import FAMILIES, tiny_llm_name, tiny_llm_root
from transformers import LlamaConfig, Qwen2Config, Qwen3Config

import train
from minigpt4.common.config import Config
from minigpt4.common.flops import minigpt4_flop_model
from minigpt4.common.registry import registry
from minigpt4.conversation.conversation import CONV_VISION, Chat, stop_sequences
from minigpt4.models.llm import (
    TokenizerError,
    check_llama_tokenizer,
    llm_size_name,
    load_llama,
    load_llama_tokenizer,
    require_llama_tokenizer,
)
from minigpt4.models.loaders import WeightLoadError
from minigpt4.models.mini_gpt4 import MiniGPT4, explain_checkpoint_shape
from tools import check_weights

TINY_EVAL = REPO_ROOT / "eval_configs" / "minigpt4_tiny_eval.yaml"
# family -> (transformers class, BOS, EOS, pad after loading, generation's EOS ids as tokens)
EXPECTED = {
    "llama3": ("LlamaForCausalLM", "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>", ["<|end_of_text|>", "<|eot_id|>"]),
    "mistral": ("MistralForCausalLM", "<s>", "</s>", "</s>", ["</s>"]),
    "qwen2": ("Qwen2ForCausalLM", None, "<|im_end|>", "<|endoftext|>", ["<|im_end|>", "<|endoftext|>"]),
    "qwen3": ("Qwen3ForCausalLM", None, "<|im_end|>", "<|endoftext|>", ["<|im_end|>", "<|endoftext|>"]),
}


@pytest.fixture(scope="module")
def root() -> Path:
    return tiny_llm_root()


def folder_of(root: Path, family: str) -> Path:
    return root / quickstart.WEIGHTS / tiny_llm_name(family)


def eval_config(root: Path, family: str, *options: str):
    """The tiny eval config (the tiny vision side, stage 2's ``###`` template) on ``family``'s LLM."""
    paths = [*tiny_path_options(root, ()), f"model.llama_model={folder_of(root, family)}"]
    return Config(SimpleNamespace(cfg_path=str(TINY_EVAL), options=[*paths, *options])).model_cfg


@pytest.fixture(scope="module")
def tiny_models(root) -> dict[str, MiniGPT4]:
    return {family: MiniGPT4.from_config(eval_config(root, family)).eval() for family in FAMILIES}


# --- the folder: tokenizer, config, weights ---------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_json_folders_pass_the_check(root, family):
    folder = folder_of(root, family)
    _, bos, eos, pad, _ = EXPECTED[family]
    report = require_llama_tokenizer(folder)
    assert report.file == folder / "tokenizer.json" and not report.sentencepiece
    assert (report.bos_token, report.eos_token) == (bos, eos)
    assert report.bos_token_id is None if bos is None else report.bos_token_id is not None
    assert report.encodings[eos] == [report.eos_token_id]
    tokenizer = load_llama_tokenizer(folder)
    assert (tokenizer.pad_token, tokenizer.padding_side) == (pad, "right")
    assert tokenizer.pad_token_id < report.config_vocab_size  # no token added: the embedding keeps its rows


def test_a_broken_tokenizer_json_folder_is_still_refused(root, tmp_path):
    folder = shutil.copytree(folder_of(root, "qwen2"), tmp_path / "qwen2")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 32000}))
    with pytest.raises(TokenizerError, match=r"it has 1000 tokens but config.json has vocab_size 32000"):
        require_llama_tokenizer(folder)
    (folder / "config.json").write_text(json.dumps({**config, "eos_token_id": 1}))
    with pytest.raises(TokenizerError, match=r"config.json has eos_token_id 1, the tokenizer has <\|im_end\|> = 2"):
        require_llama_tokenizer(folder)
    (folder / "tokenizer.json").unlink()
    assert "there is no tokenizer.model (nor tokenizer.json)" in check_llama_tokenizer(folder).problems[0]


def test_a_llama_or_mistral_tokenizer_without_bos_is_refused(root, tmp_path):
    for family in ("llama3", "mistral"):
        folder = shutil.copytree(folder_of(root, family), tmp_path / family)
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "bos_token": None}))
        report = check_llama_tokenizer(folder)
        assert report.bos_token_id is None
        assert report.problems == [f"it needs distinct <s> and </s> ids, has None and {report.eos_token_id}"]


def test_a_folder_of_another_kind_of_model_is_refused_in_words(root, tmp_path):
    folder = shutil.copytree(folder_of(root, "mistral"), tmp_path / "t5")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(ValueError, match=r"holds a 't5' model .* not a causal LM that transformers builds"):
        load_llama(folder, torch.float32, False, 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_llm_loads_through_the_auto_classes_with_its_settings(root, family):
    folder = folder_of(root, family)
    tokenizer = load_llama_tokenizer(folder)
    llm = load_llama(folder, torch.float32, False, 0, tokenizer)
    saved = json.loads((folder / "config.json").read_text())
    class_name, _, _, _, stops = EXPECTED[family]
    assert type(llm).__name__ == class_name and llm.config.model_type == saved["model_type"]
    assert llm.config._attn_implementation == "sdpa"
    assert llm.config.rope_parameters == saved["rope_parameters"]  # rotary settings untouched
    assert getattr(llm.config, "sliding_window", None) == saved.get("sliding_window")
    assert llm.config.tie_word_embeddings == saved["tie_word_embeddings"]
    tied = llm.get_output_embeddings().weight is llm.get_input_embeddings().weight
    assert tied == saved["tie_word_embeddings"]
    assert llm.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids(stops)
    assert not any(p.requires_grad for p in llm.parameters()) and not llm.training


@pytest.mark.parametrize("family", FAMILIES)
def test_the_8bit_path_keeps_the_output_head_out_of_8_bit(root, family):
    """``low_resource`` quantizes with transformers' defaults, which leave the output head (tied to
    the input embedding or not) in full precision; checked on the loaded model, as bitsandbytes needs
    CUDA."""
    from transformers.quantizers.base import get_keys_to_not_convert

    llm = load_llama(folder_of(root, family), torch.float32, False, 0)
    kept = set(get_keys_to_not_convert(llm))
    assert "lm_head" in kept
    assert ("model.embed_tokens" in kept) == llm.config.tie_word_embeddings


def test_a_missing_weight_is_an_error_also_with_tied_embeddings(root, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(folder_of(root, "qwen2"), tmp_path / "qwen2")
    state = load_file(folder / "model.safetensors")
    assert "lm_head.weight" not in state  # tied: the output head is the input embedding
    del state["model.norm.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightLoadError, match=r"missing: model\.norm.weight"):
        load_llama(folder, torch.float32, False, 0)


# --- the model's inputs ------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_llm_inputs_open_with_bos_only_where_the_tokenizer_has_one(tiny_models, family):
    model = tiny_models[family]
    tokenizer = model.llama_tokenizer
    samples = {"image": torch.randn(2, 3, 56, 56), "text_input": ["a red circle", "a small blue square on gray"]}
    with torch.no_grad():
        inputs = model.prepare_llm_inputs(samples)
        loss = model(samples)["loss"]
    prompt_tokens = [len(ids) for ids in model._prompt_ids(model.prompt_list[0], torch.device("cpu"))]
    # only the prompt drawn last is known by its length; the image is the 8 query tokens
    bos = 0 if tokenizer.bos_token_id is None else 1
    assert inputs.inputs_embeds.shape[1] - inputs.text_input_ids.shape[1] - 8 - bos >= 0
    labels = inputs.labels
    first_target = (labels[0] != -100).nonzero()[0].item()
    assert (labels[:, :first_target] == -100).all() and first_target >= bos + 8 + min(prompt_tokens)
    if bos:
        start = model.embed_tokens(torch.tensor([[tokenizer.bos_token_id]]))
        assert torch.equal(inputs.inputs_embeds[:, :1], start.expand(2, -1, -1))
    assert torch.isfinite(loss) and loss.item() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_stop_sequences_are_read_from_each_vocabulary(tiny_models, family):
    tokenizer = tiny_models[family].llama_tokenizer
    sequences = stop_sequences(tokenizer, "###")
    texts = {tokenizer.decode(list(seq)) for seq in sequences}
    assert sequences and all(text.endswith("###") for text in texts)
    assert tokenizer.convert_tokens_to_ids(".###") in {seq[0] for seq in sequences if len(seq) == 1}


# --- sizes and FLOPs from the config -----------------------------------------------------------


def test_size_names_come_from_the_config():
    llama7 = LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008)
    assert llm_size_name(llama7) == "a 7B LLM"
    llama3 = LlamaConfig(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
    )
    assert llm_size_name(llama3) == "an 8B llama LLM"  # LLaMA-3-8B: LLaMA-7B's width, not its size
    qwen = Qwen2Config(
        hidden_size=896,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4864,
        vocab_size=151936,
        tie_word_embeddings=True,
    )
    assert llm_size_name(qwen) == "a 494M qwen2 LLM"  # Qwen2.5-0.5B, tied embeddings counted once
    words = explain_checkpoint_shape("llama_proj.weight", (5120, 768), (896, 768), llm_config=qwen)
    assert words == "llama_proj was trained for hidden size 5120 (a 13B LLM) but the LLM has 896 (a 494M qwen2 LLM)"


@pytest.mark.parametrize("family", FAMILIES)
def test_flop_model_reads_the_llm_config(tiny_models, family):
    model = tiny_models[family]
    fm = minigpt4_flop_model(model)
    assert fm == model.flop_model()
    llm = model.llama_model
    # the output head multiplies even when it is the input embedding
    head = llm.get_output_embeddings().weight.numel()
    body = sum(m.weight.numel() for m in llm.model.modules() if isinstance(m, torch.nn.Linear))
    assert fm.llm_matmul_params == body + head
    width = 128 if family == "qwen3" else 64  # Qwen3: heads x head_dim, twice the hidden size here
    assert (fm.llm_layers, fm.llm_hidden) == (2, width)
    assert fm.llm_window == (4096 if family == "mistral" else None)
    keys = 4096 if family == "mistral" else 8000
    assert fm.llm_flops(10, 8000) == 10 * (4 * fm.llm_matmul_params + 12 * 2 * keys * width)


def test_attention_width_is_heads_times_head_size():
    """Qwen3-0.6B: hidden 1024, 16 heads of 128: the attention products are 2048 wide."""
    from minigpt4.common.flops import llm_attention_width

    config = Qwen3Config(hidden_size=1024, num_attention_heads=16, num_key_value_heads=8, head_dim=128)
    assert llm_attention_width(config) == 2048
    assert llm_attention_width(LlamaConfig(hidden_size=4096, num_attention_heads=32)) == 4096


# --- the checker ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_check_weights_accepts_each_family(root, family, capsys, monkeypatch):
    monkeypatch.chdir(root)
    options = [*tiny_path_options(root, ()), f"model.llama_model={folder_of(root, family)}"]
    code = check_weights.main(["--cfg-path", str(TINY_EVAL), "--options", *options])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"tokenizer: {folder_of(root, family) / 'tokenizer.json'}" in out
    model_type = json.loads((folder_of(root, family) / "config.json").read_text())["model_type"]
    assert f"LLM: {folder_of(root, family)}: {model_type}, hidden size 64" in out


# --- both stages through train.py, then Chat -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_both_stages_and_chat(root, family, tmp_path, monkeypatch):
    monkeypatch.chdir(root)
    llm = f"model.llama_model={folder_of(root, family)}"
    fast = ["run.device=cpu", "run.num_workers=0", "run.max_epoch=1", "run.iters_per_epoch=2", "run.log_freq=1"]
    fast += ["run.batch_size_train=2", "run.warmup_steps=1", llm]
    stage1 = train.main(["--cfg-path", str(STAGE1_TINY), "--options", *fast, f"run.output_dir={tmp_path / 's1'}"])
    assert type(stage1.model.llama_model).__name__ == EXPECTED[family][0]
    assert len(stage1.history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in stage1.history)
    ckpt1 = stage1.output_dir / "checkpoint_0.pth"

    options = [*fast, f"run.output_dir={tmp_path / 's2'}", f"model.ckpt={ckpt1}"]
    stage2 = train.main(["--cfg-path", str(STAGE2_TINY), "--options", *options])
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in stage2.history)
    ckpt2 = stage2.output_dir / "checkpoint_0.pth"

    cfg = eval_config(root, family, f"model.ckpt={ckpt2}")
    model = registry.get_model_class(cfg.arch).from_config(cfg).eval()
    assert torch.equal(model.llama_proj.weight, stage2.model.llama_proj.weight)
    processor = registry.get_processor_class("blip2_image_eval").from_config({"image_size": 56})
    chat = Chat(model, processor, device="cpu")
    conv, img_list = CONV_VISION.copy(), []
    chat.upload_img(Image.new("RGB", (80, 60), "red"), conv, img_list)
    chat.ask("What is this?", conv)
    pending = conv.copy()
    pending.append_message(pending.roles[1], None)
    tokenizer = chat.tokenizer
    first, rest = pending.get_prompt().split("<ImageHere>")
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    context = chat.get_context_emb(pending, img_list)
    first_ids = bos + tokenizer(first, add_special_tokens=False).input_ids
    assert context.shape[1] == len(first_ids) + 8 + len(tokenizer(rest, add_special_tokens=False).input_ids)
    assert torch.equal(context[0, : len(first_ids)], model.embed_tokens(torch.tensor([first_ids]))[0])
    text, ids = chat.answer(conv, img_list, max_new_tokens=6, do_sample=False, num_beams=1)
    assert isinstance(text, str) and conv.messages[-1][1] == text and 0 < len(ids) <= 6
    streamed = list(chat.stream_answer(conv.copy(), img_list, max_new_tokens=6, do_sample=False))
    answers = chat.answer_batch(
        [Image.new("RGB", (60, 60), "blue"), Image.new("RGB", (90, 40), "green")],
        ["What colour is it?", "Describe it."],
        max_new_tokens=6,
        do_sample=False,
    )
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers) and streamed is not None


# --- the benchmark ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_benchmark_builds_the_llm_of_a_folder(root, family, tmp_path):
    """``test/benchmark.py --llm-config``: the LLM of a family's config (no weights read), its
    tokenizer for the data, and the FLOP model from that config."""
    from test_benchmark import bench

    threads = torch.get_num_threads()
    folder = shutil.copytree(folder_of(root, family), tmp_path / family, ignore=shutil.ignore_patterns("*.safetensors"))
    argv = ["--size", "tiny", "--stage", "2", "--device", "cpu", "--steps", "1", "--warmup", "0", "--batch-size", "2"]
    try:
        r = bench.main([*argv, "--threads", "1", "--llm-config", str(folder)])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((folder / "config.json").read_text())
    assert r["llm_config"] == str(folder) and r["llm"].endswith(f" {family} LLM")
    assert r["flop_model"]["llm_layers"] == saved["num_hidden_layers"]
    assert r["flop_model"]["llm_window"] == saved.get("sliding_window")
    assert r["TokensPerSec"] > 0 and r["loss"] > 0
