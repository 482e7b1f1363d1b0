"""The ``minigpt4`` model inside lmms-eval (skipped where lmms-eval is not installed: it is the
optional extra ``.[lmms-eval]``): its registry finds the model, real ``Instance`` objects are
answered by the tiny model's Chat, and ``lmms-eval`` runs a local task end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import pytest
import torch
from PIL import Image
from tiny_assets import REPO_ROOT, tiny_path_options, tiny_root

lmms_eval = pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install -e '.[lmms-eval]')")

from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.api.model import lmms  # noqa: E402

from minigpt4.evaluation import lmms_eval_plugin  # noqa: E402
from minigpt4.evaluation.lmms_eval_model import MiniGPT4  # noqa: E402
from minigpt4.evaluation.lmms_requests import LmmsRequestError  # noqa: E402

TINY_EVAL = REPO_ROOT / "eval_configs" / "minigpt4_tiny_eval.yaml"
COLOURS = ["red", "white", "blue"]


def model_args(*options: str) -> str:
    return f"cfg_path={TINY_EVAL},options={' '.join([*tiny_path_options(tiny_root(), ()), *options])}"


@pytest.fixture(scope="module")
def model():
    lm = MiniGPT4.create_from_arg_string(model_args(), {"batch_size": "2", "device": "cpu"})
    lm.task_dict = {"tiny": {"test": [{"image": Image.new("RGB", (64, 48), c)} for c in COLOURS]}}
    return lm


def doc_to_visual(doc):
    return [doc["image"]]


def instance(doc_id, gen_kwargs, context="What colour is it?"):
    arguments = (context, gen_kwargs, doc_to_visual, doc_id, "tiny", "test")
    return Instance("generate_until", arguments, idx=0, metadata={"task": "tiny", "doc_id": doc_id, "repeats": 1})


def test_lmms_eval_finds_the_model_by_name():
    from lmms_eval.models import MODEL_REGISTRY_V2, get_model

    installed = any(ep.name == "minigpt4" for ep in entry_points(group="lmms_eval.models"))
    if not installed:  # a checkout that is not pip-installed: what python -m ...lmms_eval_plugin does
        MODEL_REGISTRY_V2.register_manifest(lmms_eval_plugin.manifest(), overwrite=True)
    assert get_model("minigpt4") is MiniGPT4
    assert issubclass(MiniGPT4, lmms) and MiniGPT4.is_simple


def test_real_instances_are_answered_as_fresh_one_image_conversations(model):
    gen_kwargs = {"until": ["\n\n"], "max_new_tokens": 6, "temperature": 0, "do_sample": False}
    requests = [instance(i, dict(gen_kwargs)) for i in (2, 0, 1)]
    answers = model.generate_until(requests)
    images = [model.task_dict["tiny"]["test"][i]["image"] for i in (2, 0, 1)]
    alone = [
        model.chat.answer_batch([im], ["What colour is it?"], max_new_tokens=6, do_sample=False)[0] for im in images
    ]
    assert answers == [a.split("\n\n")[0] for a in alone]
    assert model.batch_size == 2 and model.device == torch.device("cpu")
    assert model.rank == 0 and model.world_size == 1


def test_loglikelihood_and_multi_round_tasks_are_refused_in_words(model):
    with pytest.raises(LmmsRequestError, match="generate_until requests only; task tiny"):
        model.loglikelihood([Instance("loglikelihood", ("Q", " A"), 0, {"task": "tiny", "doc_id": 0, "repeats": 1})])
    with pytest.raises(LmmsRequestError, match="fresh one-turn conversation"):
        model.generate_until_multi_round([])
    with pytest.raises(LmmsRequestError, match="a number for --batch_size"):
        MiniGPT4(str(TINY_EVAL), batch_size="auto")


TASK_YAML = """\
task: tiny_colours
dataset_path: {data}
dataset_kwargs:
  load_from_disk: True
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  until: ["\\n\\n"]
  max_new_tokens: 6
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

TASK_UTILS = """\
def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc):
    return "<image>\\n" + doc["question"]


def process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"])}
"""


@pytest.mark.slow
def test_the_lmms_eval_command_runs_a_local_task_with_minigpt4(tmp_path, model):
    import datasets

    # The model's random projection, as a checkpoint, so that lmms-eval's process builds the same model.
    projection = {k: v for k, v in model.chat.model.state_dict().items() if k.startswith("llama_proj.")}
    torch.save({"model": projection}, tmp_path / "projection.pth")

    rows = {"image": [Image.new("RGB", (64, 48), c) for c in COLOURS], "question": ["Colour?"] * 3, "answer": COLOURS}
    features = datasets.Features(
        {"image": datasets.Image(), "question": datasets.Value("string"), "answer": datasets.Value("string")}
    )
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(tmp_path / "data")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_colours.yaml").write_text(TASK_YAML.format(data=tmp_path / "data"))
    (tasks / "utils.py").write_text(textwrap.dedent(TASK_UTILS))
    command = [sys.executable, "-m", "minigpt4.evaluation.lmms_eval_plugin", "--model", "minigpt4"]
    command += [
        "--model_args",
        model_args(f"model.ckpt={tmp_path / 'projection.pth'}"),
        "--tasks",
        "tiny_colours",
        "--include_path",
        str(tasks),
    ]
    command += ["--batch_size", "2", "--device", "cpu", "--log_samples", "--output_path", str(tmp_path / "out")]
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=900)
    # lmms-eval exits 0 after an error too: the results file is what tells
    found = {path.name.split("_", 2)[-1]: path for path in (tmp_path / "out").rglob("*.json*")}
    assert {"results.json", "samples_tiny_colours.jsonl"} <= set(found), run.stdout[-3000:] + run.stderr[-3000:]
    samples = [json.loads(line) for line in found["samples_tiny_colours.jsonl"].read_text().splitlines()]
    answers = {s["doc_id"]: s["filtered_resps"] for s in samples}
    images = [Image.new("RGB", (64, 48), c) for c in COLOURS]
    expected = model.chat.answer_batch(images, ["Colour?"] * 3, max_new_tokens=6, do_sample=False)
    assert answers == {i: e.split("\n\n")[0] for i, e in enumerate(expected)}
    accuracy = sum(a.strip().lower() == c for a, c in zip(expected, COLOURS, strict=True)) / 3
    results = json.loads(found["results.json"].read_text())["results"]["tiny_colours"]
    assert results["exact_match,none"] == accuracy
