"""The BLIP-2 Q-Former, built with transformers' ``Blip2QFormerModel``, and the BLIP-2 loader.

The reference builds a full BERT ``BertLMHeadModel`` with cross-attention every
``cross_attention_freq`` layers and then deletes everything the query branch does not use (the
MLM head ``cls``, word and position embeddings, every layer's text FFN ``intermediate``/``output``).
What remains is exactly ``Blip2QFormerModel`` without text input: the embedding LayerNorm, then per
layer self-attention, cross-attention on every ``cross_attention_freq``-th layer, and the query FFN.
Only the names differ, and :func:`blip2_to_ours` maps them.

``load_blip2_qformer`` reads a ``blip2_pretrained_flant5xxl.pth``-format file (``{'model': ...}``)
into a model's ``Qformer``, ``query_tokens`` and ``ln_vision``, drops the file's known-unused
parts by name, and fails on anything else. A vision tower in the file (``visual_encoder.*``; the
released file reportedly has none) replaces the ``vit_weights`` one, as the reference's non-strict load of
this file after the ViT's did.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from minigpt4.common.schema import QFormerArch
from minigpt4.models.eva_vit import load_vit_copy
from minigpt4.models.loaders import WeightLoadError, check_state_dict, torch_load

logger = logging.getLogger(__name__)

# The parts of a MiniGPT-4 model that the BLIP-2 file provides.
BLIP2_PARTS = ("Qformer.", "ln_vision.", "query_tokens")

# Parts of the BLIP-2 file that MiniGPT-4 does not use, by reason:
DISCARDED_BLIP2_KEYS = (
    # the MLM prediction head, word and position embeddings and text FFNs: the Q-Former's text
    # branch, which the reference deletes before loading
    re.compile(r"^Qformer\.cls\."),
    re.compile(r"^Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\."),
    re.compile(r"^Qformer\.bert\.embeddings\.position_ids$"),
    re.compile(r"^Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\."),
    # the projection into FlanT5, replaced by llama_proj
    re.compile(r"^t5_proj\."),
)
VISION_PREFIX = "visual_encoder."

# Reference (BERT) name -> Blip2QFormerModel name, applied in order to a name under ``Qformer.``.
_RENAMES = (
    (re.compile(r"^bert\.embeddings\.LayerNorm\."), "layernorm."),
    (re.compile(r"^bert\.encoder\."), "encoder."),
    (re.compile(r"\.(attention|crossattention)\.self\."), r".\1.attention."),
)
_RENAMES_BACK = (
    (re.compile(r"^layernorm\."), "bert.embeddings.LayerNorm."),
    (re.compile(r"^encoder\."), "bert.encoder."),
    (re.compile(r"\.(attention|crossattention)\.attention\."), r".\1.self."),
)


def build_qformer(arch: QFormerArch, num_query_token: int, vision_width: int) -> tuple[Blip2QFormerModel, nn.Parameter]:
    """The Q-Former and its ``query_tokens`` (1, num_query_token, hidden), both fp32.

    The remaining BERT settings are bert-base-uncased's (gelu, dropout 0.1, LayerNorm eps 1e-12),
    written here instead of fetched from a model hub.
    """
    config = Blip2QFormerConfig(
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        intermediate_size=arch.intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        layer_norm_eps=1e-12,
        cross_attention_frequency=arch.cross_attention_freq,
        encoder_hidden_size=vision_width,
        use_qformer_text_input=False,
        initializer_range=0.02,
    )
    qformer = Blip2QFormerModel._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    query_tokens = nn.Parameter(torch.zeros(1, num_query_token, arch.hidden_size))
    nn.init.normal_(query_tokens, std=config.initializer_range)
    return qformer, query_tokens


def blip2_to_ours(name: str) -> str:
    """``Qformer.bert.encoder.layer.0.attention.self.query.weight`` ->
    ``Qformer.encoder.layer.0.attention.attention.query.weight``; other names unchanged."""
    if not name.startswith("Qformer."):
        return name
    rest = name[len("Qformer.") :]
    for pattern, replacement in _RENAMES:
        rest = pattern.sub(replacement, rest)
    return "Qformer." + rest


def ours_to_blip2(name: str) -> str:
    """The inverse of :func:`blip2_to_ours`."""
    if not name.startswith("Qformer."):
        return name
    rest = name[len("Qformer.") :]
    for pattern, replacement in _RENAMES_BACK:
        rest = pattern.sub(replacement, rest)
    return "Qformer." + rest


def is_discarded_blip2_key(name: str) -> bool:
    return any(pattern.match(name) for pattern in DISCARDED_BLIP2_KEYS)


def blip2_part(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of a model state dict that the BLIP-2 file provides."""
    return {key: value for key, value in state_dict.items() if key.startswith(BLIP2_PARTS)}


def explain_qformer_shape(key: str, have: tuple[int, ...], want: tuple[int, ...]) -> str | None:
    """Shape mismatches of the BLIP-2 file (in its own key names) in words."""
    if key == "query_tokens" and have[1] != want[1]:
        return f"the file holds {have[1]} query tokens; num_query_token is {want[1]}"
    if ".crossattention.self.key." in key and have[-1] != want[-1]:
        return f"the Q-Former was trained on a vision width of {have[-1]}; the ViT's width is {want[-1]}"
    if key.startswith("ln_vision."):
        return f"the file's ln_vision is {have[0]} wide; the ViT's width is {want[0]}"
    return "the file's Q-Former has other sizes than qformer_arch"


def load_blip2_qformer(model: nn.Module, path: Path) -> None:
    """Load ``Qformer``, ``query_tokens`` and ``ln_vision`` of ``model`` from a BLIP-2 checkpoint,
    and its vision tower too where the file holds one (after ``load_eva_vit``, as the reference).

    Errors name keys as the file does (``Qformer.bert...``), so that they can be looked up in it.
    """
    checkpoint = torch_load(path)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise WeightLoadError(
            f"{path} is not a blip2_pretrained_flant5xxl.pth-format file: expected a dict with a 'model' entry"
        )
    used = {key: value for key, value in checkpoint["model"].items() if not is_discarded_blip2_key(key)}
    discarded = len(checkpoint["model"]) - len(used)
    logger.info("%s: discarding %d keys MiniGPT-4 does not use (text branch, t5_proj, ...)", path, discarded)
    vision = {key[len(VISION_PREFIX) :]: value for key, value in used.items() if key.startswith(VISION_PREFIX)}
    qformer = {key: value for key, value in used.items() if not key.startswith(VISION_PREFIX)}
    expected = {ours_to_blip2(key): value for key, value in blip2_part(model.state_dict()).items()}
    check_state_dict(expected, qformer, f"the BLIP-2 Q-Former weights {path}", explain_qformer_shape)
    if vision:
        logger.info("%s also holds the vision tower (%d tensors): they replace the vit_weights ones", path, len(vision))
        load_vit_copy(model.visual_encoder, vision, f"the vision tower in the BLIP-2 file {path}")
    model.load_state_dict({blip2_to_ours(key): value for key, value in qformer.items()}, strict=False)
