"""The FLOP model behind the MFU figures that the benchmark and the README report.

Per training sample of MiniGPT-4 with a frozen LLM:

* vision tower, forward only: ``2 * P_vit * T_v + 4 * L_vit * T_v**2 * D_vit``, where ``P_vit``
  counts the weights of its matrix multiplies (patch projection, qkv, proj, fc1, fc2), ``T_v`` is
  the number of vision tokens (257 at 224 px) and the second term is the two attention products
  (scores and weighted sum) of every block;
* Q-Former, forward only: ``2 * P_qf * Q`` for its ``Q`` query tokens, where ``P_qf`` excludes the
  cross-attention key/value projections, which apply to all ``T_v`` vision tokens and add
  ``2 * P_kv * T_v`` (the Q-Former is about 3% of the ViT);
* projection (``llama_proj``, trainable): forward plus weight gradient, ``4 * P_proj * Q`` per image
  (no input gradient: the Q-Former below it is frozen); about 0.1% of the ViT. Without a Q-Former
  (``has_qformer: False``) the Q-Former term is 0 and ``Q`` is the number of merged patch tokens
  (64 at 224 px), whose projection (5632 -> 4096) is about 0.5% of the ViT;
* LLM: ``4 * N`` per token, with ``N`` the weights of its matrix multiplies including the output
  head (the input embedding is a lookup). A frozen LLM still runs its backward pass through the
  activations, so that gradients reach the image tokens, but computes no weight gradients:
  forward ``2N`` plus backward ``2N``. A trainable LLM would add ``2N`` for weight gradients;
  LoRA adapters (``model.lora_r``) add ``2 N_lora`` for theirs, ``N_lora`` being the adapter
  weights (already inside ``N``, which counts every Linear of the adapted LLM). The
  attention products (scores and weighted sum, no weights) add ``12 * L * T * D`` per token in
  sequences of ``T`` tokens: ``4 * T * D`` forward per layer and twice that backward, since the
  gradient must reach the queries, keys and values. This counts the full ``T x T`` square, as
  PaLM's ``6N + 12 L D T`` convention does (a masked kernel computes it; a causal kernel
  could skip half); it is 0.4% of the total at ``T = 65`` and 1.3% at ``T = 215`` for 7B.
  ``D`` is the width of the attention products, heads x head size, read from the LLM's config
  (the hidden size for LLaMA, Mistral and Qwen2; 2048 for Qwen3-0.6B's hidden 1024), whatever
  the number of key/value heads (grouped-query attention shares the keys, not the products).
  With a sliding window of ``W`` (Mistral v0.1's 4096) a token attends ``min(T, W)`` keys. Tied
  input and output embeddings do not change the count: the output head still multiplies.

The vision side (ViT, Q-Former) is assumed frozen, as in both MiniGPT-4 stages.

These are model FLOPs: work that a kernel repeats (a flash-attention backward recomputing the
scores, activation checkpointing) is not counted. MFU is the model FLOPs of the tokens the device
processed (padded tokens included: the hardware computes them) per second, divided by the
device's peak dense bf16/fp16 throughput.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

# Peak dense bf16/fp16 tensor throughput (FLOP/s) from the vendors' data sheets, by device name
# fragment as torch reports it. Devices not listed get no MFU unless a peak is given by hand.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "Ascend910B": 313e12,
}


def peak_flops(device_name: str) -> float | None:
    for fragment, flops in PEAK_FLOPS.items():
        if fragment.lower() in device_name.replace(" ", "").lower():
            return flops
    return None


@dataclass(frozen=True)
class FlopModel:
    """Architecture numbers of one MiniGPT-4 model, enough to count its training FLOPs."""

    vit_matmul_params: int
    vit_depth: int
    vit_width: int
    vit_tokens: int
    qformer_matmul_params: int
    qformer_cross_kv_params: int
    num_query_token: int  # image tokens given to the LLM (query tokens, or merged patches)
    llm_matmul_params: int
    llm_layers: int
    llm_hidden: int  # the width of the attention products (heads x head size)
    projection_params: int = 0
    llm_trainable: bool = False
    llm_window: int | None = None  # the sliding-window attention span, if the LLM has one
    # Weights of the trainable Linears inside an otherwise frozen LLM (LoRA adapters).
    llm_adapter_params: int = 0

    def vision_flops_per_image(self) -> float:
        t = self.vit_tokens
        vit = 2 * self.vit_matmul_params * t + 4 * self.vit_depth * t * t * self.vit_width
        qformer = 2 * self.qformer_matmul_params * self.num_query_token + 2 * self.qformer_cross_kv_params * t
        projection = 4 * self.projection_params * self.num_query_token
        return float(vit + qformer + projection)

    def llm_flops(self, tokens: int, seq_len: int) -> float:
        """FLOPs of forward + backward for ``tokens`` LLM tokens in sequences of ``seq_len``."""
        weight_grads = self.llm_matmul_params if self.llm_trainable else self.llm_adapter_params
        per_token = 4 * self.llm_matmul_params + 2 * weight_grads
        keys = min(seq_len, self.llm_window) if self.llm_window else seq_len
        attention = 12 * self.llm_layers * keys * self.llm_hidden
        return float(tokens * (per_token + attention))

    def step_flops(self, images: int, tokens: int, seq_len: int) -> float:
        return images * self.vision_flops_per_image() + self.llm_flops(tokens, seq_len)


def window_mfu(model: FlopModel, samples: float, padded_tokens: float, seconds: float, peak: float) -> float:
    """MFU of a stretch of training in which ``samples`` samples (one image each) and
    ``padded_tokens`` LLM positions were processed in ``seconds`` on devices of ``peak`` FLOP/s in
    all. The attention term takes the mean padded length for every sequence (it is about 1% of the
    total, and nearly linear in the length)."""
    flops = model.step_flops(images=samples, tokens=padded_tokens, seq_len=padded_tokens / max(samples, 1))
    return flops / seconds / peak


def linear_weight_params(module: nn.Module) -> int:
    """Weights of every ``nn.Linear`` and ``nn.Conv2d`` under ``module`` (works on the meta device)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def _is_cross_attention_kv(name: str) -> bool:
    return ".crossattention." in name and name.rsplit(".", 1)[-1] in ("key", "value")


