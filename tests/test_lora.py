"""LoRA adapters on the LLM (``model.lora_r``): a stage-2 run through train.py on the tiny default
trains ``llama_proj`` and the adapters only, saves them and resumes exactly; ``model.ckpt`` with
adapters loads for chat; ``tools/export_checkpoint.py --merge-llm`` writes a full LLM folder that
gives the LoRA model's logits with ``lora_r: 0``; bad settings fail in one line."""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from golden_model import build_golden_model
from omegaconf import OmegaConf
from PIL import Image
from safetensors import safe_open
from tiny_assets import REPO_ROOT, STAGE2_TINY, tiny_path_options, tiny_root
from transformers import LlamaConfig

import train
from minigpt4.common.checkpoint import (
    CheckpointMismatchError,
    load_checkpoint,
    load_trainable_state_dict,
    trainable_state_dict,
)
from minigpt4.common.config import Config
from minigpt4.common.registry import registry
from minigpt4.common.schema import RunConfig
from minigpt4.conversation.conversation import CONV_VISION, Chat
from minigpt4.models.checkpoint_files import METADATA_NAME, SAFETENSORS_NAME
from minigpt4.models.llm import load_llama_tokenizer
from minigpt4.models.loaders import WeightLoadError
from minigpt4.models.lora import LoraError, checkpoint_name, is_adapter_key, lora_layers
from minigpt4.models.mini_gpt4 import MiniGPT4
from minigpt4.runners.memory import prepare_model
from minigpt4.runners.runner_base import wrap_ddp
from minigpt4.runners.train_step import build_optimizer
from tools.check_weights import main as check_weights
from tools.export_checkpoint import main as export_main

EVAL_TINY = REPO_ROOT / "eval_configs" / "minigpt4_tiny_eval.yaml"
LORA = ["model.lora_r=4", "model.lora_alpha=8", "model.lora_dropout=0.1"]
# The tiny LLM has 2 layers; q_proj and v_proj each get lora_A and lora_B.
ADAPTERS = sorted(
    f"llama_model.model.layers.{layer}.self_attn.{proj}.lora_{part}.default.weight"
    for layer in (0, 1)
    for proj in ("q_proj", "v_proj")
    for part in ("A", "B")
)


def argv(*options: str) -> list[str]:
    paths = tiny_path_options(tiny_root(), ("cc_sbu_align",))
    return ["--cfg-path", str(STAGE2_TINY), "--options", "run.device=cpu", *paths, *options]


RUN = [
    *LORA,
    *("run.num_workers=0", "run.max_epoch=2", "run.iters_per_epoch=4", "run.checkpoint_interval=2"),
    *("run.log_freq=1", "run.init_lr=1e-2", "run.warmup_steps=0", "run.batch_size_train=2"),
]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """One LoRA run of 2 epochs x 4 iterations, with a checkpoint in the middle of epoch 1."""
    out = tmp_path_factory.mktemp("lora") / "out"
    runner = train.main(argv(*RUN, f"run.output_dir={out}"))
    return runner


def model_from(config: Path, *options: str) -> tuple[MiniGPT4, Config]:
    paths = tiny_path_options(tiny_root(), ())
    cfg = Config(SimpleNamespace(cfg_path=str(config), options=[*paths, *options]))
    return MiniGPT4.from_config(cfg.model_cfg, "cpu"), cfg


# A model for MiniGPT4.build in a blink (no weight file).
TINY_BUILD = {
    "vit_arch": {"embed_dim": 32, "depth": 1, "num_heads": 2},
    "qformer_arch": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    **{"image_size": 28, "num_query_token": 4, "vit_precision": "fp32", "llm_precision": "fp32"},
}


def tiny_llama(tokenizer) -> LlamaConfig:
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2)


@pytest.fixture(scope="module")
def tokenizer(golden_dir: Path):
    return load_llama_tokenizer(golden_dir / "vicuna_tiny")


