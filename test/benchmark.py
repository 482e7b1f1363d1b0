"""Training throughput of MiniGPT-4 at full size, on random weights, per device.

    python test/benchmark.py --size 7b --stage 1 --device cuda --json bench_7b_stage1.json
    python test/benchmark.py --size 7b --stage 2 --device cuda --json bench_7b_stage2.json
    python test/benchmark.py --size tiny --stage 1 --device cpu          # seconds, on any machine

It builds the full architecture of ``--size`` directly on the device with random weights (no
weight file, no download): EVA ViT-g/14 at 224 px, the bert-base Q-Former with 32 queries and a
LLaMA-shaped LLM (7b: hidden 4096, 32 layers, 32 heads, MLP 11008, vocabulary 32000; 13b: 5120,
40, 40, 13824). ``tiny`` is the architecture of ``tools/make_tiny_weights.py``. The tokenizer is
a LLaMA-style sentencepiece model trained on the fly on caption-like text, so that nearly every
word of the benchmark's captions is one piece (it yields ids below its own vocabulary size only,
which changes nothing for throughput).

The stage's training YAML (``train_configs/minigpt4_stage1_pretrain.yaml`` or
``minigpt4_stage2_finetune.yaml``) gives the batch size (64 or 12 per device), ``max_txt_len``,
``end_sym``, the stage-2 prompts and template, the optimizer settings and ``run.amp``. One step
is the runner's own ``TrainStep``: ``move_to_device``, autocast, ``MiniGPT4.forward`` through the
task, the loss scaler, backward, the fused AdamW of ``build_optimizer`` over the trainable
projection, guarded against non-finite weights (``StepGuard``). The
precision is the runner's (``resolve_precision``: bf16 where the device supports it, fp16
otherwise, fp32 on a CPU; ``--dtype`` forces one), and the ViT and LLM weights are stored in that
dtype too. The data are real photos (scikit-image) through the ``blip2_image_train`` processor and
captions of 8-20 words (stage 1, through ``blip_caption``) or descriptions of 60-150 words
(stage 2, raw, as ``cc_sbu_align`` gives them), built into a fixed pool of batches before timing:
this measures the training step; ``test/benchmark_dataloader.py`` measures the loader.

After ``--warmup`` steps, each of ``--steps`` steps is timed to a device synchronisation. Printed
and written to ``--json``:

* ``median_step_time`` (s) and ``samples_per_sec`` = batch / median step time;
* ``TokensPerSec``: LLM input tokens per second (BOS + prompt + image query tokens + text), the
  real ones (the attention-mask sum) and, as ``TokensPerSec_padded``, all positions of the padded
  sequences the LLM ran; both are tokens per step (mean over the timed steps) / median step time;
* ``mfu``: model FLOPs per step (``minigpt4.common.flops``: ViT and Q-Former forward, projection
  forward and weight gradient, 4N per padded LLM token plus attention) / median step time / the
  device's peak dense bf16 throughput. None where the peak is unknown (CPUs) unless
  ``--peak-tflops`` gives it;
* peak device memory (on a CPU, the process's peak resident memory), the device name, dtype,
  library versions and the date.

``--length-grouping N`` builds the batches as ``run.length_grouping: N`` makes the loader do: N
batches' worth of captions sorted by length and cut into N batches, all N in the pool (give it
``--steps`` a multiple of N, so that every batch is timed equally often).

``--profile DIR`` runs ``PROFILE_STEPS`` more steps under ``torch.profiler`` after the timed ones,
as training runs them (no synchronisation between steps), and writes ``DIR/trace.json.gz`` (open
it in Perfetto or chrome://tracing) and ``DIR/ops.txt`` (the costliest operators). The result
gains ``profile``: values read into Python per step (``aten::_local_scalar_dense``; one of a
device tensor waits for the device; on a CPU the fused AdamW's own reads of its step count are
among them) and the CUDA synchronisations per step (``cudaStreamSynchronize`` and the like; 0 on
other devices; the one closing the profile is not counted). transformers' LLaMA makes one such
read per forward.

``--llm-config DIR`` takes the LLM from a local Hugging Face folder of any family instead
(LLaMA-3, Mistral, Qwen2.5, ...): its ``config.json`` and tokenizer files, never its weights (the
LLM is built from the config with random weights; a folder of just those files will do). The
vision side is still ``--size``'s; the FLOP model reads the LLM's sizes from its config.

``--compile`` compiles each ViT block and LLM decoder layer with ``torch.compile`` (regional
compilation: quick to compile, one graph per layer kind), to measure whether it pays.

``--activation-checkpointing`` recomputes each LLM decoder layer in the backward, as
``run.llm_activation_checkpointing`` does, to measure what it saves in ``peak_mem_MiB`` and
costs in step time.

One process, one device: these are per-device figures (DDP only all-reduces the 3M-parameter
projection's gradient, so several devices scale them by their number).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib.metadata
import json
import logging
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Run as a script from anywhere: the package and tools/ live one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minigpt4.common.cli import add_debug_argument, run_main

# The names --size and --stage take (SIZES and STAGES below hold what they mean), here so that the
# parser needs nothing heavy.
SIZE_NAMES = ("13b", "7b", "tiny")
STAGE_NUMBERS = (1, 2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=SIZE_NAMES, default="7b", help="the architecture (default: 7b)")
    parser.add_argument(
        "--stage", type=int, choices=STAGE_NUMBERS, default=1, help="whose YAML and captions (default: 1)"
    )
    parser.add_argument("--device", choices=("cuda", "npu", "cpu"), default="cuda", help="(default: cuda)")
    parser.add_argument("--batch-size", type=int, help="per device; default: the stage YAML's (64 or 12)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument(
        "--dtype",
        choices=("auto", "bf16", "fp16", "fp32"),
        default="auto",
        help="auto: the runner's choice (bf16 where supported, else fp16; fp32 on a CPU)",
    )
    parser.add_argument(
        "--llm-config",
        type=Path,
        metavar="DIR",
        help="build the LLM from this folder's config.json and tokenizer (any family; no weights read)",
    )
    parser.add_argument("--peak-tflops", type=float, help="the device's peak dense TFLOP/s, for MFU (else by name)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each ViT block and LLM decoder layer (give it --warmup 5: shapes vary at first)",
    )
    parser.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute each LLM decoder layer in the backward (run.llm_activation_checkpointing)",
    )
    parser.add_argument(
        "--length-grouping",
        type=int,
        default=0,
        metavar="N",
        help="batches of similar caption length, as run.length_grouping N groups them (0: off)",
    )
    parser.add_argument("--profile", type=Path, metavar="DIR", help="profile a few more steps; trace and table here")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: OMP_NUM_THREADS if set, else the cores this process may use)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights, data and sampling (default: 0)")
    parser.add_argument("--json", type=Path, help="write the results here")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.length_grouping < 0:
        parser.error("--steps must be at least 1, --warmup and --length-grouping at least 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


if __name__ == "__main__":
    parse_args(None)  # --help and a bad option answer before torch and the model code load

# ruff: noqa: E402 (the heavy imports come after that early parse on purpose)
import torch
from omegaconf import OmegaConf
from PIL import Image
from transformers import LlamaConfig, PretrainedConfig

from minigpt4 import REPO_ROOT
from minigpt4.common.device import accelerator_name, init_device, move_to_device, resolve_device, synchronize
from minigpt4.common.flops import peak_flops
from minigpt4.common.logger import peak_memory_mib, setup_logger
from minigpt4.common.registry import registry
from minigpt4.common.schema import QFormerArch, RunConfig, VitArch
from minigpt4.datasets.datasets.length_grouping import length_grouped
from minigpt4.models.llm import llm_size_name, load_llama_tokenizer, read_llama_config
from minigpt4.models.mini_gpt4 import MiniGPT4
from minigpt4.runners.contract import check_model
from minigpt4.runners.memory import checkpoint_layers, decoder_layers
from minigpt4.runners.train_step import TrainStep, resolve_precision
from minigpt4.tasks.image_text_pretrain import ImageTextPretrainTask
from tools.make_tiny_weights import TinySpec, llama_config, tiny_llm_shape, tokenizer_corpus, write_tokenizer

logger = logging.getLogger("benchmark")

# scikit-image's photos that ship with it (no download); grey ones are converted to RGB.
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "camera",
    "coins",
    "moon",
    "clock",
)
TOKENIZER_VOCAB = 1000  # with the caption corpus, 140 of its 144 lower-case words are single pieces
POOL_BATCHES = 4  # distinct batches built before timing, cycled through
PROFILE_STEPS = 2
PROFILED_RANGE = "benchmark steps"
SYNC_CALLS = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize")
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class Size:
    """An architecture: the vision side and the LLM shape (``llm=None``: the tiny LLM)."""

    image_size: int
    num_query_token: int
    vit_arch: VitArch
    qformer_arch: QFormerArch
    llm: dict[str, int] | None


_TINY = TinySpec()
SIZES = {
    "tiny": Size(_TINY.image_size, _TINY.num_query_token, _TINY.vit_arch, _TINY.qformer_arch, None),
    "7b": Size(
        224,
        32,
        VitArch(),
        QFormerArch(),
        {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "intermediate_size": 11008},
    ),
    "13b": Size(
        224,
        32,
        VitArch(),
        QFormerArch(),
        {"hidden_size": 5120, "num_hidden_layers": 40, "num_attention_heads": 40, "intermediate_size": 13824},
    ),
}


@dataclass(frozen=True)
class Stage:
    config: str  # the stage's training YAML, relative to the repository
    words: tuple[int, int]  # caption length range, in words
    caption_processor: str | None  # the text processor the stage's dataset applies


STAGES = {
    1: Stage("train_configs/minigpt4_stage1_pretrain.yaml", (8, 20), "blip_caption"),
    2: Stage("train_configs/minigpt4_stage2_finetune.yaml", (60, 150), None),
}


def benchmark_llama_config(size: Size, vocab_size: int) -> LlamaConfig:
    """LLaMA-7B/13B's shape (vocabulary 32000), or the tiny LLM of ``tools/make_tiny_weights.py``
    (vocabulary = the tokenizer's)."""
    if size.llm:
        return llama_config(32000, 2048, **size.llm)
    return llama_config(vocab_size, 2048, **tiny_llm_shape(_TINY))


def make_tokenizer(folder: Path) -> Any:
    """A LLaMA-style sentencepiece tokenizer trained now, loaded by the production loader."""
    write_tokenizer(folder, TOKENIZER_VOCAB, seed=0)
    return load_llama_tokenizer(folder)


def stage_config(stage: int, device_name: str, dtype: str) -> tuple[dict[str, Any], Any]:
    """The ``model:`` and ``run:`` sections of the stage's training YAML; ``run`` merged onto the
    schema with ``device`` and, unless ``dtype`` is ``auto``, ``precision`` set."""
    yaml = OmegaConf.load(REPO_ROOT / STAGES[stage].config)
    run = {"device": device_name} | ({} if dtype == "auto" else {"precision": dtype})
    run_cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), yaml.run, run)
    return OmegaConf.to_container(yaml.model), run_cfg


