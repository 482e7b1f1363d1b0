"""Export a MiniGPT-4 training checkpoint as safetensors, with what it was trained for.

    python tools/export_checkpoint.py RUN_CHECKPOINT OUT_DIR

reads ``RUN_CHECKPOINT`` (a runner's ``checkpoint_N.pth``, the reference runner's, or a released
projection file; loaded weights-only) and writes ``OUT_DIR/model.safetensors`` (the ``model``
entry under this model's names) and ``OUT_DIR/minigpt4_checkpoint.json``: the LLM's hidden size
and folder name, the Q-Former width, the number of query tokens, the prompt template and end
symbol of the run, and the project version. ``model.ckpt`` accepts ``OUT_DIR`` or the
``.safetensors`` file. A checkpoint with a NaN or infinite weight is refused. The exit status is
0 on success and 2 with a one-line reason otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a MiniGPT-4 checkpoint .pth (a run's checkpoint_N.pth)")
    parser.add_argument("out_dir", type=Path, help="folder to write model.safetensors and minigpt4_checkpoint.json")
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args(None)  # --help and a bad option answer before torch and the model code load

# ruff: noqa: E402 (the heavy imports come after that early parse on purpose)
# Run as ``python tools/export_checkpoint.py``, the repository root is not on the import path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minigpt4.common.errors import MiniGPT4Error
from minigpt4.common.logger import setup_logger
from minigpt4.models.checkpoint_files import (
    check_finite,
    checkpoint_metadata,
    pth_model_entry,
    write_safetensors_checkpoint,
)
from minigpt4.models.loaders import WeightLoadError, torch_load
from minigpt4.models.mini_gpt4 import MiniGPT4

logger = logging.getLogger("export_checkpoint")


def export(source: Path, out_dir: Path) -> Path:
    """Write the export of ``source`` into ``out_dir``; returns the ``.safetensors`` path."""
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such checkpoint file")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    checkpoint = torch_load(source)
    state = MiniGPT4.checkpoint_state(pth_model_entry(checkpoint, source))
    if not state:
        raise WeightLoadError(f"{source}: the 'model' entry holds no tensors")
    check_finite(state, source)
    config = checkpoint.get("config") if isinstance(checkpoint.get("config"), dict) else {}
    metadata = checkpoint_metadata(state, config.get("model"))
    target = write_safetensors_checkpoint(out_dir, state, metadata)
    logger.info(
        "Wrote %d tensors to %s (trained for hidden size %d, Q-Former width %d)",
        len(state),
        target,
        metadata["llm_hidden_size"],
        metadata["qformer_hidden_size"],
    )
    return target


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logger()
    try:
        export(args.checkpoint, args.out_dir)
    except (MiniGPT4Error, OSError) as error:
        sys.stderr.write(f"export_checkpoint: {error}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