def llm_attention_width(config: Any) -> int:
    """Heads x head size of a transformers LLM config (``head_dim`` where the config sets one)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads * head_dim


def llm_attention_window(config: Any) -> int | None:
    """The sliding-window span every layer attends within, else None: Mistral's ``sliding_window``;
    Qwen2's only with ``use_sliding_window``; none where some layers attend fully (``layer_types``)."""
    window = getattr(config, "sliding_window", None)
    if not window or not getattr(config, "use_sliding_window", True):
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types and any(kind != "sliding_attention" for kind in layer_types):
        return None
    return window


def count_flop_model(
    *,
    vision: nn.Module,
    vision_depth: int,
    vision_width: int,
    vision_tokens: int,
    qformer: nn.Module | None,
    image_tokens: int,
    projection: nn.Module,
    llm: nn.Module,
) -> FlopModel:
    """The :class:`FlopModel` of a model that names its parts: the vision tower (its depth, width and
    tokens per image), the Q-Former (None without one), the image tokens the LLM receives, the
    projection and the LLM (a transformers causal LM: layers, attention width and window from its
    ``config``). Counted from the modules; works on the meta device."""
    linears = [m for m in llm.modules() if isinstance(m, nn.Linear)]
    trainable_linear = sum(m.weight.numel() for m in linears if m.weight.requires_grad)
    # Every Linear trains: a trained LLM; some of them (LoRA adapters): weight gradients for those.
    llm_trainable = bool(linears) and all(m.weight.requires_grad for m in linears)
    cross_kv = (
        sum(
            m.weight.numel()
            for name, m in qformer.named_modules()
            if isinstance(m, nn.Linear) and _is_cross_attention_kv(name)
        )
        if qformer is not None
        else 0
    )
    return FlopModel(
        vit_matmul_params=linear_weight_params(vision),
        vit_depth=vision_depth,
        vit_width=vision_width,
        vit_tokens=vision_tokens,
        qformer_matmul_params=linear_weight_params(qformer) - cross_kv if qformer is not None else 0,
        qformer_cross_kv_params=cross_kv,
        num_query_token=image_tokens,
        llm_matmul_params=linear_weight_params(llm),
        llm_layers=llm.config.num_hidden_layers,
        llm_hidden=llm_attention_width(llm.config),
        projection_params=linear_weight_params(projection),
        llm_trainable=llm_trainable,
        llm_adapter_params=0 if llm_trainable else trainable_linear,
        llm_window=llm_attention_window(llm.config),
    )


def minigpt4_flop_model(model: Any) -> FlopModel:
    """The :class:`FlopModel` of a built model, as it describes itself (``model.flop_model()``)."""
    return model.flop_model()
