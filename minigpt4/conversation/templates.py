"""The conversation templates: the one home of the chat formats, picked by ``model.conv_template``.

A template decides the chat prompt (``Chat``, streaming, ``answer_batch``, the demo,
``inference.py``), the training prompt that stage 2 wraps around each image (``prompt_template``
and ``end_sym``) and the texts generation stops on. The names:

``vicuna_v0``
    The reference's ``CONV_VISION``; training prompt ``###Human: {} ###Assistant: ``, answers end
    with ``###``. A first chat turn reads::

        <s>Give the following image: <Img>ImageContent</Img>. You will be able ... questions.###Human: <Img>
        [image embeddings]</Img> {question}###Assistant:

``llama2``
    Upstream's later LLaMA-2 MiniGPT-4 (``CONV_VISION_LLama2``); training prompt
    ``[INST] {} [/INST] ``, answers end with ``</s>``. Its chat prompt keeps upstream's system
    sentence and the template's own ``<s>`` (a second BOS, as LLaMA-2-chat opens every turn)::

        <s>Give the following image: ... questions.<s>[INST] <Img>[image embeddings]</Img> {question} [/INST]

``chat_template``
    The LLM tokenizer's own Jinja chat template (``chat_template`` in ``tokenizer_config.json`` or
    ``chat_template.jinja``), rendered by ``tokenizer.apply_chat_template``, with
    ``<Img><ImageHere></Img>`` inside the user turn. Training renders the same user turn around each
    prompt line and ends the answer with what the template writes after an assistant message (its
    end-of-turn text: ``<|im_end|>``, ``<|eot_id|>``, ``</s>`` ...), which is also a stop. What the
    template writes between the generation prompt and the last answer (Qwen3's empty ``<think>``
    block) ends the prompt, except whitespace that the tokenizer writes into the answer's first
    token (the space of Mistral's ``[/INST] a``).

``auto`` (the default)
    ``llama2`` for ``model_type: pretrain_llama2``, else ``vicuna_v0``, as upstream's demo chose
    its template by model type.

The image embeddings replace ``<ImageHere>`` (:data:`IMAGE_PLACEHOLDER`); only the first text
segment gets the model's BOS. Generation also stops on the tokenizer's EOS and the LLM's
``generation_config`` EOS ids.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from enum import Enum, auto
from typing import Any, Protocol

from minigpt4.common.errors import MiniGPT4Error

logger = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<ImageHere>"
IMAGE_MESSAGE = f"<Img>{IMAGE_PLACEHOLDER}</Img>"

DEFAULT_TEMPLATE = "vicuna_v0"
AUTO = "auto"
# Stand-ins rendered through a tokenizer's template to find where a user turn and an answer go.
USER_SLOT = "MINIGPT4USERTURN"
ANSWER_SLOT = "MINIGPT4ANSWERTEXT"


class TemplateError(MiniGPT4Error, ValueError):
    """A conversation template that cannot be used with this config or tokenizer."""


class SeparatorStyle(Enum):
    SINGLE = auto()
    TWO = auto()


@dataclasses.dataclass
class Conversation:
    """A conversation and the prompt string it turns into."""

    system: str
    roles: Sequence[str]
    messages: list[list[str | None]]
    offset: int
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: str | None = None
    skip_next: bool = False
    conv_id: Any = None
    # Upstream's later format: the roles carry their own punctuation and spacing ("<s>[INST] "), so
    # a message is ``role + message + sep`` and a message still to come is the role alone.
    roles_carry_punctuation: bool = False

    def get_prompt(self) -> str:
        """``system + sep``, then ``role: message + sep`` per message; a message still to come (None)
        ends the prompt with ``role:``. TWO alternates ``sep`` and ``sep2``. With
        ``roles_carry_punctuation``: ``role + message + sep``, and ``role`` for one to come."""
        if self.sep_style == SeparatorStyle.SINGLE:
            seps = [self.sep, self.sep]
        elif self.sep_style == SeparatorStyle.TWO:
            if self.sep2 is None:
                raise ValueError("SeparatorStyle.TWO needs sep2")
            seps = [self.sep, self.sep2]
        else:
            raise ValueError(f"invalid separator style: {self.sep_style}")
        prompt = self.system + seps[0]
        for i, (role, message) in enumerate(self.messages):
            if self.roles_carry_punctuation:
                prompt += f"{role}{message}{seps[i % 2]}" if message else role
            else:
                prompt += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
        return prompt

    @property
    def answer_marker(self) -> str:
        """What precedes the assistant's text in the prompt (``Assistant:``, ``[/INST]``)."""
        role = self.roles[1]
        return role.strip() if self.roles_carry_punctuation else f"{role}:"

    @property
    def stop_texts(self) -> tuple[str, ...]:
        """The texts an answer ends with, besides the tokenizer's EOS: the separator, if any."""
        return (self.sep,) if self.sep else ()

    def append_message(self, role: str, message: str | None) -> None:
        self.messages.append([role, message])

    def to_gradio_chatbot(self) -> list[dict[str, str]]:
        """The messages from ``offset`` on, in gradio's messages format, alternating user and assistant
        as the reference's pairs did (a message still to come is left out)."""
        chatbot = []
        for i, (_, message) in enumerate(self.messages[self.offset :]):
            if message is not None:
                chatbot.append({"role": "user" if i % 2 == 0 else "assistant", "content": message})
        return chatbot

    def copy(self) -> Conversation:
        """A copy with its own message list (``skip_next`` is reset, as in the reference)."""
        return dataclasses.replace(self, messages=[[role, message] for role, message in self.messages], skip_next=False)

    def dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "roles": self.roles,
            "messages": self.messages,
            "offset": self.offset,
            "sep": self.sep,
            "sep2": self.sep2,
            "conv_id": self.conv_id,
        }


