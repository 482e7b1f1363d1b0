"""Export a MiniGPT-4 training checkpoint as safetensors, with what it was trained for.

    python tools/export_checkpoint.py RUN_CHECKPOINT OUT_DIR [--merge-llm LLM_DIR [--llama-model BASE]]

reads ``RUN_CHECKPOINT`` (a runner's ``checkpoint_N.pth``, the reference runner's, or a released
projection file; loaded weights-only) and writes ``OUT_DIR/model.safetensors`` (the ``model``
entry under this model's names) and ``OUT_DIR/minigpt4_checkpoint.json``: the LLM's hidden size
and folder name, the Q-Former width, the number of query tokens, the prompt template and end
symbol of the run, its LoRA settings, and the project version. ``model.ckpt`` accepts ``OUT_DIR``
or the ``.safetensors`` file. A checkpoint with a NaN or infinite weight is refused. The exit
status is 0 on success and 2 with a one-line reason otherwise.

A checkpoint of a LoRA run (``model.lora_r`` > 0) holds the adapters beside ``llama_proj``; its
export keeps them (load it with the run's ``lora_*`` keys). ``--merge-llm LLM_DIR`` instead merges
them into the LLM the run trained on (``model.llama_model`` of the run's config, or ``--llama-model``)
and writes that LLM to ``LLM_DIR`` as a Hugging Face folder (config, safetensors weights, the
tokenizer files of the base folder), in the base folder's dtype unless ``--llm-dtype`` says
otherwise; ``OUT_DIR`` then holds ``llama_proj`` alone. Serve with ``model.llama_model: LLM_DIR``,
``model.ckpt: OUT_DIR`` and ``model.lora_r: 0``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a MiniGPT-4 checkpoint .pth (a run's checkpoint_N.pth)")
    parser.add_argument("out_dir", type=Path, help="folder to write model.safetensors and minigpt4_checkpoint.json")
    parser.add_argument(
        "--merge-llm",
        type=Path,
        metavar="LLM_DIR",
        help="merge the checkpoint's LoRA adapters into its LLM and write that LLM to this folder",
    )
    parser.add_argument(
        "--llama-model",
        metavar="BASE",
        help="with --merge-llm: the base LLM folder (default: the run's model.llama_model)",
    )
    parser.add_argument(
        "--llm-dtype", metavar="DTYPE", help="with --merge-llm: fp16, bf16 or fp32 (default: the base folder's dtype)"
    )
    args = parser.parse_args(argv)
    if (args.llama_model or args.llm_dtype) and args.merge_llm is None:
        parser.error("--llama-model and --llm-dtype go with --merge-llm")
    return args


if __name__ == "__main__":
    parse_args(None)  # --help and a bad option answer before torch and the model code load

# ruff: noqa: E402 (the heavy imports come after that early parse on purpose)
# Run as ``python tools/export_checkpoint.py``, the repository root is not on the import path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from minigpt4.common.device import parse_dtype
from minigpt4.common.errors import MiniGPT4Error
from minigpt4.common.logger import setup_logger
from minigpt4.models.checkpoint_files import (
    check_finite,
    checkpoint_metadata,
    pth_model_entry,
    write_safetensors_checkpoint,
)
from minigpt4.models.llm import llama_folder, load_llama, load_llama_tokenizer, read_llama_config
from minigpt4.models.loaders import WeightLoadError, check_state_dict, torch_load
from minigpt4.models.lora import LoraError, add_lora, is_adapter_key, merge_lora, save_merged_llm
from minigpt4.models.mini_gpt4 import MiniGPT4, model_config

logger = logging.getLogger("export_checkpoint")


def merge_adapters(
    state: dict[str, torch.Tensor],
    run_model_cfg: dict,
    source: Path,
    llm_dir: Path,
    *,
    llama_model: str | None,
    llm_dtype: str | None,
) -> Path:
    """Merge the adapters of ``state`` into the run's LLM and write it to ``llm_dir``; returns the
    base LLM folder."""
    adapters = {key: value for key, value in state.items() if is_adapter_key(key)}
    if not adapters:
        raise LoraError(f"{source} holds no LoRA adapters (its run had model.lora_r 0): there is nothing to merge")
    cfg = model_config(
        {
            key: run_model_cfg[key]
            for key in ("lora_r", "lora_target_modules", "lora_alpha", "lora_dropout")
            if key in run_model_cfg
        }
    )
    if not cfg.lora_r:
        raise LoraError(
            f"{source} holds LoRA adapters but its saved config has no model.lora_r (it was not written by "
            "this project's runner): the adapters' settings are unknown"
        )
    location = llama_model or run_model_cfg.get("llama_model") or ""
    try:
        folder = llama_folder(location)
    except FileNotFoundError as error:
        if llama_model:
            raise
        raise FileNotFoundError(f"{error} (the run's LLM); name the base LLM folder with --llama-model") from None
    if llm_dir.resolve() == folder.resolve():
        raise FileExistsError(f"--merge-llm {llm_dir} is the base LLM folder; write the merged LLM elsewhere")
    tokenizer = load_llama_tokenizer(folder)
    config = read_llama_config(folder, tokenizer)
    stored = getattr(config, "dtype", None) or torch.float32
    dtype = parse_dtype(llm_dtype) if llm_dtype else (parse_dtype(stored) if isinstance(stored, str) else stored)
    # Merged in fp32, so that the sum is rounded once, into the dtype written.
    llm = add_lora(load_llama(folder, torch.float32, False, 0, tokenizer), cfg)
    expected = {f"llama_model.{key}": value for key, value in llm.state_dict().items() if is_adapter_key(key)}
    check_state_dict(expected, adapters, f"the LoRA adapters of {source} into the LLM {folder}")
    llm.load_state_dict({key.removeprefix("llama_model."): value for key, value in adapters.items()}, strict=False)
    save_merged_llm(merge_lora(llm), folder, llm_dir, dtype)
    logger.info("Merged %d LoRA tensors into %s and wrote it (%s) to %s", len(adapters), folder, dtype, llm_dir)
    return folder


def export(
    source: Path,
    out_dir: Path,
    merge_llm: Path | None = None,
    llama_model: str | None = None,
    llm_dtype: str | None = None,
) -> Path:
    """Write the export of ``source`` into ``out_dir`` (and, with ``merge_llm``, the LLM with the
    adapters merged into that folder); returns the ``.safetensors`` path."""
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such checkpoint file")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    checkpoint = torch_load(source)
    state = MiniGPT4.checkpoint_state(pth_model_entry(checkpoint, source))
    if not state:
        raise WeightLoadError(f"{source}: the 'model' entry holds no tensors")
    check_finite(state, source)
    config = checkpoint.get("config") if isinstance(checkpoint.get("config"), dict) else {}
    model_cfg = config.get("model") or {}
    if merge_llm is not None:
        merge_adapters(state, model_cfg, source, merge_llm, llama_model=llama_model, llm_dtype=llm_dtype)
        state = {key: value for key, value in state.items() if not is_adapter_key(key)}
        model_cfg = {**model_cfg, "llama_model": str(merge_llm), "lora_r": 0}
    metadata = checkpoint_metadata(state, model_cfg or None)
    target = write_safetensors_checkpoint(out_dir, state, metadata)
    logger.info(
        "Wrote %d tensors to %s (trained for hidden size %d, Q-Former width %d)",
        len(state),
        target,
        metadata["llm_hidden_size"],
        metadata["qformer_hidden_size"],
    )
    return target


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logger()
    try:
        export(args.checkpoint, args.out_dir, args.merge_llm, args.llama_model, args.llm_dtype)
    except (MiniGPT4Error, OSError) as error:
        sys.stderr.write(f"export_checkpoint: {error}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
