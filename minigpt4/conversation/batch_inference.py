"""Batch inference: answers to many (image, question) pairs, without the browser, as JSONL.

    python inference.py --cfg-path eval_configs/minigpt4_eval.yaml --input photos/ \\
        --question "Describe this image in detail." --output answers.jsonl

``--input`` is one of:

* a folder: every image file in it (sorted by name), each with ``--question``;
* a ``.jsonl`` file: one ``{"image": ..., "question": ...}`` object per line (``question`` may be
  left out when ``--question`` gives it); other keys (an id, say) are copied to the output;
* any other file: a list of image paths, one per line, each with ``--question``.

Relative image paths in a list or JSONL file are relative to that file's folder. Each output line
holds the input's keys, ``image`` (as given), ``question`` and ``answer``, in input order; an image
that cannot be read gets an ``error`` instead of an ``answer``. The model and the image processor
come from the same config as the demo. Decoding is greedy (deterministic) unless ``--do-sample``;
pairs are answered ``--batch-size`` at a time, each stopping on its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from PIL import Image
from tqdm import tqdm

from minigpt4.common.cli import add_model_arguments
from minigpt4.common.errors import MiniGPT4Error
from minigpt4.conversation.decoding import Decoding

if TYPE_CHECKING:
    from minigpt4.conversation.conversation import Chat

# torch, transformers and the model code are imported where they are used, so that --help and an
# input error answer without loading them.

logger = logging.getLogger(__name__)


@dataclass
class Request:
    image: str  # as the input gave it
    path: Path  # where it is read from
    question: str
    extra: dict[str, Any] = field(default_factory=dict)


class InputError(MiniGPT4Error, ValueError):
    """Input files the command cannot use."""


def image_files(folder: Path) -> list[Path]:
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)


def read_requests(source: Path, question: str | None) -> list[Request]:
    """The (image, question) pairs of a folder, a JSONL file or a list file (see the module doc)."""
    if question is not None and not question.strip():
        raise InputError("--question is empty")
    if source.is_dir():
        if question is None:
            raise InputError("--question is needed with a folder of images")
        requests = [Request(p.name, p, question) for p in image_files(source)]
        if not requests:
            raise InputError(f"no image files in {source}")
        return requests
    if not source.is_file():
        raise InputError(f"--input {source} does not exist")
    requests = []
    lines = source.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}, line {number}"
        if source.suffix.lower() == ".jsonl":
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{where}: not JSON ({err})") from None
            if not isinstance(record, dict) or not isinstance(record.get("image"), str):
                raise InputError(f'{where}: expected an object with an "image" path')
            text = record.pop("question", question)
            if not isinstance(text, str):
                raise InputError(f'{where}: no "question" (and no --question to fall back on)')
            if not text.strip():
                raise InputError(f'{where}: the "question" is empty')
            image = record.pop("image")
            extra = record
        else:
            if question is None:
                raise InputError("--question is needed with a list of images")
            image, text, extra = line.strip(), question, {}
        requests.append(Request(image, source.parent / image, text, extra))
    if not requests:
        raise InputError(f"{source} lists no images")
    missing = [r.image for r in requests if not r.path.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(f"{len(missing)} image(s) of {source} not found (relative to its folder): {shown}")
    return requests


def batches(items: Sequence[Request], size: int) -> Iterator[Sequence[Request]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def answer_all(chat: Chat, requests: Sequence[Request], batch_size: int, out: TextIO, **decoding: Any) -> int:
    """Writes one JSON line per request, in order; returns how many images could not be read."""
    from minigpt4.conversation.conversation import load_image

    failures = 0
    with tqdm(total=len(requests), unit="image", file=sys.stderr) as progress:
        for batch in batches(requests, batch_size):
            results: list[dict[str, Any]] = [{**r.extra, "image": r.image, "question": r.question} for r in batch]
            readable, images = [], []
            for result, request in zip(results, batch, strict=True):
                try:
                    images.append(load_image(request.path))
                    readable.append(result)
                except (OSError, ValueError) as err:
                    result["error"] = str(err)
                    failures += 1
            if images:
                answers = chat.answer_batch(images, [r["question"] for r in readable], **decoding)
                for result, answer in zip(readable, answers, strict=True):
                    result["answer"] = answer
            for result in results:
                out.write(json.dumps(result, ensure_ascii=False) + "\n")
            out.flush()
            progress.update(len(batch))
    return failures


@contextmanager
def open_output(path: str) -> Iterator[TextIO]:
    """``path`` opened for writing (``-``: standard output). A folder or a file that cannot be
    written is an InputError, raised before anything heavy is loaded; a file this call created
    is removed again when nothing was written to it (the run stopped before its first answer)."""
    if path == "-":
        yield sys.stdout
        return
    created = not Path(path).exists()
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        out = open(path, "w", encoding="utf-8")  # noqa: SIM115  (closed below, after the answers)
    except OSError as err:
        raise InputError(f"--output {path} cannot be written: {err.strerror or err}") from None
    try:
        with out:
            yield out
    finally:
        if created and Path(path).stat().st_size == 0:
            Path(path).unlink()


# The Decoding fields the command line sets, as --max-new-tokens and so on, with their help
# ("{}" stands for Decoding's default). A bool field is a switch that is off unless given.
DECODING_OPTIONS = {
    "max_new_tokens": "the longest answer, in tokens (default: {})",
    "max_length": "context plus answer, in tokens; the prompt gets what the answer leaves (default: {})",
    "num_beams": "beam search width; 1 decodes one token at a time (default: {})",
    "do_sample": "sample as the demo does (default: greedy)",
    "temperature": "sampling temperature, with --do-sample (default: {})",
    "top_p": "nucleus sampling mass, with --do-sample (default: {})",
}


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    for name, help_text in DECODING_OPTIONS.items():
        flag, default = "--" + name.replace("_", "-"), getattr(Decoding, name)
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=help_text)
        else:
            parser.add_argument(flag, type=type(default), default=default, help=help_text.format(default))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Answer questions about many images; write JSONL.")
    add_model_arguments(parser, default_device="auto")
    parser.add_argument("--input", required=True, type=Path, help="a folder of images, a .jsonl file or a list file")
    parser.add_argument("--question", help="the question for every image (or the default for JSONL lines)")
    parser.add_argument("--output", default="-", help="the JSONL file to write (default: standard output)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs answered together (default: 8)")
    add_decoding_arguments(parser)
    parser.add_argument("--seed", type=int, default=42, help="seeds the sampling, with --do-sample (default: 42)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Returns the exit status: 0, or 1 when some image could not be read (its line has an error)."""
    args = parse_args(argv)
    from minigpt4.common.logger import setup_logger

    setup_logger()
    outputs = ExitStack()
    try:
        requests = read_requests(args.input, args.question)
        decoding = Decoding(**{name: getattr(args, name) for name in DECODING_OPTIONS})
        # Opened before the model loads: an unwritable output fails at once, not after the load.
        out = outputs.enter_context(open_output(args.output))
    except ValueError as err:
        logger.error("%s", err)
        return 2
    with outputs:
        import torch

        from minigpt4.common.device import resolve_device
        from minigpt4.conversation.launch import build_chat

        chat = build_chat(args.cfg_path, args.options, resolve_device(args.device), args.patch_generation)
        try:
            chat.context_limit(decoding)  # the LLM's positions are known once it is loaded
        except ValueError as err:
            logger.error("%s", err)
            return 2
        torch.manual_seed(args.seed)
        failures = answer_all(chat, requests, args.batch_size, out, **dataclasses.asdict(decoding))
    logger.info("answered %d of %d images", len(requests) - failures, len(requests))
    return 1 if failures else 0
