"""The Ascend generation edits, applied on CPU: the same tokens where the semantics are equal."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, LlamaForCausalLM
from transformers.generation.stopping_criteria import EosTokenCriteria
from transformers.generation.utils import GenerationMixin

import transformers_modify

PROMPT = torch.tensor([[1, 304, 383, 319, 313, 559]])


@pytest.fixture(scope="module")
def llm(golden_dir):
    return LlamaForCausalLM.from_pretrained(golden_dir / "vicuna_tiny").eval()


def generate(llm, seed=0, **kwargs):
    torch.manual_seed(seed)
    return llm.generate(PROMPT, max_new_tokens=30, pad_token_id=0, **kwargs)


def with_and_without(llm, **kwargs):
    plain = generate(llm, **kwargs)
    with transformers_modify.patched():
        assert transformers_modify.is_applied()
        edited = generate(llm, **kwargs)
    assert not transformers_modify.is_applied()
    return plain, edited


@pytest.mark.slow
@pytest.mark.parametrize(
    "kwargs",
    [
        {"do_sample": False},
        {"do_sample": True, "top_k": 50, "top_p": 0.9},
        {"do_sample": True, "top_k": 50, "top_p": 0.9, "temperature": 0.7, "num_beams": 3},
    ],
    ids=["greedy", "sampling", "beam-sampling"],
)
def test_same_tokens_with_one_eos_id(llm, kwargs, monkeypatch):
    # Edit 3 (the beam-score shift) may change which finished hypothesis wins (see the README), so
    # it is left out here and tested on its own below.
    monkeypatch.setattr(transformers_modify, "shift_low_scores", lambda scores: scores)
    free = generate(llm, **{**kwargs, "eos_token_id": 2})
    # make an eos the model really produces, so that the end-of-sequence test is exercised
    eos = int(free[0, PROMPT.shape[1] + 5])
    plain, edited = with_and_without(llm, eos_token_id=eos, **kwargs)
    assert torch.equal(plain, edited)
    if kwargs.get("num_beams", 1) == 1:  # same seed, same tokens: it stops on the chosen eos
        assert plain[0, -1] == eos
        assert plain.shape[1] <= PROMPT.shape[1] + 6


def test_several_eos_ids_stop_on_any(llm):
    free = generate(llm, do_sample=False)
    eos = [int(free[0, PROMPT.shape[1] + 3]), 599]
    plain, edited = with_and_without(llm, do_sample=False, eos_token_id=eos)
    assert torch.equal(plain, edited)
    assert plain.shape[1] == PROMPT.shape[1] + 4


def test_beam_sampling_warpers_run_on_cpu_only_in_beam_sampling(llm):
    def warpers(**kwargs):
        config = GenerationConfig(top_k=50, top_p=0.9, temperature=0.7, **kwargs)
        config._eos_token_tensor = torch.tensor([2])
        return llm._get_logits_processor(config, device="cpu")

    with transformers_modify.patched():
        beam = warpers(do_sample=True, num_beams=3)
        single = warpers(do_sample=True, num_beams=1)
    wrapped = [p for p in beam if isinstance(p, transformers_modify.WarperOnCPU)]
    assert [type(p.warper).__name__ for p in wrapped] == [
        "TemperatureLogitsWarper",
        "TopKLogitsWarper",
        "TopPLogitsWarper",
    ]
    assert not any(isinstance(p, transformers_modify.WarperOnCPU) for p in single)
    scores = torch.randn(3, 600)
    torch.testing.assert_close(wrapped[1](PROMPT, scores), wrapped[1].warper(PROMPT, scores))


def test_low_beam_scores_are_shifted_per_row():
    scores = torch.tensor([[-150.0, -160.0], [-5.0, -7.0]])
    shifted = transformers_modify.shift_low_scores(scores)
    torch.testing.assert_close(shifted, torch.tensor([[-15.0, -25.0], [-5.0, -7.0]]))


def test_shift_happens_in_beam_sampling_only(llm, monkeypatch):
    calls = []
    original = transformers_modify.shift_low_scores

    def spy(scores):
        calls.append(float(scores.max()))
        return original(scores)

    monkeypatch.setattr(transformers_modify, "shift_low_scores", spy)
    # 30 tokens over a 600-word vocabulary take the cumulative log-probability well below -100.
    # With an end-of-sequence id the model cannot produce, every beam runs to the end and has seen
    # the same shifts, so the ranking, and the tokens, cannot change; where beams finish at different
    # steps the shift may pick another hypothesis (see the README).
    never = llm.config.vocab_size
    plain, edited = with_and_without(llm, do_sample=True, num_beams=3, temperature=1.5, eos_token_id=never)
    assert plain.shape[1] == PROMPT.shape[1] + 30
    assert calls and min(calls) < transformers_modify.SCORE_FLOOR
    assert torch.equal(plain, edited)
    calls.clear()
    with transformers_modify.patched():
        generate(llm, do_sample=False, num_beams=3)
    assert calls == []


def test_apply_is_idempotent_and_remove_restores():
    originals = (EosTokenCriteria.__call__, GenerationMixin._get_logits_processor, GenerationMixin._beam_search)
    transformers_modify.apply()
    transformers_modify.apply()
    try:
        assert EosTokenCriteria.__call__ is transformers_modify.eos_hit_as_sum
    finally:
        transformers_modify.remove()
    assert (EosTokenCriteria.__call__, GenerationMixin._get_logits_processor, GenerationMixin._beam_search) == originals


def test_needed_on_npu_or_when_asked():
    assert transformers_modify.needed_for("npu")
    assert not transformers_modify.needed_for("cpu")
    assert not transformers_modify.needed_for("cuda")
    assert transformers_modify.needed_for("cpu", requested=True)
