"""Freezing, modes and gradients of MiniGPT4 on the golden tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from golden_model import build_golden_model

FROZEN_BY_DEFAULT = ("visual_encoder", "ln_vision", "Qformer", "llama_model")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))


def samples(images: torch.Tensor) -> dict:
    return {"image": images, "text_input": ["a woman astronaut in front of the flag", "an orange tabby cat"]}


def modes(module: torch.nn.Module) -> set[bool]:
    return {sub.training for sub in module.modules()}


def test_frozen_parts_stay_in_eval_mode_and_have_no_gradients(golden_dir: Path):
    model = build_golden_model(golden_dir)
    for mode in (True, False, True):
        model.train(mode)
        assert model.training is mode
        assert model.llama_proj.training is mode
        for name in FROZEN_BY_DEFAULT:
            assert modes(getattr(model, name)) == {False}, name
    for name in FROZEN_BY_DEFAULT:
        assert not any(p.requires_grad for p in getattr(model, name).parameters()), name
    assert not model.query_tokens.requires_grad
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"llama_proj.weight", "llama_proj.bias"}


def test_frozen_vision_side_builds_no_autograd_graph(golden_dir: Path, images):
    model = build_golden_model(golden_dir).train()
    seen = {}
    model.ln_vision.register_forward_hook(lambda _m, _i, out: seen.update(vit=out.requires_grad))
    model.Qformer.register_forward_hook(lambda _m, _i, out: seen.update(qformer=out.last_hidden_state.requires_grad))
    inputs_llama, _ = model.encode_img(images)
    assert seen == {"vit": False, "qformer": False}
    assert inputs_llama.requires_grad  # llama_proj onward builds the graph


def test_stage1_adamw_step_changes_only_llama_proj(golden_dir: Path, images):
    model = build_golden_model(golden_dir).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.05)
    loss = model(samples(images))["loss"]
    loss.backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"llama_proj.weight", "llama_proj.bias"}
    with torch.no_grad():
        assert model(samples(images))["loss"] < loss


@pytest.mark.parametrize(
    ("overrides", "trained"),
    [
        ({"freeze_vit": False}, {"visual_encoder", "ln_vision"}),
        ({"freeze_qformer": False}, {"Qformer", "query_tokens"}),
        ({"freeze_vit": False, "freeze_qformer": False}, {"visual_encoder", "ln_vision", "Qformer", "query_tokens"}),
    ],
)
def test_unfrozen_parts_train(golden_dir: Path, images, overrides, trained):
    model = build_golden_model(golden_dir, **overrides).train()
    model(samples(images))["loss"].backward()
    for name in ("visual_encoder", "ln_vision", "Qformer", "query_tokens"):
        part = getattr(model, name)
        params = [part] if isinstance(part, torch.nn.Parameter) else list(part.parameters())
        has_grad = all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        no_grad = all(p.grad is None for p in params)
        assert has_grad if name in trained else no_grad, name
        if not isinstance(part, torch.nn.Parameter):
            assert modes(part) == ({True} if name in trained else {False}), name
    assert modes(model.llama_model) == {False}


def test_vision_grad_checkpointing_gives_the_same_gradients(golden_dir: Path, images):
    grads, calls = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_golden_model(golden_dir, freeze_vit=False, use_grad_checkpoint=checkpointing).eval()
        block = model.visual_encoder.blocks[0]
        count = [0]

        def counted(*args, forward=block.forward, count=count, **kwargs):
            count[0] += 1
            return forward(*args, **kwargs)

        block.forward = counted
        model(samples(images))["loss"].backward()
        grads.append(model.visual_encoder.patch_embed.proj.weight.grad)
        calls.append(count[0])
    assert calls == [1, 2]  # with checkpointing the block's forward runs again during backward
    torch.testing.assert_close(grads[0], grads[1])
