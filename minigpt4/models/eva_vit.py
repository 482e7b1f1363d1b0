"""The EVA ViT-g/14 vision tower, built with timm's ``Eva``, and the ``eva_vit_g.pth`` loader.

timm's ``Eva`` with fused ``qkv`` (no bias) plus separate ``q_bias``/``v_bias``, pre-norm blocks,
an exact-GELU MLP and no layer scale is the reference's ``VisionTransformer``, parameter name for
parameter name. Built with no final norm, no pooling and no head, ``forward_features`` returns all
``1 + (image_size / patch_size)**2`` tokens, class token first, as the reference's ``forward`` does.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.eva import Eva
from torch import nn

from minigpt4.common.schema import VitArch
from minigpt4.models.loaders import (
    KeyReport,
    Shape,
    WeightLoadError,
    check_no_meta,
    load_into,
    parameters_on_meta,
    random_init_skipped,
    report_keys,
    shapes_of,
    torch_load,
)

logger = logging.getLogger(__name__)

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")
# The vision tower's prefix in a MiniGPT-4 state dict (and in a BLIP-2 file).
VISION_PREFIX = "visual_encoder."
# Parts of EVA-CLIP-g exports that the model does not have (it applies ln_vision instead of a final
# norm, and has no pooling and no CLIP projection), by reason.
VIT_IGNORED = (
    (re.compile(r"^norm\."), "the tower's final norm (the model applies ln_vision instead)"),
    (re.compile(r"^fc_norm\."), "the tower's pooled-output norm (the model does not pool)"),
    (re.compile(r"^head\."), "the CLIP projection head"),
)


class FP32LayerNorm(nn.LayerNorm):
    """A LayerNorm that always computes in fp32 and returns the input's dtype (``ln_vision``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


