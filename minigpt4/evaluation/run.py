"""The evaluation loop: every question of a benchmark split asked as a fresh one-turn
conversation (``Chat.answer_batch``, greedy), shared out over the ranks, resumable, then merged
and scored by rank 0.

For each benchmark split, ``output_dir`` holds

* ``<benchmark>_<split>.rank<R>.jsonl``: what rank R answered so far, one JSON line per question
  (``key``, the benchmark's id fields, the answer), appended and flushed batch by batch;
* ``<benchmark>_<split>.jsonl``: after the run, every answered question merged in the benchmark's
  order (the rank files are then removed), which ``python -m minigpt4.evaluation.score`` reads,
  and ``<benchmark>_<split>.results.json``, the same as a JSON list in the benchmark's results
  format (without ``key``), for the official scorers and servers;
* ``<benchmark>_<split>.settings.json``: what the answers depend on (prompt, generation, model
  files); a restart with other settings is refused instead of mixing answers;

and ``metrics.json`` holds every split's figures. A restart reads all of these files and asks only
the questions not answered yet (a line cut short by a kill is dropped and asked again), on any
number of ranks: the questions left are dealt out round robin. The files must be on a folder all
ranks share.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from minigpt4.common.dist_utils import barrier
from minigpt4.datasets.datasets.benchmarks import BenchmarkDataset, BenchmarkError

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 30.0


@dataclass(frozen=True)
class EvalOptions:
    batch_size: int = 8
    num_workers: int = 0
    limit: int | None = None  # only the first N questions of each split
    rank: int = 0
    world_size: int = 1


class SplitFiles:
    """The files of one benchmark split in ``output_dir`` (see the module docstring)."""

    def __init__(self, output_dir: Path, name: str, split: str) -> None:
        self.stem = f"{name}_{split}"
        self.folder = output_dir
        self.merged = output_dir / f"{self.stem}.jsonl"
        self.results = output_dir / f"{self.stem}.results.json"
        self.settings = output_dir / f"{self.stem}.settings.json"

    def part(self, rank: int) -> Path:
        return self.folder / f"{self.stem}.rank{rank}.jsonl"

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob(f"{self.stem}.rank*.jsonl"))

    def answered(self) -> dict[str, dict[str, Any]]:
        """{key: line} over the merged file and every rank's file; the first line of a key wins."""
        lines: dict[str, dict[str, Any]] = {}
        for path in [self.merged, *self.parts()]:
            for line in read_lines(path):
                lines.setdefault(str(line["key"]), line)
        return lines


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a predictions file; a last line without its newline (a write
    cut short) is left out."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    complete = text[: text.rfind("\n") + 1]
    rows = []
    for number, line in enumerate(complete.splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            message = f"{path} line {number}: not a JSON line ({error}); remove the file to answer its questions again"
            raise BenchmarkError(message) from None
        if not isinstance(row, dict) or "key" not in row:
            raise BenchmarkError(f"{path} line {number}: not a predictions line of evaluate.py (no 'key')")
        rows.append(row)
    return rows


def drop_partial_line(path: Path) -> None:
    """Cut a last line without its newline off ``path``, so that appending starts a fresh line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def check_settings(files: SplitFiles, settings: dict[str, Any]) -> None:
    """Refuse to continue answers made with other settings."""
    if not files.settings.is_file():
        return
    before = json.loads(files.settings.read_text(encoding="utf-8"))
    changed = [key for key in sorted(set(before) | set(settings)) if before.get(key) != settings.get(key)]
    if changed and (files.answered() or files.parts()):
        key = changed[0]
        raise BenchmarkError(
            f"{files.settings.parent}/{files.stem}.*: answered with other settings ({key}: {before.get(key)!r} then, "
            f"{settings.get(key)!r} now); remove those files or set run.output_dir to another folder"
        )


def _collate(items: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {name: [item[name] for item in items] for name in items[0]}


AnswerBatch = Callable[[BenchmarkDataset, list[torch.Tensor], list[str]], list[str]]


def answer_questions(
    answer_batch: AnswerBatch,
    dataset: BenchmarkDataset,
    indices: Sequence[int],
    out_path: Path,
    *,
    options: EvalOptions,
    progress: Callable[[int], None],
) -> int:
    """Answers ``dataset[indices]`` batch by batch, appending each batch's lines to ``out_path``."""
    if not indices:
        return 0
    by_key = {question.key: question for question in dataset.questions}
    loader = DataLoader(
        Subset(dataset, list(indices)),
        batch_size=options.batch_size,
        num_workers=options.num_workers,
        collate_fn=_collate,
    )
    drop_partial_line(out_path)
    count = 0
    with out_path.open("a", encoding="utf-8") as out:
        for batch in loader:
            answers = answer_batch(dataset, batch["image"], batch["prompt"])
            for key, answer in zip(batch["key"], answers, strict=True):
                line = {"key": key, **dataset.prediction(by_key[key], dataset.postprocess(answer))}
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
            out.flush()
            count += len(answers)
            progress(count)
    return count


def merge(files: SplitFiles, dataset: BenchmarkDataset) -> dict[str, dict[str, Any]]:
    """Every answered line, in the dataset's order, into the merged files; the rank files go."""
    answered = files.answered()
    ordered = [answered[q.key] for q in dataset.questions if q.key in answered]
    tmp = files.merged.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in ordered), encoding="utf-8")
    os.replace(tmp, files.merged)
    results = [{k: v for k, v in line.items() if k != "key"} for line in ordered]
    tmp = files.results.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, files.results)
    for part in files.parts():
        part.unlink()
    return {str(line["key"]): line for line in ordered}


