"""Training checkpoints: what the runner saves, written atomically, read without running code.

A checkpoint keeps the reference's keys, so that ``model.ckpt`` and the reference's tools read it:

* ``model``: the unwrapped model's state_dict without the parameters that do not train. Buffers
  survive, as in the reference: for MiniGPT-4 that is ``llama_proj.*`` plus the Q-Former's
  ``position_ids`` and any LLM buffers saved in the state_dict.
* ``optimizer``, ``scaler`` (the loss scaler's state_dict), ``config`` (the merged config as a
  plain dict), ``epoch`` (the epoch the checkpoint was taken in).

and adds what an exact resume needs: ``iters`` (iterations of that epoch already done; equal to
``iters_per_epoch`` when the epoch is complete), ``global_step``, ``scheduler`` (its name and the
position it was last stepped at) and ``rng`` (the Python, NumPy, torch and device generator states
of every rank, as tensors and plain types). Everything loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from minigpt4.common.errors import MiniGPT4Error

logger = logging.getLogger(__name__)


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict without frozen parameters (tied names included); buffers are kept."""
    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


class CheckpointMismatchError(MiniGPT4Error, KeyError):
    """A checkpoint whose parameters are not the model's (other names or shapes)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


def _first(keys: list[str], shown: int = 8) -> str:
    """``['a', 'b', ... (120 in all)]``: LoRA adapters alone are hundreds of keys."""
    if not keys:
        return "none"
    more = f", ... ({len(keys)} in all)" if len(keys) > shown else ""
    return str(keys[:shown])[:-1] + more + "]"


def load_trainable_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a checkpoint's ``model`` entry, under the model's names (the runner maps older
    formats first with the model's ``checkpoint_state``): it must hold every trainable parameter
    and buffer of ``model`` and nothing the model lacks; frozen parameters keep the weights they
    were loaded with."""
    expected = set(trainable_state_dict(model))
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{source} does not match the model's trainable parameters: missing {_first(missing)}; unexpected "
            f"{_first(unexpected)} (was it trained with other model.lora_r, lora_target_modules, freeze_vit or "
            "freeze_qformer settings?)"
        )
    own = model.state_dict()
    mis_shaped = [
        f"{key} is {tuple(value.shape)} in the file, {tuple(own[key].shape)} in the model"
        for key, value in state.items()
        if key in own and tuple(value.shape) != tuple(own[key].shape)
    ]
    if mis_shaped:
        raise CheckpointMismatchError(
            f"{source} was saved from a model of another size: {'; '.join(mis_shaped)} "
            "(is it from another config, an LLM of another hidden size or another model.num_query_token?)"
        )
    model.load_state_dict(state, strict=False)


def rng_state(device: torch.device) -> dict[str, Any]:
    """The state of every random generator this process draws from, in weights-only types."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if device.type != "cpu":
        state["device"] = torch.get_device_module(device.type).get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if device.type != "cpu" and "device" in state:
        torch.get_device_module(device.type).set_rng_state(state["device"], device)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename it over ``path``:
    a run killed while saving leaves the previous checkpoint intact."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class CheckpointError(MiniGPT4Error, OSError):
    """A checkpoint file that cannot be used: truncated, not written by ``torch.save``, holding
    objects that could run code, or holding non-finite weights."""


def load_weights_only(path: str | Path, *, mmap: bool = False) -> Any:
    """``torch.load`` on the CPU with ``weights_only=True``. ``mmap``: map the tensors of a
    zip-format file (``torch.save`` since torch 1.6) instead of reading them; a legacy file, which
    cannot be mapped, is read whole. The errors are torch's."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as error:
        if not (mmap and "mmap can only be used" in str(error)):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # not a zip file: legacy or broken


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint's dict, on the CPU, without unpickling anything but tensors and plain types.
    ``mmap``: map the tensors instead of reading them (reading the positions of many is cheap)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return load_weights_only(path, mmap=mmap)
    except pickle.UnpicklingError as error:
        if "GLOBAL" not in str(error):
            raise CheckpointError(f"{path}: not a readable checkpoint, not written by torch.save") from error
        raise CheckpointError(
            f"{path}: holds objects other than tensors and plain types, which torch.load(weights_only=True) "
            "refuses (loading them could run code)"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        reason = str(error).splitlines()[0].split(". ")[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint, truncated or not written by torch.save ({reason})"
        ) from error


def checkpoint_position(ckpt: dict[str, Any]) -> tuple[int, float]:
    """(epoch, iterations of it done): how far into training a checkpoint is. The reference's
    checkpoints mark complete epochs and have no ``iters``."""
    return ckpt["epoch"], ckpt.get("iters", float("inf"))


# The last scan: the candidates' signatures -> the checkpoint chosen and its position, so that
# the start-up checks and the runner read each candidate's header once and warn about one once.
_last_scan: dict[tuple[Any, ...], tuple[Path, dict[str, int]]] = {}


def find_resume_checkpoint(location: str | Path) -> tuple[Path, dict[str, int]]:
    """``run.resume_ckpt_path`` as a file and its position (``epoch`` and, when saved, ``iters``):
    a checkpoint file as it is, or a run's output folder -> the checkpoint in it that is furthest
    into training (``checkpoint_last.pth`` of a run killed mid-epoch, else the last epoch's), so
    that a crashed run resumes with one setting. In a folder, a checkpoint that does not load is
    skipped with a warning; a file named directly that does not load is refused. Only the headers
    are read (the tensors are mapped, not loaded)."""
    path = Path(location)
    if path.is_dir():
        candidates = sorted(path.glob("checkpoint_*.pth"))
        if not candidates:
            raise FileNotFoundError(f"run.resume_ckpt_path: the folder '{location}' holds no checkpoint_*.pth")
    elif path.is_file():
        candidates = [path]
    else:
        raise FileNotFoundError(f"run.resume_ckpt_path: checkpoint '{location}' does not exist")
    signature = tuple((str(c.resolve()), c.stat().st_size, c.stat().st_mtime_ns) for c in candidates)
    if signature in _last_scan:
        return _last_scan[signature]
    found, reasons = {}, []
    for candidate in candidates:
        try:
            ckpt = load_checkpoint(candidate, mmap=True)
            found[candidate] = {"epoch": ckpt["epoch"], **{k: ckpt[k] for k in ("iters",) if k in ckpt}}
        except (CheckpointError, KeyError) as error:
            if path.is_file():
                raise
            reason = str(error) if isinstance(error, CheckpointError) else f"{candidate}: no {error} entry"
            logger.warning("run.resume_ckpt_path: skipping %s", reason)
            reasons.append(reason)
    if not found:
        raise CheckpointError(f"run.resume_ckpt_path: no checkpoint in '{location}' loads: {'; '.join(reasons)}")
    chosen = max(found, key=lambda c: checkpoint_position(found[c]))
    _last_scan.clear()
    _last_scan[signature] = chosen, found[chosen]
    return _last_scan[signature]


def resume_checkpoint(location: str | Path) -> Path:
    """The checkpoint file ``run.resume_ckpt_path`` names (see ``find_resume_checkpoint``)."""
    return find_resume_checkpoint(location)[0]


__all__ = [
    "CheckpointError",
    "checkpoint_position",
    "find_resume_checkpoint",
    "load_checkpoint",
    "load_trainable_state_dict",
    "load_weights_only",
    "resume_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "trainable_state_dict",
]