def cast_linear_and_conv(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast only the Linear and Conv weights and biases, as the reference's fp16 conversion does:
    LayerNorms, ``cls_token``, ``pos_embed`` and the q/v biases keep their fp32 values."""
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            sub.to(dtype)


def build_eva_vit(
    arch: VitArch,
    image_size: int,
    drop_path_rate: float,
    use_grad_checkpoint: bool,
    dtype: torch.dtype,
) -> Eva:
    """EVA ViT-g/14 (or the ``arch`` given) for square images of ``image_size`` pixels; inside
    ``loaders.skip_random_init`` its parameters are left without values for :func:`load_eva_vit`."""
    with parameters_on_meta() if random_init_skipped() else contextlib.nullcontext():
        vit = _eva(arch, image_size, drop_path_rate)
    vit.set_grad_checkpointing(use_grad_checkpoint)
    cast_linear_and_conv(vit, dtype)
    return vit


def _eva(arch: VitArch, image_size: int, drop_path_rate: float) -> Eva:
    return Eva(
        img_size=image_size,
        patch_size=arch.patch_size,
        num_classes=0,
        global_pool="",
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        mlp_ratio=arch.mlp_ratio,
        qkv_bias=True,
        qkv_fused=True,
        drop_path_rate=drop_path_rate,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_fc_norm=False,
        use_post_transformer_norm=False,
    )


def interpolate_pos_embed(state_dict: dict[str, torch.Tensor], vit: Eva) -> dict[str, torch.Tensor]:
    """Resize the file's ``pos_embed`` to the model's patch grid (bicubic, class token kept).

    The reference resizes when the file was trained at another image size; at equal grids the
    state dict is returned unchanged.
    """
    pos_embed = state_dict["pos_embed"]
    num_prefix = vit.num_prefix_tokens
    old = math.isqrt(pos_embed.shape[-2] - num_prefix)
    new = vit.patch_embed.grid_size
    if old * old != pos_embed.shape[-2] - num_prefix:
        raise WeightLoadError(f"pos_embed of shape {list(pos_embed.shape)} does not hold a square grid of patches")
    if (old, old) == tuple(new):
        return state_dict
    logger.info("Position interpolate from %dx%d to %dx%d", old, old, new[0], new[1])
    resized = resample_abs_pos_embed(
        pos_embed, new_size=list(new), old_size=[old, old], num_prefix_tokens=num_prefix, antialias=False
    )
    return {**state_dict, "pos_embed": resized}


def explain_vit_shape(key: str, have: tuple[int, ...], want: tuple[int, ...]) -> str | None:
    """Shape mismatches of ViT weights in words."""
    if have[-1] != want[-1] and key in ("cls_token", "pos_embed"):
        return f"the file holds a ViT of width {have[-1]}; vit_arch.embed_dim is {want[-1]}"
    if key == "pos_embed":
        return "the file's pos_embed does not hold a square grid of patches after the class token"
    if key == "patch_embed.proj.weight" and have[2:] != want[2:]:
        return f"the file was trained with {have[-1]}-pixel patches; vit_arch.patch_size is {want[-1]}"
    if key.endswith("mlp.fc1.weight") and have[0] != want[0]:
        return f"the file's MLP is {have[0]} wide; vit_arch.mlp_ratio gives {want[0]}"
    return None


def _is_square_grid(tokens: int) -> bool:
    return tokens >= 1 and math.isqrt(tokens - 1) ** 2 == tokens - 1


def pos_embed_resizable(key: str, have: Shape, want: Shape) -> bool:
    """A ``pos_embed`` of another patch grid but the same width is interpolated on load."""
    return (
        key == "pos_embed"
        and len(have) == len(want) == 3
        and have[::2] == want[::2]
        and _is_square_grid(have[1])
        and _is_square_grid(want[1])
    )


def vit_ignore_rule(depth: int) -> Callable[[str], str | None]:
    """Why a ViT key the model lacks is ignored (blocks beyond ``depth``: the reference uses 39 of
    EVA-CLIP-g's 40 layers), or None when it is of no known kind."""

    def reason(key: str) -> str | None:
        match = _BLOCK_KEY.match(key)
        if match:
            return f"blocks beyond the model's depth {depth}" if int(match.group(1)) >= depth else None
        return next((why for pattern, why in VIT_IGNORED if pattern.match(key)), None)

    return reason


def vit_depth(vit_shapes: Mapping[str, Shape]) -> int:
    """The number of blocks of a ViT state dict."""
    return len({match.group(1) for key in vit_shapes if (match := _BLOCK_KEY.match(key))})


def report_vit_keys(
    file_shapes: Mapping[str, Shape], vit_shapes: Mapping[str, Shape], what: str = "the EVA ViT weights"
) -> KeyReport:
    """The :class:`KeyReport` of an ``eva_vit_g.pth``-format file ({key: shape}) against the vision
    tower's state dict ({key: shape}: ``shapes_of(model.visual_encoder.state_dict())``, or the
    whole MiniGPT-4 model's, of which the ``visual_encoder.`` keys are taken).

    Ignored by name: blocks beyond the model's depth, ``norm.*``, ``fc_norm.*``, ``head.*``. A
    ``pos_embed`` of another square patch grid counts as used (it is interpolated). Every key of
    the vision tower must be present.
    """
    if any(key.startswith(VISION_PREFIX) for key in vit_shapes):
        vit_shapes = {k.removeprefix(VISION_PREFIX): v for k, v in vit_shapes.items() if k.startswith(VISION_PREFIX)}
    return report_keys(
        what,
        file_shapes,
        vit_shapes,
        ignore=vit_ignore_rule(vit_depth(vit_shapes)),
        explain=explain_vit_shape,
        adapts=pos_embed_resizable,
    )


def load_eva_vit(vit: Eva, path: Path) -> None:
    """Load an ``eva_vit_g.pth``-format file (a flat state dict) into ``vit``.

    The keys are sorted by :func:`report_vit_keys`: the ignored ones are named in an INFO line,
    unknown ones in a WARNING, and a missing key or a wrong shape is an error. ``pos_embed`` is
    interpolated when the file's patch grid differs. The file is memory-mapped: each tensor is read
    once, into the model, and the ignored ones never.
    """
    state_dict = torch_load(path, mmap=True)
    if not isinstance(state_dict, dict) or "pos_embed" not in state_dict:
        keys = list(state_dict)[:5] if isinstance(state_dict, dict) else type(state_dict).__name__
        raise WeightLoadError(
            f"{path} is not an eva_vit_g.pth-format file (a flat state dict with 'pos_embed', "
            f"'cls_token', 'blocks.N...'); it holds {keys}"
        )
    report = report_vit_keys(shapes_of(state_dict), shapes_of(vit.state_dict()), f"the EVA ViT weights {path}")
    report.log(logger)
    report.raise_if_refused()
    kept = interpolate_pos_embed({key: state_dict[key] for key in report.used}, vit)
    load_into(vit, kept, strict=True)
    check_no_meta(vit, f"the EVA ViT loaded from {path}")


def load_vit_copy(vit: Eva, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load vision-tower weights found in another file (already sorted by that file's report, the
    ``visual_encoder.`` prefix removed) over those ``vit`` holds, as the reference's non-strict
    load of the BLIP-2 file did; any subset of the keys may be present."""
    kept = dict(state_dict)
    if "pos_embed" in kept:
        kept = interpolate_pos_embed(kept, vit)
    load_into(vit, kept, strict=False)
