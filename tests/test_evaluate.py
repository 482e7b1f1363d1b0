"""evaluate.py end to end on CPU: every benchmark's tiny fixture (its real file format) through the
registered builder, the eval YAML's prompt, batched greedy generation with the tiny random model,
the benchmark's post-processing, the predictions files, resume after an interruption, sharding
over two gloo ranks, and the metrics file. With a random model the scores mean nothing; the
scorers' own tests (test_evaluation_metrics.py) prove the numbers."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from benchmark_fixtures import BENCHMARKS, tiny_eval_config, write_fixtures
from tiny_assets import REPO_ROOT, tiny_root

import evaluate
from minigpt4.common.cli import run_main
from minigpt4.conversation.conversation import Chat
from minigpt4.conversation.launch import build_chat
from minigpt4.datasets.datasets.benchmarks import BenchmarkError
from minigpt4.evaluation import score
from minigpt4.evaluation.run import read_lines
from tools.quickstart import QUESTION
from tools.tiny_world import WorldSizes, heldout_score, make_world, read_heldout, write_described

SPLITS = {
    "coco_caption": ["test"],
    "nocaps": ["val"],
    "vqav2": ["val"],
    "okvqa": ["val"],
    "vizwiz": ["val"],
    "textvqa": ["val"],
    "gqa": ["testdev"],
    "pope": ["adversarial", "popular", "random"],
    "vsr": ["test"],
    "hateful_memes": ["dev"],
}
# The id fields and the answer field of each benchmark's own results format.
RESULT_FIELDS = {
    "coco_caption": {"image_id", "caption"},
    "nocaps": {"image_id", "caption"},
    "vqav2": {"question_id", "answer"},
    "okvqa": {"question_id", "answer"},
    "vizwiz": {"image", "answer"},
    "textvqa": {"question_id", "answer"},
    "gqa": {"questionId", "prediction"},
    "pope": {"question_id", "answer"},
    "vsr": {"index", "answer"},
    "hateful_memes": {"id", "answer"},
}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return write_fixtures(tmp_path_factory.mktemp("benchmarks"))


@pytest.fixture
def asked(monkeypatch):
    """The prompts that reach ``Chat.answer_batch`` (the real method runs)."""
    prompts: list[str] = []
    real = Chat.answer_batch

    def recording(self, images, questions, **decoding):
        assert decoding["do_sample"] is False
        prompts.extend(questions)
        return real(self, images, questions, **decoding)

    monkeypatch.setattr(Chat, "answer_batch", recording)
    return prompts


def run(config: Path, *options: str, limit: int | None = None) -> dict:
    argv = ["--cfg-path", str(config), "--device", "cpu"]
    if options:
        argv += ["--options", *options]
    if limit:
        argv += ["--limit", str(limit)]
    return evaluate.main(argv)


# The caption benchmarks start pycocoevalcap's Java tokenizer and scorers (seconds each).
CAPTION_BENCHMARKS = ("coco_caption", "nocaps")


@pytest.mark.parametrize(
    "name", [pytest.param(b, marks=pytest.mark.slow) if b in CAPTION_BENCHMARKS else b for b in BENCHMARKS]
)
def test_each_benchmark_runs_end_to_end_from_its_own_files(name, fixtures, tmp_path, asked):
    out = tmp_path / "out"
    config = tiny_eval_config(name, fixtures[name], tiny_root(), out)
    results = run(config)
    assert sorted(results) == sorted(f"{name}/{split}" for split in SPLITS[name])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["results"] == json.loads(json.dumps(results))
    prompt = evaluate_prompt(name)
    for split in SPLITS[name]:
        lines = read_lines(out / f"{name}_{split}.jsonl")
        assert lines and set(lines[0]) == {"key"} | RESULT_FIELDS[name]
        assert len({line["key"] for line in lines}) == len(lines)
        assert not list(out.glob(f"{name}_{split}.rank*.jsonl"))  # merged and removed
        results_file = json.loads((out / f"{name}_{split}.results.json").read_text())
        assert results_file == [{k: v for k, v in line.items() if k != "key"} for line in lines]
        assert json.loads((out / f"{name}_{split}.settings.json").read_text())["prompt"] == prompt
    # Each question asked as the YAML's prompt with the benchmark's question in it, once.
    assert len(asked) == sum(len(read_lines(out / f"{name}_{s}.jsonl")) for s in SPLITS[name])
    if "{}" in prompt:
        head, tail = prompt.split("{}")
        assert all(p.startswith(head) and p.endswith(tail) and len(p) > len(prompt) - 2 for p in asked)
    else:
        assert set(asked) == {prompt}
    figures = results[f"{name}/{SPLITS[name][0]}"]
    if name in ("coco_caption", "nocaps"):
        assert figures["images"] == len(lines)  # scores or the reason each is missing
        assert set(figures["scores"]) | set(figures["missing"]) >= {"BLEU-4", "CIDEr"}
        if name == "nocaps":
            assert set(figures["per_domain"]) == {"in-domain", "near-domain", "out-domain"}
    else:
        assert figures["questions"] == len(lines) and 0 <= figures["accuracy"] <= 100


def evaluate_prompt(name: str) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.load(REPO_ROOT / "eval_configs" / f"{name}.yaml").datasets[name].benchmark.prompt


@pytest.mark.parametrize(
    ("name", "annotations", "benchmark"),
    [("vqav2", "annotations", "vqav2"), ("gqa", "testdev", "gqa"), ("okvqa", "annotations", "okvqa")],
)
def test_the_predictions_file_is_the_benchmarks_results_format(name, annotations, benchmark, fixtures, tmp_path):
    """The scorer's --predictions mode reads what evaluate.py wrote and gives the same figures."""
    out = tmp_path / "out"
    results = run(tiny_eval_config(name, fixtures[name], tiny_root(), out))
    split = SPLITS[name][0]
    args = Namespace(
        benchmark=benchmark,
        predictions=[str(out / f"{name}_{split}.results.json")],
        annotations=[fixtures[name]["annotations"][annotations]],
        questions=None,
        subset=False,
    )
    assert score.score(args)["results"][benchmark] == results[f"{name}/{split}"]


