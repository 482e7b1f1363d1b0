"""The frozen LLM: its config, tokenizer and weights, read from a local Hugging Face folder.

Any decoder-only causal LM that transformers builds natively (``AutoModelForCausalLM``): the
LLaMA family (Vicuna v0/v1.1/v1.5, LLaMA-2-chat, LLaMA-3.x), Mistral, Qwen2/Qwen2.5/Qwen3, ...
A folder as users have it: ``config.json``, weights as sharded ``pytorch_model-*.bin`` with an
index or as safetensors, and the tokenizer: a sentencepiece ``tokenizer.model`` (LLaMA-1/2,
Vicuna, Mistral; read as the reference's ``LlamaTokenizer``) or a ``tokenizer.json`` (LLaMA-3,
Qwen; read by ``AutoTokenizer``). Nothing is ever fetched from a model hub (``local_files_only``)
and no code from the folder runs (no ``trust_remote_code``).

What differs between the families is read from the folder, never from a table: the special
tokens (a tokenizer may have no BOS, as Qwen's), the pad token (the tokenizer's own, else EOS as
the reference; never a new embedding row), tied input and output embeddings, and the rotary,
sliding-window and attention settings of ``config.json``, which are passed to transformers
untouched (attention is ``sdpa``).
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
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    GenerationConfig,
    LlamaTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from minigpt4.common.device import DeviceError, resolve_device
from minigpt4.common.errors import MiniGPT4Error
from minigpt4.models.loaders import WeightLoadError

logger = logging.getLogger(__name__)

# LLaMA-1/2 sizes by hidden width, the LLMs of the released MiniGPT-4 projections; and by
# (width, layers, MLP width), which tells them from other LLMs of the same width (LLaMA-3-8B).
LLAMA_SIZES = {4096: "7B", 5120: "13B", 6656: "33B", 8192: "65B"}
LLAMA_SHAPES = {
    (4096, 32, 11008): "7B",
    (5120, 40, 13824): "13B",
    (6656, 60, 17920): "33B",
    (8192, 80, 22016): "65B",
    (8192, 80, 28672): "70B",
}


def llama_size_name(hidden_size: int) -> str:
    """``4096`` -> ``"a 7B LLM"``: what a bare width (a checkpoint's projection) meant for the
    LLaMA-1/2 family of the released projections; other widths are described by the number alone.
    Where the LLM's config is at hand, :func:`llm_size_name` says what it is."""
    size = LLAMA_SIZES.get(hidden_size)
    return f"a {size} LLM" if size else f"an LLM of width {hidden_size}"


def _billions(parameters: int) -> str:
    if parameters >= 10**9:
        return f"{parameters / 1e9:.2g}B" if parameters < 10 * 10**9 else f"{parameters / 1e9:.0f}B"
    if parameters >= 10**6:
        return f"{parameters / 1e6:.3g}M"
    return f"{parameters / 1e3:.3g}K"


def llm_size_name(config: PretrainedConfig, parameters: int | None = None) -> str:
    """What the LLM of ``config`` is, from the config itself: ``"a 7B LLM"`` for the LLaMA-1/2
    shapes (width, depth and MLP of LLaMA-7B/13B/33B/65B/70B), else its parameter count and
    family, ``"a 7.6B qwen2 LLM"``, ``"an 8B llama LLM"`` (LLaMA-3-8B). ``parameters`` (tied
    embeddings counted once) is counted from a weightless build of the config when not given."""
    shape = (config.hidden_size, config.num_hidden_layers, getattr(config, "intermediate_size", None))
    if config.model_type == "llama" and shape in LLAMA_SHAPES:
        return f"a {LLAMA_SHAPES[shape]} LLM"
    if parameters is None:
        with torch.device("meta"):
            parameters = sum(p.numel() for p in build_llama(config, torch.float16).parameters())
    size = _billions(parameters)
    article = "an" if size.startswith(("8", "11", "18")) else "a"
    return f"{article} {size} {config.model_type} LLM"


def llama_folder(location: str) -> Path:
    """The LLM folder named by ``model.llama_model``, checked to exist."""
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


class LLMConfigError(MiniGPT4Error, ValueError):
    """The LLM folder's config.json names no causal LM that transformers builds."""


TOKENIZER_FILE = "tokenizer.model"
FAST_TOKENIZER_FILE = "tokenizer.json"
# The stage-2 stop symbol, whose encoding the report shows beside the tokenizer's EOS.
STOP_PROBE = "###"
# The embedding may have this many rows more than the tokenizer has tokens (or 1/128 of the rows,
# if more): rows no id reaches (Vicuna v0 13B's 32001 for LLaMA's 32000 tokens, Qwen2.5's 151936
# for 151665, tables padded to a multiple of 64 or 128). More surplus means a tokenizer of another
# model; fewer rows than tokens index past the table.
VOCAB_SURPLUS = 256
# config.json model types whose models were trained with a BOS opening every sequence.
BOS_FAMILIES = ("llama", "mistral")
# tokenizer_config.json classes read as the reference's LlamaTokenizer when a tokenizer.model is
# there (None: no tokenizer_config.json or no class in it, as in 2023 LLaMA conversions).
SENTENCEPIECE_LLAMA_CLASSES = (None, "LlamaTokenizer", "LlamaTokenizerFast")
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
    bos_token_id: int | None = None  # None: a tokenizer without BOS (Qwen), allowed for tokenizer.json only
    eos_token_id: int | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    config_ids: dict[str, Any] = field(default_factory=dict)  # config.json's bos/eos/pad ids
    generation_ids: dict[str, Any] = field(default_factory=dict)  # generation_config.json's, if any
    encodings: dict[str, list[int]] = field(default_factory=dict)  # '###' and the EOS text, no BOS
    problems: list[str] = field(default_factory=list)
    corrections: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def message(self) -> str:
        """The refusal in one line, naming the folder and the file."""
        return f"the LLM tokenizer {self.file} does not fit the folder {self.folder}: " + "; ".join(self.problems)

    @property
    def sentencepiece(self) -> bool:
        return self.file.name == TOKENIZER_FILE


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
        report.corrections.append(f"{source} pad_token_id {pad} -> {report.eos_token_id} ({report.eos_token})")
    if (bos, eos) == V0_CONFIG_IDS and tokenizer_ids == V0_TOKENIZER_IDS:
        report.corrections.append(f"{source} bos_token_id/eos_token_id 0/1 -> 1/2")
        return
    # A tokenizer without BOS (Qwen) never puts one in the input, whatever id the config names.
    if bos is not None and report.bos_token_id is not None and bos != report.bos_token_id:
        report.problems.append(
            f"{source} has bos_token_id {bos}, the tokenizer has {report.bos_token} = {report.bos_token_id}"
        )
    eos_ids = eos if isinstance(eos, list) else [eos]
    if eos is not None and report.eos_token_id not in eos_ids:
        report.problems.append(
            f"{source} has eos_token_id {eos}, the tokenizer has {report.eos_token} = {report.eos_token_id}"
        )


def _tokenizer_class(folder: Path) -> str | None:
    path = folder / "tokenizer_config.json"
    return _read_json(path).get("tokenizer_class") if path.is_file() else None


def _read_tokenizer(folder: Path, report: TokenizerReport) -> PreTrainedTokenizerBase | None:
    """The tokenizer as the model uses it, or None with the reason in ``report.problems``.

    A sentencepiece ``tokenizer.model`` of the LLaMA family is read as the reference read it (see
    :func:`load_llama_tokenizer`); anything else (a ``tokenizer.json``, another class) by
    ``AutoTokenizer``, with the folder's own settings."""
    pieces = None
    if report.sentencepiece:
        try:
            pieces = spm.SentencePieceProcessor(model_file=str(report.file)).get_piece_size()
        except (OSError, RuntimeError) as error:
            report.problems.append(f"{TOKENIZER_FILE} is not a sentencepiece model ({str(error).splitlines()[0]})")
            return None
    try:
        if report.sentencepiece and _tokenizer_class(folder) in SENTENCEPIECE_LLAMA_CLASSES:
            tokenizer = LlamaTokenizer.from_pretrained(folder, legacy=True, local_files_only=True)
        else:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as error:
        report.problems.append(f"transformers cannot read it ({str(error).splitlines()[0]})")
        return None
    report.vocab_size = len(tokenizer)
    if pieces is not None and report.vocab_size < pieces:
        report.problems.append(f"transformers read {report.vocab_size} tokens of its {pieces} pieces")
    return tokenizer


def _inspect_tokenizer(folder: Path) -> tuple[TokenizerReport, PreTrainedTokenizerBase | None]:
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
    report.bos_token, report.eos_token = tokenizer.bos_token, tokenizer.eos_token
    for text in (STOP_PROBE, tokenizer.eos_token or "</s>"):
        report.encodings[text] = tokenizer(text, add_special_tokens=False).input_ids
    # The LLaMA family and Mistral were trained with a BOS; a tokenizer.json of another family may
    # have none (Qwen's).
    needs_bos = report.sentencepiece or config.get("model_type", "llama") in BOS_FAMILIES
    needs_bos = needs_bos or report.bos_token_id is not None
    if report.eos_token_id is None or (needs_bos and report.bos_token_id in (None, report.eos_token_id)):
        report.problems.append(
            f"it needs distinct <s> and </s> ids, has {report.bos_token_id} and {report.eos_token_id}"
        )
    unk = tokenizer.unk_token_id
    if unk is not None and unk in report.encodings[STOP_PROBE]:
        report.problems.append(f"it encodes '###' with <unk> ({report.encodings['###']}), so no answer could stop")
    if not has_config:
        return report, tokenizer
    rows = report.config_vocab_size
    surplus = max(VOCAB_SURPLUS, rows // 128) if isinstance(rows, int) else 0
    if not isinstance(rows, int) or not report.vocab_size <= rows <= report.vocab_size + surplus:
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


def read_llama_config(folder: Path, tokenizer: PreTrainedTokenizerBase | None = None) -> PretrainedConfig:
    """The LLM's config, as the config class of its ``model_type`` (``LlamaConfig``,
    ``MistralConfig``, ``Qwen2Config``, ...; a config without one is a 2023 LLaMA conversion's),
    every other key (rotary, sliding window, tied embeddings, ...) as the folder has it.

    2023 conversions name the position table ``max_sequence_length``, which transformers does not
    read: it becomes ``max_position_embeddings`` (default 2048 otherwise). Given the folder's
    checked tokenizer (:func:`load_llama_tokenizer`), the special ids are the tokenizer's
    (:func:`tokenizer_ids`); without it, a pad id outside the vocabulary is dropped."""
    raw = _read_json(Path(folder) / "config.json")
    model_type = raw.get("model_type", "llama")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise LLMConfigError(
            f"model.llama_model: {folder} holds a '{model_type}' model (config.json model_type), which is not a "
            "causal LM that transformers builds; use a decoder-only LLM folder (llama, mistral, qwen2, qwen3, ...)"
        )
    if "max_position_embeddings" not in raw and isinstance(raw.get("max_sequence_length"), int):
        raw["max_position_embeddings"] = raw["max_sequence_length"]
    if tokenizer is not None:
        raw.update(tokenizer_ids(raw, tokenizer))
    elif isinstance(raw.get("pad_token_id"), int) and not 0 <= raw["pad_token_id"] < raw.get("vocab_size", 0):
        raw["pad_token_id"] = None
    return CONFIG_MAPPING[model_type].from_dict(raw)


def tokenizer_ids(config: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """The special ids a config (``config.json`` or ``generation_config.json`` as a dict) is to
    have: the tokenizer's BOS (the config's own where the tokenizer has none, as Qwen's) and EOS (a
    list of EOS ids that holds the tokenizer's is kept: LLaMA-3's end-of-turn and end-of-text),
    and the tokenizer's pad where the config's pad is unset or outside the vocabulary."""
    eos = config.get("eos_token_id")
    ids = {"bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else config.get("bos_token_id")}
    ids["eos_token_id"] = eos if isinstance(eos, list) and tokenizer.eos_token_id in eos else tokenizer.eos_token_id
    pad = config.get("pad_token_id")
    if not isinstance(pad, int) or not 0 <= pad < len(tokenizer):
        ids["pad_token_id"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return ids


def load_llama_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The LLM's tokenizer, checked against the folder's config (:func:`require_llama_tokenizer`),
    right-padded, with its pad token: EOS for the sentencepiece LLaMA family as the reference (also
    where its tokenizer_config names another), the tokenizer's own for a ``tokenizer.json`` that has
    one (Qwen's ``<|endoftext|>``), else EOS. No token is added, so the frozen embedding keeps its
    rows.

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
    if report.sentencepiece or tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def start_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """What opens every LLM input: ``[BOS]``, or nothing for a tokenizer without one (Qwen's models
    were trained without a BOS)."""
    return [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]


def llama_generation_config(
    folder: Path, config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase
) -> GenerationConfig:
    """The folder's ``generation_config.json`` (else the one transformers derives from ``config``)
    with the tokenizer's special ids (:func:`tokenizer_ids`); its list of EOS ids (LLaMA-3's
    ``<|eot_id|>`` and ``<|end_of_text|>``, Qwen's ``<|im_end|>`` and ``<|endoftext|>``) is kept."""
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return GenerationConfig.from_model_config(config)
    raw = _read_json(path)
    raw.update(tokenizer_ids(raw, tokenizer))
    return GenerationConfig.from_dict(raw)


def build_llama(config: PretrainedConfig, dtype: torch.dtype) -> PreTrainedModel:
    """The causal LM of ``config`` with random weights, on the current default device
    (``torch.device`` context), with sdpa attention."""
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype)


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
    folder: Path,
    dtype: torch.dtype,
    low_resource: bool,
    device_8bit: int,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> PreTrainedModel:
    """The LLM of ``folder`` with its weights (``AutoModelForCausalLM``, sdpa attention), frozen,
    in eval mode. Tied input and output embeddings (``tie_word_embeddings``) need no
    ``lm_head.weight`` in the folder.

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
    llama, info = AutoModelForCausalLM.from_pretrained(
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
    parameters = sum(p.numel() for p in llama.parameters())
    logger.info("Loaded the LLM from %s (%s)", folder, llm_size_name(llama.config, parameters))
    return llama
