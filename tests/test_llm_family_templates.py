"""Each tiny LLM family (``tests/tiny_llms.py``: LLaMA-3, Mistral, Qwen2, Qwen3) with
``model.conv_template=chat_template``: the stage-2 training input and the chat prompt are the
family's own Jinja template tokenized as one string (one BOS where the family has one, none for
Qwen), the end-of-turn token is a training target, and ``Chat`` stops on it in real generation. The
reference's ``vicuna_v0`` template still works on a tokenizer without BOS (Qwen)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from tiny_assets import REPO_ROOT, STAGE1_TINY, STAGE2_TINY, quickstart, tiny_path_options
from tiny_llms import FAMILIES, tiny_llm_name, tiny_llm_root

import train
from minigpt4.common.checkpoint import load_checkpoint
from minigpt4.common.config import Config
from minigpt4.conversation.conversation import CONV_VISION, IMAGE_MESSAGE, IMAGE_PLACEHOLDER, Chat
from minigpt4.conversation.launch import build_chat
from minigpt4.models.llm import start_ids
from minigpt4.models.mini_gpt4 import MiniGPT4

TINY_EVAL = REPO_ROOT / "eval_configs" / "minigpt4_tiny_eval.yaml"
PROMPTS = REPO_ROOT / "prompts" / "alignment.txt"
END_OF_TURN = {"llama3": "<|eot_id|>", "mistral": "</s>", "qwen2": "<|im_end|>", "qwen3": "<|im_end|>"}
CLASSES = {"llama3": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
CLASSES["qwen3"] = "Qwen3ForCausalLM"
BOS = {"llama3": "<|begin_of_text|>", "mistral": "<s>", "qwen2": None, "qwen3": None}
QUESTION = "What is this?"
CHAT_TEMPLATE = "model.conv_template=chat_template"


@pytest.fixture(scope="module")
def root() -> Path:
    return tiny_llm_root()


@pytest.fixture(scope="module")
def processor():
    from minigpt4.common.registry import registry

    return registry.get_processor_class("blip2_image_eval").from_config({"image_size": 56})


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "red.png"
    Image.new("RGB", (80, 60), "red").save(path)
    return path


def folder_of(root: Path, family: str) -> Path:
    return root / quickstart.WEIGHTS / tiny_llm_name(family)


def eval_config(root: Path, family: str, *options: str):
    """The tiny eval config on ``family``'s LLM, with training prompts (its ``prompt_template`` is
    the written ``###Human: {} ###Assistant: ``, which ``chat_template`` leaves out)."""
    paths = [
        *tiny_path_options(root, ()),
        f"model.llama_model={folder_of(root, family)}",
        f"model.prompt_path={PROMPTS}",
    ]
    return Config(SimpleNamespace(cfg_path=str(TINY_EVAL), options=[*paths, *options])).model_cfg


@pytest.fixture(scope="module")
def models(root) -> dict[str, MiniGPT4]:
    return {family: MiniGPT4.from_config(eval_config(root, family, CHAT_TEMPLATE)).eval() for family in FAMILIES}


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def family_ids(tokenizer, messages: list[dict[str, str]], generation: bool) -> tuple[list[int], list[int]]:
    """The family's own rendering of ``messages`` (a pending answer as Qwen3's non-thinking mode
    writes it: ``enable_thinking=False``; the other templates ignore the flag), tokenized as one
    string, split where the image goes."""
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation, enable_thinking=False
    )
    # a finished turn without what the template writes after its end-of-turn token (Qwen's newline)
    before, after = (text if generation else text.rstrip()).split(IMAGE_PLACEHOLDER)
    return encode(tokenizer, before), encode(tokenizer, after)


def embeddings_of(model: MiniGPT4, ids: list[int]) -> torch.Tensor:
    return model.embed_tokens(torch.tensor([ids]))[0]


