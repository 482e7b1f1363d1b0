"""Check the weight files a config names before a run: formats, keys, shapes, sizes, tokenizer.

    python tools/check_weights.py --cfg-path eval_configs/minigpt4_eval.yaml [--options KEY=VALUE ...]

opens every file and folder the ``model:`` config names (``vit_weights``, ``q_former_model``,
which may be a transformers ``Blip2`` folder, ``llama_model``, ``ckpt``) without building the
model with weights: ``.pth``/``.bin`` files are memory-mapped (``torch.load(mmap=True,
weights_only=True)``), safetensors files are read by their headers, and the expected shapes come
from the modules built on the meta device. The only tensors read are the LLM's norm weights, for
the delta check below. It prints a table (each file, its format, dtypes, and how many keys will be
used, ignored and refused), the LLM's size, the tokenizer's sanity (vocabulary against
config.json, BOS/EOS ids, how it encodes ``###`` and ``</s>``), whether the projection (``ckpt``)
fits, and the reasons a run would fail, in the
loaders' words.

Unmerged Vicuna delta: the weights published as a delta (``finetuned - base``, to be added to
LLaMA with FastChat's ``apply_delta``) load like a model and train at a loss near ln(vocab).
The rule: an RMSNorm weight is a gain, initialised at 1, and a trained LLaMA's gains are
positive; a delta's entries are the small finetuning updates of those gains, centred at zero,
so about half of them are <= 0 (all of them when the finetuning left the norms alone). A folder
whose norm weights (every layer's two and the final one) are more than ``DELTA_NONPOSITIVE``
non-positive is refused as a delta. Limits: only for ``model_type: llama`` folders (models that
store ``gain - 1``, as Gemma does, would look like deltas); a delta added twice, or to the wrong
base, has positive gains and passes; the rule says nothing about the other weights.

Exit status: 0 when a run would load these files, 1 when it would fail (the reasons are
printed), 2 for a config that cannot be read.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfg-path", required=True, help="path to a train or eval configuration file")
    parser.add_argument("--options", nargs="+", help="override settings of the config, key=value (as train.py)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args(None)  # --help and a bad option answer before torch and the model code load

# ruff: noqa: E402 (the heavy imports come after that early parse on purpose)
import torch

# Run as ``python tools/check_weights.py``, the repository root is not on the import path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safetensors import safe_open

from minigpt4.common.config import Config
from minigpt4.common.errors import MiniGPT4Error
from minigpt4.common.logger import setup_logger
from minigpt4.models import blip2_hf
from minigpt4.models.checkpoint_files import read_checkpoint_header, safetensors_dtype
from minigpt4.models.eva_vit import build_eva_vit, report_vit_keys
from minigpt4.models.llm import build_llama, check_llama_tokenizer, llama_folder, llm_size_name, read_llama_config
from minigpt4.models.loaders import WeightLoadError, cache_dir, is_url, torch_load
from minigpt4.models.lora import add_lora, is_adapter_key
from minigpt4.models.mini_gpt4 import (
    PATCHES_PER_TOKEN,
    CheckpointTarget,
    MiniGPT4,
    check_minigpt4_checkpoint,
    checkpoint_shape_explainer,
    model_config,
    trained_for,
)
from minigpt4.models.qformer import build_qformer, report_blip2_keys

logger = logging.getLogger("check_weights")

# More than this fraction of non-positive norm weights: a delta, not a model (see the docstring).
DELTA_NONPOSITIVE = 0.2
# Buffers that 2023 LLaMA checkpoints carry and transformers recomputes (load_llama ignores them).
LLM_IGNORED_SUFFIX = "rotary_emb.inv_freq"
# Weight files of a transformers folder, in the order from_pretrained prefers them.
LLM_WEIGHT_FILES = (
    ("model.safetensors.index.json", "safetensors"),
    ("model.safetensors", "safetensors"),
    ("pytorch_model.bin.index.json", "bin"),
    ("pytorch_model.bin", "bin"),
)
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}

Shape = tuple[int, ...]


@dataclass
class Row:
    """One line of the table: a file (or folder) a config key names."""

    key: str
    path: str
    format: str = "-"
    dtypes: str = "-"
    used: int | str = "-"
    ignored: int | str = "-"
    refused: int | str = "-"
    result: str = "ok"


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def fail(self, row: Row, reason: str) -> None:
        row.result = "FAIL"
        self.problems.append(reason)

    def text(self) -> str:
        header = Row("config key", "file", "format", "dtypes", "used", "ignored", "refused", "result")
        cells = [[str(getattr(row, name)) for name in Row.__dataclass_fields__] for row in [header, *self.rows]]
        widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in cells
        ]
        lines.insert(1, "  ".join("-" * width for width in widths))
        lines += ["", *self.facts]
        lines += [f"note: {note}" for note in self.notes]
        if self.problems:
            lines += ["", f"{len(self.problems)} problem(s): a run with this config would fail"]
            lines += [f"FAIL {problem}" for problem in self.problems]
        else:
            lines += ["", "OK: a run with this config would load these weights"]
        return "\n".join(lines) + "\n"


def dtype_summary(dtypes: Iterable[torch.dtype]) -> str:
    counts: dict[str, int] = {}
    for dtype in dtypes:
        name = DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))
        counts[name] = counts.get(name, 0) + 1
    return ",".join(sorted(counts, key=lambda name: -counts[name])) or "-"


def count(number: int) -> str:
    """``6738415616`` -> ``6.74B``."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if number >= scale:
            return f"{number / scale:.2f}{suffix}"
    return str(number)


