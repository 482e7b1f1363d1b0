"""Full-size loading, measured: MiniGPT-4's start-up on random weights in the released formats.

    nice python test/benchmark_loading.py --dir /scratch/minigpt4-load --json load.json
    nice python test/benchmark_loading.py --dir /scratch/minigpt4-load --demo --keep

writes, into ``--dir`` (about 16 GB; deleted at the end unless ``--keep``):

* ``eva_vit_g.pth``: the EVA ViT-g/14 as a flat fp16 state dict of 40 blocks (the model uses 39);
* ``blip2_pretrained_flant5xxl.pth``: ``{'model': ...}`` with what BLIP-2's training updated: the
  bert-base Q-Former under its BERT names, ``query_tokens``, ``ln_vision`` and ``t5_proj``;
* ``pretrained_minigpt4.pth``: the released projection-only checkpoint (768 -> 4096);
* ``vicuna_7b_v0/``: a Vicuna-7B-shaped folder as converted in 2023: the v0 ``config.json``
  quirks (bos 0, eos 1, pad -1, ``max_sequence_length``, ``torch_dtype: float16``), fp16
  ``pytorch_model-0000N-of-00002.bin`` shards cut at 10 GB as ``save_pretrained`` did then, with
  ``pytorch_model.bin.index.json`` and the ``rotary_emb.inv_freq`` buffers, and a 32000-piece
  ``tokenizer.model``.

The files are written tensor by tensor (``torch.save`` of empty tensors under ``skip_data``, then
the bytes written at each record's offset), so the writer never holds a shard in memory, and the
written pages are dropped from the page cache so that the load reads from the disk. The values
are a normal random pool (std 0.02) written cyclically: loading does not depend on them.

Then, in a fresh process each (``--threads`` torch threads, 1 by default), it times
``MiniGPT4.from_config`` on the CPU to a ready model (``--llm-precision``/``--vit-precision``,
fp16 by default so that a 7B model fits in memory) and, with ``--demo``, the demo's start-up
(``build_chat``), and reports the time of each stage, the peak resident memory (anonymous and
file-backed pages apart: an mmap'ed shard counts as file pages), the bytes read from the disk,
and the time of one pass over the LLM's weights after loading (which pages in what was mmap'ed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script, the repository root is not on the import path
sys.path.insert(0, str(REPO / "tools"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--dir", type=Path, required=True, help="scratch folder for the ~16 GB of weights")
    parser.add_argument("--keep", action="store_true", help="keep the files (and reuse them on the next run)")
    parser.add_argument("--demo", action="store_true", help="also time the demo's start-up (build_chat)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the timed process")
    parser.add_argument("--llm-precision", default="fp16", help="model.llm_precision (default fp16)")
    parser.add_argument("--vit-precision", default="fp16", help="model.vit_precision (default fp16)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--llm-layers", type=int, default=32, help="layers of the Vicuna folder (32: 7B; fewer for a trial run)"
    )
    parser.add_argument("--measure", choices=("from_config", "demo"), help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # --help and a bad option answer before torch loads

# ruff: noqa: E402 (the heavy imports come after that early parse on purpose)
import torch

logger = logging.getLogger("benchmark_loading")

GB = 10**9
SHARD_SIZE = 10 * GB  # save_pretrained's max_shard_size="10GB" of 2023
VICUNA_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "vocab_size": 32000,
}
VIT_FILE_DEPTH = 40
POOL = 1 << 25  # random values written cyclically
CHUNK = 1 << 26  # bytes per write, at most half a pool
STAGES = ("Loading VIT", "Loading Q-Former", "Loading LLAMA", "Loaded the LLM", "Load BLIP2-LLM Checkpoint")


# --- writing ----------------------------------------------------------------------------------


class Filler:
    """Writes random values of a tensor's dtype into file regions, cycling through a pool."""

    def __init__(self) -> None:
        values = 0.02 * torch.randn(POOL, generator=torch.Generator().manual_seed(0))
        # twice over, so that any offset into the first half has a full pool's bytes after it
        self.pools = {dtype: values.to(dtype).numpy().tobytes() * 2 for dtype in (torch.float16, torch.float32)}
        self.offset = 0
        self.written = 0

    def fill(self, fd: int, start: int, tensor: torch.Tensor) -> None:
        pool = memoryview(self.pools[tensor.dtype])
        period = len(pool) // 2
        end = start + tensor.numel() * tensor.element_size()
        while start < end:
            n = min(CHUNK, end - start)
            offset = self.offset % period
            offset -= offset % tensor.element_size()
            os.pwrite(fd, pool[offset : offset + n], start)
            self.offset = offset + n
            start += n
            self.written += n


def storages_in_order(obj: object) -> list[torch.Tensor]:
    """The tensors of a nested dict in the order ``torch.save`` numbers their storages."""
    if isinstance(obj, dict):
        return [tensor for value in obj.values() for tensor in storages_in_order(value)]
    return [obj]


