"""MiniGPT-4 checkpoint files: the runner's ``.pth`` and the exported safetensors folder.

``tools/export_checkpoint.py RUN_CHECKPOINT OUT_DIR`` writes

* ``OUT_DIR/model.safetensors``: the checkpoint's ``model`` entry under this model's names (the
  trainable weights and the buffers saved with them), every tensor finite;
* ``OUT_DIR/minigpt4_checkpoint.json``: what the weights were trained for (see
  :func:`checkpoint_metadata`); the same JSON is in the safetensors header under ``minigpt4``, so
  the ``.safetensors`` file alone still says it.

``model.ckpt`` names either format: a ``.pth`` file, a ``.safetensors`` file, or such a folder.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from minigpt4.models.loaders import WeightLoadError, torch_load

logger = logging.getLogger(__name__)

SAFETENSORS_NAME = "model.safetensors"
METADATA_NAME = "minigpt4_checkpoint.json"
METADATA_KEY = "minigpt4"  # the safetensors header entry holding the same JSON
FORMAT = "minigpt4-checkpoint"
FORMAT_VERSION = 1
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def project_version() -> str:
    """The version in the checkout's pyproject.toml, else the installed package's."""
    if PYPROJECT.is_file():
        # a regular expression, not tomllib: Python 3.10 (supported) has no tomllib
        match = re.search(r'^version\s*=\s*"([^"]+)"', PYPROJECT.read_text(encoding="utf-8"), re.MULTILINE)
        if match:
            return match.group(1)
    return importlib.metadata.version("minigpt4")


def checkpoint_metadata(state: Mapping[str, torch.Tensor], model_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a checkpoint was trained for. The widths come from ``llama_proj`` itself; the rest from
    the run's ``model:`` config saved in the checkpoint (None where the checkpoint has none, as
    the released projection files)."""
    if "llama_proj.weight" not in state:
        raise WeightLoadError("the checkpoint has no llama_proj.weight: it is not a MiniGPT-4 checkpoint")
    llm_hidden, qformer_width = state["llama_proj.weight"].shape
    cfg = model_cfg or {}
    llama_model = cfg.get("llama_model")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "llm_name": Path(str(llama_model).rstrip("/")).name if llama_model else None,
        "llm_hidden_size": int(llm_hidden),
        "qformer_hidden_size": int(qformer_width),
        # None for the released files and runs from before the key (a Q-Former, unless the
        # projection's input width says otherwise).
        "has_qformer": cfg.get("has_qformer"),
        "num_query_token": cfg.get("num_query_token"),
        "prompt_template": cfg.get("prompt_template"),
        "end_sym": cfg.get("end_sym"),
        # The LoRA adapters the file holds (models/lora.py); None without (lora_r 0 or unknown).
        **{key: cfg.get(key) if cfg.get("lora_r") else None for key in ("lora_r", "lora_alpha", "lora_target_modules")},
        "project_version": project_version(),
    }


def check_finite(state: Mapping[str, torch.Tensor], source: object) -> None:
    bad = [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise WeightLoadError(f"{source}: non-finite values (NaN or inf) in {', '.join(sorted(bad))}; not exported")


def write_safetensors_checkpoint(out_dir: Path, state: Mapping[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and the JSON into ``out_dir``; each file appears whole or not at
    all (written beside, then renamed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(metadata, indent=2) + "\n"
    # safetensors refuses shared or strided storage; each tensor gets its own contiguous copy.
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in state.items()}
    target = out_dir / SAFETENSORS_NAME
    for path, write in (
        (target, lambda tmp: save_file(tensors, str(tmp), metadata={METADATA_KEY: text})),
        (out_dir / METADATA_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8")),
    ):
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            write(tmp)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def safetensors_file(path: Path) -> Path | None:
    """The ``.safetensors`` file that ``model.ckpt`` names (the file, or the file in the folder),
    or None when it names a ``.pth`` file."""
    if path.is_dir():
        inner = path / SAFETENSORS_NAME
        if not inner.is_file():
            raise WeightLoadError(
                f"{path} is a folder; a weight file (.pth or .safetensors) or a folder holding {SAFETENSORS_NAME} "
                "(written by tools/export_checkpoint.py) is needed here"
            )
        return inner
    return path if path.suffix == ".safetensors" else None


@dataclass
class CheckpointHeader:
    """What a checkpoint file says about itself without its tensors being read: the file that
    holds the tensors, its format, each tensor's shape and dtype, and the training metadata
    (None for a ``.pth``)."""

    file: Path
    format: str
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]
    metadata: dict[str, Any] | None


def _metadata(file: Path, header: Mapping[str, str] | None) -> dict[str, Any] | None:
    """The JSON beside the file wins over the copy in the header (it is the one users read)."""
    beside = file.parent / METADATA_NAME
    text = beside.read_text(encoding="utf-8") if beside.is_file() else (header or {}).get(METADATA_KEY)
    if text is None:
        return None
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as error:
        where = beside if beside.is_file() else file
        raise WeightLoadError(f"{where}: the checkpoint metadata is not JSON ({error})") from error
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise WeightLoadError(f"{file}: the metadata is not a {FORMAT} description")
    return metadata


def _open_safetensors(file: Path) -> Any:
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except Exception as error:  # safetensors raises its own SafetensorError for a damaged header
        raise WeightLoadError(f"{file} is not a readable safetensors file ({error})") from error


def read_checkpoint_header(path: Path) -> CheckpointHeader:
    """The header of the checkpoint ``model.ckpt`` names; a ``.pth`` is opened memory-mapped, so
    no tensor is read."""
    file = safetensors_file(path)
    if file is not None:
        with _open_safetensors(file) as handle:
            shapes, dtypes = {}, {}
            for key in handle.keys():  # noqa: SIM118  (safe_open handles are not iterable)
                tensor_slice = handle.get_slice(key)
                shapes[key] = tuple(tensor_slice.get_shape())
                dtypes[key] = safetensors_dtype(tensor_slice.get_dtype())
            return CheckpointHeader(file, "safetensors", shapes, dtypes, _metadata(file, handle.metadata()))
    checkpoint = torch_load(path, mmap=True)
    state = pth_model_entry(checkpoint, path)
    return CheckpointHeader(
        path,
        "pth",
        {key: tuple(value.shape) for key, value in state.items()},
        {key: value.dtype for key, value in state.items()},
        None,
    )


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def safetensors_dtype(name: str) -> torch.dtype | str:
    """The torch dtype of a safetensors header's dtype name (the name itself for an exotic one)."""
    return _SAFETENSORS_DTYPES.get(name, name)


def pth_model_entry(checkpoint: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise WeightLoadError(
            f"{path} is not a MiniGPT-4 checkpoint: expected a dict with a 'model' entry, got {found}"
        )
    return checkpoint["model"]


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The tensors of the checkpoint ``model.ckpt`` names and its metadata (None for a ``.pth``)."""
    file = safetensors_file(path)
    if file is None:
        return pth_model_entry(torch_load(path), path), None
    with _open_safetensors(file) as handle:
        state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        return state, _metadata(file, handle.metadata())
