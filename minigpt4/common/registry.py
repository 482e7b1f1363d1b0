"""Names used in YAML mapped to the classes that build them.

The reference's API is kept (``registry.register_model("mini_gpt4")`` as a class decorator,
``registry.get_model_class(name)``, ``registry.list_models()`` ...), so that users' scripts keep
working. Unlike the reference, a lookup of an unknown name raises an error that lists the valid
names, and registering a name twice raises. ``minigpt4/__init__.py`` names every module that
registers something, in one visible place; the global registry imports them on its first lookup,
so that importing a light module of the package (an entry point's argument parser) does not load
torch and transformers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from minigpt4.common.errors import MiniGPT4Error

KINDS = ("builder", "model", "processor", "task", "runner", "lr_scheduler")


class UnknownNameError(MiniGPT4Error, KeyError):
    """A YAML name that nothing was registered under."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


class Registry:
    def __init__(self) -> None:
        self._classes: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
        self._paths: dict[str, str] = {}
        self._loader: Callable[[], None] | None = None

    def load_on_first_lookup(self, loader: Callable[[], None]) -> None:
        """``loader`` imports the registering modules; it runs before the first lookup or listing."""
        self._loader = loader

    def _load(self) -> None:
        loader, self._loader = self._loader, None  # cleared first: a module may look up while loading
        if loader is not None:
            loader()

    def _register(self, kind: str, name: str) -> Callable[[Any], Any]:
        def wrap(cls: Any) -> Any:
            table = self._classes[kind]
            if name in table:
                raise KeyError(f"Name '{name}' already registered for {table[name]!r} ({kind})")
            table[name] = cls
            return cls

        return wrap

    def _get(self, kind: str, name: str) -> Any:
        self._load()
        table = self._classes[kind]
        if name not in table:
            valid = ", ".join(sorted(table)) or "none"
            raise UnknownNameError(f"unknown {kind} '{name}'; registered {kind}s: {valid}")
        return table[name]

    def register_builder(self, name: str) -> Callable[[Any], Any]:
        return self._register("builder", name)

    def register_model(self, name: str) -> Callable[[Any], Any]:
        return self._register("model", name)

    def register_processor(self, name: str) -> Callable[[Any], Any]:
        return self._register("processor", name)

    def register_task(self, name: str) -> Callable[[Any], Any]:
        return self._register("task", name)

    def register_runner(self, name: str) -> Callable[[Any], Any]:
        return self._register("runner", name)

    def register_lr_scheduler(self, name: str) -> Callable[[Any], Any]:
        return self._register("lr_scheduler", name)

    def get_builder_class(self, name: str) -> Any:
        return self._get("builder", name)

    def get_model_class(self, name: str) -> Any:
        return self._get("model", name)

    def get_processor_class(self, name: str) -> Any:
        return self._get("processor", name)

    def get_task_class(self, name: str) -> Any:
        return self._get("task", name)

    def get_runner_class(self, name: str) -> Any:
        return self._get("runner", name)

    def get_lr_scheduler_class(self, name: str) -> Any:
        return self._get("lr_scheduler", name)

    def list_datasets(self) -> list[str]:
        self._load()
        return sorted(self._classes["builder"])

    def list_models(self) -> list[str]:
        self._load()
        return sorted(self._classes["model"])

    def list_processors(self) -> list[str]:
        self._load()
        return sorted(self._classes["processor"])

    def list_tasks(self) -> list[str]:
        self._load()
        return sorted(self._classes["task"])

    def list_runners(self) -> list[str]:
        self._load()
        return sorted(self._classes["runner"])

    def list_lr_schedulers(self) -> list[str]:
        self._load()
        return sorted(self._classes["lr_scheduler"])

    def register_path(self, name: str, path: str) -> None:
        if not isinstance(path, str):
            raise TypeError(f"path '{name}' must be a str, got {type(path).__name__}")
        if name in self._paths:
            raise KeyError(f"Name '{name}' already registered")
        self._paths[name] = path

    def get_path(self, name: str) -> str:
        if name not in self._paths:
            raise UnknownNameError(f"unknown path '{name}'; registered paths: {', '.join(sorted(self._paths))}")
        return self._paths[name]


registry = Registry()
