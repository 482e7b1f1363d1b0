"""Tiny random LLMs of three current families, in the Hugging Face layout their real folders have.

Each folder is what ``save_pretrained`` writes for a model built from the family's own transformers
config class, plus a byte-level or metaspace BPE ``tokenizer.json`` trained here (the ``tokenizers``
library, on the tiny captions and MiniGPT-4's prompts) and a ``tokenizer_config.json`` with the
family's special tokens and a Jinja ``chat_template`` of the family's format:

* ``llama3``: ``LlamaConfig`` with LLaMA-3.x settings (``rope_theta`` 500000, the ``llama3`` rope
  scaling, grouped-query attention, tied embeddings as LLaMA-3.2-1B/3B), a byte-level tokenizer
  with ``<|begin_of_text|>`` (added by the tokenizer's post-processor), ``<|eot_id|>`` as EOS (the
  3.1-Instruct tokenizer) and ``<|end_of_text|>`` beside it in ``generation_config.json``, no pad;
* ``mistral``: ``MistralConfig`` with a 4096-token sliding window (v0.1/v0.2), a metaspace
  (sentencepiece-style) tokenizer with ``<s>``, ``</s>`` and the ``[INST]``/``[/INST]`` control
  tokens of v0.3, no pad;
* ``qwen2``: ``Qwen2Config`` (biased q/k/v projections, ``rope_theta`` 1e6, tied embeddings as
  Qwen2.5-0.5B/1.5B/3B, ``use_sliding_window`` false), a byte-level tokenizer without a BOS token,
  ``<|im_end|>`` as EOS, ``<|endoftext|>`` as pad, and an embedding with more rows than tokens;
* ``qwen3``: ``Qwen3Config`` (q/k norms, a ``head_dim`` that makes the attention twice as wide as
  the hidden size, as Qwen3-0.6B's 16 x 128 for 1024), Qwen2.5's tokenizer and special tokens,
  and Qwen3's template without a default system turn (with an empty ``<think>`` block when
  ``enable_thinking`` is false).

``write_tiny_llm(family, folder)`` writes one; ``tiny_llm_root()`` adds all three to the tiny
assets of :func:`tiny_assets.tiny_root` (``assets/tiny/weights/<family>_tiny``), once per process.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from tiny_assets import quickstart, tiny_root

FAMILIES = ("llama3", "mistral", "qwen2", "qwen3")

# The families' chat templates, reduced to what the tiny models need (no tools, no dates), in
# the exact token layout of the real ones.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
MISTRAL_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{- '[INST] ' + message['content'] + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)
QWEN2_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# family -> (special tokens in id order, bos, eos, pad, the end-of-turn tokens generation stops on)
SPECIAL = {
    "llama3": (
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|begin_of_text|>",
        "<|eot_id|>",
        None,
        ["<|end_of_text|>", "<|eot_id|>"],
    ),
    "mistral": (["<unk>", "<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>", None, ["</s>"]),
    "qwen2": (
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        None,
        "<|im_end|>",
        "<|endoftext|>",
        ["<|im_end|>", "<|endoftext|>"],
    ),
}
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
SPECIAL["qwen3"] = SPECIAL["qwen2"]
TEMPLATES = {"llama3": LLAMA3_TEMPLATE, "mistral": MISTRAL_TEMPLATE, "qwen2": QWEN2_TEMPLATE, "qwen3": QWEN3_TEMPLATE}
TOKENIZER_CLASS = {
    "llama3": "PreTrainedTokenizerFast",
    "mistral": "LlamaTokenizer",
    "qwen2": "Qwen2Tokenizer",
    "qwen3": "Qwen2Tokenizer",
}
VOCAB_SIZE = 1000
HIDDEN, LAYERS, HEADS, KV_HEADS, MLP = 64, 2, 4, 2, 128


def _corpus(family: str, seed: int) -> list[str]:
    """The tiny captions and prompts, plus each family's turn format around some of them."""
    from make_tiny_weights import tokenizer_corpus

    corpus = tokenizer_corpus(seed)
    pairs = list(zip(corpus[:300], corpus[300:600], strict=True))
    if family == "llama3":
        corpus += [f"user\n\n{q}\n\nassistant\n\n{a}" for q, a in pairs]
    elif family == "mistral":
        corpus += [f"{q} {a}" for q, a in pairs]
    elif family == "qwen3":
        corpus += [f"user\n{q}\nassistant\n<think>\n\n</think>\n\n{a}" for q, a in pairs]
    else:
        system = "system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        corpus += [f"{system}\nuser\n{q}\nassistant\n{a}" for q, a in pairs]
    return corpus


