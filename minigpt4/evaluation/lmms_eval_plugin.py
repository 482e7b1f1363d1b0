"""Registers ``minigpt4`` with lmms-eval.

lmms-eval (0.7) finds out-of-tree models through the ``lmms_eval.models`` entry-point group;
``pyproject.toml`` names :func:`manifest` there, so ``pip install -e ".[lmms-eval]"`` makes
``lmms-eval --model minigpt4 ...`` work. In a checkout that is not pip-installed,

    python -m minigpt4.evaluation.lmms_eval_plugin --model minigpt4 --model_args ... --tasks ...

registers the model in lmms-eval's registry and runs lmms-eval's command line with the arguments
given. This module imports lmms-eval only when called, so that lmms-eval's start-up, which loads
every entry point, stays light.
"""

from __future__ import annotations

MODEL_ID = "minigpt4"
MODEL_CLASS = "minigpt4.evaluation.lmms_eval_model.MiniGPT4"


def manifest():
    """The ``ModelManifest`` lmms-eval's registry reads from the entry point."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=MODEL_CLASS)


def main() -> None:
    from lmms_eval.cli.dispatch import main as lmms_eval_main
    from lmms_eval.models import MODEL_REGISTRY_V2

    MODEL_REGISTRY_V2.register_manifest(manifest(), overwrite=True)
    lmms_eval_main()


if __name__ == "__main__":
    main()