@contextlib.contextmanager
def favoured(llm, token: int, over: int):
    """``token``'s output row made 1.5 times ``over``'s, so that greedy decoding picks ``token``
    wherever it would have picked ``over``; a tied output head is untied first, so the inputs keep
    their embeddings."""
    head = llm.get_output_embeddings()
    tied = head.weight is llm.get_input_embeddings().weight
    saved = head.weight
    head.weight = torch.nn.Parameter(saved.detach().clone(), requires_grad=False)
    with torch.no_grad():
        head.weight[token] = 1.5 * saved[over]
    try:
        yield
    finally:
        head.weight = saved
        assert (head.weight is llm.get_input_embeddings().weight) == tied


# --- training: the family's own turn, one BOS, the end of turn trained ----------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_the_training_input_is_the_family_template_with_one_bos(models, family, monkeypatch):
    model = models[family]
    tokenizer = model.llama_tokenizer
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN[family])
    assert model.conv_template == "chat_template" and model.end_sym == END_OF_TURN[family]
    lines = [line for line in PROMPTS.read_text().splitlines() if line]
    assert len(model.prompt_list) == len(lines)
    captions = ["a red circle", "a small blue square on gray"]
    for line, prompt in zip(lines, model.prompt_list, strict=True):
        assert "###" not in prompt  # the written prompt_template is not put inside the user turn
        monkeypatch.setattr(model, "prompt_list", [prompt])
        with torch.no_grad():
            inputs = model.prepare_llm_inputs({"image": torch.randn(2, 3, 56, 56), "text_input": captions})
        for row, caption in enumerate(captions):
            before, after = family_ids(
                tokenizer, [{"role": "user", "content": line}, {"role": "assistant", "content": caption}], False
            )
            bos = tokenizer.bos_token_id
            assert before[: 1 if bos is not None else 0] == start_ids(tokenizer)
            assert [*before, *after].count(bos) == (1 if BOS[family] else 0)
            n_image = model.num_image_tokens
            length = int(inputs.attention_mask[row].sum())
            assert length == len(before) + n_image + len(after)  # the family's own ids, none more
            embeds = inputs.inputs_embeds[row]
            assert torch.equal(embeds[: len(before)], embeddings_of(model, before))
            assert torch.equal(embeds[len(before) + n_image : length], embeddings_of(model, after))
            labels = inputs.labels[row, :length]
            answer = encode(tokenizer, caption + END_OF_TURN[family])
            assert labels[-len(answer) :].tolist() == answer and labels[-1] == eot  # the end of turn is trained
            assert (labels[: -len(answer)] == -100).all() and (inputs.labels[row, length:] == -100).all()


def test_a_written_prompt_template_stays_out_of_the_user_turn(root, caplog):
    with caplog.at_level(logging.WARNING, logger="minigpt4.conversation.templates"):
        model = MiniGPT4.from_config(eval_config(root, "qwen2", CHAT_TEMPLATE))
    assert "model.prompt_template '###Human: {} ###Assistant: ' is a written template's" in caplog.text
    assert all(p.startswith("<|im_start|>system\n") and "###" not in p for p in model.prompt_list)
    # a prompt_template of the user's own is the user turn's content
    model = MiniGPT4.from_config(eval_config(root, "qwen2", CHAT_TEMPLATE, "model.prompt_template='Look: {}'"))
    assert all("<|im_start|>user\nLook: <Img><ImageHere></Img>" in p for p in model.prompt_list)


