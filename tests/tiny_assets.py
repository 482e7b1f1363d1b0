"""The embedded tiny default for tests: what ``make tiny-assets`` writes, made once per test
process by ``tools/quickstart.py``'s own ``ensure_assets`` into a temporary folder laid out like
the repository (``assets/tiny/weights``, ``assets/tiny/data``). With that folder as the working
directory, the tiny configs' relative paths resolve as they do in a checkout."""

from __future__ import annotations

import atexit
import functools
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tools"))

import quickstart  # noqa: E402

STAGE1_TINY = REPO_ROOT / "train_configs" / "minigpt4_stage1_tiny.yaml"
STAGE2_TINY = REPO_ROOT / "train_configs" / "minigpt4_stage2_tiny.yaml"


@functools.cache
def tiny_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="minigpt4-tiny-"))
    atexit.register(shutil.rmtree, root, True)
    quickstart.ensure_assets(root)
    return root


def tiny_path_options(root: Path, datasets: tuple[str, ...]) -> list[str]:
    """``--options`` pointing a tiny config (with ``datasets``) at ``root``'s assets, for runs
    whose working directory is elsewhere."""
    weights, data = root / quickstart.WEIGHTS, root / quickstart.DATA
    return [
        f"model.vit_weights={weights / 'eva_vit_tiny.pth'}",
        f"model.q_former_model={weights / 'blip2_tiny.pth'}",
        f"model.llama_model={weights / 'vicuna_tiny'}",
        *(f"datasets.{name}.build_info.storage={data / name}" for name in datasets),
    ]


STAGE1_LLAMA2_TINY = REPO_ROOT / "train_configs" / "minigpt4_llama2_stage1_tiny.yaml"
STAGE2_LLAMA2_TINY = REPO_ROOT / "train_configs" / "minigpt4_llama2_stage2_tiny.yaml"
EVAL_LLAMA2_TINY = REPO_ROOT / "eval_configs" / "minigpt4_llama2_tiny_eval.yaml"
LLAMA2_TINY = "llama2_tiny"  # under quickstart.WEIGHTS


def write_llama2_tiny(folder: Path, seed: int = 0) -> Path:
    """A tiny LLaMA-2-Chat-style folder: a LLaMA config with LLaMA-2's norm epsilon and 4096
    positions, random weights, and a sentencepiece tokenizer trained with LLaMA's options on
    captions and ``[INST] ... [/INST]`` turns, in which ``$$`` is one piece (as id 3997 of the real
    vocabulary) so that upstream's pad token exists."""
    import io
    import json

    import sentencepiece as spm
    import torch
    from make_tiny_weights import TinySpec, llama_config, randomize, tiny_llm_shape, tokenizer_corpus
    from transformers import LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    corpus = tokenizer_corpus(seed)
    turns = zip(corpus[:400], corpus[400:800], strict=True)
    corpus += [f"[INST] {line} [/INST] {answer}</s>" for line, answer in turns]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        model_type="bpe",
        vocab_size=1000,
        hard_vocab_limit=False,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        user_defined_symbols=["$$"],
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False}
    config.update({"pad_token": None, "model_max_length": 4096, "sp_model_kwargs": {}, **special})
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    vocab = spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    llm_config = llama_config(vocab, 4096, **tiny_llm_shape(TinySpec()))
    llm_config.rms_norm_eps = 1e-5  # LLaMA-2's (LLaMA-1 and Vicuna v0: 1e-6)
    llm = LlamaForCausalLM(llm_config)
    randomize(llm, torch.Generator().manual_seed(seed))
    llm.save_pretrained(folder)
    return folder


@functools.cache
def tiny_llama2_root() -> Path:
    """:func:`tiny_root` with the tiny LLaMA-2 folder beside the tiny Vicuna."""
    root = tiny_root()
    folder = root / quickstart.WEIGHTS / LLAMA2_TINY
    if not (folder / "config.json").is_file():
        write_llama2_tiny(folder)
    return root