CONV_VISION = Conversation(
    system="Give the following image: <Img>ImageContent</Img>. "
    "You will be able to see the image once I provide it to you. Please answer my questions.",
    roles=("Human", "Assistant"),
    messages=[],
    offset=2,
    sep_style=SeparatorStyle.SINGLE,
    sep="###",
)


# Upstream's later templates (its LLaMA-2 MiniGPT-4 and the Vicuna v0 one under its later format).
CONV_VISION_Vicuna0 = Conversation(
    system=CONV_VISION.system,
    roles=("Human: ", "Assistant: "),
    messages=[],
    offset=2,
    sep_style=SeparatorStyle.SINGLE,
    sep="###",
    roles_carry_punctuation=True,
)

CONV_VISION_LLama2 = Conversation(
    system=CONV_VISION.system,
    roles=("<s>[INST] ", " [/INST] "),
    messages=[],
    offset=2,
    sep_style=SeparatorStyle.SINGLE,
    sep="",
    roles_carry_punctuation=True,
)


# --- the tokenizer's own chat template --------------------------------------------------------


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """``messages`` through the tokenizer's chat template, as text. A BOS the template writes first
    is left out: the model and ``Chat`` put the BOS id in front themselves."""
    if not has_chat_template(tokenizer):
        raise TemplateError(
            "model.conv_template chat_template: the LLM tokenizer has no chat template (a 'chat_template' "
            "in tokenizer_config.json or a chat_template.jinja); choose vicuna_v0 or llama2"
        )
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    bos = tokenizer.bos_token
    return text.removeprefix(bos) if bos else text


def _supplies_lead(tokenizer: Any, prompt: str, lead: str) -> bool:
    """Whether the answer, tokenized apart from the prompt, gives the ids of the whole rendered
    turn only without the whitespace ``lead`` in the prompt: a metaspace or sentencepiece tokenizer
    writes the space before ``[/INST] answer`` into the answer's first token, so a prompt ending with
    that space would put a lone ``▁`` token there that the family's own template never has."""

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    whole, answer = encode(prompt + lead + ANSWER_SLOT), encode(ANSWER_SLOT)
    return whole == encode(prompt) + answer != encode(prompt + lead) + answer