def train_tokenizer(family: str, seed: int = 0):
    """The family's ``tokenizers.Tokenizer``: byte-level BPE (LLaMA-3, Qwen2) or metaspace BPE with
    an unknown token (Mistral's sentencepiece style), its special tokens first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials, bos, _, _, _ = SPECIAL[family]
    if family == "mistral":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet: list[str] = []
    else:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(_corpus(family, seed), trainer=trainer)
    if bos is not None:
        # LLaMA-3 and Mistral add their BOS in the post-processor, as the real tokenizer.json files do.
        bos_id = tokenizer.token_to_id(bos)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    return tokenizer


def _llm_config(family: str, vocab_rows: int, ids: dict[str, object]):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    shape = {
        "vocab_size": vocab_rows,
        "hidden_size": HIDDEN,
        "intermediate_size": MLP,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        **ids,
    }
    if family == "llama3":
        rope = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
        return LlamaConfig(
            **shape, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_parameters=rope, tie_word_embeddings=True
        )
    if family == "mistral":
        return MistralConfig(
            **shape,
            max_position_embeddings=32768,
            rms_norm_eps=1e-5,
            sliding_window=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False,
        )
    if family == "qwen3":
        return Qwen3Config(
            **shape,
            head_dim=2 * HIDDEN // HEADS,
            max_position_embeddings=40960,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            use_sliding_window=False,
            tie_word_embeddings=True,
        )
    return Qwen2Config(
        **shape,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        use_sliding_window=False,
        tie_word_embeddings=True,
    )


def write_tiny_llm(family: str, folder: Path, seed: int = 0) -> Path:
    """A tiny random ``family`` LLM folder (see the module docstring); returns ``folder``."""
    import torch
    from make_tiny_weights import randomize
    from transformers import AutoModelForCausalLM, GenerationConfig

    specials, bos, eos, pad, stops = SPECIAL[family]
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(family, seed)
    tokenizer.save(str(folder / "tokenizer.json"))
    token_id = tokenizer.token_to_id
    tokens = tokenizer.get_vocab_size()
    # Qwen's embedding has rows no token reaches (151936 for 151665 tokens): rounded up to 128 here.
    qwen = family.startswith("qwen")
    rows = -(-tokens // 128) * 128 if qwen else tokens
    eos_ids = [token_id(t) for t in stops]
    ids = {
        # Qwen's config.json names <|endoftext|> as bos_token_id though its tokenizer has no BOS.
        "bos_token_id": token_id(bos) if bos else token_id("<|endoftext|>"),
        "eos_token_id": eos_ids if family == "llama3" else token_id(eos),
        "pad_token_id": token_id(pad) if pad else None,
    }
    tokenizer_config = {
        "tokenizer_class": TOKENIZER_CLASS[family],
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "model_max_length": 131072 if family == "llama3" else 32768,
        "clean_up_tokenization_spaces": False,
        "chat_template": TEMPLATES[family],
        "added_tokens_decoder": {
            str(token_id(t)): {"content": t, "special": True, "lstrip": False, "rstrip": False, "normalized": False}
            for t in specials
        },
    }
    if family == "mistral":
        tokenizer_config.update(unk_token="<unk>", add_bos_token=True, add_eos_token=False, legacy=False)
    if qwen:
        tokenizer_config.update(unk_token=None, errors="replace", split_special_tokens=False)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    special_map = {key: value for key, value in (("bos_token", bos), ("eos_token", eos), ("pad_token", pad)) if value}
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")

    config = _llm_config(family, rows, ids)
    llm = AutoModelForCausalLM.from_config(config)
    randomize(llm, torch.Generator().manual_seed(seed))
    if config.tie_word_embeddings:
        llm.tie_weights()
    llm.generation_config = GenerationConfig(
        bos_token_id=ids["bos_token_id"],
        eos_token_id=eos_ids,
        pad_token_id=ids["pad_token_id"] if qwen else None,
        do_sample=True,
        temperature=0.7 if qwen else 0.6,
        top_p=0.8 if qwen else 0.9,
    )
    llm.save_pretrained(folder)
    return folder


def tiny_llm_name(family: str) -> str:
    return f"{family}_tiny"


@functools.cache
def tiny_llm_root() -> Path:
    """:func:`tiny_assets.tiny_root` with the three tiny LLM folders beside the tiny Vicuna."""
    root = tiny_root()
    for family in FAMILIES:
        folder = root / quickstart.WEIGHTS / tiny_llm_name(family)
        if not (folder / "config.json").is_file():
            write_tiny_llm(family, folder)
    return root