def one_line(error: BaseException) -> str:
    """A loader's message on one line: ``cannot load X:\n  a\n  b`` -> ``cannot load X: a; b``."""
    first, *rest = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return f"{first} {'; '.join(rest)}" if rest else first


def origin_note(cfg: Config, key: str) -> str:
    origin = cfg.origin(f"model.{key}")
    return f" (set in {origin})" if origin else ""


def local_file(cfg: Config, key: str, report: Report) -> tuple[Row, Path | None]:
    """The local path of ``model.<key>``, or None with the reason (a URL not yet downloaded is no
    failure: the run downloads it)."""
    location = cfg.model_cfg[key]
    row = Row(f"model.{key}", location or "(empty)")
    if not location:
        report.fail(row, f"model.{key} is empty: set it to a local path or a URL of the weights")
        return row, None
    if is_url(location):
        cached = cache_dir() / Path(location.rstrip("/")).name
        if not cached.exists():
            row.path, row.result = f"{cached.name} (URL)", "not downloaded"
            report.notes.append(f"model.{key}: {location} is downloaded on first use into {cached}; not checked")
            return row, None
        row.path = str(cached)
        return row, cached
    path = Path(location).expanduser()
    if not path.exists():
        report.fail(row, f"model.{key}: '{location}' does not exist{origin_note(cfg, key)}")
        return row, None
    return row, path


def pth_shapes(path: Path, row: Row, report: Report, entry: str | None) -> tuple[dict[str, Shape], list] | None:
    """Shapes and dtypes of a memory-mapped ``.pth`` (of its ``entry`` if given); None on failure."""
    try:
        content = torch_load(path, mmap=True)
    except MiniGPT4Error as error:
        report.fail(row, one_line(error))
        return None
    if entry is not None:
        if not isinstance(content, dict) or entry not in content:
            report.fail(row, f"{path} is not a checkpoint with a '{entry}' entry")
            return None
        content = content[entry]
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        report.fail(row, f"{path} does not hold a state dict (a dict of tensors)")
        return None
    row.format = "pth" + (f" ({entry!r} entry)" if entry else " (flat)")
    return {key: tuple(value.shape) for key, value in content.items()}, [value.dtype for value in content.values()]


def fill_from_key_report(row: Row, key_report: Any, report: Report) -> None:
    """The counts of a loaders.KeyReport in the row, its refusals among the problems."""
    row.used, row.ignored = len(key_report.used), len(key_report.ignored)
    row.refused = len(key_report.missing) + len(key_report.mismatched)
    for problem in key_report.problems():
        report.fail(row, f"{key_report.what}: {problem}")
    if key_report.unexpected:
        report.notes.append(
            f"{key_report.what}: {len(key_report.unexpected)} unexpected keys are not loaded "
            f"(a warning when loading): {', '.join(key_report.unexpected[:8])}"
        )
    for reason, keys in key_report.ignored_by_reason().items():
        report.notes.append(f"{key_report.what}: ignored, {reason}: {len(keys)} keys")


