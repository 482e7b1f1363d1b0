"""Parity with the 2023 reference on the golden set parity_v1 (fp32, CPU).

The model is built by ``MiniGPT4.from_config`` from a config that points at the golden files, so
the production loaders are under test too. Tolerances: ids, masks and labels exactly; embeddings
and hidden states within 1e-5; losses within 1e-5 relative.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from golden_model import build_golden_model
from safetensors.torch import load_file

from minigpt4.models.qformer import ours_to_blip2

REPO_ROOT = Path(__file__).resolve().parents[1]
EMBED_TOL = {"rtol": 1e-5, "atol": 1e-5}
LOSS_TOL = {"rtol": 1e-5, "atol": 0.0}
# transformers 5's tokenizer gives whitespace-only text one space marker fewer than the
# reference's sentencepiece tokenizer (tokenizers' Metaspace adds the dummy prefix only to text
# that does not already begin with a space); the golden README lists these probes as known.
KNOWN_TOKENIZER_DIFFERENCES = (" ", "  ")


@pytest.fixture(scope="module")
def expected(golden_dir: Path) -> dict:
    return json.loads((golden_dir / "expected.json").read_text())


@pytest.fixture(scope="module")
def tensors(golden_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(golden_dir / "expected.safetensors")


@pytest.fixture(scope="module")
def stage1_model(golden_dir: Path):
    return build_golden_model(golden_dir).eval()


def stage2_model(golden_dir: Path, tmp_path: Path, expected: dict, case: str):
    """The model of a stage-2 case: one line of the project's prompts/alignment.txt as prompt list."""
    line = (REPO_ROOT / "prompts" / "alignment.txt").read_text().splitlines()[expected[case]["alignment_line"] - 1]
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(line + "\n")
    return build_golden_model(
        golden_dir,
        prompt_path=str(prompt_file),
        prompt_template=expected["prompts"]["template"],
        max_txt_len=expected[case]["max_txt_len"],
        end_sym=expected[case]["end_sym"],
    ).eval()


