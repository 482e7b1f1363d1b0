"""Upstream's later MiniGPT-4: the ``minigpt4`` name, its model types, ``has_qformer: False`` (the
LLaMA-2 variant), its configs, checkpoints, pad token, image transform and chat template, on a
tiny LLaMA-2-style folder; the reference's configs keep the reference's behaviour."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from tiny_assets import (
    EVAL_LLAMA2_TINY,
    LLAMA2_TINY,
    REPO_ROOT,
    STAGE1_LLAMA2_TINY,
    STAGE2_LLAMA2_TINY,
    quickstart,
    tiny_llama2_root,
)
from transformers import LlamaConfig

import train
from minigpt4.common.checkpoint import load_checkpoint
from minigpt4.common.config import Config
from minigpt4.common.registry import registry
from minigpt4.conversation.conversation import Chat, CONV_VISION_LLama2
from minigpt4.models.llm import load_llama_tokenizer
from minigpt4.models.loaders import WeightLoadError
from minigpt4.models.mini_gpt4 import MiniGPT4, merge_patch_tokens
from tests.golden_model import build_golden_model
from tools import check_weights
from tools.export_checkpoint import main as export_main

# LLaMA-2-7B (meta-llama/Llama-2-7b-chat-hf's config.json, the sizes that matter here).
LLAMA2_7B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "intermediate_size": 11008,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
}
TINY_VIT = {"patch_size": 14, "embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 4.3637}


def load(path: Path | str, *options: str) -> Config:
    return Config(SimpleNamespace(cfg_path=str(REPO_ROOT / path), options=list(options) or None))


@pytest.fixture(scope="module")
def root() -> Path:
    return tiny_llama2_root()


@pytest.fixture
def in_root(root, monkeypatch) -> Path:
    monkeypatch.chdir(root)
    return root


def tiny_cfg(root: Path, **overrides):
    weights = root / quickstart.WEIGHTS
    cfg = {
        "arch": "minigpt4",
        "model_type": "pretrain_llama2",
        "has_qformer": False,
        "pad_token": "$$",
        "vit_weights": str(weights / "eva_vit_tiny.pth"),
        "q_former_model": str(root / "no-such-blip2.pth"),  # never read without a Q-Former
        "llama_model": str(weights / LLAMA2_TINY),
        "image_size": 56,
        "vit_arch": TINY_VIT,
        "vit_precision": "fp32",
        "llm_precision": "fp32",
        "end_sym": "</s>",
    }
    return {**cfg, **overrides}


@pytest.fixture(scope="module")
def tiny_model(root) -> MiniGPT4:
    return MiniGPT4.from_config(tiny_cfg(root)).eval()


# --- names, model types, YAMLs ---------------------------------------------------------------


def test_minigpt4_is_the_same_class_with_upstreams_model_types():
    assert registry.get_model_class("minigpt4") is registry.get_model_class("mini_gpt4") is MiniGPT4
    for model_type in ("pretrain_vicuna", "pretrain_vicuna0", "pretrain_llama2"):
        assert Path(MiniGPT4.default_config_path(model_type)).is_file()


def test_upstream_llama2_configs_have_upstreams_values():
    stage1 = load("train_configs/minigpt4_llama2_stage1_pretrain.yaml")
    model = stage1.model_cfg
    assert (model.arch, model.model_type, model.has_qformer, model.pad_token) == (
        "minigpt4",
        "pretrain_llama2",
        False,
        "$$",
    )
    assert (model.image_size, model.max_txt_len, model.end_sym, model.freeze_vit) == (224, 32, "\n", True)
    assert (stage1.datasets_cfg.laion.sample_ratio, stage1.datasets_cfg.cc_sbu.sample_ratio) == (115, 14)
    assert stage1.datasets_cfg.laion.vis_processor.train.transform == "resize"
    run = stage1.run_cfg
    assert (run.init_lr, run.min_lr, run.warmup_lr, run.max_epoch, run.iters_per_epoch) == (1e-4, 8e-5, 1e-6, 4, 5000)
    assert (run.warmup_steps, run.batch_size_train) == (5000, 64)

    stage2 = load("train_configs/minigpt4_llama2_stage2_finetune.yaml")
    model = stage2.model_cfg
    assert (model.max_txt_len, model.end_sym, model.prompt_path) == (160, "</s>", "prompts/alignment.txt")
    assert model.prompt_template == "[INST] {} [/INST] "
    assert stage2.datasets_cfg.cc_sbu_align.vis_processor.train.transform == "resize"
    run = stage2.run_cfg
    assert (run.init_lr, run.min_lr, run.warmup_lr, run.max_epoch, run.iters_per_epoch) == (3e-5, 1e-5, 1e-6, 5, 200)
    assert run.batch_size_train == 12

    evaluation = load("eval_configs/minigpt4_llama2_eval.yaml").model_cfg
    assert (evaluation.has_qformer, evaluation.end_sym, evaluation.low_resource) == (False, "</s>", True)
    assert (evaluation.prompt_template, evaluation.max_txt_len) == ("[INST] {} [/INST] ", 160)


def test_vicuna0_is_the_reference_model_under_upstreams_later_behaviour():
    cfg = load(
        "train_configs/minigpt4_stage2_finetune.yaml", "model.arch=minigpt4", "model.model_type=pretrain_vicuna0"
    )
    assert (cfg.model_cfg.has_qformer, cfg.model_cfg.num_query_token, cfg.model_cfg.pad_token) == (True, 32, "$$")


def test_the_reference_configs_keep_the_reference_behaviour():
    for path in ("train_configs/minigpt4_stage1_pretrain.yaml", "train_configs/minigpt4_stage2_finetune.yaml"):
        cfg = load(path)
        assert (cfg.model_cfg.has_qformer, cfg.model_cfg.pad_token) == (True, "")
        for dataset in cfg.datasets_cfg.values():
            assert dataset.vis_processor.train.transform is None  # the processor's random crop


def test_train_transform_key():
    train_cls = registry.get_processor_class("blip2_image_train")
    eval_processor = registry.get_processor_class("blip2_image_eval").from_config({"image_size": 56})
    image = Image.fromarray(torch.randint(0, 255, (90, 70, 3), dtype=torch.uint8).numpy())
    resize = train_cls.from_config({"image_size": 56, "transform": "resize"})
    assert torch.equal(resize(image), eval_processor(image))
    crop = train_cls.from_config({"image_size": 56})
    torch.manual_seed(0)
    assert not torch.equal(crop(image), eval_processor(image))
    with pytest.raises(ValueError, match="transform 'center' is not one of random_resized_crop, resize"):
        train_cls.from_config({"transform": "center"})


# --- has_qformer: False ----------------------------------------------------------------------


def test_merge_takes_four_horizontally_adjacent_patches_of_a_row():
    """A 1 x 17 x 3 ViT output (class token, then a 4 x 4 grid) whose values encode their place."""
    grid, width = 4, 3
    embeds = torch.full((1, 1 + grid * grid, width), -1.0)  # the class token: -1 everywhere
    for row in range(grid):
        for col in range(grid):
            for channel in range(width):
                embeds[0, 1 + row * grid + col, channel] = 100 * row + 10 * col + channel
    merged = merge_patch_tokens(embeds)
    assert merged.shape == (1, 4, 12)
    # token k = row k, columns 0..3, each patch's channels in a block of its own
    for k in range(4):
        expected = [100 * k + 10 * col + channel for col in range(4) for channel in range(width)]
        assert merged[0, k].tolist() == expected
    assert (merged != -1).all()


def test_tiny_model_without_qformer_has_the_specs_shapes(tiny_model):
    model = tiny_model
    assert model.Qformer is None and model.query_tokens is None and model.num_image_tokens == 4
    assert tuple(model.llama_proj.weight.shape) == (64, 4 * 64)
    assert not any(key.startswith(("Qformer.", "query_tokens")) for key in model.state_dict())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"llama_proj.weight", "llama_proj.bias"}
    # ln_vision keeps its initial values: only the BLIP-2 file held trained ones
    assert torch.equal(model.ln_vision.weight, torch.ones(64)) and torch.equal(model.ln_vision.bias, torch.zeros(64))

    seen = {}
    model.ln_vision.register_forward_hook(lambda _m, _i, out: seen.update(vit=out))
    model.llama_proj.register_forward_pre_hook(lambda _m, args: seen.update(proj_in=args[0]))
    images = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        embeds, atts = model.encode_img(images)
    assert embeds.shape == (2, 4, 64) and atts.shape == (2, 4) and atts.dtype == torch.long
    vit, proj_in = seen["vit"], seen["proj_in"]
    assert vit.shape == (2, 17, 64) and proj_in.shape == (2, 4, 256)
    for k in range(4):
        for j in range(4):
            patch = 4 * k + j
            row, col = divmod(patch, 4)
            assert torch.equal(proj_in[:, k, 64 * j : 64 * (j + 1)], vit[:, 1 + row * 4 + col])


def test_full_size_llama2_variant_shapes(root):
    tok = load_llama_tokenizer(root / quickstart.WEIGHTS / LLAMA2_TINY)
    with torch.device("meta"):
        model = MiniGPT4.build({"has_qformer": False}, LlamaConfig(**LLAMA2_7B), tok)
        vit = model.visual_encoder.forward_features(torch.empty(2, 3, 224, 224))
        embeds = model.llama_proj(merge_patch_tokens(vit))
    assert vit.shape == (2, 257, 1408) and merge_patch_tokens(vit).shape == (2, 64, 5632)
    assert model.num_image_tokens == 64 and embeds.shape == (2, 64, 4096)
    assert tuple(model.llama_proj.weight.shape) == (4096, 5632)
    assert sum(p.numel() for p in model.llama_proj.parameters()) == 23_072_768
    flops = model.flop_model()
    assert (flops.num_query_token, flops.qformer_matmul_params, flops.qformer_cross_kv_params) == (64, 0, 0)
    assert flops.projection_params == 5632 * 4096
    assert flops.vit_tokens == 257


def test_image_size_whose_grid_cannot_be_cut_into_strips_is_refused(root):
    with pytest.raises(ValueError, match="image_size 42 with patch_size 14 gives a 3 x 3 patch grid"):
        MiniGPT4.from_config(tiny_cfg(root, image_size=42))


# --- pad token -------------------------------------------------------------------------------


def test_pad_dollars_trains_the_end_of_sequence(root, tiny_model):
    samples = {"image": torch.randn(2, 3, 56, 56), "text_input": ["a cat", "a dog on a red mat"]}
    eos = tiny_model.llama_tokenizer.eos_token_id
    assert tiny_model.llama_tokenizer.pad_token == "$$" and tiny_model.llama_tokenizer.pad_token_id != eos
    with torch.no_grad():
        inputs = tiny_model.prepare_llm_inputs(samples)
    assert ((inputs.labels == eos).sum(dim=1) == 1).all()  # each row's </s> end_sym is a target
    reference = MiniGPT4.from_config(tiny_cfg(root, pad_token=""))
    with torch.no_grad():
        inputs = reference.prepare_llm_inputs(samples)
    assert not (inputs.labels == eos).any()  # pad = eos masks it, as the reference
    with pytest.raises(ValueError, match=r"model.pad_token '§§' is not a token of the LLM's vocabulary"):
        MiniGPT4.from_config(tiny_cfg(root, pad_token="§§"))


# --- checkpoints -----------------------------------------------------------------------------


def upstream_checkpoint(path: Path, width: int, hidden: int = 64) -> dict[str, torch.Tensor]:
    """The released LLaMA-2 file's layout: the projection and the LLM's rotary buffers, as its
    runner saved them (requires_grad parameters plus buffers)."""
    state = {"llama_proj.weight": torch.randn(hidden, width), "llama_proj.bias": torch.randn(hidden)}
    for layer in range(2):
        state[f"llama_model.model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = torch.rand(8)
    torch.save({"model": state, "optimizer": {}, "epoch": 4}, path)
    return state


def test_upstream_llama2_checkpoint_loads(root, tmp_path):
    state = upstream_checkpoint(tmp_path / "pretrained_minigpt4_llama2_7b.pth", 256)
    model = MiniGPT4.from_config(tiny_cfg(root, ckpt=str(tmp_path / "pretrained_minigpt4_llama2_7b.pth")))
    assert torch.equal(model.llama_proj.weight, state["llama_proj.weight"])
    assert torch.equal(model.llama_proj.bias, state["llama_proj.bias"])


def test_projection_of_the_other_variant_is_explained(root, golden_dir, tmp_path):
    upstream_checkpoint(tmp_path / "qformer.pth", 64)
    with pytest.raises(
        WeightLoadError, match="llama_proj was trained on a Q-Former of width 64 but this model has no Q-Former"
    ):
        MiniGPT4.from_config(tiny_cfg(root, ckpt=str(tmp_path / "qformer.pth")))
    upstream_checkpoint(tmp_path / "llama2.pth", 256)
    with pytest.raises(
        WeightLoadError,
        match=r"llama_proj was trained without a Q-Former \(input width 256 = 4 x 64, model.has_qformer: False\) "
        r"but this model has a Q-Former of width 64",
    ):
        build_golden_model(golden_dir, ckpt=str(tmp_path / "llama2.pth"))


def test_check_weights_on_the_tiny_llama2_eval_config(in_root, tmp_path, capsys):
    upstream_checkpoint(tmp_path / "llama2.pth", 256)
    code = check_weights.main(
        ["--cfg-path", str(EVAL_LLAMA2_TINY), "--options", f"model.ckpt={tmp_path / 'llama2.pth'}"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "q_former_model" not in out
    assert "projection: llama_proj [64, 256] fits the LLM's hidden size 64" in out
    upstream_checkpoint(tmp_path / "qformer.pth", 64)
    code = check_weights.main(
        ["--cfg-path", str(EVAL_LLAMA2_TINY), "--options", f"model.ckpt={tmp_path / 'qformer.pth'}"]
    )
    out = capsys.readouterr().out
    assert code == 1 and "trained on a Q-Former of width 64 but this model has no Q-Former" in out


# --- both stages through train.py, then chat ---------------------------------------------------


@pytest.mark.slow
def test_both_stages_and_chat_with_the_inst_template(in_root, tmp_path):
    fast = ["run.device=cpu", "run.num_workers=0", "run.max_epoch=1", "run.iters_per_epoch=3", "run.log_freq=1"]
    fast += ["run.batch_size_train=2", "run.warmup_steps=1"]
    stage1 = train.main(
        ["--cfg-path", str(STAGE1_LLAMA2_TINY), "--options", *fast, f"run.output_dir={tmp_path / 's1'}"]
    )
    assert stage1.model.Qformer is None and len(stage1.history) == 3
    ckpt1 = stage1.output_dir / "checkpoint_0.pth"
    assert sorted(load_checkpoint(ckpt1)["model"]) == ["llama_proj.bias", "llama_proj.weight"]

    options = [*fast, f"run.output_dir={tmp_path / 's2'}", f"model.ckpt={ckpt1}"]
    stage2 = train.main(["--cfg-path", str(STAGE2_LLAMA2_TINY), "--options", *options])
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in stage2.history)
    assert all(prompt.startswith("[INST] <Img><ImageHere></Img> ") for prompt in stage2.model.prompt_list)
    assert all(prompt.endswith(" [/INST] ") for prompt in stage2.model.prompt_list)
    ckpt2 = stage2.output_dir / "checkpoint_0.pth"

    cfg = load(EVAL_LLAMA2_TINY, f"model.ckpt={ckpt2}")
    model = registry.get_model_class(cfg.model_cfg.arch).from_config(cfg.model_cfg).eval()
    processor = registry.get_processor_class("blip2_image_eval").from_config({"image_size": 56})
    chat = Chat(model, processor, device="cpu")
    conv, img_list = CONV_VISION_LLama2.copy(), []
    chat.upload_img(Image.new("RGB", (80, 60), "red"), conv, img_list)
    chat.ask("What is this?", conv)
    pending = conv.copy()
    pending.append_message(pending.roles[1], None)
    prompt = pending.get_prompt()
    assert prompt == CONV_VISION_LLama2.system + "<s>[INST] <Img><ImageHere></Img> What is this? [/INST] "
    # upstream's context: BOS, the system sentence, then the template's own <s> (a second BOS)
    tokenizer = chat.tokenizer
    first = tokenizer(prompt.split("<ImageHere>")[0], add_special_tokens=False).input_ids
    assert first.count(tokenizer.bos_token_id) == 1 and first[0] != tokenizer.bos_token_id
    context = chat.get_context_emb(pending, img_list)
    assert context.shape[1] == 1 + len(first) + 4 + len(
        tokenizer("</Img> What is this? [/INST] ", add_special_tokens=False).input_ids
    )
    assert chat.stop_criterion(conv).by_length[1].tolist() == [[tokenizer.eos_token_id]]
    # the README's training-prompt variant: one BOS, then exactly the stage-2 training prompt
    plain = dataclasses.replace(CONV_VISION_LLama2, system="", roles=("[INST] ", " [/INST] ")).copy()
    plain.append_message(plain.roles[0], "<Img><ImageHere></Img> What is this?")
    plain.append_message(plain.roles[1], None)
    assert (
        plain.get_prompt()
        == stage2.model.prompt_list[0].split("<ImageHere>")[0] + "<ImageHere></Img> What is this? [/INST] "
    )

    text, tokens = chat.answer(conv, img_list, max_new_tokens=6, do_sample=False)
    assert isinstance(text, str) and "[/INST]" not in text and conv.messages[-1] == [conv.roles[1], text]
    assert len(tokens) <= 6


def test_export_of_a_run_without_qformer_says_so(root, golden_dir, tmp_path):
    state = {"llama_proj.weight": torch.randn(64, 256), "llama_proj.bias": torch.zeros(64)}
    run_cfg = {"has_qformer": False, "llama_model": "/weights/llama2_tiny", "end_sym": "</s>"}
    torch.save({"model": state, "config": {"model": run_cfg}, "epoch": 0}, tmp_path / "run.pth")
    assert export_main([str(tmp_path / "run.pth"), str(tmp_path / "export")]) == 0
    model = MiniGPT4.from_config(tiny_cfg(root, ckpt=str(tmp_path / "export")))
    assert torch.equal(model.llama_proj.weight, state["llama_proj.weight"])
    with pytest.raises(
        WeightLoadError,
        match=r"was trained for an LLM of hidden size 64 \(an LLM of width 64, llama2_tiny\), no Q-Former "
        r"\(input width 256 = 4 x 64, model.has_qformer: False\); qformer_arch.hidden_size is 64",
    ):
        build_golden_model(golden_dir, ckpt=str(tmp_path / "export"))