# --- the modules' expected shapes, built on the meta device ---------------------------------


def vision_shapes(model_cfg: Any) -> dict[str, Shape]:
    """{key: shape} of the vision side (``visual_encoder.*``, ``ln_vision.*``, ``Qformer.*``,
    ``query_tokens``; no Q-Former parts with ``has_qformer: False``), under the model's names."""
    with torch.device("meta"):
        vit = build_eva_vit(model_cfg.vit_arch, model_cfg.image_size, 0.0, False, torch.float32)
        if model_cfg.has_qformer:
            qformer, query_tokens = build_qformer(model_cfg.qformer_arch, model_cfg.num_query_token, vit.embed_dim)
    shapes = {f"visual_encoder.{key}": tuple(value.shape) for key, value in vit.state_dict().items()}
    shapes.update({f"ln_vision.{name}": (vit.embed_dim,) for name in ("weight", "bias")})
    if model_cfg.has_qformer:
        shapes.update({f"Qformer.{key}": tuple(value.shape) for key, value in qformer.state_dict().items()})
        shapes["query_tokens"] = tuple(query_tokens.shape)
    return shapes


def projection_width(model_cfg: Any) -> int:
    """The input width of ``llama_proj``: the Q-Former's, or 4 merged ViT patches without one."""
    if model_cfg.has_qformer:
        return model_cfg.qformer_arch.hidden_size
    return PATCHES_PER_TOKEN * model_cfg.vit_arch.embed_dim


# --- the files ------------------------------------------------------------------------------


def check_vit(cfg: Config, shapes: Mapping[str, Shape], report: Report) -> None:
    row, path = local_file(cfg, "vit_weights", report)
    report.rows.append(row)
    if path is None or (found := pth_shapes(path, row, report, None)) is None:
        return
    file_shapes, dtypes = found
    row.dtypes = dtype_summary(dtypes)
    prefix = "visual_encoder."
    vit_shapes = {key[len(prefix) :]: shape for key, shape in shapes.items() if key.startswith(prefix)}
    fill_from_key_report(row, report_vit_keys(file_shapes, vit_shapes, f"the EVA ViT weights {path}"), report)


def check_blip2(cfg: Config, shapes: Mapping[str, Shape], report: Report) -> None:
    row, path = local_file(cfg, "q_former_model", report)
    report.rows.append(row)
    if path is None:
        return
    if (found := pth_shapes(path, row, report, "model")) is None:
        return
    file_shapes, dtypes = found
    row.dtypes = dtype_summary(dtypes)
    key_report = report_blip2_keys(file_shapes, shapes, f"the BLIP-2 Q-Former weights {path}")
    fill_from_key_report(row, key_report, report)


def _safetensors_header(file: Path) -> tuple[dict[str, Shape], dict[str, torch.dtype]]:
    with safe_open(str(file), framework="pt", device="cpu") as handle:
        shapes, dtypes = {}, {}
        for key in handle.keys():  # noqa: SIM118  (safe_open handles are not iterable)
            tensor_slice = handle.get_slice(key)
            shapes[key] = tuple(tensor_slice.get_shape())
            dtypes[key] = safetensors_dtype(tensor_slice.get_dtype())
    return shapes, dtypes


@dataclass
class WeightFolder:
    """The weight files of a transformers folder, read by their headers."""

    format: str
    shards: list[Path]
    shapes: dict[str, Shape] = field(default_factory=dict)
    dtypes: dict[str, torch.dtype] = field(default_factory=dict)
    where: dict[str, Path] = field(default_factory=dict)  # key -> the shard that holds it


