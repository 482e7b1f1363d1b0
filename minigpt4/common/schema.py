"""The typed schema behind every YAML file: the one home of every default.

``Config`` merges the YAML files and ``--options`` onto these dataclasses with
``OmegaConf.structured``, so a misspelt key or a value of the wrong type fails at start-up,
naming the key. Each section documents its keys; the reference's key names are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Where the reference's pretrained weights live. The only table of weight locations.
WEIGHT_URLS = {
    "eva_vit_g": "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/eva_vit_g.pth",
    "blip2_flant5xxl": (
        "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/blip2_pretrained_flant5xxl.pth"
    ),
}


@dataclass
class VitArch:
    """EVA ViT-g/14 as the reference builds it (the image size comes from ``model.image_size``)."""

    patch_size: int = 14
    embed_dim: int = 1408
    depth: int = 39
    num_heads: int = 16
    mlp_ratio: float = 4.3637


@dataclass
class QFormerArch:
    """bert-base values, built locally (the reference fetched them from a model hub)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    cross_attention_freq: int = 2


@dataclass
class ModelConfig:
    """``model:`` of a YAML file. Defaults are the reference's ``MiniGPT4.from_config`` defaults
    (``vit_precision: auto`` is the reference's fp16 wherever the reference could run).

    Weight locations (``vit_weights``, ``q_former_model``, ``ckpt``) are local paths or URLs; a URL
    (``https://``, ``file://``) is downloaded once into ``$MINIGPT4_CACHE_DIR`` (default
    ``~/.cache/minigpt4``). ``llama_model`` is a local Vicuna/LLaMA folder.
    """

    arch: str = "mini_gpt4"
    model_type: str = "pretrain_vicuna"
    # The only vision tower the reference knows; any other name is an error.
    vit_model: str = "eva_clip_g"
    # An ``eva_vit_g.pth``-format file: a flat state dict; blocks beyond ``vit_arch.depth`` and the
    # tower's ``norm``/``fc_norm``/``head`` are ignored by name. Empty (or the same folder) when
    # ``q_former_model`` is a transformers Blip2 folder.
    vit_weights: str = WEIGHT_URLS["eva_vit_g"]
    vit_arch: VitArch = field(default_factory=VitArch)
    # A ``blip2_pretrained_flant5xxl.pth``-format file: ``{'model': ...}`` holding the Q-Former,
    # ``query_tokens`` and ``ln_vision``; or a local transformers Blip2 folder (config.json and
    # safetensors), the source of the vision tower too.
    q_former_model: str = WEIGHT_URLS["blip2_flant5xxl"]
    qformer_arch: QFormerArch = field(default_factory=QFormerArch)
    image_size: int = 224
    drop_path_rate: float = 0.0
    use_grad_checkpoint: bool = False
    # Storage dtype of the ViT's Linear and Conv weights: fp16, bf16, fp32 or auto. LayerNorms,
    # cls_token, pos_embed, q/v biases and ln_vision stay fp32. With fp16/bf16 the vision tower and
    # the Q-Former run under autocast in that dtype, as the reference does; with fp32 the model adds
    # no autocast of its own, so they compute in fp32 unless the training run's own autocast
    # (``run.amp``/``run.precision``) is on (the reference also autocast its fp32 ViT to fp16 on a
    # GPU). ``auto`` (new value, the
    # default) is the reference's fp16 on a CUDA GPU or an Ascend NPU and fp32 on a CPU, so that a
    # CPU computes in fp32 unless configured otherwise. The device is the one the model is built
    # for (``MiniGPT4.from_config(cfg, device)``), else the machine's (cuda, then npu, then cpu).
    # With ``low_resource`` the vision tower runs on the CPU in fp32 whatever this says.
    vit_precision: str = "auto"
    # Dtype of the LLM weights (fp16, bf16 or fp32; new key). ``auto``: bf16 where the accelerator
    # supports it, else fp16 (the reference's), and fp32 on a CPU; the device is chosen as for
    # ``vit_precision``. With fp16/bf16 the LLM (and llama_proj) run under autocast in that dtype;
    # with fp32, under the training run's autocast if it has one.
    llm_precision: str = "auto"
    freeze_vit: bool = True
    # Upstream's later key. False (its LLaMA-2 variant): no Q-Former, no query tokens and no BLIP-2
    # file; the ViT's patch tokens (class token dropped), in raster order, are merged four
    # consecutive ones at a time (1 x 4 strips of a row) into one token of 4 x the ViT width, which
    # llama_proj maps to the LLM (EVA ViT-g at 224 px: 256 patches -> 64 tokens of 5632).
    # freeze_qformer, num_query_token, qformer_arch and q_former_model are then not used, and
    # ln_vision, which only the BLIP-2 file held, keeps its initial weight 1 and bias 0, as upstream.
    has_qformer: bool = True
    freeze_qformer: bool = True
    num_query_token: int = 32
    llama_model: str = ""
    # Present in the reference's default model YAML and never read by its code; accepted so that
    # its YAML files load unchanged.
    prompt: str = ""
    prompt_path: str = ""
    prompt_template: str = ""
    max_txt_len: int = 32
    end_sym: str = "\n"
    # The LLM tokenizer's pad token (new key): "" is the reference's pad = </s>, which also masks
    # every </s> of the text out of the loss; upstream's later LLaMA-2 configs use "$$" (an
    # ordinary piece of the LLaMA vocabulary, id 3997), so that an end_sym "</s>" is trained. The
    # token must be a single piece of the vocabulary; a "$$" inside a caption is then not trained.
    pad_token: str = ""
    # 8-bit LLM (bitsandbytes, CUDA only) on GPU ``device_8bit``, vision tower on the CPU in fp32,
    # as the reference's demo; ``model.to(device)`` then moves the Q-Former and llama_proj only.
    low_resource: bool = False
    device_8bit: int = 0
    # A MiniGPT-4 checkpoint loaded last: the released projection file or a training checkpoint
    # (``.pth``, ``{'model': ...}``), or its export by tools/export_checkpoint.py (a folder holding
    # model.safetensors, or that file).
    ckpt: str = ""