class Progress:
    """Rank 0's progress line for one split, at most every ``PROGRESS_INTERVAL_S`` and at the end."""

    def __init__(self, label: str, total: int, before: int, mine: int, world_size: int) -> None:
        self.label, self.total, self.before, self.mine, self.world_size = label, total, before, mine, world_size
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        if done < self.mine and now - self.last < PROGRESS_INTERVAL_S:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.mine - done) / rate if rate else 0.0
        answered = min(self.before + done * self.world_size, self.total)
        logger.info(
            "eval: %s answered=%d/%d rank0=%d/%d questions/s=%.2f ranks=%d eta=%s",
            self.label, answered, self.total, done, self.mine, rate, self.world_size,
            time.strftime("%H:%M:%S", time.gmtime(eta)),
        )  # fmt: skip


def evaluate_benchmarks(
    answer_batch: AnswerBatch,
    benchmarks: dict[str, dict[str, BenchmarkDataset]],
    output_dir: Path,
    settings: Callable[[BenchmarkDataset], dict[str, Any]],
    options: EvalOptions,
) -> dict[str, dict] | None:
    """Answers every split of every benchmark (``{name: {split: dataset}}``) on this rank's share,
    then, on rank 0, merges and scores: ``{"<name>/<split>": figures}`` (None on other ranks).
    ``answer_batch(dataset, images, prompts)`` answers one batch of ``dataset``;
    ``settings(dataset)`` is what a split's answers depend on (written beside them and checked on
    restart). Training can call this with its own model and held-out benchmarks."""
    output_dir.mkdir(parents=True, exist_ok=True)
    splits = [dataset for by_split in benchmarks.values() for dataset in by_split.values()]
    for dataset in splits:
        files = SplitFiles(output_dir, dataset.name, dataset.split)
        check_settings(files, settings(dataset))
        answered = files.answered()
        wanted = dataset.questions[: options.limit] if options.limit else dataset.questions
        todo = [index for index, question in enumerate(wanted) if question.key not in answered]
        mine = todo[options.rank :: options.world_size]
        label = f"{dataset.name} {dataset.split}"
        logger.info(
            "eval: %s: %d questions%s, %d answered before, %d to answer on %d rank(s)",
            label, len(dataset), f" (--limit {len(wanted)})" if options.limit else "",
            len(wanted) - len(todo), len(todo), options.world_size,
        )  # fmt: skip
        barrier()  # every rank has read the files before any rank writes
        if options.rank == 0:
            files.settings.write_text(json.dumps(settings(dataset), indent=2) + "\n", encoding="utf-8")
        progress = Progress(label, len(wanted), len(wanted) - len(todo), len(mine), options.world_size)
        progress_on_rank0 = progress if options.rank == 0 else (lambda _done: None)
        answer_questions(
            answer_batch, dataset, mine, files.part(options.rank), options=options, progress=progress_on_rank0
        )
    barrier()
    if options.rank != 0:
        return None
    results = {}
    for dataset in splits:
        files = SplitFiles(output_dir, dataset.name, dataset.split)
        lines = merge(files, dataset)
        wanted = dataset.questions[: options.limit] if options.limit else dataset.questions
        keys = [q.key for q in wanted if q.key in lines]
        predictions = {key: str(lines[key][dataset.answer_field]) for key in keys}
        figures = dataset.score(predictions, keys)
        if len(keys) < len(dataset):
            logger.warning(
                "eval: %s %s: scored on %d of its %d questions", dataset.name, dataset.split, len(keys), len(dataset)
            )
            figures["of_questions"] = len(dataset)
        results[f"{dataset.name}/{dataset.split}"] = figures
    return results


