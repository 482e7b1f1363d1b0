"""The conversation engine: ``Chat`` and the stop on the template's end texts.

``Chat`` keeps the reference's surface (``upload_img``, ``ask``, ``get_context_emb``, ``answer`` with
the same defaults) on transformers 5, and adds what its users asked for: a streaming answer, a batch
of (image, question) pairs answered at once, and greedy decoding (``do_sample=False``) for
deterministic output.

The prompt formats live in ``minigpt4.conversation.templates`` (``CONV_VISION``,
``CONV_VISION_Vicuna0``, ``CONV_VISION_LLama2`` and the tokenizer's own chat template), re-exported
here. A ``Chat`` speaks the template its model was configured with (``model.conv_template``,
:meth:`Chat.new_conversation`); a conversation passed in keeps its own format.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from minigpt4.common.device import init_device
from minigpt4.conversation.decoding import Decoding
from minigpt4.conversation.templates import (
    CONV_VISION,
    DEFAULT_TEMPLATE,
    IMAGE_MESSAGE,
    IMAGE_PLACEHOLDER,
    CONV_VISION_LLama2,
    CONV_VISION_Vicuna0,
    Conversation,
    SeparatorStyle,
    new_conversation,
)
from minigpt4.models.llm import start_ids

# The reference's names (and upstream's later ones) keep their import path.
__all__ = [
    "CONV_VISION",
    "IMAGE_MESSAGE",
    "IMAGE_PLACEHOLDER",
    "CONV_VISION_LLama2",
    "CONV_VISION_Vicuna0",
    "Chat",
    "Conversation",
    "Decoding",
    "SeparatorStyle",
    "StopOnSequences",
    "load_image",
    "postprocess_answer",
    "stop_sequences",
    "token_texts",
]

logger = logging.getLogger(__name__)

ImageInput = str | Path | Image.Image | torch.Tensor


def token_texts(tokenizer: PreTrainedTokenizerBase) -> dict[int, str]:
    """The text each ordinary token adds when it follows other text (``▁###`` -> `` ###``, the byte
    piece ``<0x23>`` -> ``#``). Decoding each id after ``<s>`` keeps the leading space a lone
    decode would strip; special tokens are left out. A tokenizer without BOS (Qwen) anchors on EOS."""
    anchor = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if anchor is None:
        raise ValueError("deriving stop sequences needs a tokenizer with a BOS or EOS token")
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    prefix = tokenizer.decode([anchor])
    texts = tokenizer.batch_decode([[anchor, i] for i in ids])
    return {i: text[len(prefix) :] for i, text in zip(ids, texts, strict=True) if text.startswith(prefix)}


def stop_sequences(tokenizer: PreTrainedTokenizerBase, stop: str) -> list[tuple[int, ...]]:
    """Every token sequence whose last token completes ``stop`` in the generated text.

    The reference hard-coded LLaMA's ids for ``###``: 835 (``▁###``) and 2277, 29937 (``##`` then
    ``#``). Those miss the glued forms (``.###``, ``?###``: one token each) and other splits, and mean
    nothing to another vocabulary. Here they are read from the vocabulary: the first token's text
    ends with a prefix of ``stop`` and the following tokens spell the rest exactly. Sequences that
    could only follow an earlier stop are left out.
    """
    if not stop:
        raise ValueError("the stop text must not be empty")
    texts = token_texts(tokenizer)
    exact: dict[str, list[int]] = {}
    for i, text in texts.items():
        if text and text in stop:
            exact.setdefault(text, []).append(i)

    def spellings(rest: str) -> list[tuple[int, ...]]:
        """Token sequences whose texts concatenate to exactly ``rest``."""
        if not rest:
            return [()]
        return [
            (i, *tail)
            for end in range(1, len(rest) + 1)
            for i in exact.get(rest[:end], [])
            for tail in spellings(rest[end:])
        ]

    found = set()
    for cut in range(1, len(stop) + 1):
        head, rest = stop[:cut], stop[cut:]
        tails = spellings(rest)
        for i, text in texts.items():
            if not text.endswith(head) or (rest and text.endswith(stop)):
                continue
            for tail in tails:
                # Drop sequences whose text already ended with the stop before their last token.
                if tail and "".join(texts[t] for t in (i, *tail[:-1])).endswith(stop):
                    continue
                found.add((i, *tail))
    return sorted(found, key=lambda s: (len(s), s))


class StopOnSequences(StoppingCriteria):
    """Stops each sequence of a batch, separately, when it ends with one of ``sequences``.

    (The reference checked the first sequence only and stopped the whole batch.)
    """

    def __init__(self, sequences: Sequence[Sequence[int]]):
        if not sequences:
            raise ValueError("StopOnSequences needs at least one stop sequence")
        by_length: dict[int, list[Sequence[int]]] = {}
        for seq in sequences:
            by_length.setdefault(len(seq), []).append(seq)
        self.by_length = {n: torch.tensor(seqs, dtype=torch.long) for n, seqs in sorted(by_length.items())}

    def __call__(self, input_ids: torch.LongTensor, _scores: Any, **_kwargs: Any) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for n, stops in self.by_length.items():
            if input_ids.shape[1] < n:
                break
            tail = input_ids[:, -n:]  # (B, n) against (S, n)
            done |= (tail[:, None, :] == stops.to(input_ids.device)[None]).all(dim=-1).any(dim=-1)
        return done


class _Cancel(StoppingCriteria):
    """Stops every sequence once ``event`` is set (a streaming reader went away)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, _scores: Any, **_kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _TokenQueue(BaseStreamer):
    """Hands the tokens ``generate`` produces to another thread (None marks the end)."""

    def __init__(self) -> None:
        self.queue: queue.Queue[list[int] | None] = queue.Queue()

    def put(self, value: torch.Tensor) -> None:
        self.queue.put(value.flatten().tolist())

    def end(self) -> None:
        self.queue.put(None)


def load_image(image: str | Path | Image.Image) -> Image.Image:
    """A path or PIL image as an RGB PIL image, with a clear error for a missing or unreadable file."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path} is not an image that PIL can read ({err})") from err
    except Image.DecompressionBombError as err:
        raise ValueError(f"{path} is too large to open safely ({err})") from err


def postprocess_answer(
    text: str, sep: str = CONV_VISION.sep, role: str = CONV_VISION.roles[1], marker: str | None = None
) -> str:
    """The reference's clean-up: keep what comes before the first separator (if there is one), then
    what follows the last ``marker`` (default ``{role}:``, e.g. ``Assistant:``; "" keeps it all),
    stripped."""
    if sep:
        text = text.split(sep, maxsplit=1)[0]
    marker = f"{role}:" if marker is None else marker
    if marker:
        text = text.rsplit(marker, maxsplit=1)[-1]
    return text.strip()


def _postprocess(text: str, conv: Conversation) -> str:
    return postprocess_answer(text, conv.sep, conv.roles[1], conv.answer_marker)


def _without_partial_tail(text: str, sep: str) -> str:
    """Hold back what may still become a separator (``#``, ``##``) or a multi-byte character."""
    text = text.rstrip("\ufffd")
    for n in range(len(sep) - 1, 0, -1):
        if text.endswith(sep[:n]):
            return text[:-n]
    return text


class Chat:
    """Answers questions about images with a MiniGPT-4 model.

    ``model`` provides ``llama_model`` (a transformers causal LM), ``llama_tokenizer``,
    ``encode_img(images) -> (embeds (B, Q, H), atts)`` and ``embed_tokens(ids)``; ``vis_processor``
    turns a PIL image into a (3, H, W) tensor.
    """

    def __init__(self, model: nn.Module, vis_processor: Any, device: str | torch.device = "cuda:0"):
        self.device = torch.device(device)
        self.model = model
        self.vis_processor = vis_processor
        self.tokenizer = model.llama_tokenizer
        # The template the model was configured with (model.conv_template); the reference's otherwise.
        self.conv_template = getattr(model, "conv_template", DEFAULT_TEMPLATE)
        self._prototype = new_conversation(self.conv_template, self.tokenizer)
        self._stops: dict[tuple[str, ...], StopOnSequences] = {}

    def new_conversation(self) -> Conversation:
        """An empty conversation in this Chat's template (``model.conv_template``)."""
        return self._prototype.copy()

    def _on_device(self) -> None:
        """Makes the Chat's device this thread's current one. The Ascend port did so in
        ``upload_img``: gradio callbacks and the streaming generation run in worker threads, and
        the current NPU is per thread."""
        init_device(self.device)

    def end_token_ids(self) -> list[int]:
        """The tokenizer's EOS and the LLM's ``generation_config`` EOS ids (end-of-turn tokens such
        as ``<|eot_id|>`` are listed there by the models that have them)."""
        ids = [self.tokenizer.eos_token_id]
        config = getattr(self.model.llama_model, "generation_config", None)
        configured = getattr(config, "eos_token_id", None)
        ids += configured if isinstance(configured, list) else [configured]
        return sorted({i for i in ids if i is not None})

    def _text_stops(self, text: str) -> list[tuple[int, ...]]:
        """A special token (``</s>``, ``<|im_end|>``) is its id; other text is every way the
        tokenizer can spell it."""
        special = self.tokenizer.get_added_vocab()
        if text in special:
            return [(special[text],)]
        return stop_sequences(self.tokenizer, text)

    def stop_criterion(self, conv: Conversation) -> StopOnSequences:
        """The stop for ``conv``: its template's end texts (``###``; the chat template's end of turn)
        and the end tokens of :meth:`end_token_ids`; derived once per template."""
        texts = conv.stop_texts
        if texts not in self._stops:
            sequences = {(i,) for i in self.end_token_ids()}
            for text in texts:
                sequences.update(self._text_stops(text))
            self._stops[texts] = StopOnSequences(sorted(sequences, key=lambda s: (len(s), s)))
        return self._stops[texts]

    def ask(self, text: str, conv: Conversation) -> None:
        """Adds a question; right after an image it joins the image message, as in the reference."""
        last = conv.messages[-1] if conv.messages else None
        if last is not None and last[0] == conv.roles[0] and last[1] is not None and last[1].endswith("</Img>"):
            last[1] = f"{last[1]} {text}"
        else:
            conv.append_message(conv.roles[0], text)

    @torch.no_grad()
    def encode_images(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Images (paths, PIL images or processed (3, H, W) tensors) to LLM embeddings (B, Q, H)."""
        if not images:
            raise ValueError("no images to encode")
        self._on_device()
        pixels = []
        for image in images:
            if isinstance(image, torch.Tensor):
                if image.dim() == 4 and image.shape[0] == 1:
                    pixels.append(image[0])
                elif image.dim() == 3:
                    pixels.append(image)
                else:
                    raise ValueError(f"an image tensor must be (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
            elif isinstance(image, str | Path | Image.Image):
                pixels.append(self.vis_processor(load_image(image)))
            else:
                raise TypeError(f"an image is a path, a PIL image or a tensor, not {type(image).__name__}")
        embeds, _ = self.model.encode_img(torch.stack(pixels).to(self.device))
        return embeds

    def upload_img(self, image: ImageInput, conv: Conversation, img_list: list[torch.Tensor]) -> str:
        img_list.append(self.encode_images([image]))
        conv.append_message(conv.roles[0], IMAGE_MESSAGE)
        return "Received."

    @torch.no_grad()
    def get_context_emb(self, conv: Conversation, img_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """The prompt's text embeddings interleaved with the images: (1, L, H). Only the first text
        segment starts with ``<s>`` (nothing for a tokenizer without BOS)."""
        self._on_device()
        segments = conv.get_prompt().split(IMAGE_PLACEHOLDER)
        if len(segments) != len(img_list) + 1:
            raise ValueError(
                f"the conversation has {len(segments) - 1} image placeholder(s) but {len(img_list)} image(s)"
            )
        pieces = []
        for i, segment in enumerate(segments):
            ids = self.tokenizer(segment, add_special_tokens=False).input_ids
            if i == 0:
                ids = [*start_ids(self.tokenizer), *ids]
            text = self.model.embed_tokens(torch.tensor([ids], dtype=torch.long, device=self.device))
            pieces.append(text)
            if i < len(img_list):
                pieces.append(img_list[i].to(device=text.device, dtype=text.dtype))
        return torch.cat(pieces, dim=1)

    def context_limit(self, decoding: Decoding) -> int:
        """How many context positions fit: ``max_length`` (capped at the LLM's position table) minus
        the room kept for the answer."""
        positions = getattr(self.model.llama_model.config, "max_position_embeddings", None) or decoding.max_length
        limit = min(decoding.max_length, positions) - decoding.max_new_tokens
        if limit < 1:
            raise ValueError(
                f"max_new_tokens={decoding.max_new_tokens} leaves no room for the context in the LLM's "
                f"{positions} positions"
            )
        return limit

    def overflow(self, conv: Conversation, img_list: Sequence[torch.Tensor], **decoding: Any) -> int:
        """How many of the oldest context positions ``answer`` will drop for this conversation."""
        pending = conv.copy()
        pending.append_message(pending.roles[1], None)
        length = self.get_context_emb(pending, img_list).shape[1]
        return max(0, length - self.context_limit(Decoding(**decoding)))

    def _fit(self, embs: torch.Tensor, decoding: Decoding) -> torch.Tensor:
        """Left truncation, as the reference: the oldest positions go when the context is too long."""
        limit = self.context_limit(decoding)
        if embs.shape[1] > limit:
            logger.warning(
                "The context (%d positions) and the answer (%d new tokens) exceed max_length: "
                "dropping the oldest %d positions",
                embs.shape[1],
                decoding.max_new_tokens,
                embs.shape[1] - limit,
            )
            embs = embs[:, -limit:]
        return embs

    def _prepare(self, conv: Conversation, img_list: Sequence[torch.Tensor], decoding: Decoding) -> torch.Tensor:
        conv.append_message(conv.roles[1], None)
        try:
            return self._fit(self.get_context_emb(conv, img_list), decoding)
        except BaseException:
            conv.messages.pop()  # a refused answer leaves the conversation as it was
            raise

    @torch.no_grad()
    def _generate(
        self,
        *,
        embs: torch.Tensor,
        attention_mask: torch.Tensor,
        decoding: Decoding,
        stop: StopOnSequences,
        extra_criteria: Sequence[StoppingCriteria] = (),
        streamer: BaseStreamer | None = None,
    ) -> torch.Tensor:
        """New token ids (B, T) for left-padded context embeddings (B, L, H)."""
        self._on_device()
        return self.model.llama_model.generate(
            inputs_embeds=embs,
            attention_mask=attention_mask,
            stopping_criteria=StoppingCriteriaList([stop, *extra_criteria]),
            streamer=streamer,
            **decoding.generate_kwargs(),
        )

    def _strip_leading(self, ids: Sequence[int] | torch.Tensor) -> Sequence[int] | torch.Tensor:
        """Drop a leading ``<unk>``, then a leading ``<s>``, as the reference did."""
        for special in (self.tokenizer.unk_token_id, self.tokenizer.bos_token_id):
            if special is not None and len(ids) and ids[0] == special:
                ids = ids[1:]
        return ids

    def _decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        # Special tokens (the </s> or padding after a stop) are not part of the answer.
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def answer(  # noqa: PLR0917 (the reference's positional signature)
        self,
        conv: Conversation,
        img_list: Sequence[torch.Tensor],
        max_new_tokens: int = Decoding.max_new_tokens,
        num_beams: int = Decoding.num_beams,
        min_length: int = Decoding.min_length,
        top_p: float = Decoding.top_p,
        repetition_penalty: float = Decoding.repetition_penalty,
        length_penalty: float = Decoding.length_penalty,
        temperature: float = Decoding.temperature,
        max_length: int = Decoding.max_length,
        top_k: int = Decoding.top_k,
        do_sample: bool = Decoding.do_sample,
    ) -> tuple[str, Any]:
        """Generates the Assistant's reply, stores it in ``conv`` and returns ``(text, token ids)``.
        If generation fails, ``conv`` is left as it was."""
        decoding = Decoding(
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            min_length=min_length,
            top_p=top_p,
            top_k=top_k,
            repetition_penalty=repetition_penalty,
            length_penalty=length_penalty,
            temperature=temperature,
            max_length=max_length,
            do_sample=do_sample,
        )
        embs = self._prepare(conv, img_list, decoding)
        mask = torch.ones(embs.shape[:2], dtype=torch.long, device=embs.device)
        try:
            out = self._generate(embs=embs, attention_mask=mask, decoding=decoding, stop=self.stop_criterion(conv))
        except BaseException:
            conv.messages.pop()  # a failed answer leaves the conversation as it was
            raise
        ids = self._strip_leading(out[0])
        text = _postprocess(self._decode(ids), conv)
        conv.messages[-1][1] = text
        return text, ids.cpu().numpy()

    def stream_answer(self, conv: Conversation, img_list: Sequence[torch.Tensor], **decoding: Any) -> Iterator[str]:
        """Like ``answer``, yielding the reply so far as tokens arrive (the same keyword arguments).

        Beam search cannot stream in transformers: with ``num_beams > 1`` the whole reply comes once.
        Closing the iterator early stops the generation. The final reply is stored in ``conv``.
        """
        settings = Decoding(**decoding)
        if settings.num_beams > 1:
            text, _ = self.answer(conv, img_list, **decoding)
            yield text
            return
        embs = self._prepare(conv, img_list, settings)
        mask = torch.ones(embs.shape[:2], dtype=torch.long, device=embs.device)
        tokens, cancel, failure = _TokenQueue(), threading.Event(), []
        stop = self.stop_criterion(conv)

        def run() -> None:
            try:
                self._generate(
                    embs=embs,
                    attention_mask=mask,
                    decoding=settings,
                    stop=stop,
                    extra_criteria=[_Cancel(cancel)],
                    streamer=tokens,
                )
            except BaseException as err:  # handed to the reading thread, which raises it
                failure.append(err)
                tokens.end()

        worker = threading.Thread(target=run, name="chat-generate", daemon=True)
        worker.start()
        ids: list[int] = []
        shown = ""
        try:
            while (chunk := tokens.queue.get()) is not None:
                ids.extend(chunk)
                text = _postprocess(self._decode(self._strip_leading(ids)), conv)
                conv.messages[-1][1] = text
                partial = _without_partial_tail(text, conv.sep)
                if partial != shown:
                    shown = partial
                    yield shown
        finally:
            cancel.set()
            worker.join()
        if failure:
            conv.messages.pop()  # a failed answer leaves the conversation as it was
            raise failure[0]
        final = conv.messages[-1][1] or ""
        if final != shown:
            yield final

    def answer_batch(self, images: Sequence[ImageInput], questions: Sequence[str], **decoding: Any) -> list[str]:
        """Answers each (image, question) pair as a fresh one-turn conversation, all in one
        ``generate`` call: contexts are left-padded and each stops on its own."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        settings = Decoding(**decoding)
        image_embs = self.encode_images(images)
        contexts = []
        for emb, question in zip(image_embs, questions, strict=True):
            conv = self.new_conversation()
            conv.append_message(conv.roles[0], IMAGE_MESSAGE)
            self.ask(question, conv)
            contexts.append(self._prepare(conv, [emb[None]], settings)[0])
        width = max(c.shape[0] for c in contexts)
        embs = contexts[0].new_zeros((len(contexts), width, contexts[0].shape[-1]))
        mask = torch.zeros((len(contexts), width), dtype=torch.long, device=embs.device)
        for row, context in enumerate(contexts):
            embs[row, width - context.shape[0] :] = context
            mask[row, width - context.shape[0] :] = 1
        out = self._generate(embs=embs, attention_mask=mask, decoding=settings, stop=self.stop_criterion(conv))
        return [_postprocess(self._decode(self._strip_leading(row)), conv) for row in out]