@dataclasses.dataclass(frozen=True)
class TurnFormat:
    """How a tokenizer's template frames one answer: ``answer_lead`` goes between the generation
    prompt and the answer, ``end_of_turn`` after it (trailing whitespace left to the next turn)."""

    answer_lead: str
    end_of_turn: str

    @classmethod
    def of(cls, tokenizer: Any) -> TurnFormat:
        user = {"role": "user", "content": USER_SLOT}
        prompt = render_chat(tokenizer, [user], add_generation_prompt=True)
        full = render_chat(
            tokenizer, [user, {"role": "assistant", "content": ANSWER_SLOT}], add_generation_prompt=False
        )
        before, found, after = full.partition(ANSWER_SLOT)
        if not found:
            raise TemplateError("the LLM tokenizer's chat template does not write the assistant's message")
        lead = before[len(prompt) :] if before.startswith(prompt) else ""
        if lead.isspace() and _supplies_lead(tokenizer, prompt, lead):
            lead = ""  # the tokenizer writes it as part of the answer's first token (Mistral's "▁a")
        end = after.rstrip() or tokenizer.eos_token or ""
        if not end.strip():
            raise TemplateError("the LLM tokenizer's chat template ends an answer with nothing, and it has no EOS")
        return cls(lead, end)


@dataclasses.dataclass
class TokenizerConversation(Conversation):
    """A conversation rendered by the LLM tokenizer's chat template (``chat_template``). The roles
    are the template's ``user`` and ``assistant``; ``system``, when not empty, is a system turn."""

    tokenizer: Any = dataclasses.field(default=None, repr=False, compare=False)
    answer_lead: str = ""

    def get_prompt(self) -> str:
        turns = [{"role": "system", "content": self.system}] if self.system else []
        pending = False
        for role, message in self.messages:
            if message is None:
                pending = True
                continue
            turns.append({"role": "user" if role == self.roles[0] else "assistant", "content": message})
        text = render_chat(self.tokenizer, turns, add_generation_prompt=pending)
        return text + self.answer_lead if pending else text

    @property
    def answer_marker(self) -> str:
        return ""  # the answer is what the model generates after the prompt; nothing to cut


def tokenizer_conversation(tokenizer: Any) -> TokenizerConversation:
    turn = TurnFormat.of(tokenizer)
    return TokenizerConversation(
        system="",
        roles=("user", "assistant"),
        messages=[],
        offset=0,
        sep=turn.end_of_turn.strip(),
        tokenizer=tokenizer,
        answer_lead=turn.answer_lead,
    )


# --- the registry -----------------------------------------------------------------------------


class Template(Protocol):
    def conversation(self, tokenizer: Any) -> Conversation:
        """A fresh conversation (no messages) in this format."""

    def train_prompt(self, tokenizer: Any, content: str) -> str:
        """The stage-2 training prompt (``{}`` where each prompt line goes); ``content`` is
        ``model.prompt_template`` (may be empty)."""

    def end_sym(self, tokenizer: Any) -> str:
        """What follows each training answer."""


@dataclasses.dataclass(frozen=True)
class FixedTemplate:
    """A template written out here: a conversation prototype and its training prompt."""

    prototype: Conversation
    prompt: str
    end: str

    def conversation(self, tokenizer: Any) -> Conversation:  # noqa: ARG002 (the Template protocol)
        return self.prototype.copy()

    def train_prompt(self, tokenizer: Any, content: str) -> str:  # noqa: ARG002 (the Template protocol)
        return content  # model.prompt_template as written (read_prompts refuses one without a slot)

    def end_sym(self, tokenizer: Any) -> str:  # noqa: ARG002 (the Template protocol)
        return self.end


