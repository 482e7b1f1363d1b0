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
    """bert-base values, built locally (nothing is fetched from a model hub)."""

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
    # Storage dtype of the ViT's Linear and Conv weights: fp16, bf16, fp32 or auto (fp16 on a CUDA
    # GPU or an Ascend NPU, fp32 on a CPU; decided for the device the model is built for). Norms,
    # cls_token, pos_embed, q/v biases and ln_vision stay fp32. fp16/bf16 also autocast the vision
    # tower and Q-Former; fp32 leaves them to the run's own autocast. low_resource: fp32 on the CPU.
    vit_precision: str = "auto"
    # Dtype of the LLM weights (fp16, bf16 or fp32). ``auto``: bf16 where the accelerator supports
    # it, else fp16, and fp32 on a CPU; the device is chosen as for ``vit_precision``. fp16/bf16
    # autocast the LLM (and llama_proj) in that dtype; fp32 leaves them to the run's own autocast.
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
    # Never read; accepted so that the 2023 default model YAML loads unchanged.
    prompt: str = ""
    prompt_path: str = ""
    prompt_template: str = ""
    max_txt_len: int = 32
    end_sym: str = "\n"
    # The conversation template (minigpt4/conversation/templates.py): vicuna_v0 (###Human /
    # ###Assistant), llama2 ([INST] ... [/INST]), chat_template (the LLM tokenizer's own Jinja
    # template; with prompt_path the training prompt is rendered through it and answers end with its
    # end-of-turn text, prompt_template, if set, being the user turn's content) or auto: llama2 for
    # model_type pretrain_llama2, else vicuna_v0. Chat, the demo and inference.py speak it;
    # generation stops on its end texts and the tokenizer's EOS.
    conv_template: str = "auto"
    # The LLM tokenizer's pad token: "" is pad = </s>, which also masks every </s> of the text out
    # of the loss; "$$" (upstream's LLaMA-2 configs; LLaMA id 3997) lets an end_sym "</s>" be
    # trained. A single piece of the vocabulary; a "$$" inside a caption is then not trained.
    pad_token: str = ""
    # 8-bit LLM (bitsandbytes, CUDA only) on GPU ``device_8bit``, vision tower on the CPU in fp32,
    # as the reference's demo; ``model.to(device)`` then moves the Q-Former and llama_proj only.
    low_resource: bool = False
    device_8bit: int = 0
    # LoRA adapters on the LLM (upstream's later keys, through peft; see models/lora.py). 0: none,
    # the LLM frozen whole and only llama_proj trains (the reference). N > 0: rank-N adapters on
    # every LLM Linear named in lora_target_modules (its full name or its last components), scaled
    # by lora_alpha / lora_r, with lora_dropout on their input; they train beside llama_proj and
    # are saved in the checkpoints. The defaults are upstream's MiniGPTBase's.
    lora_r: int = 0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    lora_alpha: int = 16
    lora_dropout: float = 0.05
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
    # Benchmarks (evaluate.py; minigpt4/datasets/builders/benchmark_builder.py): the benchmark's
    # own annotation files by role (``questions``, ``annotations``, or one file per split such as
    # POPE's ``random``), the image folder, and for annotations that give only an image id the
    # file name as a format string (``COCO_val2014_{image_id:012d}.jpg``; empty: the builder's).
    annotations: dict[str, str] = field(default_factory=dict)
    images: str = ""
    image_name: str = ""


@dataclass
class BenchmarkConfig:
    """``datasets.<benchmark>.benchmark``: how evaluate.py asks a benchmark's questions. ``prompt``
    is the text each question is asked as, ``{}`` standing for the benchmark's question (caption
    benchmarks have none); every question is a fresh one-turn conversation, answered greedily.
    ``splits``: the annotation splits to evaluate (empty: all the builder finds configured)."""

    prompt: str = ""
    max_new_tokens: int = 20
    splits: list[str] = field(default_factory=list)
    # Attribute-naming benchmarks (the tiny world's held-out split): the annotation fields an
    # answer must name, each with the right value and no other value of that field.
    scored_attributes: list[str] = field(default_factory=list)


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
    # Benchmarks only (evaluate.py): the prompt and generation settings.
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    # New keys. Splits held out of the training data, by the name run.valid_splits / test_splits
    # give them (``{val: {fraction: 0.05}}``); only cc_sbu_align has them. Each is read with the
    # ``eval`` image processor (default: blip2_image_eval at the train processor's size).
    held_out: dict[str, HeldOutSplit] = field(default_factory=dict)
    # Seeds the draw of the ``fraction`` splits only, so that the split stays put when run.seed changes.
    held_out_seed: int = 0


@dataclass
class RunConfig:
    """``run:`` of a YAML file: the reference's keys and defaults (see train_configs/), then the
    keys this project adds. Iterations count batches per rank; an optimizer step happens every
    ``accum_grad_iters`` of them. Each run writes to ``output_dir/<job_id>/``, relative to the
    working directory."""

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
    # The shard streams are endless: an epoch is this many iterations.
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
    # Memory for the big LLMs (runners/memory.py). Recompute each decoder layer of the frozen LLM
    # in the backward instead of keeping its activations (non-reentrant checkpointing; the
    # projection's gradient still flows through the whole LLM).
    llm_activation_checkpointing: bool = False
    # Under torchrun with several ranks: shard the frozen LLM's parameters across the ranks with
    # FSDP2 (one unit per decoder layer); the trainable parameters stay whole and DDP reduces them,
    # so checkpoints keep their format. Not with model.low_resource.
    shard_llm: bool = False


@dataclass
class RootConfig:
    """A whole YAML file after merging: every top-level key it may have."""

    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: Preprocess = field(default_factory=Preprocess)
    datasets: dict[str, DatasetConfig] = field(default_factory=dict)
    run: RunConfig = field(default_factory=RunConfig)


__all__ = [
    "WEIGHT_URLS",
    "BenchmarkConfig",
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