def model_settings(cfg: Any, dataset: BenchmarkDataset, max_new_tokens: int) -> dict[str, Any]:
    """What a split's answers depend on, as written to its ``settings.json``."""
    model = cfg.model_cfg
    return {
        "benchmark": dataset.name,
        "split": dataset.split,
        "questions": len(dataset),
        "prompt": dataset.prompt,
        "max_new_tokens": max_new_tokens,
        "decoding": "greedy",
        "model.arch": model.arch,
        "model.llama_model": model.llama_model,
        "model.ckpt": model.ckpt,
        "model.prompt_template": model.prompt_template,
        "model.end_sym": model.end_sym,
    }


def build_benchmarks(cfg: Any) -> dict[str, dict[str, BenchmarkDataset]]:
    from minigpt4.common.registry import registry
    from minigpt4.datasets.builders.benchmark_builder import BenchmarkBuilder

    benchmarks = {}
    for name in cfg.datasets_cfg:
        builder = registry.get_builder_class(name)
        if not issubclass(builder, BenchmarkBuilder):
            known = [n for n in registry.list_datasets() if issubclass(registry.get_builder_class(n), BenchmarkBuilder)]
            raise BenchmarkError(f"datasets.{name} is not a benchmark; evaluate.py runs: {', '.join(known)}")
        benchmarks[name] = builder(cfg.datasets_cfg[name]).build_datasets()
    if not benchmarks:
        raise BenchmarkError("the config lists no benchmark under datasets:")
    return benchmarks


def evaluate_config(
    cfg_path: str, options: Sequence[str] | None, device_name: str, patch_generation: bool, limit: int | None
) -> dict[str, dict]:
    """``evaluate.py``: joins torchrun's process group when launched by it, builds the model and
    the benchmarks of ``cfg_path``, evaluates, and on rank 0 writes ``metrics.json`` and prints
    the table; returns the figures (empty on other ranks)."""
    from minigpt4.common.dist_utils import destroy_process_group, get_rank, get_world_size, init_distributed_mode
    from minigpt4.common.logger import setup_logger
    from minigpt4.common.registry import registry
    from minigpt4.conversation.conversation import Chat
    from minigpt4.conversation.decoding import Decoding
    from minigpt4.conversation.launch import generation_config
    from minigpt4.evaluation.score import format_table

    setup_logger(int(os.environ.get("RANK", "0")))  # before joining, so that rank 0 logs it
    device = init_distributed_mode(device_name)
    try:
        rank, world_size = get_rank(), get_world_size()
        cfg = generation_config(cfg_path, options, device, patch_generation)
        benchmarks = build_benchmarks(cfg)
        if not cfg.model_cfg.ckpt:
            logger.warning(
                "%s: model.ckpt is empty, so llama_proj is untrained and random: the scores mean nothing; "
                "set model.ckpt to a MiniGPT-4 checkpoint (--options model.ckpt=...)",
                cfg_path,
            )
        # Every rank builds the same model: a projection that no checkpoint sets is drawn from this seed.
        torch.manual_seed(cfg.run_cfg.seed)
        model = registry.get_model_class(cfg.model_cfg.arch).from_config(cfg.model_cfg, device).eval()
        first = next(iter(next(iter(benchmarks.values())).values()))
        chat = Chat(model, first.vis_processor, device=device)
        new_tokens = {name: cfg.datasets_cfg[name].benchmark.max_new_tokens for name in benchmarks}
        decodings = {name: Decoding(max_new_tokens=n, do_sample=False) for name, n in new_tokens.items()}

        def answer_batch(dataset: BenchmarkDataset, images: list[torch.Tensor], prompts: list[str]) -> list[str]:
            decoding = decodings[dataset.name]
            return chat.answer_batch(
                images, prompts, max_new_tokens=decoding.max_new_tokens, max_length=decoding.max_length, do_sample=False
            )

        output_dir = Path(cfg.run_cfg.output_dir)
        run_options = EvalOptions(
            batch_size=cfg.run_cfg.batch_size_eval,
            num_workers=cfg.run_cfg.num_workers,
            limit=limit,
            rank=rank,
            world_size=world_size,
        )
        results = evaluate_benchmarks(
            answer_batch,
            benchmarks,
            output_dir,
            lambda dataset: model_settings(cfg, dataset, new_tokens[dataset.name]),
            run_options,
        )
        if results is None:
            return {}
        metrics = {"config": cfg_path, "model.ckpt": cfg.model_cfg.ckpt, "limit": limit, "results": results}
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        print(format_table({"results": results}))
        logger.info("eval: predictions and metrics.json in %s", output_dir)
        return results
    finally:
        destroy_process_group()
