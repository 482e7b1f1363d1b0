"""The frozen LLM sharded across two CPU processes with FSDP2 (gloo): through train.py under
torchrun, with activation checkpointing of its layers, the same losses and projection as the
unsharded run, the same checkpoint format and an exact resume; and one step of the golden model
(and of a tied-embedding variant) with the projection gradient of the unsharded model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from golden_model import build_golden_model, golden_model_config
from omegaconf import OmegaConf
from tiny_assets import REPO_ROOT, STAGE1_TINY, tiny_path_options, tiny_root

from minigpt4.common.checkpoint import load_checkpoint
from minigpt4.common.schema import RunConfig
from minigpt4.models.llm import load_llama_tokenizer, read_llama_config
from minigpt4.models.mini_gpt4 import MiniGPT4
from minigpt4.runners.memory import prepare_model
from minigpt4.runners.runner_base import wrap_ddp

pytestmark = [pytest.mark.dist, pytest.mark.slow]

# Trains through train.main, then saves what this rank ended with and how its LLM is held.
DRIVER = f"""
import os, sys
import torch
sys.path.insert(0, {str(REPO_ROOT)!r})
import train
from minigpt4.common.checkpoint import trainable_state_dict
runner = train.main(sys.argv[1:])
weight = runner.model.llama_model.model.layers[0].self_attn.q_proj.weight
local = weight.to_local() if hasattr(weight, "to_local") else weight
torch.save(
    {{
        "losses": [line["loss"] for line in runner.history],
        "steps": [line["step"] for line in runner.history],
        "weights": trainable_state_dict(runner.model),
        "layer_weight": (type(weight).__name__, local.numel(), weight.numel()),
    }},
    f"rank{{os.environ['RANK']}}.pt",
)
"""


def train(run_dir: Path, *options: str) -> tuple[str, list[dict]]:
    """A two-rank torchrun of the tiny stage-1 config (4 iterations of batch 4, a loss per
    iteration, a checkpoint after 2); returns its output and what each rank saved."""
    run_dir.mkdir()
    driver = run_dir / "driver.py"
    driver.write_text(DRIVER)
    argv = [*tiny_path_options(tiny_root(), ("laion", "cc_sbu")), "run.device=cpu", "run.max_epoch=1"]
    argv += ["run.iters_per_epoch=4", "run.batch_size_train=4", "run.log_freq=1", "run.checkpoint_interval=2"]
    argv += ["run.output_dir=out", *options]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += [str(driver), "--cfg-path", str(STAGE1_TINY), "--options", *argv]
    done = subprocess.run(command, cwd=run_dir, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    saved = [torch.load(run_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return done.stdout + done.stderr, saved


def job_dir(run_dir: Path) -> Path:
    (job,) = (run_dir / "out").iterdir()
    return job


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, str, list[dict]]]:
    root = tmp_path_factory.mktemp("sharding")
    memory = ("run.shard_llm=True", "run.llm_activation_checkpointing=True")
    plain = train(root / "plain")
    sharded = train(root / "sharded", *memory)
    resume = f"run.resume_ckpt_path={job_dir(root / 'sharded') / 'checkpoint_last.pth'}"
    resumed = train(root / "resumed", *memory, resume)
    return {
        "plain": (root / "plain", *plain),
        "sharded": (root / "sharded", *sharded),
        "resumed": (root / "resumed", *resumed),
    }


def test_the_llm_is_sharded_and_the_projection_is_whole(runs):
    _, _, plain = runs["plain"]
    _, output, sharded = runs["sharded"]
    assert "The frozen LLM is sharded across 2 ranks (FSDP2)" in output
    assert "Activation checkpointing on the LLM's 2 decoder layers" in output
    assert plain[0]["layer_weight"][0] == "Parameter"
    for rank in sharded:
        kind, local, full = rank["layer_weight"]
        assert kind == "DTensor" and local * 2 == full  # each rank holds half of the layer's weight
        assert sorted(rank["weights"]) == ["llama_proj.bias", "llama_proj.weight"]
        assert all(type(v) is torch.Tensor for v in rank["weights"].values())
    for key, value in sharded[0]["weights"].items():
        assert torch.equal(value, sharded[1]["weights"][key])  # DDP kept the ranks in sync


def test_sharded_run_has_the_losses_of_the_unsharded_run(runs):
    _, _, plain = runs["plain"]
    _, _, sharded = runs["sharded"]
    assert plain[0]["steps"] == sharded[0]["steps"] == [1, 2, 3, 4]
    torch.testing.assert_close(torch.tensor(sharded[0]["losses"]), torch.tensor(plain[0]["losses"]), rtol=1e-5, atol=0)
    for key, value in plain[0]["weights"].items():
        torch.testing.assert_close(sharded[0]["weights"][key], value, rtol=1e-5, atol=1e-7)


def test_sharded_checkpoint_keeps_the_format_and_resumes_exactly(runs):
    plain_dir, _, _ = runs["plain"]
    sharded_dir, _, sharded = runs["sharded"]
    _, _, resumed = runs["resumed"]
    ours = load_checkpoint(job_dir(sharded_dir) / "checkpoint_0.pth")
    theirs = load_checkpoint(job_dir(plain_dir) / "checkpoint_0.pth")
    assert sorted(ours) == sorted(theirs)
    assert sorted(ours["model"]) == sorted(theirs["model"]) == ["llama_proj.bias", "llama_proj.weight"]
    assert torch.equal(ours["model"]["llama_proj.weight"], sharded[0]["weights"]["llama_proj.weight"])
    assert len(ours["rng"]) == 2
    assert resumed[0]["steps"] == [3, 4]
    assert resumed[0]["losses"] == sharded[0]["losses"][2:]
    for key, value in sharded[0]["weights"].items():
        assert torch.equal(resumed[0]["weights"][key], value)


def tied_golden_model(golden_dir: Path) -> MiniGPT4:
    """The golden architecture with an LLM whose LM head is its input embedding, random weights
    (seeded: every rank builds the same)."""
    tokenizer = load_llama_tokenizer(golden_dir / "vicuna_tiny")
    config = read_llama_config(golden_dir / "vicuna_tiny", tokenizer)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = MiniGPT4.build(golden_model_config(golden_dir), config, tokenizer)
    assert model.llama_model.lm_head.weight is model.llama_model.get_input_embeddings().weight
    return model


def golden_step_of_rank(rank: int, init_file: str, golden_dir: str, out: str) -> None:
    """One rank of ``test_sharded_golden_model_gives_the_unsharded_gradient``: the golden model's
    loss and projection gradient, plain, sharded, and sharded with checkpointing, then a tied-embedding
    variant plain and sharded, each under DDP."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        images = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
        samples = {"image": images, "text_input": ["a woman astronaut in front of the flag", "an orange tabby cat"]}
        shard, both = {"shard_llm": True}, {"shard_llm": True, "llm_activation_checkpointing": True}
        results = {}
        for name, build, keys in (
            ("plain", build_golden_model, {}),
            ("sharded", build_golden_model, shard),
            ("sharded_checkpointed", build_golden_model, both),
            ("tied_plain", tied_golden_model, {}),
            ("tied_sharded", tied_golden_model, shard),
        ):
            model = build(Path(golden_dir))
            model = prepare_model(model, torch.device("cpu"), OmegaConf.merge(OmegaConf.structured(RunConfig), keys))
            torch.manual_seed(0)  # the training prompt is drawn at random
            loss = wrap_ddp(model, torch.device("cpu")).train()(samples)["loss"]
            loss.backward()
            kind = type(model.llama_model.model.layers[0].mlp.up_proj.weight).__name__
            results[name] = (loss.detach(), model.llama_proj.weight.grad, model.llama_proj.bias.grad, kind)
        torch.save(results, f"{out}{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_sharded_golden_model_gives_the_unsharded_gradient(tmp_path, golden_dir):
    out = str(tmp_path / "golden")
    torch.multiprocessing.spawn(golden_step_of_rank, args=(str(tmp_path / "init"), str(golden_dir), out), nprocs=2)
    for rank in range(2):
        results = torch.load(f"{out}{rank}.pt", weights_only=True)
        for plain, sharded in (("plain", "sharded"), ("plain", "sharded_checkpointed"), ("tied_plain", "tied_sharded")):
            assert results[plain][3] == "Parameter" and results[sharded][3] == "DTensor"
            for want, got in zip(results[plain][:3], results[sharded][:3], strict=True):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