def build_model(
    size: str,
    model_cfg: dict[str, Any],
    tokenizer: Any,
    device: torch.device,
    dtype: torch.dtype | None,
    *,
    llm_config: PretrainedConfig | None = None,
) -> MiniGPT4:
    """``MiniGPT4.build`` of the architecture ``size`` with random weights, created on ``device``
    (``meta`` allocates nothing); the ViT and LLM weights stored in ``dtype`` (None: fp32). The
    LLM is ``llm_config``'s where given (``--llm-config``), else ``size``'s LLaMA."""
    arch = SIZES[size]
    precision = DTYPE_NAMES[dtype or torch.float32]
    cfg = {
        **model_cfg,
        "image_size": arch.image_size,
        "num_query_token": arch.num_query_token,
        "vit_arch": asdict(arch.vit_arch),
        "qformer_arch": asdict(arch.qformer_arch),
        "vit_precision": precision,
        "llm_precision": precision,
    }
    with torch.device(device):
        return MiniGPT4.build(cfg, llm_config or benchmark_llama_config(arch, len(tokenizer)), tokenizer)


def photos() -> list[Image.Image]:
    import skimage.data

    return [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]


def caption_words(tokenizer_seed: int = 0) -> list[str]:
    """The lower-case words of the tokenizer's training text."""
    return sorted({w for line in tokenizer_corpus(tokenizer_seed) for w in line.lower().split() if w.isalpha()})