def test_pope_scores_each_split_as_the_scorer_does(fixtures, tmp_path):
    out = tmp_path / "out"
    results = run(tiny_eval_config("pope", fixtures["pope"], tiny_root(), out))
    splits = SPLITS["pope"]
    args = Namespace(
        benchmark="pope",
        predictions=[str(out / f"pope_{s}.jsonl") for s in splits],
        annotations=[fixtures["pope"]["annotations"][s] for s in splits],
        questions=None,
        subset=False,
    )
    scored = score.score(args)["results"]
    assert {split: scored[split] for split in splits} == {s: results[f"pope/{s}"] for s in splits}
    assert set(results["pope/random"]) >= {"accuracy", "precision", "recall", "f1", "yes_ratio"}


def test_a_restart_answers_only_what_is_left_and_drops_a_line_cut_short(fixtures, tmp_path, asked, caplog):
    out = tmp_path / "out"
    config = tiny_eval_config("vqav2", fixtures["vqav2"], tiny_root(), out, batch_size=1)
    limited = run(config, limit=2)
    assert limited["vqav2/val"]["questions"] == 2 and limited["vqav2/val"]["of_questions"] == 5
    first = read_lines(out / "vqav2_val.jsonl")
    assert len(first) == 2 and len(asked) == 2
    # A kill in the middle of a write leaves a rank file whose last line has no newline.
    (out / "vqav2_val.rank0.jsonl").write_text('{"key": "' + first[0]["key"][:3])
    asked.clear()
    with caplog.at_level(logging.INFO):
        full = run(config)
    assert "2 answered before, 3 to answer" in caplog.text
    assert len(asked) == 3
    lines = read_lines(out / "vqav2_val.jsonl")
    assert [line["key"] for line in lines] == [line["key"] for line in read_lines(out / "vqav2_val.jsonl")]
    assert len(lines) == 5 and lines[:2] == first
    assert full["vqav2/val"]["questions"] == 5 and "of_questions" not in full["vqav2/val"]
    # Everything answered: a third run asks nothing and scores the same.
    asked.clear()
    assert run(config) == full and not asked
    # The answers do not depend on what was asked before (a fresh conversation per question):
    # the two answered before the restart are those of a run from scratch.
    fresh = tmp_path / "fresh"
    run(tiny_eval_config("vqav2", fixtures["vqav2"], tiny_root(), fresh, batch_size=1))
    assert read_lines(fresh / "vqav2_val.jsonl") == lines


def test_a_restart_with_another_prompt_is_refused(fixtures, tmp_path):
    out = tmp_path / "out"
    config = tiny_eval_config("gqa", fixtures["gqa"], tiny_root(), out)
    run(config, limit=1)
    with pytest.raises(BenchmarkError, match="answered with other settings \\(prompt"):
        run(config, "datasets.gqa.benchmark.prompt=Short answer please {}")
    argv = ["--cfg-path", str(config), "--device", "cpu", "--options", "datasets.gqa.benchmark.prompt=Short, please {}"]
    with pytest.raises(SystemExit) as ended:
        run_main(lambda: evaluate.main(argv), "evaluate.py")
    assert str(ended.value.code).startswith("evaluate.py: ") and "\n" not in str(ended.value.code)


def test_bad_benchmark_settings_are_told_in_one_line(fixtures, tmp_path):
    out = tmp_path / "out"
    config = tiny_eval_config("vqav2", fixtures["vqav2"], tiny_root(), out)
    with pytest.raises(BenchmarkError, match="has no '\\{\\}' where the question goes"):
        run(config, "datasets.vqav2.benchmark.prompt=Describe the image.")
    with pytest.raises(BenchmarkError, match=r"annotations\.questions: .* is not a file"):
        run(config, f"datasets.vqav2.build_info.annotations.questions={tmp_path / 'missing.json'}")
    with pytest.raises(BenchmarkError, match="'val2017' is not a split of vqav2"):
        run(config, "datasets.vqav2.benchmark.splits=[val2017]")
    with pytest.raises(BenchmarkError, match="5 of 5 images are missing"):
        run(config, "datasets.vqav2.build_info.image_name=COCO_val2017_{image_id:012d}.jpg")
    with pytest.raises(BenchmarkError, match=r"datasets\.cc_sbu_align is not a benchmark"):
        run(REPO_ROOT / "eval_configs" / "minigpt4_tiny_eval.yaml")


