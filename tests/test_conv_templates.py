"""The conversation template comes from ``model.conv_template``: every chat path (``Chat``,
streaming, ``answer_batch``, ``inference.py``, the demo) and the training prompt speak it; the
tokenizer's own Jinja chat template (``chat_template``) renders both, and generation stops on its
end-of-turn token."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image
from tiny_assets import EVAL_LLAMA2_TINY, LLAMA2_TINY, REPO_ROOT, STAGE2_LLAMA2_TINY, quickstart, tiny_llama2_root
from transformers import AutoTokenizer, LlamaForCausalLM

import minigpt4
import train
from minigpt4.common.checkpoint import load_checkpoint
from minigpt4.common.config import Config
from minigpt4.conversation import templates
from minigpt4.conversation.batch_inference import main as inference_main
from minigpt4.conversation.conversation import (
    CONV_VISION,
    IMAGE_MESSAGE,
    IMAGE_PLACEHOLDER,
    Chat,
    CONV_VISION_LLama2,
    CONV_VISION_Vicuna0,
    Conversation,
)
from minigpt4.conversation.demo_app import build_demo
from minigpt4.conversation.launch import build_chat
from minigpt4.conversation.templates import TemplateError, TurnFormat, template_name
from minigpt4.models import mini_gpt4
from minigpt4.models.mini_gpt4 import MiniGPT4

QUESTION = "What is this?"
# upstream's first LLaMA-2 turn (spec 5.2): the system sentence, then the template's own <s>
INST_PROMPT = CONV_VISION_LLama2.system + f"<s>[INST] {IMAGE_MESSAGE} {QUESTION} [/INST] "
# A ChatML template like Qwen's, with a BOS first like LLaMA-3's; <|im_end|> ends each turn.
CHATML = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Meta's LLaMA-2-chat template, shortened: a space before the answer, " </s>" after it.
LLAMA2_CHAT = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token }}[INST] {{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}"
)
TINY_VIT = {"patch_size": 14, "embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 4.3637}
GREEDY = {"do_sample": False, "max_new_tokens": 4}


@pytest.fixture(scope="module")
def root() -> Path:
    return tiny_llama2_root()


@pytest.fixture(scope="module")
def processor():
    from minigpt4.common.registry import registry

    return registry.get_processor_class("blip2_image_eval").from_config({"image_size": 56})


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photo")
    Image.new("RGB", (80, 60), "red").save(folder / "red.png")
    return folder / "red.png"


@pytest.fixture(scope="module")
def llama2_chat(root) -> Chat:
    """The tiny LLaMA-2 eval config, loaded as demo.py and inference.py load it."""
    with contextlib.chdir(root):
        return build_chat(str(EVAL_LLAMA2_TINY), None, torch.device("cpu"))


@pytest.fixture
def prompts(monkeypatch) -> list[str]:
    """The prompt of every context ``Chat`` builds (the real method runs)."""
    seen, real = [], Chat.get_context_emb

    def recording(self, conv, img_list):
        seen.append(conv.get_prompt())
        return real(self, conv, img_list)

    monkeypatch.setattr(Chat, "get_context_emb", recording)
    return seen


def model_cfg(**keys):
    return SimpleNamespace(**{"conv_template": "auto", "model_type": "pretrain_vicuna", **keys})


# --- names and config ---------------------------------------------------------------------------


def test_the_key_picks_the_template_and_auto_follows_the_model_type():
    assert template_name(model_cfg()) == "vicuna_v0"
    assert template_name(model_cfg(model_type="pretrain_vicuna0")) == "vicuna_v0"
    assert template_name(model_cfg(model_type="pretrain_llama2")) == "llama2"
    assert template_name(model_cfg(model_type="pretrain_llama2", conv_template="vicuna_v0")) == "vicuna_v0"
    assert template_name(model_cfg(conv_template="chat_template")) == "chat_template"
    with pytest.raises(TemplateError, match="unknown template 'chatml'; valid: auto, vicuna_v0, llama2, chat_template"):
        template_name(model_cfg(conv_template="chatml"))
    load = lambda path: Config(SimpleNamespace(cfg_path=str(REPO_ROOT / path), options=None)).model_cfg  # noqa: E731
    assert load("eval_configs/minigpt4_eval.yaml").conv_template == "auto"  # the reference's: vicuna_v0
    assert template_name(load("eval_configs/minigpt4_eval.yaml")) == "vicuna_v0"
    for path in ("eval_configs/minigpt4_llama2_eval.yaml", "train_configs/minigpt4_llama2_stage2_finetune.yaml"):
        assert load(path).conv_template == "llama2"


def test_the_reference_names_keep_working_and_the_placeholder_has_one_home():
    assert templates.CONV_VISION is CONV_VISION and templates.CONV_VISION_LLama2 is CONV_VISION_LLama2
    assert templates.CONV_VISION_Vicuna0 is CONV_VISION_Vicuna0 and templates.Conversation is Conversation
    assert mini_gpt4.IMAGE_PLACEHOLDER is IMAGE_PLACEHOLDER is templates.IMAGE_PLACEHOLDER == "<ImageHere>"
    assert templates.TEMPLATES["vicuna_v0"].conversation(None).get_prompt() == CONV_VISION.get_prompt()
    package = Path(minigpt4.__file__).parent
    defined = [p.relative_to(package).as_posix() for p in package.rglob("*.py") if '"<ImageHere>"' in p.read_text()]
    assert defined == ["conversation/templates.py"]
    copy = CONV_VISION.copy()
    copy.append_message(copy.roles[0], "hi")
    assert CONV_VISION.messages == [] and type(copy) is Conversation


# --- the LLaMA-2 tiny eval config: every chat path speaks [INST] --------------------------------


def test_chat_answer_and_stream_speak_the_configured_template(llama2_chat, photo, prompts):
    chat = llama2_chat
    assert chat.conv_template == "llama2" and chat.model.end_sym == "</s>"
    conv, img_list = chat.new_conversation(), []
    assert conv.roles == CONV_VISION_LLama2.roles and conv.messages == []
    chat.upload_img(photo, conv, img_list)
    chat.ask(QUESTION, conv)
    text, _ = chat.answer(conv.copy(), img_list, **GREEDY)
    assert prompts == [INST_PROMPT]
    streamed = list(chat.stream_answer(conv, img_list, **GREEDY))
    assert prompts == [INST_PROMPT, INST_PROMPT] and streamed[-1] == text == conv.messages[-1][1]
    assert chat.new_conversation().messages == []  # each conversation is a fresh copy
    # a conversation passed in keeps its own format (the reference's CONV_VISION)
    conv, img_list = CONV_VISION.copy(), []
    chat.upload_img(photo, conv, img_list)
    chat.ask(QUESTION, conv)
    chat.answer(conv, img_list, **GREEDY)
    assert prompts[-1] == CONV_VISION.system + f"###Human: {IMAGE_MESSAGE} {QUESTION}###Assistant:"


def test_answer_batch_and_inference_speak_the_configured_template(llama2_chat, root, photo, prompts, tmp_path):
    answers = llama2_chat.answer_batch([photo, photo], [QUESTION, QUESTION], **GREEDY)
    assert prompts == [INST_PROMPT, INST_PROMPT] and len(answers) == 2
    prompts.clear()
    out = tmp_path / "answers.jsonl"
    argv = ["--cfg-path", str(EVAL_LLAMA2_TINY), "--input", str(photo.parent), "--question", QUESTION]
    with contextlib.chdir(root):
        assert inference_main([*argv, "--device", "cpu", "--max-new-tokens", "4", "--output", str(out)]) == 0
    assert prompts == [INST_PROMPT]  # (a new build: its untrained llama_proj answers otherwise)
    assert json.loads(out.read_text())["question"] == QUESTION


def test_the_demo_speaks_the_configured_template(llama2_chat, photo, prompts):
    demo = build_demo(llama2_chat, max_new_tokens=4, max_length=200).queue()
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, share=False, quiet=True)
    try:
        user = Client(demo.local_url, verbose=False)
        user.predict(handle_file(str(photo)), api_name="/upload")
        user.predict(QUESTION, api_name="/ask")
        chatbot, status = user.predict(1, 1.0, api_name="/answer")
    finally:
        demo.close()
    assert status == "" and chatbot[-1]["role"] == "assistant"
    assert prompts and set(prompts) == {INST_PROMPT}


# --- the tokenizer's own chat template -----------------------------------------------------------


@pytest.fixture(scope="module")
def chatml_folder(root, tmp_path_factory) -> Path:
    """The tiny LLaMA-2 folder with two more special tokens (rows added to the embedding, as a
    chat model ships them) and a ChatML template in its tokenizer_config.json."""
    source = root / quickstart.WEIGHTS / LLAMA2_TINY
    folder = tmp_path_factory.mktemp("chatml") / "llm"
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    llm = LlamaForCausalLM.from_pretrained(source)
    llm.resize_token_embeddings(len(tokenizer))
    llm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHATML}, indent=2))
    return folder


def chatml_cfg(root: Path, folder: Path, **keys):
    weights = root / quickstart.WEIGHTS
    cfg = {
        "arch": "minigpt4",
        "model_type": "pretrain_llama2",
        "has_qformer": False,
        "vit_weights": str(weights / "eva_vit_tiny.pth"),
        "llama_model": str(folder),
        "image_size": 56,
        "vit_arch": TINY_VIT,
        "vit_precision": "fp32",
        "llm_precision": "fp32",
        "conv_template": "chat_template",
        "prompt_path": "prompts/alignment.txt",
        "max_txt_len": 160,
        "end_sym": "###",  # replaced by the template's end of turn
    }
    return {**cfg, **keys}


@pytest.fixture(scope="module")
def chatml_model(root, chatml_folder) -> MiniGPT4:
    return MiniGPT4.from_config(chatml_cfg(root, chatml_folder)).eval()


def test_a_tokenizer_template_frames_the_answer():
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama2_root() / quickstart.WEIGHTS / LLAMA2_TINY)
    tokenizer.chat_template = LLAMA2_CHAT
    turn = TurnFormat.of(tokenizer)
    # The space before the answer is not left in the prompt: sentencepiece writes it into the answer's
    # first token ("▁a"), as it tokenizes the whole turn; a prompt ending in " " would add a lone "▁".
    assert (turn.answer_lead, turn.end_of_turn) == ("", " </s>")
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    assert encode("[INST] a red [/INST] a blue </s>") == encode("[INST] a red [/INST]") + encode("a blue </s>")
    template = templates.TEMPLATES["chat_template"]
    assert template.train_prompt(tokenizer, "") == "[INST] {} [/INST]"  # upstream's, less the lone space
    assert template.end_sym(tokenizer) == " </s>"
    conv = template.conversation(tokenizer)
    conv.append_message(conv.roles[0], "Q1")
    conv.append_message(conv.roles[1], "A1")
    conv.append_message(conv.roles[0], "Q2")
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == "[INST] Q1 [/INST] A1 </s><s>[INST] Q2 [/INST]"
    assert conv.stop_texts == ("</s>",) and conv.copy().tokenizer is tokenizer


def test_training_prompts_are_rendered_by_the_tokenizer_template(chatml_model):
    model, tokenizer = chatml_model, chatml_model.llama_tokenizer
    assert model.conv_template == "chat_template" and model.end_sym == "<|im_end|>"
    lines = [line for line in (REPO_ROOT / "prompts/alignment.txt").read_text().splitlines() if line]
    assert len(model.prompt_list) == len(lines) == 4
    for line, prompt in zip(lines, model.prompt_list, strict=True):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": line}], tokenize=False, add_generation_prompt=True
        )
        assert rendered == tokenizer.bos_token + prompt  # the model adds the BOS id itself
        assert prompt == f"<|im_start|>user\n{line}<|im_end|>\n<|im_start|>assistant\n"
    inputs = model.prepare_llm_inputs({"image": torch.zeros(2, 3, 56, 56), "text_input": ["a red square", "red"]})
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    last = inputs.attention_mask.sum(dim=1) - 1
    assert inputs.labels[torch.arange(2), last].tolist() == [im_end, im_end]  # the end of turn is trained
    assert (inputs.labels == tokenizer.bos_token_id).sum() == 0 and inputs.inputs_embeds.shape[0] == 2


def test_a_chat_template_needs_a_tokenizer_with_one(root):
    with pytest.raises(TemplateError, match="the LLM tokenizer has no chat template"):
        MiniGPT4.from_config(chatml_cfg(root, root / quickstart.WEIGHTS / LLAMA2_TINY, prompt_path=""))


def test_chat_renders_the_tokenizer_template_like_training(chatml_model, processor, photo, prompts):
    chat = Chat(chatml_model, processor, device="cpu")  # the reference's signature
    tokenizer = chat.tokenizer
    conv, img_list = chat.new_conversation(), []
    chat.upload_img(photo, conv, img_list)
    chat.ask(QUESTION, conv)
    text, tokens = chat.answer(conv, img_list, **GREEDY)
    # the chat prompt of a first turn is the training prompt around the question
    first = f"<|im_start|>user\n{IMAGE_MESSAGE} {QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    assert prompts == [first]
    assert chatml_model.prompt_list[0].replace("Describe this image in detail.", QUESTION) == first
    before, after = first.split(IMAGE_PLACEHOLDER)
    pending = conv.copy()
    pending.messages[-1][1] = None
    context = chat.get_context_emb(pending, img_list)
    width = len(tokenizer(before, add_special_tokens=False).input_ids)
    assert context.shape[1] == 1 + width + chatml_model.num_image_tokens + len(tokenizer(after).input_ids) - 1
    assert conv.messages[-1] == ["assistant", text] and len(tokens) <= GREEDY["max_new_tokens"]
    # the next turn renders the answer closed by its end of turn
    chat.ask("And now?", conv)
    chat.answer(conv, img_list, **GREEDY)
    assert prompts[-1] == f"{first}{text}<|im_end|>\n<|im_start|>user\nAnd now?<|im_end|>\n<|im_start|>assistant\n"
    assert chat.answer_batch([photo], [QUESTION], **GREEDY) and prompts[-1] == first


def test_generation_stops_on_the_end_of_turn_token(chatml_model, processor, photo):
    chat = Chat(chatml_model, processor, device="cpu")
    tokenizer, llm = chat.tokenizer, chatml_model.llama_model
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    conv = chat.new_conversation()
    stop = chat.stop_criterion(conv)
    assert stop.by_length[1].flatten().tolist() == sorted([tokenizer.eos_token_id, im_end])
    assert llm.generation_config.eos_token_id == tokenizer.eos_token_id  # generate alone would not stop on it
    llm.generation_config.eos_token_id = [tokenizer.eos_token_id, 7]  # a model that lists more end tokens
    try:
        assert chat.end_token_ids() == sorted([tokenizer.eos_token_id, 7])
    finally:
        llm.generation_config.eos_token_id = tokenizer.eos_token_id

    img_list = []
    chat.upload_img(photo, conv, img_list)
    chat.ask(QUESTION, conv)
    _, tokens = chat.answer(conv.copy(), img_list, do_sample=False, max_new_tokens=1)
    first = int(tokens[0])
    assert first not in (im_end, tokenizer.eos_token_id)
    # the end of turn takes the first token's place, a little ahead of it, at every position where
    # the first token would have won; the answer then stops right there instead of running on
    head = llm.get_output_embeddings().weight
    saved = head[im_end].clone()
    with torch.no_grad():
        head[im_end] = 1.5 * head[first]
    try:
        answered = conv.copy()
        text, tokens = chat.answer(answered, img_list, do_sample=False, max_new_tokens=8)
    finally:
        with torch.no_grad():
            head[im_end] = saved
    assert tokens.tolist() == [im_end] and text == "" and answered.messages[-1] == ["assistant", ""]


def test_inference_reads_the_key_from_options(root, chatml_folder, photo, prompts, tmp_path):
    out = tmp_path / "answers.jsonl"
    options = ["model.conv_template=chat_template", f"model.llama_model={chatml_folder}"]
    argv = ["--cfg-path", str(EVAL_LLAMA2_TINY), "--input", str(photo.parent), "--question", QUESTION]
    with contextlib.chdir(root):
        argv += ["--device", "cpu", "--max-new-tokens", "4", "--output", str(out), "--options", *options]
        assert inference_main(argv) == 0
    assert prompts == [f"<|im_start|>user\n{IMAGE_MESSAGE} {QUESTION}<|im_end|>\n<|im_start|>assistant\n"]


def test_stage2_trains_through_the_tokenizer_template_and_chats_in_it(root, chatml_folder, photo, prompts, tmp_path):
    fast = ["run.device=cpu", "run.num_workers=0", "run.max_epoch=1", "run.iters_per_epoch=2", "run.log_freq=1"]
    fast += ["run.batch_size_train=2", "run.warmup_steps=1", f"run.output_dir={tmp_path}"]
    template = ["model.conv_template=chat_template", f"model.llama_model={chatml_folder}"]
    with contextlib.chdir(root):
        runner = train.main(
            ["--cfg-path", str(STAGE2_LLAMA2_TINY), "--options", *fast, *template, "model.prompt_template=''"]
        )
        assert runner.model.end_sym == "<|im_end|>" and len(runner.history) == 2
        assert all(torch.isfinite(torch.tensor(h["loss"])) for h in runner.history)
        assert all(p.startswith(f"<|im_start|>user\n{IMAGE_MESSAGE} ") for p in runner.model.prompt_list)
        ckpt = runner.output_dir / "checkpoint_0.pth"
        assert load_checkpoint(ckpt)["config"]["model"]["conv_template"] == "chat_template"
        chat = build_chat(str(EVAL_LLAMA2_TINY), [*template, f"model.ckpt={ckpt}"], torch.device("cpu"))
    assert chat.answer_batch([photo], [QUESTION], **GREEDY)
    assert prompts == [f"<|im_start|>user\n{IMAGE_MESSAGE} {QUESTION}<|im_end|>\n<|im_start|>assistant\n"]
