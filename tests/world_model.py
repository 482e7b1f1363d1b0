"""The tiny world at reduced size with its projection trained: made once per test process (in a
temporary folder), for the tests that ask the trained model about held-out images (tests/test_tiny_world.py
through Chat, tests/test_browser_demo.py through the demo in a browser).

The vision side is pretrained for a few hundred steps, where it sees colour well and shape barely
(the quick start's full world also sees shape); stage 1 and stage 2 then run through ``train.main``
on the CPU, with the world's own YAMLs and their paths pointed at the temporary folder."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tiny_assets import REPO_ROOT

STAGE1 = REPO_ROOT / "train_configs" / "minigpt4_stage1_world.yaml"
STAGE2 = REPO_ROOT / "train_configs" / "minigpt4_stage2_world.yaml"
EVAL = REPO_ROOT / "eval_configs" / "minigpt4_world_eval.yaml"
CPU = ["run.device=cpu", "run.distributed=False", "run.num_workers=0"]


@dataclass(frozen=True)
class TrainedWorld:
    world: Path  # the world folder (data/, weights/, world.json)
    stage1_losses: list[float]  # every logged stage-1 loss
    checkpoint: Path  # stage 2's last checkpoint

    def weight_options(self) -> list[str]:
        """``--options`` pointing any world YAML at this world's frozen parts."""
        weights = self.world / "weights"
        return [
            f"model.vit_weights={weights / 'eva_vit_world.pth'}",
            f"model.q_former_model={weights / 'blip2_world.pth'}",
            f"model.llama_model={weights / 'vicuna_world'}",
        ]

    def eval_options(self, trained: bool = True) -> list[str]:
        """``--options`` for ``EVAL``: this world, with the trained projection or (the YAML's empty
        ``model.ckpt``) an untrained one."""
        return [*self.weight_options(), *([f"model.ckpt={self.checkpoint}"] if trained else [])]

    def heldout(self):
        from tools.tiny_world import read_heldout

        return read_heldout(self.world / "data" / "heldout")


@functools.cache
def trained_world() -> TrainedWorld:
    import train
    from tools.tiny_world import WorldSizes, make_world

    root = Path(tempfile.mkdtemp(prefix="minigpt4-world-"))
    atexit.register(shutil.rmtree, root, True)
    sizes = WorldSizes(laion=600, cc_sbu=100, align=60, heldout=60, shard_size=200, vision_steps=250,
                       vision_batch=64, vision_pool=1000, llm_steps=400, llm_batch=24)  # fmt: skip
    world = root / "world"
    make_world(world, sizes, seed=0)
    paths = TrainedWorld(world, [], Path()).weight_options()
    data = world / "data"
    heldout = data / "heldout"
    stage1 = train.main(["--cfg-path", str(STAGE1), "--options", *CPU, *paths, "run.iters_per_epoch=40",
                         f"datasets.laion.build_info.storage={data / 'laion'}",
                         f"datasets.cc_sbu.build_info.storage={data / 'cc_sbu'}",
                         f"run.output_dir={root / 'stage1'}"])  # fmt: skip
    stage2 = train.main(["--cfg-path", str(STAGE2), "--options", *CPU, *paths, "run.iters_per_epoch=5",
                         f"datasets.cc_sbu_align.build_info.storage={data / 'cc_sbu_align'}",
                         f"datasets.attribute_naming.build_info.annotations.heldout={heldout / 'filter_cap.json'}",
                         f"datasets.attribute_naming.build_info.images={heldout / 'image'}",
                         f"model.ckpt={stage1.output_dir / 'checkpoint_1.pth'}",
                         f"run.output_dir={root / 'stage2'}"])  # fmt: skip
    return TrainedWorld(world, [row["loss"] for row in stage1.history], stage2.output_dir / "checkpoint_1.pth")
