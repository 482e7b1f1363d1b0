"""The EVA ViT-g/14 vision tower, built with timm's ``Eva``, and the ``eva_vit_g.pth`` loader.

timm's ``Eva`` with fused ``qkv`` (no bias) plus separate ``q_bias``/``v_bias``, pre-norm blocks,
an exact-GELU MLP and no layer scale is the reference's ``VisionTransformer``, parameter name for
parameter name. Built with no final norm, no pooling and no head, ``forward_features`` returns all
``1 + (image_size / patch_size)**2`` tokens, class token first, as the reference's ``forward`` does.
"""

from __future__ import annotations

import logging
import math
import re
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.eva import Eva
from torch import nn

from minigpt4.common.schema import VitArch
from minigpt4.models.loaders import WeightLoadError, check_state_dict, load_strict, torch_load

logger = logging.getLogger(__name__)

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


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
    """EVA ViT-g/14 (or the ``arch`` given) for square images of ``image_size`` pixels."""
    vit = Eva(
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
    vit.set_grad_checkpointing(use_grad_checkpoint)
    cast_linear_and_conv(vit, dtype)
    return vit


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
    if key == "patch_embed.proj.weight" and have[2:] != want[2:]:
        return f"the file was trained with {have[-1]}-pixel patches; vit_arch.patch_size is {want[-1]}"
    if key.endswith("mlp.fc1.weight") and have[0] != want[0]:
        return f"the file's MLP is {have[0]} wide; vit_arch.mlp_ratio gives {want[0]}"
    return None


def drop_deeper_blocks(state_dict: dict[str, torch.Tensor], depth: int, source: object) -> dict[str, torch.Tensor]:
    """The entries of ``state_dict`` without those of blocks ``depth`` and beyond: the reference
    uses 39 of EVA-CLIP-g's 40 layers and its non-strict load skipped the rest."""
    kept, dropped = {}, []
    for key, value in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if match and int(match.group(1)) >= depth:
            dropped.append(key)
        else:
            kept[key] = value
    if dropped:
        logger.info("%s: ignoring %d keys of blocks beyond the model's depth %d", source, len(dropped), depth)
    return kept


def load_eva_vit(vit: Eva, path: Path) -> None:
    """Load an ``eva_vit_g.pth``-format file (a flat state dict) into ``vit``.

    Blocks beyond the model's depth are ignored, as the reference uses 39 of EVA-CLIP-g's 40
    layers; ``pos_embed`` is interpolated when the file's patch grid differs; anything else must
    match exactly.
    """
    state_dict = torch_load(path)
    if not isinstance(state_dict, dict) or "pos_embed" not in state_dict:
        keys = list(state_dict)[:5] if isinstance(state_dict, dict) else type(state_dict).__name__
        raise WeightLoadError(
            f"{path} is not an eva_vit_g.pth-format file (a flat state dict with 'pos_embed', "
            f"'cls_token', 'blocks.N...'); it holds {keys}"
        )
    kept = interpolate_pos_embed(drop_deeper_blocks(state_dict, len(vit.blocks), path), vit)
    load_strict(vit, kept, f"the EVA ViT weights {path}", explain_vit_shape)


def load_vit_copy(vit: Eva, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """Load vision-tower weights found in another file (the ``visual_encoder.*`` entries of a
    BLIP-2 file, prefix removed) over those ``vit`` holds, as the reference's non-strict load of
    that file did. Any subset of the keys may be present; each must fit, except that ``pos_embed``
    is interpolated as in :func:`load_eva_vit` (where the reference failed on the size)."""
    kept = drop_deeper_blocks(state_dict, len(vit.blocks), what)
    if "pos_embed" in kept:
        kept = interpolate_pos_embed(kept, vit)
    expected = vit.state_dict()
    check_state_dict(expected, kept, what, explain_vit_shape, optional=expected)
    vit.load_state_dict(kept, strict=False)
