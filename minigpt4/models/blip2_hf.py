"""BLIP-2's vision side from a folder in the transformers ``Blip2`` layout.

Such a folder (``Salesforce/blip2-flan-t5-xxl`` and the like, as ``save_pretrained`` writes it)
holds ``config.json`` and safetensors weights (``model.safetensors``, or shards listed in
``model.safetensors.index.json``) for the whole BLIP-2 model. Named by ``model.q_former_model``, it
is the source of the vision tower, ``ln_vision``, the Q-Former and the query tokens. Only those
tensors are read (``safe_open`` reads a tensor at a time; a shard that holds nothing needed is
never opened), so the language model is never loaded.

Key mapping, transformers name -> MiniGPT-4 name (``N`` a block index; ``*`` weight and bias):

* ``vision_model.embeddings.class_embedding`` -> ``visual_encoder.cls_token``
* ``vision_model.embeddings.position_embedding`` -> ``visual_encoder.pos_embed``
* ``vision_model.embeddings.patch_embedding.*`` -> ``visual_encoder.patch_embed.proj.*``
* ``vision_model.encoder.layers.N.`` -> ``visual_encoder.blocks.N.``, and under it
  ``layer_norm1/2.*`` -> ``norm1/2.*``, ``self_attn.qkv.weight`` -> ``attn.qkv.weight``,
  ``self_attn.q_bias/v_bias`` -> ``attn.q_bias/v_bias``, ``self_attn.qkv.bias`` -> its q and v
  thirds as ``attn.q_bias`` and ``attn.v_bias``, ``self_attn.projection.*`` -> ``attn.proj.*``,
  ``mlp.fc1/fc2.*`` unchanged
* ``vision_model.post_layernorm.*`` -> ``ln_vision.*``
* ``qformer.*`` -> ``Qformer.*`` (the same ``Blip2QFormerModel``)
* ``query_tokens`` -> ``query_tokens``

The ViT's attention bias comes in two layouts: files converted with older transformers hold
``q_bias`` and ``v_bias`` (as ``eva_vit_g.pth``), newer ones one ``qkv.bias`` of three times the
width with zeros for k. A k bias adds the same number to every score of a query, which softmax
cancels, so EVA has none and its third is dropped. Ignored by name: ``language_model.*``,
``language_projection.*``, blocks beyond ``vit_arch.depth``, and the text-branch and head keys of
the retrieval variants (``qformer.embeddings.*``, ``vision_projection.*``, ``text_projection.*``,
``itm_head.*``). ``ln_vision`` keeps the reference's LayerNorm eps (1e-5), not the folder's.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import Blip2Config

from minigpt4.models.eva_vit import explain_vit_shape, interpolate_pos_embed, pos_embed_resizable
from minigpt4.models.loaders import KeyReport, Shape, WeightLoadError, check_no_meta, load_into, report_keys, shapes_of
from minigpt4.models.qformer import BLIP2_PARTS, explain_qformer_shape, ours_to_blip2

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
BLIP2_MODEL_TYPE = "blip-2"

# transformers name <-> MiniGPT-4 name, for every tensor but the fused qkv bias (split on load).
# ``{n}`` is a block index, ``{p}`` weight or bias, ``{rest}`` the rest of a name.
_NAMES = (
    ("vision_model.embeddings.class_embedding", "visual_encoder.cls_token"),
    ("vision_model.embeddings.position_embedding", "visual_encoder.pos_embed"),
    ("vision_model.embeddings.patch_embedding.{p}", "visual_encoder.patch_embed.proj.{p}"),
    ("vision_model.encoder.layers.{n}.layer_norm1.{p}", "visual_encoder.blocks.{n}.norm1.{p}"),
    ("vision_model.encoder.layers.{n}.layer_norm2.{p}", "visual_encoder.blocks.{n}.norm2.{p}"),
    ("vision_model.encoder.layers.{n}.self_attn.qkv.weight", "visual_encoder.blocks.{n}.attn.qkv.weight"),
    ("vision_model.encoder.layers.{n}.self_attn.q_bias", "visual_encoder.blocks.{n}.attn.q_bias"),
    ("vision_model.encoder.layers.{n}.self_attn.v_bias", "visual_encoder.blocks.{n}.attn.v_bias"),
    ("vision_model.encoder.layers.{n}.self_attn.projection.{p}", "visual_encoder.blocks.{n}.attn.proj.{p}"),
    ("vision_model.encoder.layers.{n}.mlp.fc1.{p}", "visual_encoder.blocks.{n}.mlp.fc1.{p}"),
    ("vision_model.encoder.layers.{n}.mlp.fc2.{p}", "visual_encoder.blocks.{n}.mlp.fc2.{p}"),
    ("vision_model.post_layernorm.{p}", "ln_vision.{p}"),
    ("qformer.{rest}", "Qformer.{rest}"),
    ("query_tokens", "query_tokens"),
)
_FIELDS = {"n": r"\d+", "p": r"weight|bias", "rest": r".+"}
FUSED_QKV_BIAS = "vision_model.encoder.layers.{n}.self_attn.qkv.bias"
_LAYER = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.")
_IGNORED = (
    (re.compile(r"^language_model\."), "the language model (MiniGPT-4 uses the Vicuna of llama_model)"),
    (re.compile(r"^language_projection\."), "the projection into that language model (MiniGPT-4 has llama_proj)"),
    (re.compile(r"^qformer\.embeddings\."), "the Q-Former's text branch (MiniGPT-4 uses the query branch only)"),
    (re.compile(r"^(vision_projection|text_projection|itm_head)\."), "a head of BLIP-2's retrieval objectives"),
)


def _pattern(template: str) -> re.Pattern[str]:
    regex = re.escape(template)
    for name, field in _FIELDS.items():
        regex = regex.replace(re.escape("{" + name + "}"), f"(?P<{name}>{field})")
    return re.compile(f"^{regex}$")


_TO_OURS = [(_pattern(theirs), ours) for theirs, ours in _NAMES]
_TO_TRANSFORMERS = [(_pattern(ours), theirs) for theirs, ours in _NAMES]
_FUSED = _pattern(FUSED_QKV_BIAS)


def _rename(rules: list[tuple[re.Pattern[str], str]], name: str) -> str | None:
    for pattern, target in rules:
        if match := pattern.match(name):
            return target.format(**match.groupdict())
    return None


def transformers_to_ours(name: str) -> str | None:
    """The MiniGPT-4 name of a transformers ``Blip2`` tensor, or None when it maps to none (the
    fused qkv bias, split by :func:`split_qkv_bias`, and everything that is not read)."""
    return _rename(_TO_OURS, name)


def ours_to_transformers(name: str) -> str | None:
    """The inverse of :func:`transformers_to_ours`, q_bias/v_bias in the separate layout."""
    return _rename(_TO_TRANSFORMERS, name)


def fused_qkv_bias(q_bias: torch.Tensor, v_bias: torch.Tensor) -> torch.Tensor:
    """The newer layout of EVA's attention bias: (q, zeros for k, v), as one vector."""
    return torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])


