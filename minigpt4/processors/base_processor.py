"""The processor base: the identity transform, built from a config entry as the reference does."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf


class BaseProcessor:
    """The identity. Subclasses override ``__call__`` and take their options as keyword arguments
    of ``__init__``; ``from_config`` passes a config entry's keys to them."""

    def __call__(self, item: Any) -> Any:
        return item

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None = None) -> BaseProcessor:
        """Build from a ``vis_processor``/``text_processor`` entry. Keys left at None take the
        class's default; a key the class does not read is an error naming the ones it reads."""
        if cfg is None:
            return cls()
        options = {key: value for key, value in cfg.items() if key != "name" and value is not None}
        accepted = list(inspect.signature(cls).parameters)
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            name = cfg.get("name") or cls.__name__
            raise ValueError(
                f"processor '{name}' does not read {', '.join(unknown)}; it reads: {', '.join(accepted) or 'nothing'}"
            )
        if OmegaConf.is_config(cfg):
            options = {
                key: OmegaConf.to_object(value) if OmegaConf.is_config(value) else value
                for key, value in options.items()
            }
        return cls(**options)

    @classmethod
    def build(cls, **kwargs: Any) -> BaseProcessor:
        return cls.from_config(kwargs)
