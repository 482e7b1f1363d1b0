"""MiniGPT-4: a frozen BLIP-2 vision side aligned with a frozen Vicuna by one trainable Linear.

``image -> EVA ViT -> ln_vision -> Q-Former (query tokens) -> llama_proj -> Vicuna``. Only
``llama_proj`` trains (``freeze_vit: False`` / ``freeze_qformer: False`` unfreeze those parts;
``lora_r`` > 0 adds trainable LoRA adapters to the LLM, ``minigpt4/models/lora.py``).
With ``has_qformer: False`` (upstream's later LLaMA-2 variant) there is no Q-Former:
``image -> EVA ViT -> ln_vision -> patch tokens merged 4 at a time -> llama_proj -> LLaMA-2``.
The class is registered as ``mini_gpt4`` (the reference) and ``minigpt4`` (upstream's later name).

``MiniGPT4.from_config(cfg)`` builds the modules from the ``model:`` config, reading nothing but the
LLM folder's ``config.json`` and tokenizer files, and then loads the weights through the named
loaders, in the reference's order: the ViT (``vit_weights``), the BLIP-2 Q-Former
(``q_former_model``; or both from one transformers ``Blip2`` folder), the LLM (``llama_model``),
and the MiniGPT-4 checkpoint (``ckpt``) if set: a ``.pth`` or an export by
``tools/export_checkpoint.py`` (``minigpt4.models.checkpoint_files``).
``MiniGPT4.build(cfg, llama_config, llama_tokenizer)`` builds without any weight file, on the
current default device (``with torch.device("meta")`` for counting parameters of the full model).

Precision is decided by the device the model runs on (``vit_precision``/``llm_precision: auto``):
half precision on an accelerator, as the reference, and fp32 on a CPU. In ``low_resource`` mode
the parts have fixed places: the vision tower on the CPU in fp32, the 8-bit LLM on GPU
``device_8bit``; moving the model moves the Q-Former, the query tokens and ``llama_proj`` only.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from minigpt4.common.device import autocast, autocast_dtype, parse_dtype, resolve_device
from minigpt4.common.flops import FlopModel, count_flop_model
from minigpt4.common.registry import UnknownNameError, registry
from minigpt4.common.schema import ModelConfig
from minigpt4.conversation.templates import (
    IMAGE_PLACEHOLDER,
    resolve_template,
    training_end_sym,
    training_prompt_template,
)
from minigpt4.models.blip2_hf import is_transformers_blip2_folder, load_transformers_blip2, names_transformers_blip2
from minigpt4.models.checkpoint_files import read_checkpoint
from minigpt4.models.eva_vit import FP32LayerNorm, build_eva_vit, load_eva_vit
from minigpt4.models.llm import (
    build_llama,
    llama_folder,
    llama_size_name,
    llm_size_name,
    load_llama,
    load_llama_tokenizer,
    read_llama_config,
    start_ids,
)
from minigpt4.models.loaders import WeightLoadError, check_state_dict, resolve_weights, skip_random_init
from minigpt4.models.lora import (
    add_lora,
    check_checkpoint_adapters,
    check_lora,
    explain_adapter_shape,
    set_adapter_mode,
)
from minigpt4.models.lora import checkpoint_name as lora_checkpoint_name
from minigpt4.models.qformer import blip2_to_ours, build_qformer, load_blip2_qformer

logger = logging.getLogger(__name__)

LIBRARY_ROOT = Path(__file__).resolve().parents[1]
REPO_ROOT = LIBRARY_ROOT.parent
IGNORE_INDEX = -100

# Patch tokens merged into one LLM token when there is no Q-Former (upstream's LLaMA-2 variant).
PATCHES_PER_TOKEN = 4

# Buffers that the reference's modules held and its runner saved into checkpoints next to
# llama_proj; this model computes them itself, so a checkpoint's copies are dropped.
REFERENCE_BUFFERS = (
    re.compile(r"^Qformer\.bert\.embeddings\.position_ids$"),
    re.compile(r"^llama_model\.model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$"),
)
PROJECTION_KEYS = ("llama_proj.weight", "llama_proj.bias")


def model_config(cfg: Mapping[str, Any] | DictConfig | ModelConfig) -> DictConfig:
    """``cfg`` merged onto the schema's defaults, read-only; an unknown key or a wrong type fails
    naming the key."""
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), cfg)
    OmegaConf.set_readonly(merged, True)
    return merged


def _precision(value: str, key: str) -> torch.dtype:
    try:
        return parse_dtype(value)
    except ValueError as error:
        raise ValueError(f"model.{key}: {error}") from error


def run_device(device: torch.device | str | None) -> torch.device:
    """The device the ``auto`` precisions are chosen for: ``device``, else the machine's first
    accelerator (cuda, then npu), else the CPU."""
    return torch.device(device) if device is not None else resolve_device("auto")


def vit_dtype(cfg: DictConfig, device: torch.device) -> torch.dtype:
    """``vit_precision`` as a dtype for a model running on ``device``. ``auto`` is fp16 on an
    accelerator and fp32 on a CPU. ``low_resource`` runs the vision tower on the CPU in fp32
    whatever the key says."""
    if cfg.vit_precision == "auto":
        dtype = torch.float32 if device.type == "cpu" else torch.float16
    else:
        dtype = _precision(cfg.vit_precision, "vit_precision")
    return torch.float32 if cfg.low_resource else dtype


def llm_dtype(cfg: DictConfig, device: torch.device) -> torch.dtype:
    """``llm_precision`` as a dtype for a model running on ``device``; ``auto`` is the
    accelerator's mixed-precision dtype (bf16 where supported, else fp16 as the reference) and
    fp32 on a CPU."""
    if cfg.llm_precision == "auto":
        return autocast_dtype(device) or torch.float32
    return _precision(cfg.llm_precision, "llm_precision")


def read_prompts(prompt_path: str, prompt_template: str) -> list[str]:
    """The lines of ``prompt_path`` that contain ``<ImageHere>``, each formatted into the template.

    A relative path is looked up in the working directory, then in the repository.
    """
    if not prompt_path:
        return []
    path = Path(prompt_path)
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / prompt_path
    if not path.is_file():
        raise FileNotFoundError(f"model.prompt_path: '{prompt_path}' does not exist")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if IMAGE_PLACEHOLDER in line]
    if not lines:
        raise ValueError(f"model.prompt_path: '{prompt_path}' has no line containing {IMAGE_PLACEHOLDER}")
    if "{}" not in prompt_template:
        # Without a slot every sample would train on the same constant prompt.
        raise ValueError(
            f"model.prompt_template must hold {{}} where each line of model.prompt_path goes, got "
            f"{prompt_template!r} (stage 2 uses '###Human: {{}} ###Assistant: ')"
        )
    prompts = [prompt_template.format(line) for line in lines]
    # The random draw of the example keeps seeded runs on the same Python random stream afterwards.
    logger.info("Load %d training prompts from %s, for example %r", len(prompts), prompt_path, random.choice(prompts))
    return prompts


def set_pad_token(tokenizer: PreTrainedTokenizerBase, pad_token: str) -> None:
    """``model.pad_token``: "" keeps the reference's pad = </s>; otherwise the given token (upstream's
    later "$$"), which must be one piece of the vocabulary, not a new embedding row."""
    if not pad_token:
        return
    pad_id = tokenizer.convert_tokens_to_ids(pad_token)
    if pad_id is None or pad_id == tokenizer.unk_token_id or pad_id >= len(tokenizer):
        raise ValueError(
            f"model.pad_token {pad_token!r} is not a token of the LLM's vocabulary (it would be <unk>); "
            "use a single piece of it (LLaMA's '$$' is id 3997) or '' for pad = </s>"
        )
    if pad_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        raise ValueError(f"model.pad_token {pad_token!r} is <s> or </s>; use '' for the reference's pad = </s>")
    tokenizer.pad_token = pad_token
    logger.info("LLM pad token %r (id %d): </s> in the text is trained", pad_token, pad_id)


def _check_llm_is_on(llm_device: torch.device, target: torch.device) -> None:
    """In low_resource mode the 8-bit LLM stays where it was loaded (``device_8bit``); the rest of
    the model must run on the same GPU, or the text and image embeddings meet on two devices."""
    if llm_device.type != target.type or target.index not in (None, llm_device.index):
        raise ValueError(
            f"low_resource: the 8-bit LLM was loaded onto {llm_device} (model.device_8bit) but the model is to "
            f"run on {target}; set model.device_8bit to the index of the run device"
        )


def _grad(enabled: bool) -> contextlib.AbstractContextManager:
    """No autograd graph for parts that nothing upstream of the loss trains."""
    return contextlib.nullcontext() if enabled else torch.no_grad()


@dataclass
class LLMInputs:
    """What ``forward`` gives the LLM: ``[BOS] [prompt before] [image] [prompt after] [text]``
    (no BOS for a tokenizer without one)."""

    inputs_embeds: torch.Tensor  # (B, L, H)
    attention_mask: torch.Tensor  # (B, L) long
    labels: torch.Tensor  # (B, L) long, -100 on BOS, image, prompt and padding
    text_input_ids: torch.Tensor  # (B, T) long, the tokenized text, right-padded with the pad token


def merge_patch_tokens(image_embeds: torch.Tensor) -> torch.Tensor:
    """The LLM tokens of the no-Q-Former path: (B, 1 + N, W) ViT output -> (B, N / 4, 4 W).

    The class token is dropped; output token k is the channel concatenation of patch tokens 4k,
    4k+1, 4k+2, 4k+3 in the ViT's raster (row-major) order, so channels [W j, W (j+1)) hold patch
    4k+j: four horizontally adjacent patches of one row (a 1 x 4 strip, not a 2 x 2 block), as
    upstream's ``view`` of the contiguous patch tokens.
    """
    patches = image_embeds[:, 1:, :]  # (B, N, W)
    batch, n, width = patches.shape
    if n % PATCHES_PER_TOKEN:
        raise ValueError(
            f"has_qformer False merges {PATCHES_PER_TOKEN} patch tokens into one, but the ViT gives {n} patches"
        )
    return patches.reshape(batch, n // PATCHES_PER_TOKEN, width * PATCHES_PER_TOKEN)  # (B, N/4, 4W)


def check_patch_grid(cfg: DictConfig) -> None:
    """For ``has_qformer: False``: the patch grid must split into 1 x 4 strips of one row."""
    side, patch = cfg.image_size, cfg.vit_arch.patch_size
    grid = side // patch
    if grid % PATCHES_PER_TOKEN:
        raise ValueError(
            f"model.has_qformer False merges {PATCHES_PER_TOKEN} adjacent patches of a row, but image_size "
            f"{side} with patch_size {patch} gives a {grid} x {grid} patch grid; use an image_size whose grid "
            f"is a multiple of {PATCHES_PER_TOKEN} (224 -> 16, 448 -> 32)"
        )


@registry.register_model("minigpt4")
@registry.register_model("mini_gpt4")
class MiniGPT4(nn.Module):
    # The reference's model type, and upstream's later two (Vicuna v0 with a Q-Former, LLaMA-2 without).
    PRETRAINED_MODEL_CONFIG_DICT: ClassVar[dict[str, str]] = {
        "pretrain_vicuna": "configs/models/minigpt4.yaml",
        "pretrain_vicuna0": "configs/models/minigpt4_vicuna0.yaml",
        "pretrain_llama2": "configs/models/minigpt4_llama2.yaml",
    }
    # In low_resource mode these stay where they are when the model is moved or cast: the vision
    # tower on the CPU in fp32, the 8-bit LLM where bitsandbytes quantized it.
    LOW_RESOURCE_PINNED: ClassVar[tuple[str, ...]] = ("visual_encoder", "ln_vision", "llama_model")

    def __init__(
        self,
        cfg: DictConfig,
        llama_model: PreTrainedModel,
        llama_tokenizer: PreTrainedTokenizerBase,
        prompt_list: list[str],
        device: torch.device,
    ) -> None:
        """Use :meth:`from_config` (with weights) or :meth:`build` (without). ``device`` is where the
        model will run, which decides the ``auto`` precisions."""
        super().__init__()
        if cfg.vit_model != "eva_clip_g":
            raise ValueError(
                f"model.vit_model: '{cfg.vit_model}' is not supported; the only vision model is eva_clip_g"
            )
        self.low_resource = cfg.low_resource
        self.vit_dtype = vit_dtype(cfg, device)
        self.llm_dtype = llm_dtype(cfg, device)
        self.freeze_vit = cfg.freeze_vit
        self.has_qformer = cfg.has_qformer
        # Without a Q-Former there is nothing for freeze_qformer to unfreeze.
        self.freeze_qformer = cfg.freeze_qformer or not cfg.has_qformer
        if not cfg.has_qformer:
            check_patch_grid(cfg)

        self.visual_encoder = build_eva_vit(
            cfg.vit_arch, cfg.image_size, cfg.drop_path_rate, cfg.use_grad_checkpoint, self.vit_dtype
        )
        self.ln_vision = FP32LayerNorm(self.visual_encoder.embed_dim)
        if cfg.has_qformer:
            self.Qformer, self.query_tokens = build_qformer(
                cfg.qformer_arch, cfg.num_query_token, self.visual_encoder.embed_dim
            )
            image_width = self.Qformer.config.hidden_size
        else:
            self.Qformer, self.query_tokens = None, None
            image_width = self.visual_encoder.embed_dim * PATCHES_PER_TOKEN
        self.llama_model = llama_model
        self.llama_tokenizer = llama_tokenizer
        self.llama_proj = nn.Linear(image_width, llama_model.config.hidden_size)

        self.max_txt_len = cfg.max_txt_len
        # The conversation template (model.conv_template) that Chat speaks and training follows.
        self.conv_template = resolve_template(cfg, llama_tokenizer)
        self.end_sym = training_end_sym(cfg, llama_tokenizer)
        self.prompt_list = prompt_list
        self._prompt_cache: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

        self.visual_encoder.requires_grad_(not self.freeze_vit)
        self.ln_vision.requires_grad_(not self.freeze_vit)
        if self.has_qformer:
            self.Qformer.requires_grad_(not self.freeze_qformer)
            self.query_tokens.requires_grad_(not self.freeze_qformer)
        self.llama_model.requires_grad_(False)
        check_lora(cfg, llama_model)  # the adapters themselves are added once the LLM has its weights
        self.train()

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def default_config_path(cls, model_type: str) -> str:
        """Absolute path of the default YAML of ``model_type`` (``pretrain_vicuna``,
        ``pretrain_vicuna0``, ``pretrain_llama2``)."""
        if model_type not in cls.PRETRAINED_MODEL_CONFIG_DICT:
            valid = ", ".join(sorted(cls.PRETRAINED_MODEL_CONFIG_DICT))
            raise UnknownNameError(f"unknown model_type '{model_type}' for mini_gpt4/minigpt4; valid: {valid}")
        return str(LIBRARY_ROOT / cls.PRETRAINED_MODEL_CONFIG_DICT[model_type])

    @classmethod
    def build(
        cls,
        cfg: Mapping[str, Any] | DictConfig | ModelConfig,
        llama_config: PretrainedConfig,
        llama_tokenizer: PreTrainedTokenizerBase,
    ) -> MiniGPT4:
        """The model with random weights, built on the current default device; reads only the
        prompt file (``prompt_path``) if one is configured. ``auto`` precisions are chosen for the
        machine's first accelerator, else the CPU."""
        cfg = model_config(cfg)
        set_pad_token(llama_tokenizer, cfg.pad_token)
        device = run_device(None)
        llama = build_llama(llama_config, llm_dtype(cfg, device))
        prompts = read_prompts(cfg.prompt_path, training_prompt_template(cfg, llama_tokenizer))
        model = cls(cfg, llama, llama_tokenizer, prompts, device)
        model.llama_model = add_lora(model.llama_model, cfg)
        return model

    @classmethod
    def from_config(
        cls, cfg: Mapping[str, Any] | DictConfig | ModelConfig, device: torch.device | str | None = None
    ) -> MiniGPT4:
        """Build from the ``model:`` config, then load every weight file it names.

        ``device`` is where the model will run: the ``auto`` precisions are chosen for it and the
        model is returned there. Without it the model stays on the CPU, as the reference's did, and
        the ``auto`` precisions are chosen for the machine's first accelerator, else the CPU.
        """
        cfg = model_config(cfg)
        target = run_device(device)
        folder = llama_folder(cfg.llama_model)
        tokenizer = load_llama_tokenizer(folder)
        set_pad_token(tokenizer, cfg.pad_token)
        dtype = llm_dtype(cfg, target)
        # The LLM is loaded by transformers' from_pretrained (the one path for sharded folders and
        # 8-bit quantisation); until then a weightless stand-in of the same config holds its place.
        with torch.device("meta"):
            stand_in = build_llama(read_llama_config(folder, tokenizer), dtype)
        # The vision side gets its values from the files right after, so it is not initialised first.
        with skip_random_init():
            prompts = read_prompts(cfg.prompt_path, training_prompt_template(cfg, tokenizer))
            model = cls(cfg, stand_in, tokenizer, prompts, target)
        load_vision_weights(model, cfg)
        logger.info("Loading LLAMA")
        model.llama_model = add_lora(load_llama(folder, dtype, cfg.low_resource, cfg.device_8bit, tokenizer), cfg)
        if cfg.ckpt:
            logger.info("Load BLIP2-LLM Checkpoint: %s", cfg.ckpt)
            load_minigpt4_checkpoint(model, resolve_weights(cfg.ckpt, "ckpt"), cfg)
        if device is not None:
            if cfg.low_resource:
                _check_llm_is_on(model.llama_model.get_input_embeddings().weight.device, target)
            model.to(target)
        return model

    # --- modes --------------------------------------------------------------------------------

    def frozen_modules(self) -> Iterator[nn.Module]:
        if self.freeze_vit:
            yield self.visual_encoder
            yield self.ln_vision
        if self.freeze_qformer and self.has_qformer:
            yield self.Qformer
        yield self.llama_model

    def train(self, mode: bool = True) -> MiniGPT4:
        """Frozen parts stay in eval mode (no dropout), whatever ``mode`` is."""
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        set_adapter_mode(self.llama_model, mode)
        return self

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> MiniGPT4:
        """What ``to``, ``cuda``, ``half`` ... do to every tensor. In ``low_resource`` mode the
        vision tower and the 8-bit LLM are left out, so that ``model.to(device)`` (the reference's
        demo, ``Chat`` set-up, the runner) neither moves the CPU vision tower onto the GPU nor
        moves or casts the bitsandbytes weights, whose quantization state a plain move would leave
        behind."""
        if not (self.low_resource and recurse):
            return super()._apply(fn, recurse)
        for name, child in self.named_children():
            if name not in self.LOW_RESOURCE_PINNED:
                child._apply(fn)
        return super()._apply(fn, recurse=False)  # query_tokens and this module's own buffers

    # --- checkpoints --------------------------------------------------------------------------

    @staticmethod
    def checkpoint_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint's ``model`` entry under this model's names: the reference's Q-Former names
        mapped, the buffers its runner saved and this model computes itself dropped, upstream's
        LoRA adapter names mapped (``models/lora.py``). Used by ``ckpt`` loading and by the
        runner's resume (``load_trainable_state_dict``)."""
        return {
            lora_checkpoint_name(blip2_to_ours(key)): value
            for key, value in state.items()
            # upstream's LoRA checkpoints hold the LLM's buffers under the peft wrapper's prefix
            if not any(pattern.match(key) or pattern.match(lora_checkpoint_name(key)) for pattern in REFERENCE_BUFFERS)
        }

    # --- forward ------------------------------------------------------------------------------

    def flop_model(self) -> FlopModel:
        """This model's training FLOP counts (``minigpt4.common.flops``), for MFU: the model names
        its parts, the counter reads their modules and the LLM's config."""
        vit = self.visual_encoder
        return count_flop_model(
            vision=vit,
            vision_depth=len(vit.blocks),
            vision_width=vit.embed_dim,
            vision_tokens=vit.patch_embed.num_patches + vit.num_prefix_tokens,
            qformer=self.Qformer,
            image_tokens=self.num_image_tokens,
            projection=self.llama_proj,
            llm=self.llama_model,
        )

    @property
    def vocab_size(self) -> int:
        """The LLM's output vocabulary (the width of its logits)."""
        return self.llama_model.config.vocab_size

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """The LLM's input embedding of token ids: (B, T) -> (B, T, H)."""
        return self.llama_model.get_input_embeddings()(ids)

    @property
    def num_image_tokens(self) -> int:
        """LLM tokens per image: the query tokens, or a quarter of the patches without a Q-Former."""
        if self.has_qformer:
            return self.query_tokens.shape[1]
        return self.visual_encoder.patch_embed.num_patches // PATCHES_PER_TOKEN

    def encode_img(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) images -> LLM-space image embeddings (B, Q, H) and their mask (B, Q) long;
        Q is ``num_image_tokens``."""
        device = image.device
        if self.low_resource:
            image = image.to("cpu")  # the vision tower's place (fp32, so no autocast there)
        with autocast(image.device, self.vit_dtype), _grad(not self.freeze_vit):
            image_embeds = self.ln_vision(self.visual_encoder.forward_features(image)).to(device)  # (B, 1+N, W)
        if self.has_qformer:
            with autocast(device, self.vit_dtype), _grad(not (self.freeze_vit and self.freeze_qformer)):
                query_tokens = self.query_tokens.expand(image_embeds.shape[0], -1, -1)  # (B, Q, D)
                image_tokens = self.Qformer(query_embeds=query_tokens, encoder_hidden_states=image_embeds)
                image_tokens = image_tokens.last_hidden_state
        else:
            image_tokens = merge_patch_tokens(image_embeds)  # (B, N/4, 4W)
        # The projection feeds the LLM, so it runs (and receives its gradient) in the LLM's precision.
        with autocast(device, self.llm_dtype):
            inputs_llama = self.llama_proj(image_tokens)  # (B, Q, H)
        atts_llama = torch.ones(inputs_llama.shape[:-1], dtype=torch.long, device=device)
        return inputs_llama, atts_llama

    def _prompt_ids(self, prompt: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The ids (1, T) of the text before and after ``<ImageHere>``, without BOS/EOS. The
        training prompts (``prompt_list``) are tokenized once per device, not at every step."""
        key = (prompt, device)
        if key in self._prompt_cache:
            return self._prompt_cache[key]
        pieces = prompt.split(IMAGE_PLACEHOLDER)
        if len(pieces) != 2:
            raise ValueError(f"a prompt must contain {IMAGE_PLACEHOLDER} exactly once: {prompt!r}")
        before, after = (
            self.llama_tokenizer(piece, return_tensors="pt", add_special_tokens=False).input_ids.to(device)
            for piece in pieces
        )
        if prompt in self.prompt_list:
            self._prompt_cache[key] = before, after
        return before, after

    def prompt_wrap(
        self, img_embeds: torch.Tensor, atts_img: torch.Tensor, prompt: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Put the image embeddings where ``<ImageHere>`` is in ``prompt`` (one prompt for the batch).

        (B, Q, H) -> (B, P_before + Q + P_after, H); an empty prompt returns the inputs unchanged.
        """
        if not prompt:
            return img_embeds, atts_img
        batch = img_embeds.shape[0]
        before, after = (self.embed_tokens(ids) for ids in self._prompt_ids(prompt, img_embeds.device))
        wrapped = torch.cat([before.expand(batch, -1, -1), img_embeds, after.expand(batch, -1, -1)], dim=1)
        return wrapped, atts_img[:, :1].expand(-1, wrapped.shape[1])

    def prepare_llm_inputs(self, samples: Mapping[str, Any]) -> LLMInputs:
        """``samples["image"]`` (B, 3, S, S) and ``samples["text_input"]`` (B strings) -> LLM inputs."""
        img_embeds, atts_img = self.encode_img(samples["image"])
        if self.prompt_list:
            img_embeds, atts_img = self.prompt_wrap(img_embeds, atts_img, random.choice(self.prompt_list))
        device = img_embeds.device
        batch = img_embeds.shape[0]

        text = [t + self.end_sym for t in samples["text_input"]]
        tokens = self.llama_tokenizer(
            text,
            return_tensors="pt",
            padding="longest",
            padding_side="right",
            truncation=True,
            max_length=self.max_txt_len,
            add_special_tokens=False,
        ).to(device, non_blocking=True)
        text_ids = tokens.input_ids  # (B, T)
        # With the reference's pad = eos an eos inside the text is not a target either; with
        # model.pad_token (upstream's "$$") it is, and a "$$" in the text is not.
        padding = text_ids == self.llama_tokenizer.pad_token_id
        if self.conv_template == "chat_template":
            # The end of turn is trained also where it is the pad (LLaMA-3's <|eot_id|>, Mistral's </s>).
            padding = tokens.attention_mask == 0
        text_targets = text_ids.masked_fill(padding, IGNORE_INDEX)

        # [BOS], or nothing for a tokenizer without one (Qwen)
        start = start_ids(self.llama_tokenizer)
        bos = torch.full((batch, len(start)), start[0] if start else 0, dtype=torch.long, device=device)  # (B, 0|1)
        inputs_embeds = torch.cat([self.embed_tokens(bos), img_embeds, self.embed_tokens(text_ids)], dim=1)
        attention_mask = torch.cat([atts_img[:, : bos.shape[1]], atts_img, tokens.attention_mask], dim=1)
        prefix = bos.shape[1] + atts_img.shape[1]
        prefix_targets = torch.full((batch, prefix), IGNORE_INDEX, dtype=torch.long, device=device)
        return LLMInputs(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            labels=torch.cat([prefix_targets, text_targets], dim=1),
            text_input_ids=text_ids,
        )

    def forward(self, samples: Mapping[str, Any]) -> dict[str, Any]:
        """``{"loss", "tokens" (real LLM input tokens, a 0-dim tensor), "padded_tokens" (B * L),
        "target_tokens" (the tokens the loss averages over, a 0-dim tensor)}``."""
        inputs = self.prepare_llm_inputs(samples)
        with autocast(inputs.inputs_embeds.device, self.llm_dtype):
            # No attention mask: padding is on the right, so under the causal mask no real token
            # sees a pad, and pads are never targets; the loss is the same as with the mask. Without
            # one, attention takes its fused causal kernel and transformers reads nothing back from
            # the device to inspect the mask.
            outputs = self.llama_model(
                inputs_embeds=inputs.inputs_embeds,
                labels=inputs.labels,
                use_cache=False,
                return_dict=True,
            )
        return {
            "loss": outputs.loss,
            "tokens": inputs.attention_mask.sum(),
            "padded_tokens": inputs.attention_mask.numel(),
            "target_tokens": (inputs.labels[:, 1:] != IGNORE_INDEX).sum(),  # each predicts the next token
        }


def load_vision_weights(model: MiniGPT4, cfg: DictConfig) -> None:
    """The vision tower, ``ln_vision``, the Q-Former and the query tokens: from ``vit_weights`` (an
    ``eva_vit_g.pth``-format file) then ``q_former_model`` (a BLIP-2 file), as the reference, or
    all four from a transformers ``Blip2`` folder named by ``q_former_model`` (``vit_weights``
    empty or the same folder). With ``has_qformer: False`` only the vision tower, from
    ``vit_weights``; ``q_former_model`` is not read."""
    if not cfg.has_qformer:
        if not cfg.vit_weights:
            raise WeightLoadError(
                "model.vit_weights is empty but model.has_qformer is False: the vision tower comes from an "
                "eva_vit_g.pth-format file then (no BLIP-2 file is read)"
            )
        logger.info("Loading VIT")
        load_eva_vit(model.visual_encoder, resolve_weights(cfg.vit_weights, "vit_weights"))
        logger.info("Do not use Q-Former here.")
        # Only the BLIP-2 file held ln_vision's weights; without it upstream kept the initial values.
        with torch.no_grad():
            model.ln_vision.weight.fill_(1.0)
            model.ln_vision.bias.zero_()
        return
    if names_transformers_blip2(cfg):
        q_former = resolve_weights(cfg.q_former_model, "q_former_model")
        if not is_transformers_blip2_folder(q_former):
            raise WeightLoadError(
                f"model.q_former_model: {q_former} is a folder without config.json; give a BLIP-2 file "
                f"(blip2_pretrained_flant5xxl.pth) or a transformers Blip2 folder"
            )
        if cfg.vit_weights and Path(cfg.vit_weights).expanduser().resolve() != q_former.resolve():
            raise WeightLoadError(
                f"model.vit_weights is {cfg.vit_weights!r} but model.q_former_model is the transformers Blip2 "
                f"folder {q_former}, which holds the vision tower too: set vit_weights to '' or to that folder"
            )
        logger.info("Loading VIT and Q-Former from the transformers Blip2 folder %s", q_former)
        load_transformers_blip2(model, q_former, cfg)
        return
    logger.info("Loading VIT")
    load_eva_vit(model.visual_encoder, resolve_weights(cfg.vit_weights, "vit_weights"))
    logger.info("Loading Q-Former")
    load_blip2_qformer(model, resolve_weights(cfg.q_former_model, "q_former_model"))


def projection_input(width: int, vit_width: int | None) -> str:
    """What a projection input of ``width`` channels is: merged ViT patches when it is
    4 x ``vit_width`` (``has_qformer: False``), else a Q-Former."""
    if vit_width is not None and width == PATCHES_PER_TOKEN * vit_width:
        return f"no Q-Former (input width {width} = {PATCHES_PER_TOKEN} x {vit_width}, model.has_qformer: False)"
    return f"a Q-Former of width {width}"


def checkpoint_shape_explainer(
    has_qformer: bool | None = None, vit_width: int | None = None, llm_config: PretrainedConfig | None = None
) -> Callable[[str, tuple[int, ...], tuple[int, ...]], str | None]:
    """:func:`explain_checkpoint_shape` for a model with (or without) a Q-Former on a ViT of
    ``vit_width`` channels and the LLM of ``llm_config``; unknown (None) gives the Q-Former
    wording and names the LLM by its width."""

    def explain(key: str, have: tuple[int, ...], want: tuple[int, ...]) -> str | None:
        return explain_checkpoint_shape(key, have, want, has_qformer, vit_width, llm_config=llm_config)

    return explain


def llm_name(hidden_size: int, llm_config: PretrainedConfig | None = None) -> str:
    """The LLM of this model in words: from its config where known (``a 7B LLM``, ``a 494M qwen2
    LLM``), else from the width alone."""
    if llm_config is not None and llm_config.hidden_size == hidden_size:
        return llm_size_name(llm_config)
    return llama_size_name(hidden_size)


def explain_checkpoint_shape(
    key: str,
    have: tuple[int, ...],
    want: tuple[int, ...],
    has_qformer: bool | None = None,
    vit_width: int | None = None,
    *,
    llm_config: PretrainedConfig | None = None,
) -> str | None:
    """Shape mismatches of a MiniGPT-4 checkpoint in words. The checkpoint's LLM is known by its
    width only; this model's from ``llm_config`` where given."""
    if (adapter := explain_adapter_shape(key, have, want)) is not None:
        return adapter
    if key.startswith("llama_proj.") and have[0] != want[0]:
        return (
            f"llama_proj was trained for hidden size {have[0]} ({llama_size_name(have[0])}) "
            f"but the LLM has {want[0]} ({llm_name(want[0], llm_config)})"
        )
    if key == "llama_proj.weight" and have[1] != want[1]:
        if has_qformer is None:
            return f"llama_proj was trained on a Q-Former of width {have[1]}; qformer_arch.hidden_size is {want[1]}"
        trained = projection_input(have[1], vit_width)
        trained = "without a Q-Former" + trained[len("no Q-Former") :] if trained.startswith("no ") else f"on {trained}"
        if has_qformer:
            ours = f"this model has a Q-Former of width {want[1]} (qformer_arch.hidden_size, model.has_qformer: True)"
        else:
            ours = f"this model has no Q-Former: {PATCHES_PER_TOKEN} merged ViT patches of width {want[1]}"
        return f"llama_proj was trained {trained} but {ours}"
    return None


@dataclass
class CheckpointTarget:
    """What a checkpoint is loaded for: the model's widths and the config's prompt settings.
    ``qformer_hidden_size`` is the projection's input width: the Q-Former's, or 4 x the ViT's
    without one."""

    llama_model: str
    llm_hidden_size: int
    qformer_hidden_size: int
    num_query_token: int | None
    prompt_template: str
    end_sym: str
    has_qformer: bool = True
    vit_width: int | None = None
    llm_config: PretrainedConfig | None = None
    lora_alpha: int | None = None  # None without LoRA adapters

    @classmethod
    def of(cls, cfg: DictConfig, llm_hidden_size: int, llm_config: PretrainedConfig | None = None) -> CheckpointTarget:
        vit_width = cfg.vit_arch.embed_dim
        width = cfg.qformer_arch.hidden_size if cfg.has_qformer else PATCHES_PER_TOKEN * vit_width
        return cls(
            cfg.llama_model,
            llm_hidden_size,
            width,
            cfg.num_query_token if cfg.has_qformer else None,
            cfg.prompt_template,
            cfg.end_sym,
            cfg.has_qformer,
            vit_width,
            llm_config,
            cfg.lora_alpha if cfg.lora_r else None,
        )


def trained_for(metadata: Mapping[str, Any], vit_width: int | None = None) -> str:
    """``an LLM of hidden size 5120 (a 13B LLM, vicuna-13b), a Q-Former of width 768, 32 query tokens``;
    a projection input of 4 x ``vit_width`` (or metadata ``has_qformer`` False) reads ``no Q-Former``."""
    hidden = metadata["llm_hidden_size"]
    name = f", {metadata['llm_name']}" if metadata.get("llm_name") else ""
    width = metadata["qformer_hidden_size"]
    if metadata.get("has_qformer") is False and vit_width is None:
        vit_width = width // PATCHES_PER_TOKEN
    text = f"an LLM of hidden size {hidden} ({llama_size_name(hidden)}{name}), "
    text += projection_input(width, vit_width)
    if metadata.get("num_query_token") is not None and metadata.get("has_qformer") is not False:
        text += f", {metadata['num_query_token']} query tokens"
    return text


def check_checkpoint_metadata(metadata: Mapping[str, Any], target: CheckpointTarget, source: object) -> list[str]:
    """Raise :class:`WeightLoadError` when the metadata says the checkpoint was trained for other
    widths than ``target``'s; return warnings for settings that load but change what the model
    does (query tokens, prompt template, end symbol)."""
    problems = []
    hidden = metadata.get("llm_hidden_size")
    if hidden != target.llm_hidden_size:
        problems.append(
            f"model.llama_model '{target.llama_model}' has hidden size {target.llm_hidden_size} "
            f"({llm_name(target.llm_hidden_size, target.llm_config)})"
        )
    if metadata.get("qformer_hidden_size") != target.qformer_hidden_size:
        if target.has_qformer:
            problems.append(f"qformer_arch.hidden_size is {target.qformer_hidden_size} (model.has_qformer: True)")
        else:
            problems.append(f"the model has {projection_input(target.qformer_hidden_size, target.vit_width)}")
    if problems:
        trained = trained_for(metadata, target.vit_width)
        raise WeightLoadError(f"{source} was trained for {trained}; " + "; ".join(problems))
    warnings = []
    for key, value in (
        ("num_query_token", target.num_query_token if target.has_qformer else None),
        ("prompt_template", target.prompt_template),
        ("end_sym", target.end_sym),
        ("lora_alpha", target.lora_alpha),
    ):
        trained = metadata.get(key)
        if trained is not None and value is not None and trained != value:
            warnings.append(f"{source} was trained with {key} {trained!r}; model.{key} is {value!r}")
    return warnings


def check_minigpt4_checkpoint(
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    source: object,
    metadata: Mapping[str, Any] | None = None,
    target: CheckpointTarget | None = None,
    *,
    explain: Callable[[str, tuple[int, ...], tuple[int, ...]], str | None] | None = None,
) -> list[str]:
    """Raise :class:`WeightLoadError` unless the checkpoint ``state`` (under this model's names)
    fits the model's ``expected`` state dict: ``llama_proj`` present, every other key a parameter
    or buffer of the model, every shape right, and the metadata's widths those of ``target``.
    Returns the metadata's warnings. Only shapes are read, so meta tensors do for both. ``explain``
    words shape mismatches (default: from ``target``'s Q-Former setting, if given)."""
    warnings = check_checkpoint_metadata(metadata, target, source) if metadata and target else []
    optional = set(expected) - set(PROJECTION_KEYS)
    if explain is None:
        explain = checkpoint_shape_explainer(
            *((target.has_qformer, target.vit_width, target.llm_config) if target else ())
        )
    check_state_dict(expected, state, f"the MiniGPT-4 checkpoint {source}", explain, optional)
    return warnings


def load_minigpt4_checkpoint(model: MiniGPT4, path: Path, cfg: DictConfig | None = None) -> None:
    """Load a MiniGPT-4 checkpoint into ``model``: a ``.pth`` (``{'model': {...}, ...}``), or a
    ``.safetensors`` file or folder written by ``tools/export_checkpoint.py``.

    Accepted: the released projection-only files, the reference runner's checkpoints (trainable
    parameters plus buffers, the reference-only buffers dropped), this project's runner's
    checkpoints (trainable parameters and buffers under this model's names) and their exports.
    ``llama_proj`` must be present; every other key must name a parameter or buffer of the model.
    With ``cfg`` (the ``model:`` config), an export's metadata is checked against it too.
    """
    state, metadata = read_checkpoint(path)
    state = model.checkpoint_state(state)
    check_checkpoint_adapters(state, model.llama_model, path)
    llm_config = model.llama_model.config
    target = CheckpointTarget.of(cfg, llm_config.hidden_size, llm_config) if cfg is not None else None
    explain = checkpoint_shape_explainer(model.has_qformer, model.visual_encoder.embed_dim, llm_config)
    for warning in check_minigpt4_checkpoint(model.state_dict(), state, path, metadata, target, explain=explain):
        logger.warning("%s", warning)
    model.load_state_dict(state, strict=False)
    logger.info("Loaded %d tensors from %s", len(state), path)