def write_pth(path: Path, state: dict, filler: Filler) -> None:
    """``torch.save(state)`` of empty tensors (one storage each), without holding their bytes: the
    archive is written with its storages left blank, then each is filled at its record's offset."""
    with torch.serialization.skip_data():
        torch.save(state, path)
    reader = torch._C.PyTorchFileReader(str(path))
    fd = os.open(path, os.O_WRONLY)
    try:
        for index, tensor in enumerate(storages_in_order(state)):
            offset = reader.get_record_offset(f"data/{index}")
            filler.fill(fd, offset, tensor)
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    logger.info("Wrote %s (%.2f GB)", path, path.stat().st_size / GB)


def empty_like_state(module: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Untouched CPU tensors of a meta module's state (no memory is committed until written)."""
    return {
        key: torch.empty(value.shape, dtype=dtype if dtype and value.is_floating_point() else value.dtype)
        for key, value in module.state_dict().items()
    }


def write_vision_files(out: Path, filler: Filler) -> dict[str, Path]:
    from minigpt4.common.schema import QFormerArch, VitArch
    from minigpt4.models.eva_vit import build_eva_vit
    from minigpt4.models.qformer import build_qformer, ours_to_blip2

    with torch.device("meta"):
        vit = build_eva_vit(VitArch(depth=VIT_FILE_DEPTH), 224, 0.0, False, torch.float16)
        qformer, _ = build_qformer(QFormerArch(), 32, 1408)
    vision = empty_like_state(vit, torch.float16)
    paths = {"vit": out / "eva_vit_g.pth", "blip2": out / "blip2_pretrained_flant5xxl.pth"}
    write_pth(paths["vit"], vision, filler)
    # What was trainable in BLIP-2's training (the vision tower was frozen, so it is not in the file).
    state = {"query_tokens": torch.empty(1, 32, 768)}
    state.update({"ln_vision.weight": torch.empty(1408), "ln_vision.bias": torch.empty(1408)})
    state.update({ours_to_blip2(f"Qformer.{key}"): value for key, value in empty_like_state(qformer).items()})
    state.update({"t5_proj.weight": torch.empty(4096, 768), "t5_proj.bias": torch.empty(4096)})
    write_pth(paths["blip2"], {"model": state}, filler)
    paths["ckpt"] = out / "pretrained_minigpt4.pth"
    projection = {"llama_proj.weight": torch.empty(4096, 768), "llama_proj.bias": torch.empty(4096)}
    write_pth(paths["ckpt"], {"model": projection}, filler)
    return paths


def write_tokenizer_32k(folder: Path) -> None:
    """The tiny LLaMA-style tokenizer, padded with pieces to LLaMA's 32000 (its size is what the
    start-up converts and checks)."""
    from make_tiny_weights import write_tokenizer
    from sentencepiece import sentencepiece_model_pb2

    size = write_tokenizer(folder, 1000, 0)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((folder / "tokenizer.model").read_bytes())
    for index in range(VICUNA_7B["vocab_size"] - size):
        piece = proto.pieces.add()
        piece.piece, piece.score = f"\u2581pad{index}", -1000.0 - index
    (folder / "tokenizer.model").write_bytes(proto.SerializeToString())


def write_vicuna_v0(folder: Path, filler: Filler, layers: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True)
    shape = {**VICUNA_7B, "num_hidden_layers": layers}
    config = LlamaConfig(**shape, rms_norm_eps=1e-6, tie_word_embeddings=False)
    with torch.device("meta"):
        llama = LlamaForCausalLM(config)
    state = empty_like_state(llama, torch.float16)
    head_dim = VICUNA_7B["hidden_size"] // VICUNA_7B["num_attention_heads"]
    for layer in range(layers):
        state[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = torch.empty(head_dim // 2)
    shards, current, size = [], {}, 0
    for key, value in state.items():
        nbytes = value.numel() * value.element_size()
        if current and size + nbytes > SHARD_SIZE:
            shards.append(current)
            current, size = {}, 0
        current[key] = value
        size += nbytes
    shards.append(current)
    weight_map = {}
    for number, shard in enumerate(shards, 1):
        name = f"pytorch_model-{number:05d}-of-{len(shards):05d}.bin"
        write_pth(folder / name, shard, filler)
        weight_map.update(dict.fromkeys(shard, name))
        del shard
    total = sum(value.numel() * value.element_size() for value in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    raw = config.to_dict()
    raw.update(bos_token_id=0, eos_token_id=1, pad_token_id=-1, torch_dtype="float16")
    raw.pop("max_position_embeddings")
    raw.update(max_sequence_length=2048, transformers_version="4.28.0.dev0", architectures=["LlamaForCausalLM"])
    (folder / "config.json").write_text(json.dumps(raw, indent=2))
    generation = {"_from_model_config": True, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": -1}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    write_tokenizer_32k(folder)


def write_all(out: Path, llm_layers: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    start, filler = time.perf_counter(), Filler()
    write_vision_files(out, filler)
    write_vicuna_v0(out / "vicuna_7b_v0", filler, llm_layers)
    seconds = time.perf_counter() - start
    logger.info("Wrote %.1f GB in %.0f s", filler.written / GB, seconds)


# --- measuring (in a child process) -----------------------------------------------------------


def drop_cache(folder: Path) -> None:
    """Evict the benchmark's own files from the page cache, so that loading reads the disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def proc_status() -> dict[str, int]:
    """VmRSS, RssAnon and RssFile in bytes."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            values[key] = int(rest.split()[0]) * 1024
    return values


class PeakMemory(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = dict.fromkeys(("VmRSS", "RssAnon", "RssFile"), 0)
        self.running = True

    def run(self) -> None:
        while self.running:
            for key, value in proc_status().items():
                self.peak[key] = max(self.peak[key], value)
            time.sleep(0.05)


class StageTimes(logging.Handler):
    def __init__(self, start: float) -> None:
        super().__init__()
        self.start, self.marks = start, []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(STAGES):
            anon = round(proc_status()["RssAnon"] / GB, 2)
            self.marks.append(
                {"at_s": round(time.perf_counter() - self.start, 1), "anon_gb": anon, "log": message[:48]}
            )


def proc_io() -> dict[str, int]:
    pairs = (line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return {key: int(value) for key, value in pairs}


def model_options(out: Path, args: argparse.Namespace) -> dict[str, object]:
    return {
        "vit_weights": str(out / "eva_vit_g.pth"),
        "q_former_model": str(out / "blip2_pretrained_flant5xxl.pth"),
        "llama_model": str(out / "vicuna_7b_v0"),
        "ckpt": str(out / "pretrained_minigpt4.pth"),
        "vit_precision": args.vit_precision,
        "llm_precision": args.llm_precision,
        "low_resource": False,
        "prompt_path": "prompts/alignment.txt",
        "prompt_template": "###Human: {} ###Assistant: ",
    }


def measure(out: Path, args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(args.threads)
    drop_cache(out)
    io_before = proc_io()
    peak = PeakMemory()
    peak.start()
    start = time.perf_counter()
    stages = StageTimes(start)
    logging.getLogger().addHandler(stages)
    options = model_options(out, args)
    if args.measure == "from_config":
        from minigpt4.models.mini_gpt4 import MiniGPT4

        model = MiniGPT4.from_config(options, "cpu").eval()
    else:
        from minigpt4.conversation.launch import build_chat

        # the demo's YAML has its own prompt file and template
        dotlist = [f"model.{key}={value}" for key, value in options.items() if not key.startswith("prompt_")]
        model = build_chat(str(REPO / "eval_configs" / "minigpt4_eval.yaml"), dotlist, torch.device("cpu")).model
    seconds = time.perf_counter() - start
    loaded_rss = proc_status()
    # A shard whose dtype is the model's is mmap'ed, not read: its pages come in on first use.
    # One pass over the LLM's weights is what a first forward costs on top.
    with torch.no_grad():
        for param in model.llama_model.parameters():
            param.sum()
    touch_seconds = time.perf_counter() - start - seconds
    peak.running = False
    peak.join()
    io_after = proc_io()
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.llama_model.parameters()})
    return {
        "path": args.measure,
        "seconds": round(seconds, 1),
        "stages": stages.marks,
        "first_pass_over_llm_seconds": round(touch_seconds, 1),
        "rss_when_loaded_gb": round(loaded_rss["VmRSS"] / GB, 2),
        "anon_when_loaded_gb": round(loaded_rss["RssAnon"] / GB, 2),
        "peak_rss_gb": round(peak.peak["VmRSS"] / GB, 2),
        "peak_anon_gb": round(peak.peak["RssAnon"] / GB, 2),
        "peak_file_gb": round(peak.peak["RssFile"] / GB, 2),
        "ru_maxrss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB, 2),
        "disk_read_gb": round((io_after["read_bytes"] - io_before["read_bytes"]) / GB, 2),
        "read_calls_gb": round((io_after["rchar"] - io_before["rchar"]) / GB, 2),
        "files_gb": round(sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / GB, 2),
        "llm_dtypes": dtypes,
        "llm_eos": model.llama_model.generation_config.eos_token_id,
        "threads": torch.get_num_threads(),
        "vit_precision": args.vit_precision,
        "llm_precision": args.llm_precision,
    }


def run_child(out: Path, path: str, args: argparse.Namespace) -> dict[str, object]:
    command = [sys.executable, __file__, "--dir", str(out), "--measure", path, "--threads", str(args.threads)]
    command += ["--llm-precision", args.llm_precision, "--vit-precision", args.vit_precision]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    logger.info("Timing %s in a fresh process", path)
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, check=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.measure:
        sys.stdout.write(json.dumps(measure(args.dir, args)) + "\n")
        return
    done = args.dir / "vicuna_7b_v0" / "tokenizer.model"
    if not done.is_file():
        if args.dir.exists() and any(args.dir.iterdir()):
            parser.error(f"--dir {args.dir} exists and is not a complete set from an earlier --keep run")
        write_all(args.dir, args.llm_layers)
    try:
        results = [run_child(args.dir, "from_config", args)]
        if args.demo:
            results.append(run_child(args.dir, "demo", args))
    finally:
        if not args.keep:
            shutil.rmtree(args.dir)
            logger.info("Deleted %s", args.dir)
    for result in results:
        logger.info("%s", json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
