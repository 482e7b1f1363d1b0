"""Tasks by ``run.task``: ``setup_task(cfg)`` returns the registered task for the config."""

from __future__ import annotations

from typing import Any

from minigpt4.common.registry import registry
from minigpt4.tasks.image_text_pretrain import ImageTextPretrainTask


def setup_task(cfg: Any) -> Any:
    return registry.get_task_class(cfg.run_cfg.task).setup_task(cfg)


__all__ = ["ImageTextPretrainTask", "setup_task"]