def read_weight_folder(folder: Path, row: Row, report: Report) -> WeightFolder | None:
    """Every shard a transformers folder names, opened by its header; a missing or unreadable
    shard fails the row."""
    present = [(name, kind) for name, kind in LLM_WEIGHT_FILES if (folder / name).is_file()]
    if not present:
        report.fail(row, f"{folder} holds no weights ({', '.join(name for name, _ in LLM_WEIGHT_FILES)})")
        return None
    name, kind = present[0]
    if name.endswith(".index.json"):
        try:
            weight_map = json.loads((folder / name).read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            report.fail(row, f"{folder / name} is not a readable shard index ({one_line(error)})")
            return None
        shards = sorted({folder / shard for shard in weight_map.values()})
    else:
        weight_map, shards = None, [folder / name]
    found = WeightFolder(f"{kind}, {len(shards)} file(s)", shards)
    ok = True
    for shard in shards:
        if not shard.is_file():
            report.fail(row, f"{shard} is missing: {name} names it")
            ok = False
            continue
        try:
            if kind == "safetensors":
                shapes, dtypes = _safetensors_header(shard)
            else:
                state = torch_load(shard, mmap=True)
                if not isinstance(state, dict):
                    raise ValueError(f"{shard} does not hold a state dict")
                shapes = {key: tuple(value.shape) for key, value in state.items()}
                dtypes = {key: value.dtype for key, value in state.items()}
        except (MiniGPT4Error, ValueError, OSError, RuntimeError) as error:
            report.fail(row, f"{shard} is not readable: {one_line(error)}")
            ok = False
            continue
        found.shapes.update(shapes)
        found.dtypes.update(dtypes)
        found.where.update(dict.fromkeys(shapes, shard))
    if weight_map is not None and ok:
        absent = sorted(key for key, shard in weight_map.items() if key not in found.shapes)
        if absent:
            report.fail(row, f"{folder / name} names keys its shards lack: {', '.join(absent[:8])}")
    return found if ok else None


def read_tensors(found: WeightFolder, keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """The tensors ``keys`` from their shards, and no others."""
    by_shard: dict[Path, list[str]] = {}
    for key in keys:
        by_shard.setdefault(found.where[key], []).append(key)
    tensors = {}
    for shard, names in by_shard.items():
        if shard.suffix == ".safetensors":
            with safe_open(str(shard), framework="pt", device="cpu") as handle:
                tensors.update({name: handle.get_tensor(name) for name in names})
        else:
            state = torch_load(shard, mmap=True)
            tensors.update({name: state[name].clone() for name in names})
    return tensors


def delta_fraction(found: WeightFolder) -> tuple[float, int] | None:
    """The fraction of non-positive entries in the LLM's RMSNorm weights, and how many entries."""
    keys = [key for key in found.shapes if key.endswith("layernorm.weight") or key == "model.norm.weight"]
    if not keys:
        return None
    values = torch.cat([tensor.float().flatten() for tensor in read_tensors(found, keys).values()])
    return (values <= 0).float().mean().item(), values.numel()


def check_llm(cfg: Config, report: Report) -> tuple[Path | None, dict[str, Shape], Any]:
    """The LLM folder's weights against config.json; returns the folder, the LLM's expected
    shapes (``llama_model.*``) and its config (None where config.json is unusable)."""
    location = cfg.model_cfg.llama_model
    row = Row("model.llama_model", location or "(empty)")
    report.rows.append(row)
    try:
        folder = llama_folder(location)
        config = read_llama_config(folder)
    except (OSError, ValueError) as error:
        report.fail(row, f"{one_line(error)}{origin_note(cfg, 'llama_model')}")
        return None, {}, None
    with torch.device("meta"):
        llama = build_llama(config, torch.float16)
    expected = {key: tuple(value.shape) for key, value in llama.state_dict().items()}
    parameters = sum(p.numel() for p in llama.parameters())
    report.facts.append(
        f"LLM: {folder}: {config.model_type}, hidden size {config.hidden_size} "
        f"({llm_size_name(config, parameters)}), {config.num_hidden_layers} layers, "
        f"{count(parameters)} parameters, vocab_size {config.vocab_size} (config.json)"
    )
    found = read_weight_folder(folder, row, report)
    if found is not None:
        row.format, row.dtypes = found.format, dtype_summary(found.dtypes.values())
        tied = getattr(config, "tie_word_embeddings", False)
        missing = sorted(set(expected) - set(found.shapes) - ({"lm_head.weight"} if tied else set()))
        ignored = [key for key in found.shapes if key not in expected and key.endswith(LLM_IGNORED_SUFFIX)]
        unexpected = sorted(set(found.shapes) - set(expected) - set(ignored))
        mismatched = sorted(key for key in set(found.shapes) & set(expected) if found.shapes[key] != expected[key])
        row.used = len(set(found.shapes) & set(expected)) - len(mismatched)
        row.ignored, row.refused = len(ignored), len(missing) + len(unexpected) + len(mismatched)
        what = f"cannot load the LLM from {folder}"
        if missing:
            report.fail(row, f"{what}: missing: {', '.join(missing[:12])}")
        if unexpected:
            report.fail(row, f"{what}: unexpected: {', '.join(unexpected[:12])}")
        for key in mismatched:
            report.fail(
                row,
                f"{what}: {key}: the folder has shape {list(found.shapes[key])}, "
                f"config.json asks for {list(expected[key])}",
            )
        check_delta(folder, config, found, row, report)
    shapes = {f"llama_model.{key}": shape for key, shape in expected.items()}
    try:
        adapted = add_lora(llama, cfg.model_cfg)  # on the meta device: the adapters' shapes only
    except MiniGPT4Error as error:
        report.fail(row, one_line(error))
    else:
        adapters = {key: tuple(value.shape) for key, value in adapted.state_dict().items() if is_adapter_key(key)}
        shapes.update({f"llama_model.{key}": shape for key, shape in adapters.items()})
        if adapters:
            report.facts.append(
                f"LoRA: rank {cfg.model_cfg.lora_r} on {', '.join(cfg.model_cfg.lora_target_modules)}, "
                f"{len(adapters)} adapter tensors ({count(sum(math.prod(s) for s in adapters.values()))} parameters)"
            )
    return folder, shapes, config


def check_delta(folder: Path, config: Any, found: WeightFolder, row: Row, report: Report) -> None:
    if config.model_type != "llama":
        report.notes.append(f"delta check: not made for model_type {config.model_type} (the rule is LLaMA's)")
        return
    measured = delta_fraction(found)
    if measured is None:
        report.notes.append("delta check: not made (no RMSNorm weights found)")
        return
    fraction, entries = measured
    line = f"{fraction:.1%} of its {entries} RMSNorm weights are <= 0"
    if fraction > DELTA_NONPOSITIVE:
        report.fail(
            row,
            f"{folder} looks like a Vicuna delta, not a model: {line} (a model's norm gains are positive); "
            "apply it to the LLaMA weights first (FastChat's apply_delta)",
        )
    else:
        report.facts.append(f"delta check: a model, not a delta ({line})")


def check_tokenizer(folder: Path, report: Report) -> None:
    row = Row("model.llama_model", str(folder), "tokenizer")
    report.rows.append(row)
    try:
        tokens = check_llama_tokenizer(folder)
    except MiniGPT4Error as error:
        report.fail(row, one_line(error))
        return
    row.path = str(tokens.file)
    encodings = ", ".join(f"{text!r} -> {ids}" for text, ids in tokens.encodings.items())
    report.facts.append(
        f"tokenizer: {tokens.file}: {tokens.vocab_size} tokens (config.json vocab_size "
        f"{tokens.config_vocab_size}), <s> = {tokens.bos_token_id}, </s> = {tokens.eos_token_id}; {encodings}"
    )
    report.notes.extend(f"tokenizer: corrected when loading: {line}" for line in tokens.corrections)
    if tokens.problems:
        report.fail(row, tokens.message())


def check_ckpt(cfg: Config, shapes: Mapping[str, Shape], llm_config: Any, report: Report) -> None:
    if not cfg.model_cfg.ckpt:
        report.facts.append("projection: model.ckpt is not set (llama_proj starts untrained)")
        return
    row, path = local_file(cfg, "ckpt", report)
    report.rows.append(row)
    if path is None:
        return
    try:
        header = read_checkpoint_header(path)
    except MiniGPT4Error as error:
        report.fail(row, one_line(error))
        return
    row.path, row.format, row.dtypes = str(header.file), header.format, dtype_summary(header.dtypes.values())
    state = MiniGPT4.checkpoint_state({key: torch.empty(shape, device="meta") for key, shape in header.shapes.items()})
    row.used = len(set(state) & set(shapes))
    row.ignored = len(header.shapes) - len(state)
    proj = header.shapes.get("llama_proj.weight")
    hidden = llm_config.hidden_size if llm_config is not None else None
    if header.metadata:
        trained = trained_for(header.metadata, cfg.model_cfg.vit_arch.embed_dim)
        report.facts.append(f"projection: {header.file} was trained for {trained}")
    if hidden is None:
        report.notes.append("projection: not checked against the LLM (its config.json is unusable)")
        shapes = {key: shape for key, shape in shapes.items() if not key.startswith("llama_")}
        shapes["llama_proj.weight"] = (proj[0] if proj else 0, projection_width(cfg.model_cfg))
        shapes["llama_proj.bias"] = (shapes["llama_proj.weight"][0],)
    expected = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    target = CheckpointTarget.of(model_config(cfg.model_cfg), hidden, llm_config) if hidden is not None else None
    explain = checkpoint_shape_explainer(cfg.model_cfg.has_qformer, cfg.model_cfg.vit_arch.embed_dim, llm_config)
    try:
        warnings = check_minigpt4_checkpoint(expected, state, header.file, header.metadata, target, explain=explain)
    except MiniGPT4Error as error:
        row.used, row.refused = 0, len(state)
        report.fail(row, one_line(error))
        return
    row.refused = 0
    report.notes.extend(f"projection: {warning}" for warning in warnings)
    if proj and hidden is not None:
        report.facts.append(
            f"projection: llama_proj {list(proj)} fits the LLM's hidden size {hidden} ({llm_size_name(llm_config)})"
        )


def check_transformers_blip2(cfg: Config, shapes: Mapping[str, Shape], report: Report) -> None:
    """A transformers ``Blip2`` folder named by ``q_former_model``, the source of the whole vision
    side: its config.json against the model config, its safetensors headers against the model."""
    row, folder = local_file(cfg, "q_former_model", report)
    report.rows.append(row)
    vit_weights = cfg.model_cfg.vit_weights
    if vit_weights and Path(vit_weights).expanduser().resolve() != folder.resolve():
        report.fail(
            row,
            f"model.vit_weights is {vit_weights!r} but model.q_former_model is the transformers Blip2 folder "
            f"{folder}, which holds the vision tower too: set vit_weights to '' or to that folder",
        )
    try:
        if not blip2_hf.is_transformers_blip2_folder(folder):
            raise WeightLoadError(
                f"model.q_former_model: {folder} is a folder without config.json; give a BLIP-2 file "
                "(blip2_pretrained_flant5xxl.pth) or a transformers Blip2 folder"
            )
        blip2_hf.check_blip2_arch(folder, blip2_hf.read_blip2_config(folder), cfg.model_cfg)
        files = blip2_hf.weight_files(folder)
        key_report = blip2_hf.report_transformers_blip2_keys(
            blip2_hf.file_shapes(files), shapes, f"the transformers Blip2 weights in {folder}"
        )
    except MiniGPT4Error as error:
        report.fail(row, one_line(error))
        return
    used_files = sorted({files[name] for name in key_report.used})
    dtypes = [dtype for file in used_files for dtype in _safetensors_header(file)[1].values()]
    row.format = f"transformers Blip2, {len(set(files.values()))} file(s)"
    row.dtypes = dtype_summary(dtypes)
    fill_from_key_report(row, key_report, report)


def check_config(cfg: Config) -> Report:
    """Every check, in the order the model loads its weights."""
    report = Report()
    model_cfg = cfg.model_cfg
    shapes = vision_shapes(model_cfg)
    if not model_cfg.has_qformer:
        check_vit(cfg, shapes, report)  # no Q-Former, no BLIP-2 file
    elif blip2_hf.names_transformers_blip2(model_cfg):
        check_transformers_blip2(cfg, shapes, report)
    else:
        check_vit(cfg, shapes, report)
        check_blip2(cfg, shapes, report)
    folder, llm_shapes, llm_config = check_llm(cfg, report)
    if folder is not None:
        check_tokenizer(folder, report)
    if llm_config is not None:
        shapes = {**shapes, **llm_shapes}
        width, hidden = projection_width(model_cfg), llm_config.hidden_size
        shapes.update({"llama_proj.weight": (hidden, width), "llama_proj.bias": (hidden,)})
    check_ckpt(cfg, shapes, llm_config, report)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logger()
    logging.getLogger().setLevel(logging.WARNING)  # the table is the output
    try:
        cfg = Config(args)
    except (MiniGPT4Error, OSError) as error:
        sys.stderr.write(f"check_weights: {one_line(error)}\n")
        return 2
    report = check_config(cfg)
    sys.stdout.write(f"weights named by {args.cfg_path}{' with ' + ' '.join(args.options) if args.options else ''}\n\n")
    sys.stdout.write(report.text())
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
