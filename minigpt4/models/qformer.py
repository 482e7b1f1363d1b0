"""The BLIP-2 Q-Former, built with transformers' ``Blip2QFormerModel``, and the BLIP-2 loader.

The reference builds a full BERT ``BertLMHeadModel`` with cross-attention every
``cross_attention_freq`` layers and then deletes everything the query branch does not use (the
MLM head ``cls``, word and position embeddings, every layer's text FFN ``intermediate``/``output``).
What remains is exactly ``Blip2QFormerModel`` without text input: the embedding LayerNorm, then per
layer self-attention, cross-attention on every ``cross_attention_freq``-th layer, and the query FFN.
Only the names differ, and :func:`blip2_to_ours` maps them.

``load_blip2_qformer`` reads a ``blip2_pretrained_flant5xxl.pth``-format file (``{'model': ...}``)
into a model's ``Qformer``, ``query_tokens`` and ``ln_vision``, with the keys sorted by
:func:`report_blip2_keys`: the parts MiniGPT-4 does not use are ignored by name (an INFO line),
keys of no known kind are named in a WARNING and not loaded, and a missing key or a wrong shape is
an error. A vision tower in the file (``visual_encoder.*``; the released file reportedly has none)
replaces the ``vit_weights`` one, as the reference's non-strict load of this file after the ViT's
did.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from minigpt4.common.schema import QFormerArch
from minigpt4.models.eva_vit import (
    VISION_PREFIX,
    explain_vit_shape,
    load_vit_copy,
    pos_embed_resizable,
    vit_depth,
    vit_ignore_rule,
)
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

# The parts of a MiniGPT-4 model that the BLIP-2 file provides.
BLIP2_PARTS = ("Qformer.", "ln_vision.", "query_tokens")

_TEXT_BRANCH = "the Q-Former's text branch (MiniGPT-4 uses the query branch only)"
_OBJECTIVE_HEADS = "a head of BLIP-2's contrastive and matching objectives"
# Parts of the BLIP-2 file that MiniGPT-4 does not use, by reason. The text branch (MLM head, word
# and position embeddings, text FFNs) is what the reference deletes before loading.
DISCARDED_BLIP2_KEYS = (
    (re.compile(r"^Qformer\.cls\."), _TEXT_BRANCH),
    (re.compile(r"^Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\."), _TEXT_BRANCH),
    (re.compile(r"^Qformer\.bert\.embeddings\.position_ids$"), _TEXT_BRANCH),
    (re.compile(r"^Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\."), _TEXT_BRANCH),
    (re.compile(r"^t5_proj\."), "the projection into FlanT5 (MiniGPT-4 has llama_proj instead)"),
    (re.compile(r"^t5_model\."), "the FlanT5 language model"),
    (re.compile(r"^(vision_proj|text_proj|itm_head)\."), _OBJECTIVE_HEADS),
    (re.compile(r"^temp$"), _OBJECTIVE_HEADS),
)

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
    written here instead of fetched from a model hub. Inside ``loaders.skip_random_init`` both are
    left without values for the loaders (:func:`load_blip2_qformer`, ``blip2_hf``).
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
    skipped = random_init_skipped()
    with parameters_on_meta() if skipped else contextlib.nullcontext():
        qformer = Blip2QFormerModel._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    device = "meta" if skipped else None
    query_tokens = nn.Parameter(torch.zeros(1, num_query_token, arch.hidden_size, device=device))
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


def discarded_blip2_reason(name: str) -> str | None:
    """Why MiniGPT-4 does not use the BLIP-2 file's key ``name``, or None when it is of no known kind."""
    return next((reason for pattern, reason in DISCARDED_BLIP2_KEYS if pattern.match(name)), None)


def is_discarded_blip2_key(name: str) -> bool:
    return discarded_blip2_reason(name) is not None


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


def report_blip2_keys(
    file_shapes: Mapping[str, Shape], model_shapes: Mapping[str, Shape], what: str = "the BLIP-2 Q-Former weights"
) -> KeyReport:
    """The :class:`KeyReport` of a BLIP-2 file's ``model`` entry ({key: shape}, in the file's
    names) against a MiniGPT-4 model's state dict ({key: shape}, e.g. ``shapes_of(model.state_dict())``
    of a model built on the meta device; only its ``Qformer.``, ``query_tokens``, ``ln_vision.``
    and ``visual_encoder.`` keys are looked at).

    Needed: every Q-Former, ``query_tokens`` and ``ln_vision`` key. Ignored by name: the
    Q-Former's text branch (which may also be absent), ``t5_proj``, ``t5_model``,
    ``vision_proj``, ``text_proj``, ``itm_head``, ``temp``. A vision tower (``visual_encoder.*``)
    is optional, each key under the rules of :func:`eva_vit.report_vit_keys`.
    """
    expected = {ours_to_blip2(key): shape for key, shape in model_shapes.items() if key.startswith(BLIP2_PARTS)}
    vit_shapes = {
        key[len(VISION_PREFIX) :]: shape for key, shape in model_shapes.items() if key.startswith(VISION_PREFIX)
    }
    vision = {VISION_PREFIX + key: shape for key, shape in vit_shapes.items()}
    vit_reason = vit_ignore_rule(vit_depth(vit_shapes))

    def ignore(key: str) -> str | None:
        if key.startswith(VISION_PREFIX):
            return vit_reason(key[len(VISION_PREFIX) :])
        return discarded_blip2_reason(key)

    def explain(key: str, have: Shape, want: Shape) -> str | None:
        if key.startswith(VISION_PREFIX):
            return explain_vit_shape(key[len(VISION_PREFIX) :], have, want)
        return explain_qformer_shape(key, have, want)

    def adapts(key: str, have: Shape, want: Shape) -> bool:
        return key.startswith(VISION_PREFIX) and pos_embed_resizable(key[len(VISION_PREFIX) :], have, want)

    return report_keys(
        what, file_shapes, {**expected, **vision}, ignore=ignore, explain=explain, optional=vision, adapts=adapts
    )


def load_blip2_qformer(model: nn.Module, path: Path) -> None:
    """Load ``Qformer``, ``query_tokens`` and ``ln_vision`` of ``model`` from a BLIP-2 checkpoint,
    and its vision tower too where the file holds one (after ``load_eva_vit``, as the reference).

    Errors name keys as the file does (``Qformer.bert...``), so that they can be looked up in it.
    """
    checkpoint = torch_load(path, mmap=True)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise WeightLoadError(
            f"{path} is not a blip2_pretrained_flant5xxl.pth-format file: expected a dict with a 'model' entry"
        )
    state = checkpoint["model"]
    report = report_blip2_keys(shapes_of(state), shapes_of(model.state_dict()), f"the BLIP-2 weights {path}")
    report.log(logger)
    report.raise_if_refused()
    vision = {key[len(VISION_PREFIX) :]: state[key] for key in report.used if key.startswith(VISION_PREFIX)}
    if vision:
        logger.info("%s also holds the vision tower (%d tensors): they replace the vit_weights ones", path, len(vision))
        load_vit_copy(model.visual_encoder, vision)
    qformer = {blip2_to_ours(key): state[key] for key in report.used if not key.startswith(VISION_PREFIX)}
    load_into(model, qformer, strict=False)
    check_no_meta(model, f"the Q-Former loaded from {path}", BLIP2_PARTS)