@dataclass
class ProcessorConfig:
    """One ``vis_processor``/``text_processor`` entry: ``name`` picks the registered class; the
    other keys are read by that class's ``from_config`` (None means the class's own default)."""

    name: str = ""
    image_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    min_scale: float | None = None
    max_scale: float | None = None
    prompt: str | None = None
    max_words: int | None = None
    # blip2_image_train only (new key): "random_resized_crop" (the reference: a random crop of
    # min_scale..max_scale of the area, resized) or "resize" (upstream's later processor: a plain
    # bicubic square resize, the same as blip2_image_eval, which keeps boxes and captions aligned).
    transform: str | None = None


@dataclass
class SplitProcessors:
    train: ProcessorConfig | None = None
    eval: ProcessorConfig | None = None


@dataclass
class Preprocess:
    vis_processor: SplitProcessors = field(default_factory=SplitProcessors)
    text_processor: SplitProcessors = field(default_factory=SplitProcessors)


@dataclass
class BuildInfo:
    """Where a dataset's files are. ``storage`` is, for ``laion``/``cc_sbu``, a brace pattern of
    shards (``/data/laion/{00000..10488}.tar``), a list of such patterns, a folder of ``.tar``
    shards, or a ``pipe:`` command that streams one shard (``pipe:aws s3 cp s3://b/{0..9}.tar -``);
    for ``cc_sbu_align``, the folder holding ``filter_cap.json`` and ``image/``. A str or a list of
    str (typed Any because OmegaConf 2.3 has no unions; ``Config`` checks it)."""

    storage: Any = ""


@dataclass
class HeldOutSplit:
    """One split taken out of a map-style dataset's training data (``cc_sbu_align``): a
    ``fraction`` of its images, drawn with the dataset's ``held_out_seed``, or the images listed in
    ``image_ids`` (as ``filter_cap.json`` names them). One of the two."""

    fraction: float = 0.0
    image_ids: list[str] = field(default_factory=list)


@dataclass
class DatasetConfig:
    """One entry under ``datasets:``; its key is the registered builder name (``laion``, ...)."""

    data_type: str = "images"  # the reference's key; every MiniGPT-4 dataset is images
    # Picks the builder's default YAML (its ``DATASET_CONFIG_DICT``); only ``default`` exists.
    type: str = "default"
    build_info: BuildInfo = field(default_factory=BuildInfo)
    vis_processor: SplitProcessors = field(default_factory=SplitProcessors)
    text_processor: SplitProcessors = field(default_factory=SplitProcessors)
    # Relative weight of this dataset when several are mixed batch by batch (stage 1: 115 and 14).
    sample_ratio: float = 1.0
    # New keys. Splits held out of the training data, by the name run.valid_splits / test_splits
    # give them (``{val: {fraction: 0.05}}``); only cc_sbu_align has them. Each is read with the
    # ``eval`` image processor (default: blip2_image_eval at the train processor's size).
    held_out: dict[str, HeldOutSplit] = field(default_factory=dict)
    # Seeds the draw of the ``fraction`` splits only, so that the split stays put when run.seed changes.
    held_out_seed: int = 0


