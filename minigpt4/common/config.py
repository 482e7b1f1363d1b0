"""``Config(args)``: the YAML files and ``--options`` merged onto the typed schema.

Merge order, later winning, as in the reference:

1. the model's default YAML, chosen by ``model.model_type`` through the model class's
   ``default_config_path`` (``MiniGPT4``: ``configs/models/minigpt4.yaml``);
2. each dataset's default YAML, chosen by the dataset name and its ``type`` through the builder
   class's ``default_config_path`` (``configs/datasets/...``);
3. the user's YAML (``args.cfg_path``);
4. ``args.options``: ``key=value`` tokens, or ``key value`` pairs.

Everything lands on ``minigpt4.common.schema.RootConfig``, so a misspelt key or a value of the
wrong type stops here, naming the file or option it came from and the valid keys; so does a name
that nothing is registered under (model, dataset, processor, task, runner, LR schedule). Unlike
the reference, ``model.model_type`` given in ``--options`` does pick the model's default YAML.
The result is read-only: nothing changes the configuration after start-up. Relative paths are
kept as written, relative to the working directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from minigpt4.common.errors import MiniGPT4Error
from minigpt4.common.registry import UnknownNameError, registry
from minigpt4.common.schema import RootConfig

logger = logging.getLogger(__name__)


class ConfigError(MiniGPT4Error, ValueError):
    """A configuration that cannot be used, with the file or option at fault."""


def options_to_dotlist(options: Sequence[str] | None) -> list[str]:
    """``["a.b=1", "c=2"]`` as is; ``["a.b", "1", "c", "2"]`` paired into the same form."""
    if not options:
        return []
    options = list(options)
    if "=" in options[0]:
        bad = [token for token in options if "=" not in token]
        if bad:
            raise ConfigError(f"--options: '{bad[0]}' is not key=value (mix no key=value and key value forms)")
        return options
    if len(options) % 2:
        raise ConfigError(f"--options: '{options[-1]}' has no value (give key=value or key value pairs)")
    return [f"{key}={value}" for key, value in zip(options[::2], options[1::2], strict=True)]


def _merge(base: DictConfig, layer: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)
    except ConfigKeyError as exn:
        schema = exn.object_type
        fields = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else []
        parent, _, key = exn.full_key.rpartition(".")
        # Suggested here, not read from omegaconf's message: omegaconf suggests names only from 2.4 on.
        close = difflib.get_close_matches(key, fields, n=3)
        hint = f"Did you mean {' or '.join(map(repr, close))}? " if close else ""
        valid = f"Valid keys of {parent or 'the top level'}: {', '.join(fields)}"
        raise ConfigError(f"{source}: unknown key '{exn.full_key}'. {hint}{valid}") from None
    except OmegaConfBaseException as exn:
        raise ConfigError(f"{source}: bad value for '{exn.full_key}': {str(exn.msg).splitlines()[0]}") from None


def _load(path: str) -> DictConfig:
    try:
        config = OmegaConf.load(path)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder; give a .yaml file") from None
    except yaml.MarkedYAMLError as exn:
        mark = exn.problem_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({exn.problem or exn.context})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exn:
        raise ConfigError(f"{path}: not valid YAML ({exn})") from None
    if not isinstance(config, DictConfig):
        raise ConfigError(f"{path}: expected a YAML mapping of keys (model:, datasets:, run:), got a list")
    return config


REPO_ROOT = Path(__file__).resolve().parents[2]
# Weight locations, and the prefix of the placeholders that the shipped YAML files hold for them.
PATH_KEYS = ("model.llama_model", "model.vit_weights", "model.q_former_model", "model.ckpt")
PLACEHOLDER_PREFIX = "/path/to/"
_UNSET = object()

# run: keys that name a registered class, and the registry kind each is looked up in.
RUN_NAMES = {"task": "task", "runner": "runner", "lr_sched": "lr_scheduler"}


def _check_names(config: DictConfig) -> None:
    """Names and values the schema's types cannot express: processor names and the run's task,
    runner and LR schedule resolve, storage is a str or a list of str."""
    for key, kind in RUN_NAMES.items():
        try:
            getattr(registry, f"get_{kind}_class")(config.run[key])
        except UnknownNameError as exn:
            raise ConfigError(f"run.{key}: {exn}") from None
    entries = [(f"preprocess.{kind}", config.preprocess[kind]) for kind in ("vis_processor", "text_processor")]
    for name, dataset in config.datasets.items():
        storage = dataset.build_info.storage
        if not (isinstance(storage, str) or (OmegaConf.is_list(storage) and all(isinstance(s, str) for s in storage))):
            raise ConfigError(f"datasets.{name}.build_info.storage must be a str or a list of str, got {storage!r}")
        entries += [(f"datasets.{name}.{kind}", dataset[kind]) for kind in ("vis_processor", "text_processor")]
    for key, splits in entries:
        for split in ("train", "eval"):
            entry = splits[split]
            if entry is None:
                continue
            if not entry.name:
                raise ConfigError(f"{key}.{split} needs a 'name' (one of: {', '.join(registry.list_processors())})")
            try:
                registry.get_processor_class(entry.name)
            except UnknownNameError as exn:
                raise ConfigError(f"{key}.{split}.name: {exn}") from None


class Config:
    """The merged configuration. ``args`` needs ``cfg_path`` and ``options`` (a list or None)."""

    def __init__(self, args: Any) -> None:
        options = OmegaConf.from_dotlist(options_to_dotlist(args.options))
        user = _load(args.cfg_path)
        for root_key in ("model", "datasets"):
            if root_key not in user:
                raise ConfigError(f"{args.cfg_path}: expecting '{root_key}' as a root key")
        schema = OmegaConf.structured(RootConfig)
        # A first pass only to learn which model and datasets the user asks for.
        wanted = _merge(_merge(schema, user, args.cfg_path), options, "--options")

        try:
            model_cls = registry.get_model_class(wanted.model.arch)
        except UnknownNameError as exn:
            raise ConfigError(f"model.arch: {exn}") from None
        model_type = wanted.model.model_type
        if model_type not in model_cls.PRETRAINED_MODEL_CONFIG_DICT:
            valid = ", ".join(model_cls.PRETRAINED_MODEL_CONFIG_DICT)
            raise ConfigError(f"model.model_type '{model_type}' is not one of {wanted.model.arch}'s: {valid}")
        defaults = [model_cls.default_config_path(model_type)]
        for name, dataset in wanted.datasets.items():
            try:
                defaults.append(registry.get_builder_class(name).default_config_path(dataset.type))
            except UnknownNameError as exn:
                raise ConfigError(f"datasets.{name}: {exn}") from None

        config = schema
        # (source, its content), in merge order: origin() tells which one set a key.
        self.layers = [(path, _load(path)) for path in defaults]
        self.layers += [(args.cfg_path, user), ("--options", options)]
        for source, layer in self.layers:
            config = _merge(config, layer, source)
        _check_names(config)
        OmegaConf.set_readonly(config, True)
        self.config = config
        for key in PATH_KEYS:
            value = OmegaConf.select(config, key)
            if isinstance(value, str) and value.startswith(PLACEHOLDER_PREFIX):
                logger.warning(
                    "%s is still the placeholder '%s' of %s: set it there, in your YAML or with --options %s=...",
                    key,
                    value,
                    self.origin(key),
                    key,
                )

    def origin(self, key: str) -> str | None:
        """The file (or ``--options``) that set ``key`` (``model.llama_model``) last; None for a
        schema default."""
        for source, layer in reversed(self.layers):
            if OmegaConf.select(layer, key, default=_UNSET) is not _UNSET:
                path = Path(source).resolve()
                return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else source
        return None

    @property
    def run_cfg(self) -> DictConfig:
        return self.config.run

    @property
    def datasets_cfg(self) -> DictConfig:
        return self.config.datasets

    @property
    def model_cfg(self) -> DictConfig:
        return self.config.model

    def get_config(self) -> DictConfig:
        """The whole merged config (the reference's accessor, kept for the scripts that call it)."""
        return self.config

    def to_dict(self) -> dict[str, Any]:
        return OmegaConf.to_container(self.config, resolve=True)

    def summary(self, world_size: int, precision: str, device: str) -> str:
        """The run in one line for the console: what trains on what, and how (``pretty_print``
        and the run's ``log.txt`` hold the whole config)."""
        model, run = self.model_cfg, self.run_cfg
        datasets = ", ".join(f"{name} ({dataset.build_info.storage})" for name, dataset in self.datasets_cfg.items())
        return (
            f"{model.arch} ({model.model_type}), LLM {model.llama_model or '(none)'}; datasets {datasets}; batch "
            f"{run.batch_size_train} x {world_size} ranks, {run.max_epoch} epochs x {run.iters_per_epoch} "
            f"iterations, precision {precision}, device {device}"
        )

    def pretty_print(self) -> None:
        """Log the run, each dataset and the model section as indented JSON."""

        def dump(node: DictConfig) -> str:
            return json.dumps(OmegaConf.to_container(node, resolve=True), indent=4, sort_keys=True)

        logger.info("=====  Running Parameters    =====\n%s", dump(self.run_cfg))
        for name, dataset in self.datasets_cfg.items():
            logger.info("=====  Dataset: %s  =====\n%s", name, dump(dataset))
        logger.info("=====  Model Attributes  =====\n%s", dump(self.model_cfg))