def test_upstream_defaults_on_llama2_7b_train_its_lora_parameter_count(tokenizer):
    """Upstream's MiniGPT-v2 LoRA (r 64 on q_proj and v_proj of LLaMA-2-7B): 33,554,432 adapter
    parameters in fp32 beside the fp16 LLM, and llama_proj 5632 -> 4096 without a Q-Former."""
    llama2_7b = LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008)
    cfg = {"has_qformer": False, "llm_precision": "fp16", "lora_r": 64}
    with torch.device("meta"):
        model = MiniGPT4.build(cfg, llama2_7b, tokenizer)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    adapters = [p for name, p in trainable.items() if is_adapter_key(name)]
    assert sum(p.numel() for p in adapters) == 33_554_432 and len(adapters) == 32 * 2 * 2
    assert {p.dtype for p in adapters} == {torch.float32}
    assert sum(trainable["llama_proj.weight"].shape) + 1 == 5632 + 4096 + 1
    assert sum(p.numel() for p in trainable.values()) == 33_554_432 + 23_072_768
    q_proj = model.llama_model.model.layers[0].self_attn.q_proj
    assert q_proj.scaling["default"] == 16 / 64 and q_proj.base_layer.weight.dtype == torch.float16


def test_the_adapters_get_gradients_and_the_llm_none(tokenizer):
    torch.manual_seed(0)
    llama = tiny_llama(tokenizer)
    cfg = {**TINY_BUILD, "lora_r": 2, "lora_target_modules": ["o_proj", "model.layers.0.mlp.down_proj"]}
    model = MiniGPT4.build(cfg, llama, tokenizer)
    model({"image": torch.rand(2, 3, 28, 28), "text_input": ["a cat", "a dog on a mat"]})["loss"].backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert sorted(grads) == sorted(
        [
            *(f"llama_model.model.layers.0.self_attn.o_proj.lora_{x}.default.weight" for x in "AB"),
            *(f"llama_model.model.layers.0.mlp.down_proj.lora_{x}.default.weight" for x in "AB"),
            "llama_proj.bias",
            "llama_proj.weight",
        ]
    )
    # lora_B starts at zero, so lora_A's first gradient is zero and lora_B's is not.
    assert grads["llama_model.model.layers.0.self_attn.o_proj.lora_B.default.weight"].abs().max() > 0


def test_off_by_default_the_llm_has_no_adapter():
    model, _ = model_from(EVAL_TINY)
    assert next(lora_layers(model.llama_model), None) is None
    assert sorted(trainable_state_dict(model)) == ["llama_proj.bias", "llama_proj.weight"]


@pytest.mark.slow
def test_a_run_trains_llama_proj_and_the_adapters_only(lora_run):
    model = lora_run.model
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted([*ADAPTERS, "llama_proj.bias", "llama_proj.weight"])
    state = model.state_dict()
    # lora_B starts at zero (the adapted LLM starts as the LLM): training moved every one.
    for key in ADAPTERS:
        assert state[key].dtype == torch.float32
        if ".lora_B." in key:
            assert state[key].abs().max() > 0, key
    # The frozen base weights are still the folder's.
    base, _ = model_from(EVAL_TINY)
    base_state = base.llama_model.state_dict()
    for name, value in model.llama_model.state_dict().items():
        if not is_adapter_key(name):
            assert torch.equal(value, base_state[name.replace(".base_layer.", ".")]), name
    # The checkpoint holds exactly the trainable weights.
    ckpt = load_checkpoint(lora_run.output_dir / "checkpoint_1.pth")
    assert sorted(ckpt["model"]) == trainable
    assert all(torch.equal(ckpt["model"][key], state[key]) for key in ADAPTERS)
    # Losses fell: the adapters and the projection learnt something.
    losses = [h["loss"] for h in lora_run.history]
    assert len(losses) == 8 and losses[-1] < losses[0], losses


@pytest.mark.slow
def test_the_adapters_are_in_the_weight_decay_group(lora_run):
    cfg = lora_run.config.run_cfg
    decay, no_decay = build_optimizer(lora_run.model, cfg).param_groups
    named = {id(p): name for name, p in lora_run.model.named_parameters()}
    assert sorted(named[id(p)] for p in decay["params"]) == sorted([*ADAPTERS, "llama_proj.weight"])
    assert [named[id(p)] for p in no_decay["params"]] == ["llama_proj.bias"]
    assert decay["weight_decay"] == cfg.weight_decay and no_decay["weight_decay"] == 0.0