def test_qwen3_trains_and_chats_with_the_empty_think_block(models):
    """Qwen3's template writes the answer after the last user turn with its think block (empty here)
    and earlier answers without: the training prompt ends with the empty block, as Qwen3's
    generation prompt with ``enable_thinking=False`` does, and so does every chat turn."""
    tokenizer = models["qwen3"].llama_tokenizer
    think = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert all(p.endswith(think) for p in models["qwen3"].prompt_list)
    user = {"role": "user", "content": "Q"}
    generation = tokenizer.apply_chat_template(
        [user], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert generation.endswith(think)
    assert tokenizer.apply_chat_template([user, {"role": "assistant", "content": "A"}], tokenize=False).endswith(
        f"{think}A<|im_end|>\n"
    )
    assert not any(p.endswith(think) for p in models["qwen2"].prompt_list)  # Qwen2.5 has no think block


# --- chat: the same rendering around the question, the stop on the end of turn ---------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_prompts_are_the_family_template_as_training(models, processor, photo, family):
    model = models[family]
    chat = Chat(model, processor, device="cpu")
    tokenizer = chat.tokenizer
    conv, img_list = chat.new_conversation(), []
    chat.upload_img(photo, conv, img_list)
    chat.ask(QUESTION, conv)
    user = {"role": "user", "content": f"{IMAGE_MESSAGE} {QUESTION}"}

    def context_is(messages):
        pending = conv.copy()
        pending.append_message(pending.roles[1], None)
        before, after = family_ids(tokenizer, messages, True)
        context = chat.get_context_emb(pending, img_list)[0]
        assert [*before, *after].count(tokenizer.bos_token_id) == (1 if BOS[family] else 0)
        assert context.shape[0] == len(before) + model.num_image_tokens + len(after)
        assert torch.equal(context[: len(before)], embeddings_of(model, before))
        assert torch.equal(context[len(before) + model.num_image_tokens :], embeddings_of(model, after))

    context_is([user])
    # the first chat turn is the training prompt around the question
    line = "<Img><ImageHere></Img> Describe this image in detail."
    trained = next(p for p in model.prompt_list if line in p)
    pending = conv.copy()
    pending.append_message(pending.roles[1], None)
    assert pending.get_prompt() == trained.replace(line, f"{IMAGE_MESSAGE} {QUESTION}")
    text, _ = chat.answer(conv, img_list, do_sample=False, max_new_tokens=4)
    chat.ask("And now?", conv)
    context_is([user, {"role": "assistant", "content": text}, {"role": "user", "content": "And now?"}])


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_stops_on_the_end_of_turn_token(models, processor, photo, family):
    model = models[family]
    chat = Chat(model, processor, device="cpu")
    tokenizer, llm = chat.tokenizer, model.llama_model
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN[family])
    conv, img_list = chat.new_conversation(), []
    chat.upload_img(photo, conv, img_list)
    chat.ask(QUESTION, conv)
    assert (eot,) in {tuple(s) for s in chat.stop_criterion(conv).by_length[1].tolist()}
    greedy = {"do_sample": False, "num_beams": 1}
    _, tokens = chat.answer(conv.copy(), img_list, max_new_tokens=1, **greedy)
    first = int(tokens[0])
    assert first != eot
    _, tokens = chat.answer(conv.copy(), img_list, max_new_tokens=3, **greedy)
    assert len(tokens) == 3 and eot not in tokens.tolist()  # unbiased, it runs on
    with favoured(llm, eot, over=first):
        answered = conv.copy()
        text, tokens = chat.answer(answered, img_list, max_new_tokens=8, **greedy)
        assert tokens.tolist() == [eot] and text == "" and answered.messages[-1] == ["assistant", ""]
        # Chat's own stop, without the EOS ids of the generation config
        configured = llm.generation_config.eos_token_id
        llm.generation_config.eos_token_id = None
        try:
            _, tokens = chat.answer(conv.copy(), img_list, max_new_tokens=8, **greedy)
        finally:
            llm.generation_config.eos_token_id = configured
        assert tokens.tolist() == [eot]
        streamed = conv.copy()
        assert list(chat.stream_answer(streamed, img_list, max_new_tokens=8, **greedy)) == []
        assert streamed.messages[-1] == ["assistant", ""]
        assert chat.answer_batch([photo, photo], [QUESTION, QUESTION], max_new_tokens=8, **greedy) == ["", ""]
        # in a batch each row stops on its own: the other row answers as it does alone
        other = (Image.new("RGB", (60, 60), "blue"), "Describe the picture in many words please.")
        alone = chat.answer_batch([other[0]], [other[1]], max_new_tokens=6, **greedy)
        both = chat.answer_batch([photo, other[0]], [QUESTION, other[1]], max_new_tokens=6, **greedy)
        assert both == ["", *alone]


