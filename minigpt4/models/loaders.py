"""Reading weight files: where they come from, how they are opened, how they are checked.

* :func:`resolve_weights` turns a ``model:`` location into a local file. Local paths are used as
  they are; URLs (``https://``, ``http://``, ``file://``) are downloaded once into a cache folder
  (``$MINIGPT4_CACHE_DIR``, default ``~/.cache/minigpt4``). Under ``torch.distributed`` rank 0
  downloads first and the other ranks wait at a barrier, then read the cached copy.
* :func:`torch_load` opens a checkpoint with ``weights_only=True``: a weight file can hold tensors
  and plain containers, never code. With ``mmap`` (the vision loaders) a zip-format file is mapped,
  not read whole. A file that is not a torch checkpoint at all, or a truncated one, is named in words.
* :func:`skip_random_init` (``from_config``) builds the ViT and the Q-Former without values, since
  the files give them theirs right after; :func:`load_into` loads into such a module, copying each
  tensor once into the module's dtype.
* :func:`check_state_dict` accepts a state dict only when every key the module needs is present,
  nothing is left over, and every shape fits; otherwise it raises :class:`WeightLoadError`, which
  says in words what is missing, what is unexpected and what a wrong shape means.
* :func:`report_keys` is the policy for the released vision-side files, which carry more than the
  model needs. It sorts a file's keys by name and shape alone (no tensor is read, so a model built
  on the meta device gives the expected shapes) into a :class:`KeyReport`: used; ignored by name
  (keys of a known kind, with the reason; one INFO line); unexpected (of no known kind: one
  WARNING, not loaded); missing and mis-shaped (an error in words). ``eva_vit.report_vit_keys``,
  ``qformer.report_blip2_keys`` and ``blip2_hf.report_transformers_blip2_keys`` apply it to the
  three vision-side sources.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from minigpt4.common.checkpoint import load_weights_only
from minigpt4.common.errors import MiniGPT4Error

logger = logging.getLogger(__name__)

CACHE_ENV = "MINIGPT4_CACHE_DIR"
URL_SCHEMES = ("http", "https", "file")
# How many keys an error message lists before it only counts the rest.
LISTED_KEYS = 12

# Explains a shape mismatch: (key, shape in the file, shape in the model) -> a sentence, or None
# when the generic "file has X, model expects Y" says it all.
ShapeExplainer = Callable[[str, tuple[int, ...], tuple[int, ...]], "str | None"]
# Why a key of the file is not used (a sentence), or None when the key is of no known kind.
IgnoreRule = Callable[[str], "str | None"]
# Whether a shape that differs from the model's is still loadable (``pos_embed`` of another grid).
ShapeAdapter = Callable[[str, tuple[int, ...], tuple[int, ...]], bool]
Shape = tuple[int, ...]


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


# torch.save writes a zip archive; files written before torch 1.6 are a bare pickle (protocol 2+).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


def _not_a_checkpoint(path: Path, head: bytes) -> str:
    """Why the first bytes ``head`` of ``path`` are not those of a torch checkpoint, in words."""
    if not head:
        return f"{path} is empty; a torch checkpoint (.pth) is needed here"
    if len(head) >= 9 and head[8:9] == b"{":
        return f"{path} is a safetensors file, not a torch checkpoint (.pth)"
    return f"{path} is not a torch checkpoint (.pth): it starts with {head[:16]!r}"


def torch_load(path: Path, *, mmap: bool = False) -> object:
    """``torch.load`` on the CPU with ``weights_only=True``, with a readable refusal. ``mmap``: map
    a zip-format file's tensors instead of reading them (a legacy file is read whole), so that
    what is never used is never read and what is used is read once, by its copy into the model."""
    if path.is_dir():
        raise WeightLoadError(f"{path} is a folder; a weight file (.pth) is needed here")
    with open(path, "rb") as file:
        head = file.read(16)
    if not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        raise WeightLoadError(_not_a_checkpoint(path, head))
    try:
        return load_weights_only(path, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise WeightLoadError(
            f"{path} holds Python objects other than tensors and plain containers; "
            f"it is not loaded because a weight file must not be able to run code ({error})"
        ) from error
    except (RuntimeError, EOFError, KeyError, IndexError, ValueError, OSError) as error:
        # torch reports a cut-off download as a zip or pickle internals error
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightLoadError(
            f"{path} cannot be read as a torch checkpoint; it is probably truncated or damaged "
            f"(an interrupted download?): {first_line}"
        ) from error


# Set while a model whose vision-side weights are loaded right after is built (see skip_random_init).
_skip_random_init: ContextVar[bool] = ContextVar("skip_random_init", default=False)


@contextlib.contextmanager
def skip_random_init() -> Iterator[None]:
    """Within it, ``build_eva_vit`` and ``build_qformer`` make their parameters without values, on
    the meta device: no memory, no random numbers (the ViT-g's random initialisation alone takes
    half a minute on a CPU). For a build whose weights are loaded right after, by the loaders of
    ``eva_vit``, ``qformer`` and ``blip2_hf``, which give the parameters the file's values
    (:func:`load_into`) and refuse a file that lacks any of them. ``MiniGPT4.build`` and every
    build outside it initialise at random as before."""
    token = _skip_random_init.set(True)
    try:
        yield
    finally:
        _skip_random_init.reset(token)


def random_init_skipped() -> bool:
    """Whether the current build is inside :func:`skip_random_init`."""
    return _skip_random_init.get()


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Within it, every parameter a module registers is moved to the meta device, so that the
    initialisation that follows (``reset_parameters``, timm's and transformers' ``_init_weights``)
    costs nothing; buffers stay real, so the non-persistent ones that no file holds (EVA's zero
    ``k_bias``) keep the values their module computed."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and not param.is_meta:
            kind = type(param)
            module._parameters[name] = kind(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def load_into(module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, strict: bool) -> None:
    """``module.load_state_dict(state_dict, strict=strict)``, also where the module's parameters have
    no values yet (built under :func:`skip_random_init`): each such parameter becomes a copy of the
    file's tensor in the parameter's dtype. One copy (a dtype conversion is that copy), and never a
    view of a memory-mapped file: the model must not change when its file does."""
    own = module.state_dict(keep_vars=True)
    if not any(own[key].is_meta for key in state_dict if key in own):
        module.load_state_dict(state_dict, strict=strict)
        return
    values = {
        key: value.to(dtype=own[key].dtype, copy=True) if key in own else value for key, value in state_dict.items()
    }
    module.load_state_dict(values, strict=strict, assign=True)


def check_no_meta(module: nn.Module, what: str, parts: Iterable[str] | None = None) -> None:
    """Raise :class:`WeightLoadError` if a tensor of ``module`` (of its ``parts``: key prefixes)
    was given no value by the load (only possible for a build under :func:`skip_random_init`)."""
    parts = tuple(parts) if parts is not None else ("",)
    empty = [key for key, value in module.state_dict(keep_vars=True).items() if key.startswith(parts) and value.is_meta]
    if empty:
        raise WeightLoadError(f"{what} left without values (no file provided them): {_listed(empty)}")


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


def shapes_of(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Shape]:
    """``{key: shape}`` of a state dict (works on meta tensors: nothing is read)."""
    return {key: tuple(value.shape) for key, value in state_dict.items()}


@dataclass
class KeyReport:
    """How the keys of one weight file fit a model, decided from names and shapes alone.

    Keys are named as the file names them (so that they can be looked up in it). ``used`` are
    loaded; ``ignored`` (key -> reason) are of a known kind the model does not use and are counted
    in one INFO line (named at DEBUG); ``unexpected`` are of no known kind, named in a WARNING and not loaded;
    ``missing`` (the model needs them) and ``mismatched`` (key -> (file shape, model shape,
    reason or None)) make the file unloadable.
    """

    what: str
    used: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[Shape, Shape, str | None]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the file can be loaded (nothing missing, every shape fits)."""
        return not self.missing and not self.mismatched

    def problems(self) -> list[str]:
        """One line per reason the file cannot be loaded (empty when :attr:`ok`)."""
        lines = []
        if self.missing:
            lines.append(f"missing (the model needs them, the file lacks them): {_listed(self.missing)}")
        for key, (have, want, reason) in self.mismatched.items():
            line = f"{key}: the file has shape {list(have)}, the model expects {list(want)}"
            lines.append(f"{line} ({reason})" if reason else line)
        return lines

    def ignored_by_reason(self) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {}
        for key, reason in self.ignored.items():
            grouped.setdefault(reason, []).append(key)
        return grouped

    def log(self, log: logging.Logger = logger) -> None:
        """One INFO line counting the ignored keys by reason (a DEBUG line names them), one WARNING
        naming the unexpected ones."""
        if self.ignored:
            grouped = self.ignored_by_reason().items()
            counts = "; ".join(f"{reason}: {len(keys)}" for reason, keys in grouped)
            log.info("%s: ignoring %d keys the model does not use (%s)", self.what, len(self.ignored), counts)
            names = "; ".join(f"{reason}: {_listed(keys)}" for reason, keys in grouped)
            log.debug("%s: the ignored keys, by reason: %s", self.what, names)
        if self.unexpected:
            log.warning(
                "%s: %d unexpected keys, of no kind this loader knows, are not loaded: %s",
                self.what,
                len(self.unexpected),
                _listed(self.unexpected),
            )

    def raise_if_refused(self) -> None:
        """Raise :class:`WeightLoadError` naming every problem unless :attr:`ok`."""
        if self.ok:
            return
        lines = self.problems()
        if self.unexpected:
            lines.append(f"also unexpected (of no known kind, not loaded): {_listed(self.unexpected)}")
        raise WeightLoadError(f"cannot load {self.what}:\n  " + "\n  ".join(lines))


def report_keys(
    what: str,
    found: Mapping[str, Sequence[int]],
    expected: Mapping[str, Sequence[int]],
    *,
    ignore: IgnoreRule | None = None,
    explain: ShapeExplainer | None = None,
    optional: Iterable[str] = (),
    adapts: ShapeAdapter | None = None,
) -> KeyReport:
    """Sort the file's keys ``found`` ({key: shape}) against the model's ``expected`` ({key:
    shape}, in the file's names). A key the model has is used when its shape fits (or ``adapts``
    accepts the difference) and mis-shaped otherwise; a key the model lacks is ignored when
    ``ignore`` gives a reason, else unexpected. Keys in ``optional`` may be absent."""
    report = KeyReport(what)
    for key in sorted(found):
        have = tuple(found[key])
        if key in expected:
            want = tuple(expected[key])
            if have == want or (adapts is not None and adapts(key, have, want)):
                report.used.append(key)
            else:
                report.mismatched[key] = (have, want, explain(key, have, want) if explain else None)
        elif (reason := ignore(key) if ignore else None) is not None:
            report.ignored[key] = reason
        else:
            report.unexpected.append(key)
    report.missing = sorted(set(expected) - set(found) - set(optional))
    return report