def make_caption(rng: random.Random, words: list[str], length: int) -> str:
    """``length`` words in sentences of 6-16 words, capitalised, each ending with a full stop."""
    sentences, left = [], length
    while left:
        n = min(left, rng.randint(6, 16))
        sentences.append(" ".join(rng.choices(words, k=n)).capitalize() + ".")
        left -= n
    return " ".join(sentences)


def make_pool(
    stage: int, image_size: int, batch_size: int, *, batches: int, pin: bool, seed: int, grouped: bool = False
) -> tuple[list[dict[str, Any]], float]:
    """``batches`` training batches ``{"image": (B, 3, S, S), "text_input": B str}`` as the stage's
    datasets give them, and the images/s of the image processor while making them. ``grouped``:
    the captions grouped by length as ``run.length_grouping`` groups one window of ``batches``."""
    rng = random.Random(seed)
    torch.manual_seed(seed)  # the processor's random crops
    image_processor = registry.get_processor_class("blip2_image_train").from_config({"image_size": image_size})
    spec = STAGES[stage]
    text_processor = registry.get_processor_class(spec.caption_processor)() if spec.caption_processor else None
    words, sources = caption_words(), photos()
    texts = [make_caption(rng, words, rng.randint(*spec.words)) for _ in range(batches * batch_size)]
    if text_processor is not None:
        texts = [text_processor(text) for text in texts]
    if grouped:
        text_batches = length_grouped(texts, [len(text) for text in texts], batch_size, rng)
    else:
        text_batches = [texts[start : start + batch_size] for start in range(0, len(texts), batch_size)]
    pool, processing = [], 0.0
    for batch_texts in text_batches:
        chosen = rng.choices(sources, k=batch_size)
        start = time.perf_counter()
        images = torch.stack([image_processor(photo) for photo in chosen])  # (B, 3, S, S)
        processing += time.perf_counter() - start
        pool.append({"image": images.pin_memory() if pin else images, "text_input": batch_texts})
    return pool, batches * batch_size / processing