@pytest.mark.dist
@pytest.mark.slow
def test_two_gloo_ranks_share_the_questions_and_rank0_merges(fixtures, tmp_path):
    """torchrun with 2 CPU processes: each question answered once, by one rank, and the merged
    predictions and metrics are those of one process (batch 1, so no padding differs)."""
    single, double = tmp_path / "single", tmp_path / "double"
    one = run(tiny_eval_config("pope", fixtures["pope"], tiny_root(), single, batch_size=1))
    config = tiny_eval_config("pope", fixtures["pope"], tiny_root(), double, batch_size=1)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "evaluate.py", "--cfg-path", str(config), "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0 of 2" in result.stderr and "to answer on 2 rank(s)" in result.stderr
    assert result.stdout.count("pope/random") == 1  # one table, from rank 0
    for split in SPLITS["pope"]:
        assert read_lines(double / f"pope_{split}.jsonl") == read_lines(single / f"pope_{split}.jsonl")
    assert json.loads((double / "metrics.json").read_text())["results"] == json.loads(json.dumps(one))


@pytest.mark.slow
def test_a_killed_run_continues_where_it_stopped(fixtures, tmp_path):
    """A real kill (SIGKILL) while answering; the restart asks only the questions left."""
    out = tmp_path / "out"
    config = tiny_eval_config("vqav2", fixtures["vqav2"], tiny_root(), out, batch_size=1, max_new_tokens=40)
    command = [sys.executable, "evaluate.py", "--cfg-path", str(config), "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = out / "vqav2_val.rank0.jsonl"
    deadline = time.monotonic() + 120
    while not (part.is_file() and part.read_text().count("\n") >= 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait()
    answered = read_lines(part)
    assert 1 <= len(answered) < 5
    restart = subprocess.run(command, cwd=REPO_ROOT, env=env, check=True, capture_output=True, text=True)
    assert f"{len(answered)} answered before, {5 - len(answered)} to answer" in restart.stderr
    lines = read_lines(out / "vqav2_val.jsonl")
    assert len(lines) == 5 and lines[: len(answered)] == answered


def test_the_world_benchmark_config_reads_the_held_out_split(tmp_path):
    """eval_configs/world_heldout.yaml scores attribute naming on a cc_sbu_align-format folder
    with attributes, as tools/tiny_world.py writes the held-out split."""
    heldout = tmp_path / "heldout"
    write_described(heldout, 4, random.Random(0), with_attributes=True)
    out = tmp_path / "out"
    build_info = {"annotations": {"heldout": str(heldout / "filter_cap.json")}, "images": str(heldout / "image")}
    results = run(tiny_eval_config("world_heldout", build_info, tiny_root(), out))
    figures = results["attribute_naming/heldout"]
    assert figures["questions"] == 4 and set(figures["per_attribute"]) == {"colour", "shape"}


@pytest.mark.slow
def test_evaluate_gives_the_quick_starts_held_out_score(tmp_path, monkeypatch):
    """A reduced world: eval_configs/world_heldout.yaml through evaluate.py scores the held-out
    split exactly as tools/quickstart.py does (tiny_world.heldout_score with the world's chat
    config), for the same projection checkpoint."""
    sizes = WorldSizes(laion=20, cc_sbu=10, align=4, heldout=12, shard_size=20, vision_steps=2, vision_batch=4,
                       vision_pool=8, probe_images=16, llm_steps=2, llm_batch=2)  # fmt: skip
    make_world(tmp_path / "assets" / "world", sizes, seed=1)
    monkeypatch.chdir(tmp_path)  # the YAMLs' relative paths resolve as in a checkout
    world_chat = REPO_ROOT / "eval_configs" / "minigpt4_world_eval.yaml"
    torch.manual_seed(3)
    chat = build_chat(str(world_chat), [], torch.device("cpu"))
    checkpoint = tmp_path / "projection.pth"
    torch.save({"model": {k: v for k, v in chat.model.state_dict().items() if k.startswith("llama_proj.")}}, checkpoint)
    chat = build_chat(str(world_chat), [f"model.ckpt={checkpoint}"], torch.device("cpu"))
    expected, answers = heldout_score(chat, read_heldout(Path("assets/world/data/heldout")), QUESTION)
    config = REPO_ROOT / "eval_configs" / "world_heldout.yaml"
    results = run(config, f"model.ckpt={checkpoint}", f"run.output_dir={tmp_path / 'eval'}")
    lines = read_lines(tmp_path / "eval" / "attribute_naming_heldout.jsonl")
    assert [line["answer"] for line in lines] == [answer.strip() for answer in answers]
    assert results["attribute_naming/heldout"]["accuracy"] == pytest.approx(100 * expected)
