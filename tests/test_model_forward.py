"""MiniGPT4.forward semantics on the golden tiny model: targets, prompt wrapping, token counts,
precision on the CPU."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from golden_model import build_golden_model

from minigpt4.models.eva_vit import FP32LayerNorm

TEMPLATE = "###Human: {} ###Assistant: "


@pytest.fixture(scope="module")
def model(golden_dir: Path):
    return build_golden_model(golden_dir, max_txt_len=12).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))


def ids(model, text: str) -> list[int]:
    return model.llama_tokenizer(text, add_special_tokens=False).input_ids


def test_targets_mask_bos_image_and_padding_and_truncate_after_end_sym(model, images):
    model_q = model.query_tokens.shape[1]
    texts = ["a cat on a mat", "an orange tabby cat is lying on a wooden floor next to a sunny window"]
    with torch.no_grad():
        inputs = model.prepare_llm_inputs({"image": images, "text_input": texts})
    short = ids(model, texts[0] + "\n")
    long = ids(model, texts[1] + "\n")
    assert len(long) > model.max_txt_len  # the long caption is cut and loses its end_sym
    width = min(len(long), model.max_txt_len)
    pad = model.llama_tokenizer.pad_token_id
    assert pad == model.llama_tokenizer.eos_token_id == 2
    assert inputs.text_input_ids.tolist() == [short + [pad] * (width - len(short)), long[:width]]
    prefix = 1 + model_q
    assert inputs.labels.shape == inputs.attention_mask.shape == (2, prefix + width)
    assert (inputs.labels[:, :prefix] == -100).all()
    assert inputs.labels[0, prefix:].tolist() == short + [-100] * (width - len(short))
    assert inputs.labels[1, prefix:].tolist() == long[:width]
    assert inputs.attention_mask[0].tolist() == [1] * (prefix + len(short)) + [0] * (width - len(short))
    assert (inputs.attention_mask[1] == 1).all()
    assert inputs.attention_mask.dtype == inputs.labels.dtype == torch.long


def test_bos_embedding_leads_and_text_embeddings_follow_the_image(model, images):
    with torch.no_grad():
        inputs = model.prepare_llm_inputs({"image": images, "text_input": ["a cat", "a dog"]})
        img_embeds, _ = model.encode_img(images)
        bos = model.embed_tokens(torch.tensor([[model.llama_tokenizer.bos_token_id]]))
        text = model.embed_tokens(inputs.text_input_ids)
    q = img_embeds.shape[1]
    torch.testing.assert_close(inputs.inputs_embeds[:, :1], bos.expand(2, -1, -1))
    torch.testing.assert_close(inputs.inputs_embeds[:, 1 : 1 + q], img_embeds)
    torch.testing.assert_close(inputs.inputs_embeds[:, 1 + q :], text)


def test_eos_written_in_the_text_is_not_a_target(model, images):
    """pad = eos, so the reference also masks a genuine </s> inside a caption."""
    with torch.no_grad():
        inputs = model.prepare_llm_inputs({"image": images, "text_input": ["a</s>b", "a b"]})
    prefix = 1 + model.query_tokens.shape[1]
    row = inputs.text_input_ids[0].tolist()
    eos_at = row.index(model.llama_tokenizer.eos_token_id)
    assert inputs.attention_mask[0, prefix + eos_at] == 1
    assert inputs.labels[0, prefix + eos_at] == -100


def test_prompt_wrap_lengths_and_content(model, images):
    prompt = TEMPLATE.format("<Img><ImageHere></Img> Describe this image in detail.")
    before, after = prompt.split("<ImageHere>")
    with torch.no_grad():
        img_embeds, atts = model.encode_img(images)
        wrapped, wrapped_atts = model.prompt_wrap(img_embeds, atts, prompt)
        before_embeds = model.embed_tokens(torch.tensor([ids(model, before)]))
        after_embeds = model.embed_tokens(torch.tensor([ids(model, after)]))
    n_before, n_after = len(ids(model, before)), len(ids(model, after))
    assert (n_before, n_after) == (6, 14)
    assert wrapped.shape == (2, n_before + img_embeds.shape[1] + n_after, img_embeds.shape[2])
    assert wrapped_atts.shape == wrapped.shape[:2] and (wrapped_atts == 1).all()
    torch.testing.assert_close(wrapped[:, :n_before], before_embeds.expand(2, -1, -1))
    torch.testing.assert_close(wrapped[:, n_before : n_before + img_embeds.shape[1]], img_embeds)
    torch.testing.assert_close(wrapped[:, -n_after:], after_embeds.expand(2, -1, -1))


def test_prompt_wrap_edge_cases(model, images):
    with torch.no_grad():
        img_embeds, atts = model.encode_img(images)
        same, same_atts = model.prompt_wrap(img_embeds, atts, "")
        leading, _ = model.prompt_wrap(img_embeds, atts, "<ImageHere> Describe.")
    assert same is img_embeds and same_atts is atts
    assert leading.shape[1] == img_embeds.shape[1] + len(ids(model, " Describe."))
    with pytest.raises(ValueError, match="exactly once"):
        model.prompt_wrap(img_embeds, atts, "<ImageHere> and <ImageHere>")
    with pytest.raises(ValueError, match="exactly once"):
        model.prompt_wrap(img_embeds, atts, "no placeholder")


@pytest.mark.slow
def test_one_random_prompt_per_batch(golden_dir, tmp_path, images):
    lines = ["<Img><ImageHere></Img> Short.", "<Img><ImageHere></Img> A much longer instruction about the picture."]
    (tmp_path / "prompts.txt").write_text("\n".join(["# a comment line without placeholder", *lines]) + "\n")
    model = build_golden_model(
        golden_dir, prompt_path=str(tmp_path / "prompts.txt"), prompt_template=TEMPLATE, end_sym="###"
    ).eval()
    assert model.prompt_list == [TEMPLATE.format(line) for line in lines]
    q = model.query_tokens.shape[1]
    lengths = {}
    for prompt in model.prompt_list:
        before, after = prompt.split("<ImageHere>")
        lengths[prompt] = 1 + len(ids(model, before)) + q + len(ids(model, after))
    random.seed(3)
    expected_choices = [random.choice(model.prompt_list) for _ in range(6)]
    random.seed(3)
    with torch.no_grad():
        for choice in expected_choices:
            inputs = model.prepare_llm_inputs({"image": images, "text_input": ["a cat", "a dog"]})
            text_len = inputs.text_input_ids.shape[1]
            assert inputs.inputs_embeds.shape[1] == lengths[choice] + text_len
            assert (inputs.labels[:, : lengths[choice]] == -100).all()
    assert len(set(expected_choices)) == 2
    # The training prompts were tokenized once (one cache entry each); other prompts are not kept.
    assert sorted(prompt for prompt, _ in model._prompt_cache) == sorted(model.prompt_list)
    with torch.no_grad():
        img_embeds, atts = model.encode_img(images)
        model.prompt_wrap(img_embeds, atts, "<ImageHere> Another prompt.")
    assert len(model._prompt_cache) == 2


def test_forward_counts_tokens_without_host_sync(model, images):
    with torch.no_grad():
        out = model({"image": images, "text_input": ["a cat", "an orange tabby cat on the floor"]})
        inputs = model.prepare_llm_inputs(
            {"image": images, "text_input": ["a cat", "an orange tabby cat on the floor"]}
        )
    assert isinstance(out["tokens"], torch.Tensor) and out["tokens"].dim() == 0
    assert out["tokens"].item() == inputs.attention_mask.sum().item()
    assert out["padded_tokens"] == inputs.attention_mask.numel()
    assert out["tokens"].item() < out["padded_tokens"]
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])


def test_ln_vision_computes_in_fp32():
    norm = FP32LayerNorm(8)
    x = torch.randn(2, 3, 8).to(torch.bfloat16) * 100
    out = norm(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, F.layer_norm(x.float(), (8,), norm.weight, norm.bias, norm.eps).to(torch.bfloat16))


@pytest.mark.slow
def test_half_precision_vision_and_llm_run_under_cpu_autocast(golden_dir, model, images):
    """vit_precision / llm_precision bf16 store the weights in bf16 and compute under autocast."""
    half = build_golden_model(golden_dir, vit_precision="bf16", llm_precision="bf16").eval()
    assert half.visual_encoder.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert half.visual_encoder.pos_embed.dtype == torch.float32
    assert half.llama_model.dtype == torch.bfloat16
    samples = {"image": images, "text_input": ["a cat", "a dog on a mat"]}
    with torch.no_grad():
        embeds, _ = half.encode_img(images)
        reference, _ = model.encode_img(images)
        loss = half(samples)["loss"]
        reference_loss = model(samples)["loss"]
    assert embeds.dtype == torch.bfloat16
    torch.testing.assert_close(embeds.float(), reference, rtol=0.1, atol=0.15)
    torch.testing.assert_close(loss, reference_loss, rtol=0.02, atol=0.0)