def device_name(device: torch.device) -> str:
    if name := accelerator_name(device):
        return name
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    return f"{model or platform.processor() or platform.machine()} (threads={torch.get_num_threads()})"


def versions(device: torch.device) -> dict[str, str | None]:
    found = {"python": platform.python_version()}
    for package in ("torch", "transformers", "timm", "tokenizers", "sentencepiece", "numpy", "torch_npu"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    if device.type == "cuda":
        found["cuda"] = torch.version.cuda
        found["cudnn"] = str(torch.backends.cudnn.version())
    return found


def profile_steps(step: Callable[[int], object], device: torch.device, folder: Path) -> dict[str, Any]:
    """``PROFILE_STEPS`` calls of ``step`` under the profiler, one device synchronisation after
    them; the trace and the operator table written to ``folder``."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        with torch.profiler.record_function(PROFILED_RANGE):
            for i in range(PROFILE_STEPS):
                step(i)
        synchronize(device)
    folder.mkdir(parents=True, exist_ok=True)
    trace, ops = folder / "trace.json.gz", folder / "ops.txt"
    prof.export_chrome_trace(str(trace))
    averages = prof.key_averages()
    by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    ops.write_text(averages.table(sort_by=by, row_limit=40) + "\n")
    counts = collections.Counter({event.key: event.count for event in averages})
    events = prof.events()
    steps = next(event.time_range for event in events if event.name == PROFILED_RANGE)
    syncs = sum(1 for e in events if e.name in SYNC_CALLS and steps.start <= e.time_range.start <= steps.end)
    return {
        "steps": PROFILE_STEPS,
        "scalar_reads_per_step": counts["aten::_local_scalar_dense"] / PROFILE_STEPS,
        "device_syncs_per_step": syncs / PROFILE_STEPS,
        "trace": str(trace),
        "ops": str(ops),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns what it prints and writes."""
    args = parse_args(argv)
    device = resolve_device(args.device, local_rank=0)  # the first visible device (CUDA_VISIBLE_DEVICES picks)
    init_device(device, threads=args.threads)
    model_cfg, run_cfg = stage_config(args.stage, args.device, args.dtype)
    dtype = resolve_precision(run_cfg, device)
    batch_size = args.batch_size or int(run_cfg.batch_size_train)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    start = time.perf_counter()
    llm_config = None
    if args.llm_config:
        tokenizer = load_llama_tokenizer(args.llm_config)
        llm_config = read_llama_config(args.llm_config, tokenizer)
    else:
        with tempfile.TemporaryDirectory() as folder:
            tokenizer = make_tokenizer(Path(folder))
    model = build_model(args.size, model_cfg, tokenizer, device, dtype, llm_config=llm_config)
    if args.compile:
        for layer in (*model.visual_encoder.blocks, *model.llama_model.model.layers):
            layer.compile()
    if args.activation_checkpointing:
        checkpoint_layers(decoder_layers(model.llama_model))
    build_seconds = time.perf_counter() - start
    logger.info("built %s on %s in %.1f s", args.size, device, build_seconds)
    flop_model = check_model(model).flop_model()
    train_step = TrainStep(ImageTextPretrainTask(), model, run_cfg, device)
    batches = args.length_grouping or min(POOL_BATCHES, args.warmup + args.steps)
    pool, data_images_per_sec = make_pool(
        args.stage,
        SIZES[args.size].image_size,
        batch_size,
        batches=batches,
        pin=device.type != "cpu",
        seed=args.seed,
        grouped=args.length_grouping > 0,
    )

    metrics = train_step.metrics

    def step(i: int) -> dict[str, Any]:
        # One optimizer step per batch, as the stage configs' accum_grad_iters 1 has it.
        return train_step(move_to_device(pool[i % batches], device), lr=float(run_cfg.init_lr))

    step_times, padded = [], []
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            metrics.start_window()
        t0 = time.perf_counter()
        out = step(i)
        synchronize(device)
        if i >= args.warmup:
            step_times.append(time.perf_counter() - t0)
            padded.append(int(out["padded_tokens"]))
        logger.info("step %d: %.4f s", i + 1, time.perf_counter() - t0)
    stats = metrics.read()
    profile = profile_steps(step, device, args.profile) if args.profile else None

    median = statistics.median(step_times)
    tokens_per_step = stats.tokens / args.steps
    padded_per_step = stats.padded_tokens / args.steps
    seq_lens = [n // batch_size for n in padded]
    flops_per_step = statistics.fmean(
        flop_model.step_flops(images=batch_size, tokens=n, seq_len=n // batch_size) for n in padded
    )
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(device_name(device))
    result = {
        "size": args.size,
        "llm": llm_size_name(model.llama_model.config) if args.llm_config else None,
        "llm_config": str(args.llm_config) if args.llm_config else None,
        "stage": args.stage,
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "dtype": DTYPE_NAMES[dtype or torch.float32],
        "compile": args.compile,
        "activation_checkpointing": args.activation_checkpointing,
        "length_grouping": args.length_grouping,
        "batch_size": batch_size,
        "warmup": args.warmup,
        "steps": args.steps,
        "step_times": step_times,
        "median_step_time": median,
        "samples_per_sec": batch_size / median,
        "tokens_per_step": tokens_per_step,
        "padded_tokens_per_step": padded_per_step,
        "padded_seq_lens": seq_lens,
        "TokensPerSec": tokens_per_step / median,
        "TokensPerSec_padded": padded_per_step / median,
        "flops_per_step": flops_per_step,
        "achieved_tflops": flops_per_step / median / 1e12,
        "peak_tflops": peak / 1e12 if peak else None,
        "mfu": flops_per_step / median / peak if peak else None,
        "flop_model": asdict(flop_model),
        "loss": stats.loss,
        "nonfinite_steps": stats.nonfinite,
        "peak_mem_MiB": peak_memory_mib(device),
        "data_images_per_sec": data_images_per_sec,
        "build_seconds": build_seconds,
        "profile": profile,
        "versions": versions(device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python test/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    sys.stdout.write(summary(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def profile_line(profile: dict[str, Any] | None) -> str:
    if profile is None:
        return ""
    return (
        f"  profile           {profile['scalar_reads_per_step']:g} scalar reads and "
        f"{profile['device_syncs_per_step']:g} CUDA synchronisations per step; "
        f"{profile['trace']}, {profile['ops']}\n"
    )


def table_row(r: dict[str, Any]) -> str:
    """The result as a row of the README's performance table."""
    setup = [f"this repo, {r['size'].upper() if r['size'] != 'tiny' else 'tiny'}", r["dtype"]]
    if r["length_grouping"]:
        setup.append(f"length_grouping {r['length_grouping']}")
    if r["compile"]:
        setup.append("compiled")
    if r["activation_checkpointing"]:
        setup.append("LLM activation checkpointing")
    tokens = f"{r['TokensPerSec']:,.0f} real / {r['TokensPerSec_padded']:,.0f} padded"
    return (
        f"| {r['stage']} | {', '.join(setup)} | 1 x {r['device_name']} | {r['batch_size']} | {tokens} "
        f"| {r['TokensPerSec']:,.0f} | {r['date'][:10]} |"
    )


def summary(r: dict[str, Any]) -> str:
    mfu = (
        f"{100 * r['mfu']:.1f}% ({r['achieved_tflops']:.1f} of {r['peak_tflops']:.0f} TFLOP/s)"
        if r["mfu"] is not None
        else f"n/a (peak unknown; {r['achieved_tflops']:.3f} TFLOP/s achieved)"
    )
    batch = r["batch_size"]
    return (
        f"MiniGPT-4 training step: size={r['size']}{' llm=' + r['llm_config'] if r.get('llm_config') else ''} "
        f"stage={r['stage']} batch={r['batch_size']} dtype={r['dtype']}"
        f"{' compiled' if r['compile'] else ''}"
        f"{' activation_checkpointing' if r['activation_checkpointing'] else ''}"
        f"{f' length_grouping={g}' if (g := r['length_grouping']) else ''} on {r['device_name']}\n"
        f"  median step time  {r['median_step_time']:.4f} s ({r['steps']} timed steps after {r['warmup']} warm-up)\n"
        f"  samples/s         {r['samples_per_sec']:.2f}\n"
        f"  TokensPerSec      {r['TokensPerSec']:.1f} real, {r['TokensPerSec_padded']:.1f} padded "
        f"({r['tokens_per_step'] / batch:.1f} / {r['padded_tokens_per_step'] / batch:.1f} tokens per sample)\n"
        f"  MFU               {mfu}; {r['flops_per_step'] / 1e12:.4g} TFLOP per step\n"
        f"  peak memory       {r['peak_mem_MiB']:.0f} MiB\n"
        f"  loss              {r['loss']:.4f}\n"
        f"  data side         {r['data_images_per_sec']:.0f} images/s (blip2_image_train on decoded photos, "
        "one process)\n"
        f"{profile_line(r['profile'])}"
        f"{table_row(r)}\n"
        f"benchmark: size={r['size']} stage={r['stage']} batch={r['batch_size']} dtype={r['dtype']} "
        f"step_time={r['median_step_time']:.4f} samples/s={r['samples_per_sec']:.2f} "
        f"TokensPerSec={r['TokensPerSec']:.1f} TokensPerSec_padded={r['TokensPerSec_padded']:.1f} "
        f"mfu={'n/a' if r['mfu'] is None else format(r['mfu'], '.4f')} peak_mem_MiB={r['peak_mem_MiB']:.0f}\n"
    )


if __name__ == "__main__":
    setup_logger()
    run_main(main, "test/benchmark.py")