class ChatTemplate:
    """The LLM tokenizer's own chat template."""

    def conversation(self, tokenizer: Any) -> Conversation:
        return tokenizer_conversation(tokenizer)

    def train_prompt(self, tokenizer: Any, content: str) -> str:
        rendered = render_chat(tokenizer, [{"role": "user", "content": USER_SLOT}], add_generation_prompt=True)
        if rendered.count(USER_SLOT) != 1:
            raise TemplateError("the LLM tokenizer's chat template does not write the user's message once")
        rendered += TurnFormat.of(tokenizer).answer_lead
        written = {t.prompt for t in TEMPLATES.values() if isinstance(t, FixedTemplate)}
        if content in written:
            logger.warning(
                "model.conv_template chat_template: model.prompt_template %r is a written template's; the user "
                "turn holds each prompt line alone",
                content,
            )
            content = ""
        # The rendered text becomes a str.format template with one slot: its own braces are escaped.
        escaped = rendered.replace("{", "{{").replace("}", "}}")
        return escaped.replace(USER_SLOT, content or "{}")

    def end_sym(self, tokenizer: Any) -> str:
        return TurnFormat.of(tokenizer).end_of_turn


TEMPLATES: dict[str, Template] = {
    "vicuna_v0": FixedTemplate(CONV_VISION, "###Human: {} ###Assistant: ", "###"),
    "llama2": FixedTemplate(CONV_VISION_LLama2, "[INST] {} [/INST] ", "</s>"),
    "chat_template": ChatTemplate(),
}


def template_name(cfg: Any) -> str:
    """``model.conv_template`` with ``auto`` resolved (``llama2`` for ``pretrain_llama2``)."""
    name = cfg.conv_template
    if name == AUTO:
        return "llama2" if cfg.model_type == "pretrain_llama2" else DEFAULT_TEMPLATE
    if name not in TEMPLATES:
        raise TemplateError(f"model.conv_template: unknown template '{name}'; valid: {', '.join([AUTO, *TEMPLATES])}")
    return name


def resolve_template(cfg: Any, tokenizer: Any) -> str:
    """:func:`template_name`, checked against the LLM tokenizer (``chat_template`` needs one)."""
    name = template_name(cfg)
    if name == "chat_template":
        TurnFormat.of(tokenizer)
    return name


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise TemplateError(f"unknown conversation template '{name}'; valid: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def new_conversation(name: str, tokenizer: Any) -> Conversation:
    """A fresh conversation in the template ``name`` (``chat_template`` reads ``tokenizer``)."""
    return get_template(name).conversation(tokenizer)


def training_prompt_template(cfg: Any, tokenizer: Any) -> str:
    """The stage-2 prompt template the model trains with: ``model.prompt_template`` for the written
    templates, the tokenizer's rendered user turn for
    ``chat_template`` (``model.prompt_template``, if set, is then the user turn's content). Only
    used when ``model.prompt_path`` is set; a written template different from the chat's is
    logged, since chat then prompts in another format than training did."""
    name = template_name(cfg)
    if not cfg.prompt_path:
        return cfg.prompt_template
    template = get_template(name)
    prompt = template.train_prompt(tokenizer, cfg.prompt_template)
    if isinstance(template, FixedTemplate) and prompt and prompt != template.prompt:
        logger.warning(
            "model.prompt_template %r is not the %s template's %r, which chat uses", prompt, name, template.prompt
        )
    return prompt


def training_end_sym(cfg: Any, tokenizer: Any) -> str:
    """What follows each training answer: ``model.end_sym``, except that with ``chat_template`` and
    training prompts (``prompt_path``) it is the template's end-of-turn text. A written template's
    different ``end_sym`` under training prompts is logged."""
    if not cfg.prompt_path:
        return cfg.end_sym
    name = template_name(cfg)
    end = get_template(name).end_sym(tokenizer)
    if name == "chat_template":
        if cfg.end_sym != end:
            logger.info(
                "model.conv_template chat_template: answers end with %r (not model.end_sym %r)", end, cfg.end_sym
            )
        return end
    if cfg.end_sym != end:
        logger.warning("model.end_sym %r is not the %s template's %r, which chat stops on", cfg.end_sym, name, end)
    return cfg.end_sym