@dataclass
class RunConfig:
    """``run:`` of a YAML file: the reference's keys and defaults (see train_configs/), then the
    keys this re-implementation adds. Iterations count batches per rank; an optimizer step happens
    every ``accum_grad_iters`` of them. ``output_dir`` is relative to the working directory (the
    reference put it inside the package); each run writes to ``output_dir/<job_id>/``."""

    task: str = "image_text_pretrain"
    runner: str = "runner_base"
    lr_sched: str = "linear_warmup_cosine_lr"
    init_lr: float = 1e-4
    min_lr: float = 0.0
    warmup_lr: float = -1.0
    warmup_steps: int = 0
    lr_decay_rate: float | None = None
    weight_decay: float = 0.05
    beta2: float = 0.999
    max_epoch: int = 1
    # The reference fell back to 10000 when the key was missing (its endless loaders have no length).
    iters_per_epoch: int = 10000
    batch_size_train: int = 1
    # Per rank, for the held-out splits (evaluation reads each sample of a split exactly once).
    batch_size_eval: int = 1
    num_workers: int = 4
    accum_grad_iters: int = 1
    log_freq: int = 50
    seed: int = 42
    output_dir: str = "output"
    amp: bool = False
    # A checkpoint file, or a run's output folder: its checkpoint furthest into training that loads.
    # Resuming with other data settings (iters_per_epoch, batch size, checkpoint_interval, seed,
    # num_workers, length_grouping, ranks) is allowed with a warning; a finished run is refused.
    resume_ckpt_path: str | None = None
    # True: no training; the held-out loss of valid_splits and test_splits for the model as loaded
    # (model.ckpt), or for the weights of resume_ckpt_path when set.
    evaluate: bool = False
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    # Evaluated after every epoch (log line, log.txt, TensorBoard); by the first of them the best
    # epoch's checkpoint is also kept as checkpoint_best.pth.
    valid_splits: list[str] = field(default_factory=list)
    # Evaluated once after training, with the weights of checkpoint_best.pth when valid_splits is set.
    test_splits: list[str] = field(default_factory=list)
    # cuda, npu, cpu, or auto (the first of cuda, npu, cpu that is present); see common/device.py.
    device: str = "cuda"
    # The reference's distributed keys. torchrun's environment decides (RANK, WORLD_SIZE,
    # LOCAL_RANK): one process without torchrun trains alone whatever these say, as the reference's
    # init_distributed_mode did. dist_url is passed to init_process_group.
    world_size: int = 1
    dist_url: str = "env://"
    distributed: bool = True
    # New keys (not in the reference).
    # Mixed precision: None follows ``amp`` (bf16 autocast where the device supports it, else fp16
    # with a loss scaler; fp32 on CPU); "fp32", "bf16" or "fp16" forces one, on any device.
    precision: str | None = None
    # None: a dynamic loss scale for fp16 (the reference's GradScaler). A number: that fixed scale,
    # as the Ascend port's GradScaler(dynamic=False) (65536.0); steps with non-finite gradients are
    # still skipped, where the Ascend port applied them.
    static_loss_scale: float | None = None
    # Gradient clipping by total L2 norm of the trainable parameters; None: off (the reference).
    max_grad_norm: float | None = None
    # Also write ``checkpoint_last.pth`` every N iterations inside an epoch (0: only at epoch end,
    # the reference). A multiple of accum_grad_iters.
    checkpoint_interval: int = 0
    # A step whose loss, gradients (under a fixed loss scale) or updated weights are not finite is
    # not applied (undone on the device) and counted; this many in a row stop the run. The count is
    # read at every log line (never per step, to keep the device asynchronous); skipped steps leave
    # the weights untouched, so stopping late is harmless.
    max_nonfinite_steps: int = 5
    # 0: batches as the shuffle makes them (the reference). N: gather N batches' worth of samples,
    # sort them by text length and cut them into N batches of similar length, for less padding
    # (see datasets/datasets/length_grouping.py).
    length_grouping: int = 0
    # A stream (laion, cc_sbu) skips corrupt samples and counts them (``skipped=`` in the step
    # line); above this share of skipped samples among those read from a loader worker's last 20
    # shards the run stops, naming the shards. 1.0: never stop for skips.
    max_skip_fraction: float = 0.2


@dataclass
class RootConfig:
    """A whole YAML file after merging: every top-level key it may have."""

    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: Preprocess = field(default_factory=Preprocess)
    datasets: dict[str, DatasetConfig] = field(default_factory=dict)
    run: RunConfig = field(default_factory=RunConfig)


__all__ = [
    "WEIGHT_URLS",
    "BuildInfo",
    "DatasetConfig",
    "HeldOutSplit",
    "ModelConfig",
    "Preprocess",
    "ProcessorConfig",
    "QFormerArch",
    "RootConfig",
    "RunConfig",
    "SplitProcessors",
    "VitArch",
]