def test_vicuna_v0_stops_on_hashes_with_a_tokenizer_without_bos(root, processor, photo):
    """The reference's ``###`` template on Qwen2.5's tokenizer (no BOS): no BOS in the context, and
    the stop sequences read from its vocabulary end a real answer at ``###``."""
    model = MiniGPT4.from_config(eval_config(root, "qwen2")).eval()
    assert model.conv_template == "vicuna_v0" and model.end_sym == "###"
    chat = Chat(model, processor, device="cpu")
    tokenizer = chat.tokenizer
    assert tokenizer.bos_token_id is None and start_ids(tokenizer) == []
    conv, img_list = chat.new_conversation(), []
    assert conv.get_prompt() == CONV_VISION.get_prompt()
    chat.upload_img(photo, conv, img_list)
    chat.ask(QUESTION, conv)
    pending = conv.copy()
    pending.append_message(pending.roles[1], None)
    before, after = pending.get_prompt().split(IMAGE_PLACEHOLDER)
    context = chat.get_context_emb(pending, img_list)[0]
    assert torch.equal(context[: len(encode(tokenizer, before))], embeddings_of(model, encode(tokenizer, before)))
    assert context.shape[0] == len(encode(tokenizer, before)) + 8 + len(encode(tokenizer, after))
    greedy = {"do_sample": False, "num_beams": 1}
    _, tokens = chat.answer(conv.copy(), img_list, max_new_tokens=1, **greedy)
    hashes = tokenizer.convert_tokens_to_ids(".###")
    assert (hashes,) in {tuple(s) for s in chat.stop_criterion(conv).by_length[1].tolist()}
    with favoured(model.llama_model, hashes, over=int(tokens[0])):
        text, tokens = chat.answer(conv, img_list, max_new_tokens=8, **greedy)
    assert tokens.tolist() == [hashes] and text == "."


# --- both stages through train.py, then chat from the stage-2 checkpoint ----------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_both_stages_train_and_chat_in_the_family_template(root, family, photo, tmp_path, monkeypatch):
    monkeypatch.chdir(root)
    seen, real = [], Chat.get_context_emb

    def recording(self, conv, img_list):
        seen.append(conv.get_prompt())
        return real(self, conv, img_list)

    monkeypatch.setattr(Chat, "get_context_emb", recording)
    llm = [f"model.llama_model={folder_of(root, family)}", CHAT_TEMPLATE]
    fast = ["run.device=cpu", "run.num_workers=0", "run.max_epoch=1", "run.iters_per_epoch=2", "run.log_freq=1"]
    fast += ["run.batch_size_train=2", "run.warmup_steps=1", *llm]
    stage1 = train.main(["--cfg-path", str(STAGE1_TINY), "--options", *fast, f"run.output_dir={tmp_path / 's1'}"])
    assert stage1.model.prompt_list == [] and all(torch.isfinite(torch.tensor(h["loss"])) for h in stage1.history)
    ckpt1 = f"model.ckpt={stage1.output_dir / 'checkpoint_0.pth'}"
    runner = train.main(
        ["--cfg-path", str(STAGE2_TINY), "--options", *fast, f"run.output_dir={tmp_path / 's2'}", ckpt1]
    )
    model = runner.model
    assert type(model.llama_model).__name__ == CLASSES[family]
    assert model.end_sym == END_OF_TURN[family] and len(runner.history) == 2
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in runner.history)
    assert all("###" not in p and IMAGE_MESSAGE in p for p in model.prompt_list)
    ckpt = runner.output_dir / "checkpoint_0.pth"
    assert load_checkpoint(ckpt)["config"]["model"]["conv_template"] == "chat_template"

    chat = build_chat(str(TINY_EVAL), [*llm, f"model.ckpt={ckpt}"], torch.device("cpu"))
    assert torch.equal(chat.model.llama_proj.weight, model.llama_proj.weight)
    assert chat.answer_batch([photo], [QUESTION], do_sample=False, max_new_tokens=4)
    trained = next(p for p in model.prompt_list if "Describe this image in detail." in p)
    assert seen == [
        trained.replace("<Img><ImageHere></Img> Describe this image in detail.", f"{IMAGE_MESSAGE} {QUESTION}")
    ]
