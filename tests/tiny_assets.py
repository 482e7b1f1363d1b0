"""The embedded tiny default for tests: what ``make tiny-assets`` writes, made once per test
process by ``tools/quickstart.py``'s own ``ensure_assets`` into a temporary folder laid out like
the repository (``assets/tiny/weights``, ``assets/tiny/data``). With that folder as the working
directory, the tiny configs' relative paths resolve as they do in a checkout."""

from __future__ import annotations

import atexit
import functools
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tools"))

import quickstart  # noqa: E402

STAGE1_TINY = REPO_ROOT / "train_configs" / "minigpt4_stage1_tiny.yaml"
STAGE2_TINY = REPO_ROOT / "train_configs" / "minigpt4_stage2_tiny.yaml"


@functools.cache
def tiny_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="minigpt4-tiny-"))
    atexit.register(shutil.rmtree, root, True)
    quickstart.ensure_assets(root)
    return root


def tiny_path_options(root: Path, datasets: tuple[str, ...]) -> list[str]:
    """``--options`` pointing a tiny config (with ``datasets``) at ``root``'s assets, for runs
    whose working directory is elsewhere."""
    weights, data = root / quickstart.WEIGHTS, root / quickstart.DATA
    return [
        f"model.vit_weights={weights / 'eva_vit_tiny.pth'}",
        f"model.q_former_model={weights / 'blip2_tiny.pth'}",
        f"model.llama_model={weights / 'vicuna_tiny'}",
        *(f"datasets.{name}.build_info.storage={data / name}" for name in datasets),
    ]
