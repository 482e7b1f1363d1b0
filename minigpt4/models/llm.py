"""The frozen Vicuna/LLaMA: its config, tokenizer and weights, read from a local folder.

A Vicuna folder as users have it: ``config.json``, weights as sharded ``pytorch_model-*.bin`` with
an index or as safetensors, and ``tokenizer.model`` with a ``LlamaTokenizer``-era
``tokenizer_config.json``. Nothing is ever fetched from a model hub (``local_files_only``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
from transformers import BitsAndBytesConfig, GenerationConfig, LlamaConfig, LlamaForCausalLM, LlamaTokenizer

from minigpt4.common.device import DeviceError, resolve_device
from minigpt4.common.errors import MiniGPT4Error
from minigpt4.models.loaders import WeightLoadError

logger = logging.getLogger(__name__)

# LLaMA sizes by hidden width, to say what a width mismatch means.
LLAMA_SIZES = {4096: "7B", 5120: "13B", 6656: "33B", 8192: "65B"}


def llama_size_name(hidden_size: int) -> str:
    """``4096`` -> ``"a 7B LLM"``; widths of no released LLaMA are described by the number alone."""
    size = LLAMA_SIZES.get(hidden_size)
    return f"a {size} LLM" if size else f"an LLM of width {hidden_size}"


def llama_folder(location: str) -> Path:
    """The Vicuna/LLaMA folder named by ``model.llama_model``, checked to exist."""
    if not location:
        raise FileNotFoundError("model.llama_model is empty: set it to the Vicuna/LLaMA weight folder")
    folder = Path(location).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"model.llama_model: '{location}' is not a Vicuna/LLaMA folder (no config.json in it); "
            "names of model-hub repositories are not fetched"
        )
    return folder


class TokenizerError(MiniGPT4Error, ValueError):
    """The LLM folder's tokenizer is missing, unreadable, or does not fit the LLM's config.json."""


TOKENIZER_FILE = "tokenizer.model"
FAST_TOKENIZER_FILE = "tokenizer.json"
# The texts whose encoding the report shows: the stage-2 stop symbol and LLaMA's end of sequence.
PROBE_TEXTS = ("###", "</s>")
# The embedding may have this many rows more than the tokenizer has tokens: rows no id reaches
# (Vicuna v0 13B's 32001 for LLaMA's 32000 tokens, tables padded to a multiple of 64 or 128).
# More surplus means a tokenizer of another model; fewer rows than tokens index past the table.
VOCAB_SURPLUS = 256
# 2023 conversions of LLaMA/Vicuna v0 (transformers 4.28.0.dev0) wrote these special ids into
# config.json and generation_config.json while tokenizer.model has <s>=1, </s>=2.
V0_CONFIG_IDS = (0, 1)
V0_TOKENIZER_IDS = (1, 2)


@dataclass
class TokenizerReport:
    """What :func:`check_llama_tokenizer` found in a Vicuna/LLaMA folder.

    ``problems`` are reasons to refuse the folder; ``corrections`` are the known config.json quirks
    that loading corrects (the tokenizer's ids win), with one warning.
    """

    folder: Path
    file: Path  # the tokenizer file read (tokenizer.model, else tokenizer.json)
    vocab_size: int | None = None  # tokens of the tokenizer, added tokens included
    config_vocab_size: int | None = None  # rows of the LLM's embedding (config.json)
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    config_ids: dict[str, Any] = field(default_factory=dict)  # config.json's bos/eos/pad ids
    generation_ids: dict[str, Any] = field(default_factory=dict)  # generation_config.json's, if any
    encodings: dict[str, list[int]] = field(default_factory=dict)  # PROBE_TEXTS, no BOS
    problems: list[str] = field(default_factory=list)
    corrections: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def message(self) -> str:
        """The refusal in one line, naming the folder and the file."""
        return f"the LLM tokenizer {self.file} does not fit the folder {self.folder}: " + "; ".join(self.problems)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TokenizerError(f"{path} is not readable JSON: {error}") from error
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} holds a {type(data).__name__}, not a JSON object")
    return data


def _special_ids(data: dict[str, Any]) -> dict[str, Any]:
    return {key: data.get(key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")}


def _check_ids(report: TokenizerReport, ids: dict[str, Any], source: str) -> None:
    """The rule for a config's BOS/EOS ids against the tokenizer's: unset or equal is fine (an EOS
    list must contain the tokenizer's EOS); exactly the v0 quirk (0, 1) for a tokenizer with (1, 2)
    is corrected with a warning; anything else is refused. A pad id outside the vocabulary (v0's
    -1) is replaced by the tokenizer's pad, which is EOS."""
    bos, eos, pad = ids["bos_token_id"], ids["eos_token_id"], ids["pad_token_id"]
    tokenizer_ids = (report.bos_token_id, report.eos_token_id)
    vocab = report.config_vocab_size or 0
    if isinstance(pad, int) and not 0 <= pad < vocab:
        report.corrections.append(f"{source} pad_token_id {pad} -> {report.eos_token_id} (</s>)")
    if (bos, eos) == V0_CONFIG_IDS and tokenizer_ids == V0_TOKENIZER_IDS:
        report.corrections.append(f"{source} bos_token_id/eos_token_id 0/1 -> 1/2")
        return
    if bos is not None and bos != report.bos_token_id:
        report.problems.append(f"{source} has bos_token_id {bos}, the tokenizer has <s> = {report.bos_token_id}")
    eos_ids = eos if isinstance(eos, list) else [eos]
    if eos is not None and report.eos_token_id not in eos_ids:
        report.problems.append(f"{source} has eos_token_id {eos}, the tokenizer has </s> = {report.eos_token_id}")


def _read_tokenizer(folder: Path, report: TokenizerReport) -> LlamaTokenizer | None:
    """The tokenizer as the model uses it, or None with the reason in ``report.problems``."""
    pieces = None
    if report.file.name == TOKENIZER_FILE:
        try:
            pieces = spm.SentencePieceProcessor(model_file=str(report.file)).get_piece_size()
        except (OSError, RuntimeError) as error:
            report.problems.append(f"{TOKENIZER_FILE} is not a sentencepiece model ({str(error).splitlines()[0]})")
            return None
    try:
        tokenizer = LlamaTokenizer.from_pretrained(folder, legacy=True, local_files_only=True)
    except (OSError, ValueError, RuntimeError, TypeError) as error:
        report.problems.append(f"transformers cannot read it ({str(error).splitlines()[0]})")
        return None
    report.vocab_size = len(tokenizer)
    if pieces is not None and report.vocab_size < pieces:
        report.problems.append(f"transformers read {report.vocab_size} tokens of its {pieces} pieces")
    return tokenizer


def _inspect_tokenizer(folder: Path) -> tuple[TokenizerReport, LlamaTokenizer | None]:
    folder = Path(folder)
    model_file, fast_file = folder / TOKENIZER_FILE, folder / FAST_TOKENIZER_FILE
    report = TokenizerReport(folder, model_file if model_file.is_file() or not fast_file.is_file() else fast_file)
    # A folder of tokenizer files only (the benchmark's) is checked without the config's part.
    has_config = (folder / "config.json").is_file()
    config = _read_json(folder / "config.json") if has_config else {}
    report.config_vocab_size = config.get("vocab_size")
    report.config_ids = _special_ids(config)
    if (folder / "generation_config.json").is_file():
        report.generation_ids = _special_ids(_read_json(folder / "generation_config.json"))
    if not report.file.is_file():
        # transformers would build a 3-token tokenizer without it and train on BOS only.
        report.problems.append(f"there is no {TOKENIZER_FILE} (nor {FAST_TOKENIZER_FILE})")
        return report, None
    tokenizer = _read_tokenizer(folder, report)
    if tokenizer is None:
        return report, None
    report.bos_token_id, report.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    for text in PROBE_TEXTS:
        report.encodings[text] = tokenizer(text, add_special_tokens=False).input_ids
    if report.bos_token_id is None or report.eos_token_id is None or report.bos_token_id == report.eos_token_id:
        report.problems.append(
            f"it needs distinct <s> and </s> ids, has {report.bos_token_id} and {report.eos_token_id}"
        )
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in report.encodings["###"]:
        report.problems.append(f"it encodes '###' with <unk> ({report.encodings['###']}), so no answer could stop")
    if not has_config:
        return report, tokenizer
    rows = report.config_vocab_size
    if not isinstance(rows, int) or not report.vocab_size <= rows <= report.vocab_size + VOCAB_SURPLUS:
        report.problems.append(f"it has {report.vocab_size} tokens but config.json has vocab_size {rows}")
    if not report.problems:
        _check_ids(report, report.config_ids, "config.json")
        if report.generation_ids:
            _check_ids(report, report.generation_ids, "generation_config.json")
    return report, tokenizer


def check_llama_tokenizer(folder: str | Path) -> TokenizerReport:
    """Inspect the tokenizer of a Vicuna/LLaMA folder against its ``config.json`` (and
    ``generation_config.json``) without reading any weight. Never raises for a bad tokenizer: the
    reasons are in ``problems``. Raises :class:`TokenizerError` only for an unreadable config."""
    return _inspect_tokenizer(Path(folder))[0]


def require_llama_tokenizer(folder: str | Path) -> TokenizerReport:
    """:func:`check_llama_tokenizer`, raising :class:`TokenizerError` in one line when it found a
    problem. The start-up check of training, inference and the demo."""
    report = check_llama_tokenizer(folder)
    if report.problems:
        raise TokenizerError(report.message())
    return report


def read_llama_config(folder: Path, tokenizer: LlamaTokenizer | None = None) -> LlamaConfig:
    """The LLM's config. 2023 conversions name the position table ``max_sequence_length``, which
    transformers does not read: it becomes ``max_position_embeddings`` (default 2048 otherwise).
    Given the folder's checked tokenizer (:func:`load_llama_tokenizer`), the special ids are the
    tokenizer's (:func:`tokenizer_ids`); without it, a pad id outside the vocabulary is dropped."""
    raw = _read_json(Path(folder) / "config.json")
    if "max_position_embeddings" not in raw and isinstance(raw.get("max_sequence_length"), int):
        raw["max_position_embeddings"] = raw["max_sequence_length"]
    if tokenizer is not None:
        raw.update(tokenizer_ids(raw, tokenizer))
    elif isinstance(raw.get("pad_token_id"), int) and not 0 <= raw["pad_token_id"] < raw.get("vocab_size", 0):
        raw["pad_token_id"] = None
    return LlamaConfig.from_dict(raw)


def tokenizer_ids(config: dict[str, Any], tokenizer: LlamaTokenizer) -> dict[str, Any]:
    """The special ids a config (``config.json`` or ``generation_config.json`` as a dict) is to
    have: the tokenizer's BOS and EOS (a list of EOS ids that holds the tokenizer's is kept), and
    the tokenizer's pad (EOS) where the config's pad is unset or outside the vocabulary."""
    eos = config.get("eos_token_id")
    ids = {"bos_token_id": tokenizer.bos_token_id}
    ids["eos_token_id"] = eos if isinstance(eos, list) and tokenizer.eos_token_id in eos else tokenizer.eos_token_id
    pad = config.get("pad_token_id")
    if not isinstance(pad, int) or not 0 <= pad < len(tokenizer):
        ids["pad_token_id"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return ids


def load_llama_tokenizer(folder: Path) -> LlamaTokenizer:
    """The LLaMA tokenizer, checked against the folder's config (:func:`require_llama_tokenizer`),
    with the reference's settings: pad = eos, right padding.

    transformers 5 converts ``tokenizer.model`` into a fast tokenizer. ``legacy=True`` keeps the
    sentencepiece behaviour of the reference's slow tokenizer of transformers 4.28, which gives
    text after a special token written in the text (``a</s>b``) a fresh dummy prefix.
    """
    report, tokenizer = _inspect_tokenizer(Path(folder))
    if report.problems:
        raise TokenizerError(report.message())
    if report.corrections:
        logger.warning(
            "%s: the special ids of the config disagree with %s in the way of 2023 Vicuna v0 conversions; "
            "the tokenizer's ids are used for training and generation (%s)",
            folder,
            report.file.name,
            ", ".join(report.corrections),
        )
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def llama_generation_config(folder: Path, config: LlamaConfig, tokenizer: LlamaTokenizer) -> GenerationConfig:
    """The folder's ``generation_config.json`` (else the one transformers derives from ``config``)
    with the tokenizer's special ids (:func:`tokenizer_ids`)."""
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return GenerationConfig.from_model_config(config)
    raw = _read_json(path)
    raw.update(tokenizer_ids(raw, tokenizer))
    return GenerationConfig.from_dict(raw)


def build_llama(config: LlamaConfig, dtype: torch.dtype) -> LlamaForCausalLM:
    """A LLaMA with random weights, on the current default device (``torch.device`` context)."""
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=dtype)


def _check_8bit_possible(device_8bit: int) -> torch.device:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise DeviceError(
            "low_resource: True loads the LLM in 8 bit through bitsandbytes, which is not installed; "
            "install bitsandbytes on a CUDA machine, or set low_resource: False"
        )
    try:
        return resolve_device(f"cuda:{device_8bit}")
    except RuntimeError as error:
        raise DeviceError(
            f"low_resource: True needs a CUDA GPU for the 8-bit LLM (bitsandbytes runs on CUDA only): {error}; "
            "set low_resource: False on CPU or NPU"
        ) from error


def load_llama(
    folder: Path, dtype: torch.dtype, low_resource: bool, device_8bit: int, tokenizer: LlamaTokenizer | None = None
) -> LlamaForCausalLM:
    """The LLaMA of ``folder`` with its weights, frozen, in eval mode.

    With ``tokenizer`` (the folder's, checked by :func:`load_llama_tokenizer`), the config and the
    generation config carry the tokenizer's special ids, so that generation stops on its </s>
    whatever a 2023 ``config.json`` or ``generation_config.json`` said.

    ``low_resource`` loads it in 8 bit (bitsandbytes) onto GPU ``device_8bit``. Every weight the
    model needs must be in the folder: a missing one is an error, not a random initialisation.
    The ``rotary_emb.inv_freq`` buffers that 2023 checkpoints carry are recomputed by transformers
    and need not be present.
    """
    config = read_llama_config(folder, tokenizer)
    extra = {}
    if tokenizer is not None:
        # Given here, transformers neither reads generation_config.json itself nor warns about its
        # v0 pad_token_id -1 before the ids are corrected.
        extra["generation_config"] = llama_generation_config(folder, config, tokenizer)
    if low_resource:
        device = _check_8bit_possible(device_8bit)
        extra.update(quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map={"": device.index})
    llama, info = LlamaForCausalLM.from_pretrained(
        folder,
        config=config,
        dtype=dtype,
        attn_implementation="sdpa",
        local_files_only=True,
        output_loading_info=True,
        # reported below, in this project's words, instead of raised by transformers
        ignore_mismatched_sizes=True,
        **extra,
    )
    problems = []
    if info["missing_keys"]:
        problems.append(f"missing: {', '.join(sorted(info['missing_keys']))}")
    unexpected = [key for key in info["unexpected_keys"] if not key.endswith("rotary_emb.inv_freq")]
    if unexpected:
        problems.append(f"unexpected: {', '.join(sorted(unexpected))}")
    for key, file_shape, model_shape in sorted(info["mismatched_keys"]):
        problems.append(f"{key}: the folder has shape {list(file_shape)}, config.json asks for {list(model_shape)}")
    if info["error_msgs"]:
        problems.extend(info["error_msgs"])
    if problems:
        raise WeightLoadError(f"cannot load the LLM from {folder}:\n  " + "\n  ".join(problems))
    llama.requires_grad_(False)
    llama.eval()
    logger.info("Loaded the LLM from %s (%s)", folder, llama_size_name(llama.config.hidden_size))
    return llama
