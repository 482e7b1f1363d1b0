"""Runners by ``run.runner``: ``runner_base`` (``RunnerBase``) trains both stages."""

from minigpt4.runners.runner_base import RunnerBase

__all__ = ["RunnerBase"]
