"""Memory for the big LLMs (minigpt4/runners/memory.py), in one process: activation checkpointing
of the frozen LLM's decoder layers gives the projection the gradient it gets without, and the
options refuse what they cannot do. The sharded runs under torchrun are in test_sharding.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from golden_model import build_golden_model
from omegaconf import OmegaConf

from minigpt4.common.checkpoint import trainable_state_dict
from minigpt4.common.config import ConfigError
from minigpt4.common.schema import ModelConfig, RunConfig
from minigpt4.runners.memory import check_memory_options, decoder_layers, prepare_model, shards_llm


def samples() -> dict:
    images = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    return {"image": images, "text_input": ["a woman astronaut in front of the flag", "an orange tabby cat"]}


def run_cfg(**keys):
    return OmegaConf.merge(OmegaConf.structured(RunConfig), keys)


def projection_grads(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)  # the training prompt is drawn at random
    loss = model.train()(samples())["loss"]
    loss.backward()
    return loss.detach(), model.llama_proj.weight.grad, model.llama_proj.bias.grad


def test_checkpointed_llm_gives_the_projection_the_same_gradient(golden_dir: Path):
    plain = build_golden_model(golden_dir)
    model = build_golden_model(golden_dir)
    layers = decoder_layers(model.llama_model)
    assert layers and len(layers) == model.llama_model.config.num_hidden_layers
    calls = [0]
    forward = layers[0].forward

    def counted(*args, **kwargs):
        calls[0] += 1
        return forward(*args, **kwargs)

    layers[0].forward = counted
    for _ in range(2):  # a model trained twice is checkpointed once
        prepared = prepare_model(model, torch.device("cpu"), run_cfg(llm_activation_checkpointing=True))
        assert prepared is model
    want, got = projection_grads(plain), projection_grads(model)
    assert calls[0] == 2  # the layer ran again in the backward: its activations were not kept
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    assert got[1].abs().sum() > 0
    assert not any(p.requires_grad for p in model.llama_model.parameters())
    assert all(p.grad is None for p in model.llama_model.parameters())
    # No wrapper module: the names, hence checkpoints and DDP's parameter list, are unchanged.
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert sorted(trainable_state_dict(model)) == sorted(trainable_state_dict(plain))


def saved_bytes(model: torch.nn.Module) -> int:
    """Bytes of the tensors a forward keeps for the backward, weights and buffers left out."""
    weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in weights:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.train()(samples())
    return sum(saved.values())


def test_checkpointed_llm_keeps_less_for_the_backward(golden_dir: Path):
    plain = saved_bytes(build_golden_model(golden_dir))
    model = build_golden_model(golden_dir)
    prepare_model(model, torch.device("cpu"), run_cfg(llm_activation_checkpointing=True))
    # The golden LLM is 2 layers of width 64 before a 600-token loss; what is left is mostly the loss's.
    assert saved_bytes(model) < 0.5 * plain


def test_checkpointed_llm_runs_plainly_without_gradients(golden_dir: Path):
    model = build_golden_model(golden_dir)
    prepare_model(model, torch.device("cpu"), run_cfg(llm_activation_checkpointing=True))
    with torch.no_grad():
        assert torch.isfinite(model(samples())["loss"])


def test_shard_llm_needs_several_ranks_and_refuses_8_bit(golden_dir: Path, caplog):
    assert not shards_llm(run_cfg(shard_llm=True))  # no process group: one process
    model = build_golden_model(golden_dir)
    with caplog.at_level("WARNING"):
        prepare_model(model, torch.device("cpu"), run_cfg(shard_llm=True))
    assert "nothing to shard across" in caplog.text
    model_cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), {"low_resource": True})
    with pytest.raises(ConfigError, match=r"run\.shard_llm: the 8-bit LLM"):
        check_memory_options(model_cfg, run_cfg(shard_llm=True))
    check_memory_options(model_cfg, run_cfg(llm_activation_checkpointing=True))


def test_memory_options_are_off_by_default():
    run = OmegaConf.structured(RunConfig)
    assert run.llm_activation_checkpointing is False and run.shard_llm is False


def test_decoder_layers_of_a_model_that_names_none():
    with pytest.raises(ConfigError, match="names no decoder layer class"):
        decoder_layers(torch.nn.Linear(2, 2))