@pytest.mark.slow
def test_resume_reproduces_the_losses_and_the_adapters(lora_run, tmp_path):
    losses = {h["step"]: h["loss"] for h in lora_run.history}
    final = lora_run.model.state_dict()
    for checkpoint, steps in (("checkpoint_0.pth", [5, 6, 7, 8]), ("checkpoint_last.pth", [7, 8])):
        resume = f"run.resume_ckpt_path={lora_run.output_dir / checkpoint}"
        resumed = train.main(argv(*RUN, resume, f"run.output_dir={tmp_path / checkpoint}"))
        assert [h["step"] for h in resumed.history] == steps
        assert [h["loss"] for h in resumed.history] == [losses[s] for s in steps], checkpoint
        state = resumed.model.state_dict()
        assert all(torch.equal(state[key], final[key]) for key in [*ADAPTERS, "llama_proj.weight"]), checkpoint


@pytest.mark.slow
def test_adapter_dropout_follows_the_mode_and_the_llm_stays_in_eval(lora_run):
    model = lora_run.model
    model.train()
    layers = list(lora_layers(model.llama_model))
    assert len(layers) == 4 and all(layer.lora_dropout["default"].training for layer in layers)
    assert not model.llama_model.model.layers[0].mlp.training
    model.eval()
    assert not any(layer.lora_dropout["default"].training for layer in layers)


@pytest.mark.slow
def test_the_flop_model_counts_the_adapter_weight_gradients(lora_run):
    fm = lora_run.model.flop_model()
    adapters = sum(lora_run.model.state_dict()[key].numel() for key in ADAPTERS)
    assert (fm.llm_trainable, fm.llm_adapter_params) == (False, adapters)
    assert (
        fm.llm_flops(tokens=1, seq_len=1)
        == 4 * fm.llm_matmul_params + 2 * adapters + 12 * fm.llm_layers * fm.llm_hidden
    )


def chat_answer(model: MiniGPT4, cfg: Config) -> list[int]:
    vis = cfg.datasets_cfg.cc_sbu_align.vis_processor.train
    processor = registry.get_processor_class(vis.name).from_config(vis)
    chat = Chat(model.eval(), processor, device="cpu")
    conv, img_list = CONV_VISION.copy(), []
    chat.upload_img(Image.new("RGB", (64, 64), (200, 40, 40)), conv, img_list)
    chat.ask("What is in this image?", conv)
    return chat.answer(conv, img_list, max_new_tokens=8, do_sample=False)[1].tolist()


@pytest.mark.slow
def test_a_checkpoint_with_adapters_loads_for_chat(lora_run):
    ckpt = lora_run.output_dir / "checkpoint_1.pth"
    model, cfg = model_from(EVAL_TINY, *LORA, f"model.ckpt={ckpt}")
    saved = load_checkpoint(ckpt)["model"]
    state = model.state_dict()
    assert all(torch.equal(state[key], saved[key]) for key in saved)
    assert len(chat_answer(model, cfg)) > 0
    # Without the LoRA keys the adapters have no place: said in words, not skipped.
    with pytest.raises(LoraError, match=r"holds LoRA adapters for the LLM \(8 tensors, rank 4\) but model.lora_r is 0"):
        model_from(EVAL_TINY, f"model.ckpt={ckpt}")
    # Another rank is explained.
    with pytest.raises(WeightLoadError, match=r"the adapters were trained with lora_r 4; model.lora_r is 8"):
        model_from(EVAL_TINY, "model.lora_r=8", f"model.ckpt={ckpt}")


