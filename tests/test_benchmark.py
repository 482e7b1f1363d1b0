"""test/benchmark.py: its CLI on the tiny architecture on the CPU (both stages, figures consistent
with each other), its data pool, and the full-size 7B/13B architectures it builds (on the meta
device: shapes and FLOP-model counts, no memory)."""

from __future__ import annotations

import datetime
import gzip
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minigpt4.common.flops import FlopModel

BENCHMARK = Path(__file__).resolve().parents[1] / "test" / "benchmark.py"


def load_script(path: Path, name: str):
    # ``test`` is also the name of Python's own test package: load the script by its path.
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = load_script(BENCHMARK, "minigpt4_benchmark")

# ViT-g/14: 39 blocks of qkv (3 d^2), proj (d^2), fc1 and fc2 (d x 6144 each), plus the patch conv.
VIT_G_MATMUL = 39 * (4 * 1408**2 + 2 * 1408 * 6144) + 1408 * 3 * 14 * 14
# LLaMA: layers x (4 d^2 + 3 d ff) + the output head (vocab x d); the input embedding is a lookup.
LLAMA_7B_MATMUL = 32 * (4 * 4096**2 + 3 * 4096 * 11008) + 32000 * 4096
LLAMA_13B_MATMUL = 40 * (4 * 5120**2 + 3 * 5120 * 13824) + 32000 * 5120


