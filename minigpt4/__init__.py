"""MiniGPT-4: a frozen BLIP-2 vision side aligned with a frozen Vicuna through one linear layer.

Every YAML name (models, dataset builders, processors, tasks, runners, LR schedules) is registered
by the modules imported in ``_register_all``, the one place where that happens. They are imported
on the registry's first lookup rather than here: the entry points import light modules of the
package to parse their arguments, and ``--help`` should not wait for torch.
"""

from pathlib import Path

from minigpt4.common.registry import registry

LIBRARY_ROOT = Path(__file__).resolve().parent
REPO_ROOT = LIBRARY_ROOT.parent


def _register_all() -> None:
    from minigpt4.common import optims  # noqa: F401  (registers the LR schedules)
    from minigpt4.datasets.builders import (
        benchmark_builder,  # noqa: F401  (the benchmarks evaluate.py runs)
        image_text_pair_builder,  # noqa: F401  (laion, cc_sbu, cc_sbu_align)
    )
    from minigpt4.models import mini_gpt4  # noqa: F401  (registers mini_gpt4)
    from minigpt4.processors import blip_processors  # noqa: F401  (blip2_image_train/eval, blip_caption)
    from minigpt4.runners import runner_base  # noqa: F401  (registers runner_base)
    from minigpt4.tasks import image_text_pretrain  # noqa: F401  (registers image_text_pretrain)


registry.load_on_first_lookup(_register_all)
# The reference's registered paths: nothing here reads them, users' scripts do (registry.get_path).
registry.register_path("library_root", str(LIBRARY_ROOT))
registry.register_path("repo_root", str(REPO_ROOT))

__all__ = ["LIBRARY_ROOT", "REPO_ROOT", "registry"]
