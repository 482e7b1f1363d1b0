"""Reading weight files: where they come from, how they are opened, how they are checked.

* :func:`resolve_weights` turns a ``model:`` location into a local file. Local paths are used as
  they are; URLs (``https://``, ``http://``, ``file://``) are downloaded once into a cache folder
  (``$MINIGPT4_CACHE_DIR``, default ``~/.cache/minigpt4``). Under ``torch.distributed`` rank 0
  downloads first and the other ranks wait at a barrier, then read the cached copy.
* :func:`torch_load` opens a checkpoint with ``weights_only=True``: a weight file can hold tensors
  and plain containers, never code.
* :func:`load_strict` loads a state dict only when every key the module needs is present, nothing
  is left over, and every shape fits; otherwise it raises :class:`WeightLoadError`, which says in
  words what is missing, what is unexpected and what a wrong shape means.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from minigpt4.common.errors import MiniGPT4Error

logger = logging.getLogger(__name__)

CACHE_ENV = "MINIGPT4_CACHE_DIR"
URL_SCHEMES = ("http", "https", "file")
# How many keys an error message lists before it only counts the rest.
LISTED_KEYS = 12

# Explains a shape mismatch: (key, shape in the file, shape in the model) -> a sentence, or None
# when the generic "file has X, model expects Y" says it all.
ShapeExplainer = Callable[[str, tuple[int, ...], tuple[int, ...]], "str | None"]


class WeightLoadError(MiniGPT4Error, RuntimeError):
    """A weight file that does not fit the model it is loaded into."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "minigpt4")


def is_url(location: str) -> bool:
    return urllib.parse.urlparse(location).scheme in URL_SCHEMES


def _dist_rank() -> int | None:
    """This process's rank when torch.distributed is initialised, else None."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return None


def _download(url: str, target: Path) -> None:
    """Download to a temporary file next to ``target``, then rename: no half-written cache entry."""
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Downloading %s to %s", url, target)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=target.name, suffix=".part", delete=False) as tmp:
        try:
            with urllib.request.urlopen(url) as response:
                shutil.copyfileobj(response, tmp)
        except BaseException:
            Path(tmp.name).unlink(missing_ok=True)
            raise
    Path(tmp.name).replace(target)


def resolve_weights(location: str, key: str) -> Path:
    """A local path for the weights at ``location`` (named by the config key ``key`` in errors)."""
    if not location:
        raise FileNotFoundError(f"model.{key} is empty: set it to a local path or a URL of the weights")
    if not is_url(location):
        path = Path(location).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"model.{key}: '{location}' does not exist")
        return path
    name = Path(urllib.parse.urlparse(location).path).name
    if not name:
        raise ValueError(f"model.{key}: the URL '{location}' does not end in a file name")
    target = cache_dir() / name
    rank = _dist_rank()
    if rank in (None, 0) and not target.exists():
        _download(location, target)
    if rank is not None:
        torch.distributed.barrier()
    return target


def torch_load(path: Path) -> object:
    """``torch.load`` on the CPU with ``weights_only=True``, with a readable refusal."""
    if path.is_dir():
        raise WeightLoadError(f"{path} is a folder; a weight file (.pth) is needed here")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise WeightLoadError(
            f"{path} holds Python objects other than tensors and plain containers; "
            f"it is not loaded because a weight file must not be able to run code ({error})"
        ) from error
    except (EOFError, IndexError, KeyError, ValueError, RuntimeError) as error:
        # Not a torch file at all (text, empty, truncated): the unpickler fails in its own terms.
        raise WeightLoadError(f"{path} is not a torch weight file ({type(error).__name__}: {error})") from error


def _listed(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:LISTED_KEYS])
    if len(keys) > LISTED_KEYS:
        shown += f", ... ({len(keys)} in all)"
    return shown


def check_state_dict(
    expected: Mapping[str, torch.Tensor],
    found: Mapping[str, torch.Tensor],
    what: str,
    explain: ShapeExplainer | None = None,
    optional: Iterable[str] = (),
) -> None:
    """Raise :class:`WeightLoadError` unless ``found`` fits ``expected`` key for key and shape.

    Keys in ``optional`` may be absent from ``found``.
    """
    missing = set(expected) - set(found) - set(optional)
    unexpected = set(found) - set(expected)
    problems = []
    if missing:
        problems.append(f"missing (the model needs them, the file lacks them): {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected (the file has them, the model has no place for them): {_listed(unexpected)}")
    for key in sorted(set(expected) & set(found)):
        want, have = tuple(expected[key].shape), tuple(found[key].shape)
        if want != have:
            reason = explain(key, have, want) if explain else None
            line = f"{key}: the file has shape {list(have)}, the model expects {list(want)}"
            problems.append(f"{line} ({reason})" if reason else line)
    if problems:
        raise WeightLoadError(f"cannot load {what}:\n  " + "\n  ".join(problems))


def load_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    what: str,
    explain: ShapeExplainer | None = None,
) -> None:
    """Check ``state_dict`` against ``module`` (see :func:`check_state_dict`), then load it."""
    check_state_dict(module.state_dict(), state_dict, what, explain)
    module.load_state_dict(state_dict, strict=True)