@pytest.fixture
def one_thread():
    """The benchmark's ``--threads 1`` changes the process's torch threads; put them back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_tiny(tmp_path: Path, stage: int, *extra: str) -> tuple[dict, dict]:
    out = tmp_path / f"stage{stage}.json"
    argv = ["--size", "tiny", "--stage", str(stage), "--device", "cpu", "--steps", "2", "--warmup", "1"]
    result = bench.main([*argv, "--threads", "1", "--json", str(out), *extra])
    return result, json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_tiny_cpu_run_reports_consistent_figures(tmp_path, capsys, one_thread, stage):
    result, written = run_tiny(tmp_path, stage)
    assert written == json.loads(json.dumps(result))
    r = written
    batch = {1: 64, 2: 12}[stage]  # the stage YAML's batch_size_train
    assert (r["size"], r["stage"], r["device"], r["dtype"], r["batch_size"]) == ("tiny", stage, "cpu", "fp32", batch)
    assert r["compile"] is False
    assert r["threads"] == 1 and r["device_name"].endswith("(threads=1)")  # the CPU row says its threads
    assert len(r["step_times"]) == r["steps"] == 2
    assert r["median_step_time"] == statistics.median(r["step_times"]) > 0
    median = r["median_step_time"]
    assert r["samples_per_sec"] == pytest.approx(batch / median)
    assert r["TokensPerSec"] == pytest.approx(r["tokens_per_step"] / median)
    assert r["TokensPerSec_padded"] == pytest.approx(r["padded_tokens_per_step"] / median)
    assert r["padded_tokens_per_step"] == batch * statistics.fmean(r["padded_seq_lens"])
    assert 0 < r["TokensPerSec"] <= r["TokensPerSec_padded"]

    # LLM input tokens per sample: BOS + (prompt) + 8 image queries + text + end_sym.
    real = r["tokens_per_step"] / batch
    longest = max(r["padded_seq_lens"])
    if stage == 1:  # 8-20 words, one piece each nearly always, "\n", no prompt, max_txt_len 32
        assert 1 + 8 + 9 <= real <= longest <= 1 + 8 + 32
    else:  # 60-150 words plus full stops, "###", the conversation prompt; max_txt_len 160
        assert 1 + 8 + 60 < real <= longest <= 1 + 8 + 160 + 40

    # MFU: unknown peak on a CPU, so absent; FLOPs per step from the FLOP model and the padded lengths.
    assert r["peak_tflops"] is None and r["mfu"] is None
    model = FlopModel(**r["flop_model"])
    expected = statistics.fmean(model.step_flops(batch, batch * n, n) for n in r["padded_seq_lens"])
    assert r["flops_per_step"] == pytest.approx(expected)
    assert r["achieved_tflops"] == pytest.approx(expected / median / 1e12)

    assert r["loss"] == pytest.approx(6.9, abs=0.5)  # random tiny LLM over ~1000 pieces: about ln(1000)
    assert r["nonfinite_steps"] == 0
    assert r["peak_mem_MiB"] > 0 and r["data_images_per_sec"] > 0
    assert r["device_name"] and {"python", "torch", "transformers", "timm"} <= set(r["versions"])
    assert datetime.datetime.fromisoformat(r["date"]).tzinfo is not None

    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith(f"benchmark: size=tiny stage={stage} batch={batch} dtype=fp32 ")
    assert f"TokensPerSec={r['TokensPerSec']:.1f} " in line and "mfu=n/a" in line


@pytest.mark.slow
def test_peak_given_by_hand_gives_mfu(tmp_path, one_thread):
    r, _ = run_tiny(tmp_path, 1, "--peak-tflops", "0.5", "--batch-size", "4")
    assert r["batch_size"] == 4 and r["peak_tflops"] == 0.5
    assert r["mfu"] == pytest.approx(r["flops_per_step"] / r["median_step_time"] / 0.5e12)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_length_grouping_cuts_padded_tokens_not_real_ones(tmp_path, one_thread, stage):
    # The same captions (one pool of 4 batches, each timed once), batched as drawn or by length.
    steps = ("--steps", "4", "--warmup", "0")
    plain, _ = run_tiny(tmp_path, stage, *steps)
    grouped, _ = run_tiny(tmp_path, stage, *steps, "--length-grouping", "4")
    assert grouped["length_grouping"] == 4 and plain["length_grouping"] == 0
    # Stage 2 draws each sample's prompt at random, so its real count moves a little.
    assert grouped["tokens_per_step"] == pytest.approx(plain["tokens_per_step"], rel=0 if stage == 1 else 0.03)
    assert grouped["padded_tokens_per_step"] < 0.95 * plain["padded_tokens_per_step"]


def test_pool_holds_processed_photos_and_stage_captions():
    pool, images_per_sec = bench.make_pool(1, 56, 6, batches=2, pin=False, seed=0)
    assert len(pool) == 2 and images_per_sec > 0
    for batch in pool:
        assert batch["image"].shape == (6, 3, 56, 56) and batch["image"].dtype == torch.float32
        # CLIP-normalised: values beyond [0, 1] on both sides
        assert batch["image"].min() < 0 and batch["image"].max() > 1
        for caption in batch["text_input"]:  # through blip_caption: lower case, no full stops
            assert 8 <= len(caption.split()) <= 20 and caption == caption.lower() and "." not in caption
    assert pool[0]["text_input"] != pool[1]["text_input"]
    assert not torch.equal(pool[0]["image"], pool[1]["image"])

    grouped, _ = bench.make_pool(1, 56, 6, batches=2, pin=False, seed=0, grouped=True)
    texts = [t for b in pool for t in b["text_input"]]
    assert sorted(t for b in grouped for t in b["text_input"]) == sorted(texts)  # the same captions
    (short, long) = sorted(grouped, key=lambda b: min(map(len, b["text_input"])))
    assert max(map(len, short["text_input"])) <= min(map(len, long["text_input"]))

    (batch,), _ = bench.make_pool(2, 56, 3, batches=1, pin=False, seed=0)
    for description in batch["text_input"]:  # raw, as cc_sbu_align gives them
        assert 60 <= len(description.split()) <= 150 and description[0].isupper() and description.endswith(".")


def build_meta(tmp_path_factory, size: str):
    model_cfg, _ = bench.stage_config(1, "cpu", "auto")
    tokenizer = bench.make_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    return bench.build_model(size, model_cfg, tokenizer, torch.device("meta"), torch.bfloat16)


@pytest.mark.slow
def test_full_size_7b_builds_on_meta_with_the_documented_flop_counts(tmp_path_factory):
    model = build_meta(tmp_path_factory, "7b")
    fm = model.flop_model()
    assert fm.vit_matmul_params == VIT_G_MATMUL == 984_850_944  # ~0.98B, as the FLOP table says
    assert fm.llm_matmul_params == LLAMA_7B_MATMUL == 6_607_077_376
    assert (fm.vit_depth, fm.vit_width, fm.vit_tokens, fm.num_query_token) == (39, 1408, 257, 32)
    assert (fm.llm_layers, fm.llm_hidden, fm.llm_trainable) == (32, 4096, False)
    assert fm.projection_params == 768 * 4096
    # Q-Former: 12 layers of self-attention (4 x 768^2) and query FFN (2 x 768 x 3072), and on every
    # second layer cross-attention, whose key/value read the 1408-wide vision tokens.
    assert fm.qformer_cross_kv_params == 6 * 2 * 768 * 1408
    assert fm.qformer_matmul_params == 12 * (4 * 768**2 + 2 * 768 * 3072) + 6 * 2 * 768**2
    # The documented per-sample cost: ViT-g 0.52 TFLOP, Q-Former ~3% of it, stage 1 at T = 65 2.26 TFLOP.
    assert fm.vision_flops_per_image() == pytest.approx(0.52e12 * 1.03, rel=0.02)
    assert fm.step_flops(images=1, tokens=65, seq_len=65) == pytest.approx(2.26e12, rel=0.01)

    assert model.llama_model.config.vocab_size == 32000
    assert model.llama_model.dtype == torch.bfloat16
    assert model.visual_encoder.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {"llama_proj.weight", "llama_proj.bias"}
    assert all(p.device.type == "meta" for p in model.parameters())


def test_the_parser_offers_exactly_the_sizes_and_stages_the_benchmark_knows():
    # The parser is built before the heavy imports, from names kept apart from SIZES and STAGES.
    assert sorted(bench.SIZE_NAMES) == sorted(bench.SIZES)
    assert sorted(bench.STAGE_NUMBERS) == sorted(bench.STAGES)
    with pytest.raises(SystemExit):
        bench.parse_args(["--size", "3b"])


@pytest.mark.slow
def test_full_size_13b_llm_shape(tmp_path_factory):
    fm = build_meta(tmp_path_factory, "13b").flop_model()
    assert fm.llm_matmul_params == LLAMA_13B_MATMUL == 12_851_609_600
    assert (fm.llm_layers, fm.llm_hidden, fm.projection_params) == (40, 5120, 768 * 5120)
    assert fm.vit_matmul_params == VIT_G_MATMUL


@pytest.mark.slow
def test_table_script_runs_each_variant_and_prints_the_readme_rows(tmp_path):
    env = {
        **os.environ,
        **{"SIZE": "tiny", "DEVICE": "cpu", "STAGES": "1", "VARIANTS": "plain grouped", "STEPS": "2"},
        **{"GROUPING": "2", "OUT_DIR": str(tmp_path), "PYTHON": sys.executable},
        "EXTRA": "--warmup 0 --batch-size 4 --threads 1",
    }
    script = BENCHMARK.parent / "benchmark_table.sh"
    done = subprocess.run(["bash", str(script)], env=env, cwd=BENCHMARK.parents[1], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    plain, grouped = (json.loads((tmp_path / f"tiny_stage1_{v}.json").read_text()) for v in ("plain", "grouped"))
    assert (plain["length_grouping"], grouped["length_grouping"], grouped["batch_size"]) == (0, 2, 4)
    header, *rows = done.stdout.splitlines()[-3:]
    assert header.startswith("| Stage | Setup | Device |")
    assert rows[0].startswith("| 1 | this repo, tiny, fp32 | 1 x ") and "| 4 |" in rows[0]
    assert rows[1].startswith("| 1 | this repo, tiny, fp32, length_grouping 2 | 1 x ")
    assert f"{grouped['TokensPerSec']:,.0f} real" in rows[1]


@pytest.mark.slow
def test_profile_writes_a_trace_and_counts_reads_per_step(tmp_path, one_thread):
    r, _ = run_tiny(tmp_path, 1, "--batch-size", "4", "--profile", str(tmp_path / "profile"))
    profile = r["profile"]
    assert profile["steps"] == bench.PROFILE_STEPS
    # transformers' LLaMA reads one value per forward (see tests/test_fast_path.py); on a CPU the
    # fused AdamW reads its step count too.
    assert profile["scalar_reads_per_step"] >= 1
    assert profile["device_syncs_per_step"] == 0  # CUDA synchronisations: none on a CPU
    with gzip.open(profile["trace"], "rt") as f:
        names = {event.get("name") for event in json.load(f)["traceEvents"]}
    assert {"aten::mm", "aten::_local_scalar_dense"} <= names
    assert "aten::" in Path(profile["ops"]).read_text()


@pytest.mark.slow
def test_compiled_layers_compute_the_eager_loss(tmp_path, one_thread):
    steps = ("--batch-size", "4", "--steps", "2", "--warmup", "2")
    eager, _ = run_tiny(tmp_path, 1, *steps)
    compiled, _ = run_tiny(tmp_path, 1, *steps, "--compile")
    assert compiled["compile"] is True and ", compiled |" in bench.table_row(compiled)
    assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-4)
    assert compiled["tokens_per_step"] == eager["tokens_per_step"]


@pytest.mark.slow
def test_activation_checkpointing_computes_the_plain_loss(tmp_path, one_thread):
    steps = ("--batch-size", "4", "--steps", "1", "--warmup", "1")
    plain, _ = run_tiny(tmp_path, 1, *steps)
    checkpointed, _ = run_tiny(tmp_path, 1, *steps, "--activation-checkpointing")
    assert plain["activation_checkpointing"] is False and checkpointed["activation_checkpointing"] is True
    assert ", LLM activation checkpointing |" in bench.table_row(checkpointed)
    assert checkpointed["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    assert checkpointed["tokens_per_step"] == plain["tokens_per_step"]


@pytest.mark.slow
@pytest.mark.parametrize("grouping", [0, 2])
def test_dataloader_benchmark_reports_each_worker_count(capsys, one_thread, grouping):
    loader_bench = load_script(BENCHMARK.parent / "benchmark_dataloader.py", "minigpt4_benchmark_dataloader")
    argv = ["--image-size", "32", "--samples", "20", "--workers", "0", "1", "--batch-size", "4", "--batches", "3"]
    loader_bench.main([*argv, "--step-time", "0.5", "--length-grouping", str(grouping)])
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"decode \+ blip2_image_train\(32\) \+ blip_caption: \d+ images/s per worker .*", lines[0])
    suffix = f", length_grouping {grouping}" if grouping else ""
    for line, workers in zip(lines[1:3], (0, 1), strict=True):
        assert re.fullmatch(rf"DataLoader, {workers} workers, batch 4{suffix}: \d+ images/s", line)
    assert re.fullmatch(r"a GPU step of 4 images every 0.5 s needs 8 images/s: 1 workers per GPU", lines[3])