def split_qkv_bias(name: str, bias: torch.Tensor) -> dict[str, torch.Tensor]:
    """A fused ``self_attn.qkv.bias`` as our ``attn.q_bias`` and ``attn.v_bias`` (the k third is
    dropped: see the module's docstring)."""
    block = _FUSED.match(name)["n"]
    q_bias, _k_bias, v_bias = bias.chunk(3)
    prefix = f"visual_encoder.blocks.{block}.attn."
    return {prefix + "q_bias": q_bias, prefix + "v_bias": v_bias}


def is_transformers_blip2_folder(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def names_transformers_blip2(model_cfg: Any) -> bool:
    """Whether the ``model:`` config takes its vision side from a transformers Blip2 folder
    (``q_former_model`` a local folder; ``vit_weights`` is then empty or the same folder)."""
    location = model_cfg.q_former_model
    return bool(location) and Path(location).expanduser().is_dir()


def read_blip2_config(folder: Path) -> Blip2Config:
    """The folder's ``config.json`` as a ``Blip2Config`` (transformers writes only the values that
    differ from the defaults, so the class fills the rest)."""
    path = folder / CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise WeightLoadError(f"{path} cannot be read as JSON: {error}") from error
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type != BLIP2_MODEL_TYPE:
        raise WeightLoadError(
            f"model.q_former_model: {folder} is not a transformers Blip2 folder: its config.json has "
            f"model_type {model_type!r}, not {BLIP2_MODEL_TYPE!r}"
        )
    try:
        return Blip2Config.from_dict(raw)
    except (ValueError, KeyError, TypeError) as error:
        raise WeightLoadError(f"{path} is not a Blip2 config transformers can read: {error}") from error


def arch_mismatches(config: Blip2Config, cfg: Any) -> list[str]:
    """Where the folder's architecture does not fit the ``model:`` config ``cfg``, in words."""
    vision, qformer, vit, qarch = config.vision_config, config.qformer_config, cfg.vit_arch, cfg.qformer_arch
    checks = (
        (vision.hidden_size, vit.embed_dim, "its ViT is {} wide; vit_arch.embed_dim is {}"),
        (vision.num_attention_heads, vit.num_heads, "its ViT has {} heads; vit_arch.num_heads is {}"),
        (vision.patch_size, vit.patch_size, "its ViT uses {}-pixel patches; vit_arch.patch_size is {}"),
        (
            vision.intermediate_size,
            int(vit.embed_dim * vit.mlp_ratio),
            "its ViT's MLP is {} wide; vit_arch.mlp_ratio gives {}",
        ),
        (vision.hidden_act, "gelu", "its ViT uses the activation {!r}; EVA ViT-g uses {!r}"),
        (vision.qkv_bias, True, "its ViT has no q and v biases (qkv_bias false); EVA ViT-g has them"),
        (qformer.hidden_size, qarch.hidden_size, "its Q-Former is {} wide; qformer_arch.hidden_size is {}"),
        (
            qformer.num_hidden_layers,
            qarch.num_hidden_layers,
            "its Q-Former has {} layers; qformer_arch.num_hidden_layers is {}",
        ),
        (
            qformer.num_attention_heads,
            qarch.num_attention_heads,
            "its Q-Former has {} heads; qformer_arch.num_attention_heads is {}",
        ),
        (
            qformer.intermediate_size,
            qarch.intermediate_size,
            "its Q-Former's FFN is {} wide; qformer_arch.intermediate_size is {}",
        ),
        (
            qformer.cross_attention_frequency,
            qarch.cross_attention_freq,
            "its Q-Former cross-attends every {} layers; qformer_arch.cross_attention_freq is {}",
        ),
        (
            qformer.encoder_hidden_size,
            vit.embed_dim,
            "its Q-Former cross-attends to a vision width of {}; vit_arch.embed_dim is {}",
        ),
        (config.num_query_tokens, cfg.num_query_token, "it has {} query tokens; num_query_token is {}"),
    )
    problems = [message.format(have, want) for have, want, message in checks if have != want]
    if vision.num_hidden_layers < vit.depth:
        problems.append(f"its ViT has {vision.num_hidden_layers} layers; vit_arch.depth is {vit.depth}")
    return problems


def check_blip2_arch(folder: Path, config: Blip2Config, cfg: Any) -> None:
    problems = arch_mismatches(config, cfg)
    if problems:
        raise WeightLoadError(
            f"model.q_former_model: the BLIP-2 in {folder} does not fit the model config: " + "; ".join(problems)
        )


def weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file of the folder that holds it (read from the index or
    from the single file's header)."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise WeightLoadError(
                f"{index} is not a safetensors index (a JSON with a 'weight_map'): {error}"
            ) from error
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / SINGLE_FILE
    if single.is_file():
        with _open(single) as file:
            return dict.fromkeys(file.keys(), single)
    others = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pth", ".pt"))
    hint = f"; it holds {', '.join(others)}: save it again with safe_serialization" if others else ""
    raise WeightLoadError(f"{folder} holds neither {SINGLE_FILE} nor {INDEX_FILE}{hint}")


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (OSError, SafetensorError) as error:
        raise WeightLoadError(f"{path} cannot be read as a safetensors file: {error}") from error


def file_shapes(files: Mapping[str, Path]) -> dict[str, Shape]:
    """{name: shape} of the tensors of the folder that could be needed, from the headers alone
    (the language model's shards are not opened)."""
    shapes: dict[str, Shape] = {}
    by_file: dict[Path, list[str]] = {}
    for name, path in files.items():
        if _ignored_reason(name) is None:
            by_file.setdefault(path, []).append(name)
        else:
            shapes[name] = ()  # ignored by name: its shape does not matter
    for path, names in by_file.items():
        with _open(path) as file:
            for name in names:
                shapes[name] = tuple(file.get_slice(name).get_shape())
    return shapes


def _ignored_reason(name: str) -> str | None:
    return next((reason for pattern, reason in _IGNORED if pattern.match(name)), None)


def report_transformers_blip2_keys(
    file_shapes: Mapping[str, Shape],
    model_shapes: Mapping[str, Shape],
    what: str = "the transformers Blip2 weights",
) -> KeyReport:
    """The :class:`KeyReport` of a transformers ``Blip2`` folder's tensors ({name: shape}, in the
    folder's names) against a MiniGPT-4 model's state dict ({key: shape}; its ``visual_encoder.``,
    ``ln_vision.``, ``Qformer.`` and ``query_tokens`` keys are looked at).

    Every one of those is needed. A block's attention bias may be either layout (``q_bias`` and
    ``v_bias``, or one ``qkv.bias`` of three times the width). Ignored by name: see the module's
    docstring. ``position_embedding`` of another square grid is interpolated.
    """
    needed = ("visual_encoder.", "ln_vision.", "Qformer.", "query_tokens")
    expected: dict[str, Shape] = {}
    for key, shape in model_shapes.items():
        if key.startswith(needed):
            expected[ours_to_transformers(key)] = tuple(shape)
    depth = len({m.group(1) for name in expected if (m := _LAYER.match(name))})
    for block in range(depth):
        fused = FUSED_QKV_BIAS.format(n=block)
        if fused in file_shapes:
            separate = [fused.replace("qkv.bias", f"{x}_bias") for x in "qv"]
            (width,) = expected.pop(separate[0])
            expected.pop(separate[1])
            expected[fused] = (3 * width,)

    def ignore(name: str) -> str | None:
        if (match := _LAYER.match(name)) and int(match.group(1)) >= depth:
            return f"blocks beyond the model's depth {depth}"
        return _ignored_reason(name)

    def explain(name: str, have: Shape, want: Shape) -> str | None:
        ours = transformers_to_ours(name) or ""
        if ours.startswith("visual_encoder."):
            return explain_vit_shape(ours.removeprefix("visual_encoder."), have, want)
        return explain_qformer_shape(ours_to_blip2(ours), have, want) if ours else None

    def adapts(name: str, have: Shape, want: Shape) -> bool:
        return transformers_to_ours(name) == "visual_encoder.pos_embed" and pos_embed_resizable("pos_embed", have, want)

    return report_keys(what, file_shapes, expected, ignore=ignore, explain=explain, adapts=adapts)


def load_transformers_blip2(model: nn.Module, folder: Path, cfg: Any) -> None:
    """Load ``visual_encoder``, ``ln_vision``, ``Qformer`` and ``query_tokens`` of ``model`` from a
    transformers ``Blip2`` folder, after checking its ``config.json`` against ``cfg`` (the
    ``model:`` config). Only the tensors needed are read."""
    check_blip2_arch(folder, read_blip2_config(folder), cfg)
    files = weight_files(folder)
    report = report_transformers_blip2_keys(
        file_shapes(files), shapes_of(model.state_dict()), f"the transformers Blip2 weights in {folder}"
    )
    report.log(logger)
    report.raise_if_refused()
    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for name in report.used:
        by_file.setdefault(files[name], []).append(name)
    for path, names in by_file.items():
        with _open(path) as file:
            for name in names:
                tensor = file.get_tensor(name)
                if _FUSED.match(name):
                    state.update(split_qkv_bias(name, tensor))
                else:
                    state[transformers_to_ours(name)] = tensor
    vision = {
        key.removeprefix("visual_encoder."): value for key, value in state.items() if key.startswith("visual_encoder.")
    }
    load_into(model.visual_encoder, interpolate_pos_embed(vision, model.visual_encoder), strict=True)
    rest = {key: value for key, value in state.items() if not key.startswith("visual_encoder.")}
    load_into(model, rest, strict=False)
    check_no_meta(model, f"the vision side loaded from {folder}", ("visual_encoder.", *BLIP2_PARTS))
    logger.info("Loaded %d tensors from %s", len(report.used), folder)