def per_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Entry t: the loss of predicting label t+1 from position t, 0 where that label is -100."""
    shifted = labels[:, 1:]
    loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), shifted.clamp(min=0), reduction="none")
    return loss.masked_fill(shifted == -100, 0.0)


def test_alignment_prompts_are_the_reference_ones(expected):
    assert (REPO_ROOT / "prompts" / "alignment.txt").read_text().splitlines() == expected["prompts"]["alignment_lines"]


def test_encode_img_matches_reference(stage1_model, tensors):
    image = tensors["images.eval"]
    with torch.no_grad():
        vit_out = stage1_model.visual_encoder.forward_features(image)
        ln_out = stage1_model.ln_vision(vit_out)
        queries = stage1_model.query_tokens.expand(image.shape[0], -1, -1)
        qformer_out = stage1_model.Qformer(query_embeds=queries, encoder_hidden_states=ln_out).last_hidden_state
        inputs_llama, atts_llama = stage1_model.encode_img(image)
    torch.testing.assert_close(vit_out, tensors["encode.vit_out"], **EMBED_TOL)
    torch.testing.assert_close(ln_out, tensors["encode.ln_vision_out"], **EMBED_TOL)
    torch.testing.assert_close(qformer_out, tensors["encode.qformer_out"], **EMBED_TOL)
    torch.testing.assert_close(inputs_llama, tensors["encode.inputs_llama"], **EMBED_TOL)
    assert torch.equal(atts_llama, tensors["encode.atts_llama"])


def check_case(model, tensors, expected, case: str, prefix_len: int | None = None) -> None:
    samples = {"image": tensors["images.eval"], "text_input": expected[case]["text_input"]}
    with torch.no_grad():
        inputs = model.prepare_llm_inputs(samples)
        logits = model.llama_model(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask).logits
        out = model(samples)
    assert torch.equal(inputs.text_input_ids, tensors[f"{case}.text_input_ids"])
    assert torch.equal(inputs.labels, tensors[f"{case}.labels"])
    assert torch.equal(inputs.attention_mask, tensors[f"{case}.attention_mask"])
    if prefix_len is None:
        torch.testing.assert_close(inputs.inputs_embeds, tensors[f"{case}.inputs_embeds"], **EMBED_TOL)
    else:
        torch.testing.assert_close(inputs.inputs_embeds[:, :prefix_len], tensors[f"{case}.prefix_embeds"], **EMBED_TOL)
        text_embeds = model.embed_tokens(tensors[f"{case}.text_input_ids"])
        torch.testing.assert_close(inputs.inputs_embeds[:, prefix_len:], text_embeds, **EMBED_TOL)
    torch.testing.assert_close(out["loss"], tensors[f"{case}.loss"], **LOSS_TOL)
    torch.testing.assert_close(per_token_loss(logits, inputs.labels), tensors[f"{case}.per_token_loss"], **EMBED_TOL)
    assert torch.equal(logits.argmax(-1), tensors[f"{case}.logits_argmax"])
    torch.testing.assert_close(logits.logsumexp(-1), tensors[f"{case}.logits_logsumexp"], **EMBED_TOL)
    assert out["tokens"].item() == sum(map(sum, expected[case]["attention_mask"]))
    assert out["padded_tokens"] == expected[case]["llm_seq_len"] * len(samples["text_input"])
    assert (inputs.labels != -100).sum().item() == expected[case]["num_loss_tokens"]


def test_stage1_forward_matches_reference(stage1_model, tensors, expected):
    assert stage1_model.prompt_list == []
    check_case(stage1_model, tensors, expected, "stage1")


@pytest.mark.parametrize("case", ["stage2_a", "stage2_b"])
def test_stage2_forward_matches_reference(golden_dir, tmp_path, tensors, expected, case):
    model = stage2_model(golden_dir, tmp_path, expected, case)
    assert model.prompt_list == [expected[case]["prompt"]]
    tokenizer = model.llama_tokenizer
    assert tokenizer(expected[case]["p_before"], add_special_tokens=False).input_ids == expected[case]["p_before_ids"]
    assert tokenizer(expected[case]["p_after"], add_special_tokens=False).input_ids == expected[case]["p_after_ids"]
    prefix_len = tensors[f"{case}.prefix_embeds"].shape[1] if f"{case}.prefix_embeds" in tensors else None
    check_case(model, tensors, expected, case, prefix_len)


def test_tokenizer_ids_match_reference(stage1_model, expected):
    tokenizer = stage1_model.llama_tokenizer
    facts = expected["tokenizer"]
    assert len(tokenizer) == facts["len"]
    assert [tokenizer.bos_token, tokenizer.bos_token_id] == facts["bos"]
    assert [tokenizer.eos_token, tokenizer.eos_token_id] == facts["eos"]
    assert [tokenizer.pad_token, tokenizer.pad_token_id] == facts["pad_after_minigpt4"]
    assert tokenizer.padding_side == facts["padding_side_after_forward"]
    checked = 0
    for row in facts["strings"]:
        if row["text"] in KNOWN_TOKENIZER_DIFFERENCES:
            continue
        assert tokenizer(row["text"], add_special_tokens=False).input_ids == row["ids"], row["text"]
        assert tokenizer(row["text"]).input_ids == row["ids_with_bos"], row["text"]
        assert tokenizer.convert_ids_to_tokens(row["ids"]) == row["tokens"], row["text"]
        checked += 1
    assert checked == len(facts["strings"]) - len(KNOWN_TOKENIZER_DIFFERENCES)


def test_state_dict_names_match_reference(stage1_model, expected):
    """Our names, mapped to the reference's Q-Former names, are the reference's state dict minus
    the buffers the reference kept and this model computes."""
    reference_buffers = re.compile(r"(position_ids|rotary_emb\.inv_freq)$")
    reference = {key for key in expected["state_dict_keys"]["all"] if not reference_buffers.search(key)}
    ours = {ours_to_blip2(key) for key in stage1_model.state_dict()}
    assert ours == reference


def test_parameter_counts_match_reference(stage1_model, expected):
    counts = expected["param_counts"]

    def count(module_or_param) -> int:
        if isinstance(module_or_param, torch.nn.Parameter):
            return module_or_param.numel()
        return sum(p.numel() for p in module_or_param.parameters())

    assert count(stage1_model.visual_encoder) == counts["visual_encoder"]
    assert count(stage1_model.ln_vision) == counts["ln_vision"]
    assert count(stage1_model.Qformer) == counts["Qformer_after_deletions"]
    assert count(stage1_model.query_tokens) == counts["query_tokens"]
    assert count(stage1_model.llama_model) == counts["llama_model"]
    assert count(stage1_model.llama_proj) == counts["llama_proj"]
    assert sum(p.numel() for p in stage1_model.parameters() if p.requires_grad) == counts["trainable"]


def test_training_step_matches_reference(golden_dir, tensors, expected):
    """One AdamW step as the reference runner took it: same gradients, same updated projection."""
    model = build_golden_model(golden_dir).train()
    step = expected["train_step"]
    beta1, beta2 = step["betas"]
    optimizer = torch.optim.AdamW(
        [
            {"params": [model.llama_proj.weight], "weight_decay": step["weight_decay_groups"][0]},
            {"params": [model.llama_proj.bias], "weight_decay": step["weight_decay_groups"][1]},
        ],
        lr=step["lr_used"],
        betas=(beta1, beta2),
        eps=step["eps"],
    )
    samples = {"image": tensors["images.eval"], "text_input": expected["stage1"]["text_input"]}
    loss = model(samples)["loss"]
    torch.testing.assert_close(loss, tensors["stage1.loss"], **LOSS_TOL)
    loss.backward()
    torch.testing.assert_close(
        model.llama_proj.weight.grad, tensors["train.grad_llama_proj_weight"], rtol=1e-4, atol=1e-7
    )
    torch.testing.assert_close(model.llama_proj.bias.grad, tensors["train.grad_llama_proj_bias"], rtol=1e-4, atol=1e-7)
    optimizer.step()
    torch.testing.assert_close(model.llama_proj.weight, tensors["train.llama_proj_weight_after"], rtol=0, atol=1e-8)
    torch.testing.assert_close(model.llama_proj.bias, tensors["train.llama_proj_bias_after"], rtol=0, atol=1e-8)
    with torch.no_grad():
        after = model(samples)["loss"]
    torch.testing.assert_close(after, tensors["train.stage1_loss_after_step"], **LOSS_TOL)


def test_reference_runner_checkpoint_reproduces_loss_after_step(golden_dir, tensors, expected):
    model = build_golden_model(golden_dir, ckpt=str(golden_dir / "checkpoint_0.pth")).eval()
    torch.testing.assert_close(model.llama_proj.weight, tensors["train.llama_proj_weight_after"], rtol=0, atol=0)
    samples = {"image": tensors["images.eval"], "text_input": expected["stage1"]["text_input"]}
    with torch.no_grad():
        loss = model(samples)["loss"]
    torch.testing.assert_close(loss, tensors["train.stage1_loss_after_step"], **LOSS_TOL)
