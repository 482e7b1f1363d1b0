"""The FLOP model behind MFU: its formulas against the documented figures and against torch's own
FLOP counter run on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from golden_model import build_golden_model
from torch.ops import aten
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count
from transformers import LlamaConfig, LlamaForCausalLM

from minigpt4.common.flops import FlopModel, linear_weight_params, minigpt4_flop_model, peak_flops, window_mfu

LLAMA_7B = LlamaConfig(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000
)


def _cpu_sdpa(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch's FLOP counter knows the CUDA attention kernels; on the CPU, SDPA runs these, counted alike.
CPU_SDPA = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}
TEXTS = ["a cat on a mat", "a dog", "a woman holding a red flag next to a tree"]


def test_llama_7b_matmul_weights_on_meta_device():
    with torch.device("meta"):
        llm = LlamaForCausalLM(LLAMA_7B)
    # 32 x (4 d^2 + 3 d ff) + vocab x d (the output head; the input embedding is a lookup)
    assert linear_weight_params(llm) == 32 * (4 * 4096**2 + 3 * 4096 * 11008) + 32000 * 4096


def test_stage1_7b_flops_match_the_documented_model():
    model = FlopModel(
        vit_matmul_params=984_000_000,
        vit_depth=39,
        vit_width=1408,
        vit_tokens=257,
        qformer_matmul_params=0,
        qformer_cross_kv_params=0,
        num_query_token=32,
        llm_matmul_params=6_610_000_000,
        llm_layers=32,
        llm_hidden=4096,
    )
    # ViT-g forward is about 0.52 TFLOP per image; a 65-token stage-1 sample costs about
    # 1.72 TFLOP in a frozen 7B LLM (4N per token) plus 0.4% for attention.
    assert model.vision_flops_per_image() == pytest.approx(0.52e12, rel=0.01)
    assert model.llm_flops(tokens=65, seq_len=65) == pytest.approx(1.72e12 * 1.004, rel=0.01)
    assert model.step_flops(images=1, tokens=65, seq_len=65) == pytest.approx(2.26e12, rel=0.01)
    trainable = FlopModel(**{**model.__dict__, "llm_trainable": True})
    assert trainable.llm_flops(1, 1) - model.llm_flops(1, 1) == 2 * 6_610_000_000


def test_formulas_term_by_term():
    model = FlopModel(
        vit_matmul_params=100,
        vit_depth=2,
        vit_width=8,
        vit_tokens=5,
        qformer_matmul_params=30,
        qformer_cross_kv_params=7,
        num_query_token=4,
        llm_matmul_params=1000,
        llm_layers=3,
        llm_hidden=16,
        projection_params=11,
    )
    vit = 2 * 100 * 5 + 4 * 2 * 5**2 * 8
    qformer = 2 * 30 * 4 + 2 * 7 * 5
    projection = 4 * 11 * 4  # forward and weight gradient, for 4 query tokens
    assert model.vision_flops_per_image() == vit + qformer + projection
    assert model.llm_flops(tokens=20, seq_len=10) == 20 * (4 * 1000 + 12 * 3 * 10 * 16)
    assert model.step_flops(images=2, tokens=20, seq_len=10) == 2 * (vit + qformer + projection) + model.llm_flops(
        20, 10
    )


def test_peak_flops_by_device_name():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("Ascend910B2") == 313e12
    assert peak_flops("cpu") is None


@pytest.fixture(scope="module")
def tiny(golden_dir: Path):
    model = build_golden_model(golden_dir)
    return model, minigpt4_flop_model(model)


def counted(fn) -> int:
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as counter:
        fn()
    return counter.get_total_flops()


def test_tiny_model_counts(tiny):
    model, fm = tiny
    assert fm.vit_matmul_params == linear_weight_params(model.visual_encoder)
    assert (fm.vit_depth, fm.vit_width, fm.vit_tokens, fm.num_query_token) == (2, 64, 17, 8)
    assert fm.qformer_cross_kv_params == 2 * 2 * 64 * 64  # 2 cross-attention layers, key and value
    assert fm.qformer_matmul_params + fm.qformer_cross_kv_params == linear_weight_params(model.Qformer)
    assert (fm.llm_layers, fm.llm_hidden, fm.projection_params, fm.llm_trainable) == (2, 64, 64 * 64, False)


def test_vit_forward_matches_torch_flop_counter(tiny):
    model, fm = tiny
    images = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        flops = counted(lambda: model.visual_encoder.forward_features(images))
    # The model charges the patch projection for all 17 tokens; it runs on the 16 patches only.
    patch = model.visual_encoder.patch_embed.proj.weight.numel()
    vit = 2 * fm.vit_matmul_params * fm.vit_tokens + 4 * fm.vit_depth * fm.vit_tokens**2 * fm.vit_width
    assert flops == 3 * (vit - 2 * patch)


def test_qformer_matmuls_match_torch_flop_counter(tiny):
    model, fm = tiny
    vision = torch.randn(3, fm.vit_tokens, fm.vit_width)
    queries = model.query_tokens.expand(3, -1, -1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:  # matmuls only
        model.Qformer(query_embeds=queries, encoder_hidden_states=vision)
    matmuls = sum(v for op, v in counter.get_flop_counts()["Global"].items() if op in (aten.addmm, aten.mm, aten.bmm))
    expected = 2 * fm.qformer_matmul_params * fm.num_query_token + 2 * fm.qformer_cross_kv_params * fm.vit_tokens
    assert matmuls == 3 * expected


def test_frozen_llm_costs_4n_per_token_plus_attention(tiny):
    """Forward and backward of the frozen LLM with gradients reaching its inputs: 2N + 2N per
    token, no weight gradients, plus 12 L T D for the attention products."""
    model, fm = tiny
    with torch.no_grad():
        inputs = model.prepare_llm_inputs({"image": torch.randn(3, 3, 56, 56), "text_input": TEXTS})
    embeds = inputs.inputs_embeds.requires_grad_()

    def step() -> None:
        out = model.llama_model(inputs_embeds=embeds, attention_mask=inputs.attention_mask, labels=inputs.labels)
        out.loss.backward()

    batch, length = inputs.attention_mask.shape
    # torch's count of the attention backward adds the kernel's recomputation of the scores
    # (Q K^T, 2 B T^2 D per layer): hardware work, not model FLOPs, so not in the model.
    recompute = fm.llm_layers * 2 * batch * length**2 * fm.llm_hidden
    # transformers before 5.19 computes the rotary angles as a matmul, the head_dim / 2 inverse
    # frequencies times the T positions once per forward: counted by torch, not model FLOPs.
    rotary = model.llama_model.config.head_dim * length
    extra = counted(step) - fm.llm_flops(tokens=batch * length, seq_len=length) - recompute
    assert extra in (0, rotary)
    assert embeds.grad is not None
    assert all(p.grad is None for p in model.llama_model.parameters())


def test_training_step_matches_torch_flop_counter(tiny):
    """The whole MiniGPT4.forward + backward against the model, within the Q-Former's attention
    products, the class-token patch projection and the attention recomputation, which the model
    leaves out or adds."""
    model, fm = tiny
    samples = {"image": torch.randn(3, 3, 56, 56), "text_input": TEXTS}
    out = {}

    def step() -> None:
        out.update(model(samples))
        out["loss"].backward()

    flops = counted(step)
    model.zero_grad(set_to_none=True)
    padded = out["padded_tokens"]
    assert flops == pytest.approx(fm.step_flops(images=3, tokens=padded, seq_len=padded // 3), rel=0.02)


def test_window_mfu_is_the_flop_model_over_time_and_peak():
    fm = FlopModel(
        vit_matmul_params=10**9, vit_depth=39, vit_width=1408, vit_tokens=257,
        qformer_matmul_params=10**8, qformer_cross_kv_params=10**7, num_query_token=32,
        llm_matmul_params=6 * 10**9, llm_layers=32, llm_hidden=4096,
    )  # fmt: skip
    # 128 samples of 56 padded tokens in 0.5 s on two devices of 989 TFLOP/s
    mfu = window_mfu(fm, samples=128, padded_tokens=128 * 56, seconds=0.5, peak=2 * 989e12)
    assert mfu == pytest.approx(fm.step_flops(images=128, tokens=128 * 56, seq_len=56) / 0.5 / (2 * 989e12))