@pytest.mark.slow
def test_upstream_adapter_names_load_strictly(lora_run, tmp_path):
    """Upstream's peft-0.2.0 names (PeftModel prefix, no adapter level) load into the adapters."""
    saved = load_checkpoint(lora_run.output_dir / "checkpoint_1.pth")["model"]
    upstream = {
        key.replace("llama_model.", "llama_model.base_model.model.", 1).replace(".default.", ".")
        if is_adapter_key(key)
        else key: value
        for key, value in saved.items()
    }
    assert "llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in upstream
    assert sorted(checkpoint_name(key) for key in upstream) == sorted(saved)
    # The LLM buffers that upstream's runner saved under the peft prefix are dropped, not refused.
    inv_freq = "llama_model.base_model.model.model.layers.0.self_attn.rotary_emb.inv_freq"
    assert sorted(MiniGPT4.checkpoint_state({**upstream, inv_freq: torch.ones(8)})) == sorted(saved)
    torch.save({"model": upstream}, tmp_path / "upstream.pth")
    model, _ = model_from(EVAL_TINY, *LORA, f"model.ckpt={tmp_path / 'upstream.pth'}")
    state = model.state_dict()
    assert all(torch.equal(state[key], saved[key]) for key in saved)


def llm_logits(model: MiniGPT4) -> torch.Tensor:
    random.seed(0)  # the same training prompt for both models
    samples = {"image": torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))}
    samples["text_input"] = ["a red square on a table", "two cats"]
    model.eval()
    with torch.no_grad():
        inputs = model.prepare_llm_inputs(samples)
        return model.llama_model(inputs_embeds=inputs.inputs_embeds).logits


@pytest.mark.slow
def test_the_merged_llm_gives_the_lora_models_logits(lora_run, tmp_path):
    ckpt = lora_run.output_dir / "checkpoint_1.pth"
    export, merged = tmp_path / "export", tmp_path / "vicuna_tiny_merged"
    assert export_main([str(ckpt), str(export), "--merge-llm", str(merged)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"} <= {
        p.name for p in merged.iterdir()
    }
    with safe_open(str(export / SAFETENSORS_NAME), "pt") as handle:
        assert sorted(handle.keys()) == ["llama_proj.bias", "llama_proj.weight"]
    metadata = json.loads((export / METADATA_NAME).read_text())
    assert (metadata["llm_name"], metadata["lora_r"]) == ("vicuna_tiny_merged", None)

    lora, cfg = model_from(EVAL_TINY, *LORA, f"model.ckpt={ckpt}")
    served, _ = model_from(EVAL_TINY, f"model.llama_model={merged}", f"model.ckpt={export}")
    assert next(lora_layers(served.llama_model), None) is None
    expected = llm_logits(lora)
    torch.testing.assert_close(llm_logits(served), expected, rtol=1e-4, atol=1e-4)
    # The adapters matter: the base LLM with the same projection gives other logits.
    plain, _ = model_from(EVAL_TINY, f"model.ckpt={export}")
    assert (llm_logits(plain) - expected).abs().max() > 1e-2
    assert chat_answer(served, cfg) == chat_answer(lora, cfg)
    # Written in another dtype on request; the config says so.
    half = tmp_path / "half"
    assert export_main([str(ckpt), str(tmp_path / "export_half"), "--merge-llm", str(half), "--llm-dtype", "fp16"]) == 0
    with safe_open(str(half / "model.safetensors"), "pt") as handle:
        assert handle.get_slice("model.layers.0.self_attn.q_proj.weight").get_dtype() == "F16"
    assert json.loads((half / "config.json").read_text())["dtype"] == "float16"


@pytest.mark.slow
def test_export_keeps_the_adapters_without_merging(lora_run, tmp_path, caplog):
    ckpt = lora_run.output_dir / "checkpoint_1.pth"
    assert export_main([str(ckpt), str(tmp_path / "export")]) == 0
    metadata = json.loads((tmp_path / "export" / METADATA_NAME).read_text())
    assert (metadata["lora_r"], metadata["lora_alpha"], metadata["lora_target_modules"]) == (4, 8, ["q_proj", "v_proj"])
    model, _ = model_from(EVAL_TINY, *LORA, f"model.ckpt={tmp_path / 'export'}")
    saved = load_checkpoint(ckpt)["model"]
    assert all(torch.equal(model.state_dict()[key], saved[key]) for key in ADAPTERS)
    # Another scale loads (the shapes fit) but changes what the adapters do: warned about.
    model_from(EVAL_TINY, "model.lora_r=4", "model.lora_alpha=16", f"model.ckpt={tmp_path / 'export'}")
    assert "was trained with lora_alpha 8; model.lora_alpha is 16" in caplog.text


def test_merging_a_checkpoint_without_adapters_is_refused(tmp_path, capsys):
    torch.save(
        {"model": {"llama_proj.weight": torch.zeros(64, 64), "llama_proj.bias": torch.zeros(64)}}, tmp_path / "p.pth"
    )
    assert export_main([str(tmp_path / "p.pth"), str(tmp_path / "out"), "--merge-llm", str(tmp_path / "llm")]) == 2
    assert "holds no LoRA adapters (its run had model.lora_r 0): there is nothing to merge" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            "model.lora_target_modules=[q_proj,qkv]",
            r"^model.lora_target_modules: 'qkv' matches no module of the LLM \(LlamaForCausalLM\); its Linear layers "
            r"are down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj$",
        ),
        (
            "model.lora_target_modules=[mlp]",
            r"^model.lora_target_modules: 'mlp' is not a Linear \(or Embedding\) layer",
        ),
        ("model.lora_dropout=1.0", r"^model.lora_dropout must be in \[0, 1\), got 1.0$"),
        ("model.lora_alpha=0", r"^model.lora_alpha must be positive"),
    ],
)
def test_a_bad_setting_fails_in_one_line_before_the_weights_load(option, message, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with pytest.raises(LoraError, match=message):
        train.main(argv("model.lora_r=4", option, f"run.output_dir={tmp_path}"))
    assert not any("Loading VIT" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_the_entry_point_prints_the_bad_target_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), *argv("model.lora_r=4", "model.lora_target_modules=[qkv]")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("train.py: model.lora_target_modules: 'qkv' matches no module")
    )


