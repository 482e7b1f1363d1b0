import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from minigpt4.common.flops import FlopModel, linear_weight_params, peak_flops

LLAMA_7B = LlamaConfig(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000
)


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
    # 1.72 TFLOP in a frozen 7B LLM (4N per token) plus 0.3% for attention.
    assert model.vision_flops_per_image() == pytest.approx(0.52e12, rel=0.01)
    assert model.llm_flops(tokens=65, seq_len=65) == pytest.approx(1.72e12 * 1.003, rel=0.01)
    assert model.step_flops(images=1, tokens=65, seq_len=65) == pytest.approx(2.26e12, rel=0.01)
    trainable = FlopModel(**{**model.__dict__, "llm_trainable": True})
    assert trainable.llm_flops(1, 1) - model.llm_flops(1, 1) == 2 * 6_610_000_000


def test_peak_flops_by_device_name():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("cpu") is None