@pytest.mark.slow
def test_the_weight_checker_knows_the_adapters(lora_run, capsys):
    ckpt = lora_run.output_dir / "checkpoint_1.pth"
    paths = tiny_path_options(tiny_root(), ())
    assert check_weights([
        "--cfg-path", str(EVAL_TINY), "--options", *paths, *LORA, f"model.ckpt={ckpt}"
    ]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "LoRA: rank 4 on q_proj, v_proj, 8 adapter tensors (2.05K parameters)" in out, out
    assert check_weights(["--cfg-path", str(EVAL_TINY), "--options", *paths, f"model.ckpt={ckpt}"]) == 1
    assert "unexpected (the file has them, the model has no place for them): llama_model.model.layers.0" in (
        capsys.readouterr().out
    )


DRIVER = f"""
import os, sys
import torch
sys.path.insert(0, {str(REPO_ROOT)!r})
import train
from minigpt4.common.checkpoint import trainable_state_dict
runner = train.main(sys.argv[1:])
torch.save(trainable_state_dict(runner.model), f"rank{{os.environ['RANK']}}.pt")
"""


@pytest.mark.dist
@pytest.mark.slow
def test_ddp_keeps_the_adapters_of_both_ranks_equal(tmp_path):
    (tmp_path / "driver.py").write_text(DRIVER)
    options = [*LORA, "run.num_workers=0", "run.max_epoch=1", "run.iters_per_epoch=3", "run.batch_size_train=2"]
    options += ["run.init_lr=1e-2", "run.warmup_steps=0", "run.output_dir=out"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "driver.py"]
    result = subprocess.run([*command, *argv(*options)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert sorted(ranks[0]) == sorted([*ADAPTERS, "llama_proj.bias", "llama_proj.weight"])
    assert all(torch.equal(ranks[0][key], ranks[1][key]) for key in ranks[0])
    assert all(ranks[0][key].abs().max() > 0 for key in ADAPTERS if ".lora_B." in key)


def test_without_peft_lora_is_refused_in_one_line_and_lora_off_needs_nothing(tokenizer, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real_find_spec(name, *a)
    )
    llama, cfg = tiny_llama(tokenizer), TINY_BUILD
    with torch.device("meta"):
        MiniGPT4.build(cfg, llama, tokenizer)
        with pytest.raises(LoraError, match=r"^model.lora_r 8 adds LoRA adapters through the peft library, which is"):
            MiniGPT4.build({**cfg, "lora_r": 8}, llama, tokenizer)


@pytest.mark.slow
def test_resuming_a_lora_run_without_its_lora_keys_says_so(lora_run, tmp_path):
    resume = f"run.resume_ckpt_path={lora_run.output_dir / 'checkpoint_0.pth'}"
    with pytest.raises(CheckpointMismatchError) as error:
        train.main(argv(*RUN[len(LORA) :], resume, f"run.output_dir={tmp_path}"))
    assert str(error.value).endswith(
        "does not match the model's trainable parameters: missing none; unexpected "
        f"{ADAPTERS} (was it trained with other "
        "model.lora_r, lora_target_modules, freeze_vit or freeze_qformer settings?)"
    )


def test_a_long_key_list_is_cut_in_the_resume_error():
    model = torch.nn.Linear(2, 2)
    state = {f"llama_model.layers.{i}.lora_A.default.weight": torch.zeros(1) for i in range(10)}
    with pytest.raises(CheckpointMismatchError, match=r"\.layers\.7\.lora_A\.default\.weight', \.\.\. \(10 in all\)\]"):
        load_trainable_state_dict(model, {**model.state_dict(), **state}, "ckpt.pth")


def lora_golden_step_of_rank(rank: int, init_file: str, golden_dir: str, out: str) -> None:
    """One rank of ``test_sharded_llm_gives_the_adapters_their_unsharded_gradients``: the golden
    model with adapters (lora_B made non-zero, so that lora_A gets a gradient too), plain, with the
    frozen LLM sharded, and sharded with activation checkpointing, each under DDP."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        images = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
        samples = {"image": images, "text_input": ["a woman astronaut in front of the flag", "an orange tabby cat"]}
        results = {}
        for name, keys in (
            ("plain", {}),
            ("sharded", {"shard_llm": True}),
            ("sharded_checkpointed", {"shard_llm": True, "llm_activation_checkpointing": True}),
        ):
            torch.manual_seed(2)  # lora_A's initial values: the same in each model and on each rank
            model = build_golden_model(Path(golden_dir), lora_r=4, lora_dropout=0.0)
            with torch.no_grad():
                for layer in lora_layers(model.llama_model):
                    torch.nn.init.normal_(layer.lora_B["default"].weight)
            model = prepare_model(model, torch.device("cpu"), OmegaConf.merge(OmegaConf.structured(RunConfig), keys))
            torch.manual_seed(0)  # the training prompt is drawn at random
            loss = wrap_ddp(model, torch.device("cpu")).train()(samples)["loss"]
            loss.backward()
            grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
            kind = type(model.llama_model.model.layers[0].mlp.up_proj.weight).__name__
            results[name] = (loss.detach(), grads, kind)
        torch.save(results, f"{out}{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.dist
@pytest.mark.slow
def test_sharded_llm_gives_the_adapters_their_unsharded_gradients(tmp_path, golden_dir):
    out = str(tmp_path / "golden")
    args = (str(tmp_path / "init"), str(golden_dir), out)
    torch.multiprocessing.spawn(lora_golden_step_of_rank, args=args, nprocs=2)
    for rank in range(2):
        results = torch.load(f"{out}{rank}.pt", weights_only=True)
        loss, grads, kind = results["plain"]
        assert kind == "Parameter" and len(grads) == 2 + 2 * 2 * 2  # llama_proj, q/v A/B of 2 layers
        assert all(grad.abs().max() > 0 for grad in grads.values())
        for name in ("sharded", "sharded_checkpointed"):
            sharded_loss, sharded_grads, sharded_kind = results[name]
            assert sharded_kind == "DTensor" and sorted(sharded_grads) == sorted(grads)
            torch.testing.assert_close(sharded_loss, loss, rtol=1e-5, atol=1e-7)
            for key, grad in grads.items():
                torch.testing.assert_close(sharded_grads[key], grad, rtol=1e-5, atol=1e-7, msg=f"{name} {key}")
