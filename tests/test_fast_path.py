"""The fast training path, checked on the CPU with the golden tiny model: what each item makes
the GPU step do (or not do) is visible here without a GPU; how much it pays is measured with
test/benchmark.py on the device.

* the frozen vision side (ViT, ln_vision, Q-Former) runs without autograd; only llama_proj
  onward builds a graph;
* fused scaled-dot-product attention in the ViT (timm's ``fused_attn``), the Q-Former and the LLM
  (transformers' ``sdpa``): one SDPA call per attention layer;
* DDP without the unused-parameter search, reducing the trainable parameters only;
* the training loop reads no device value per step (loss and throughput only when logging);
* batches are pinned for an accelerator and copied without blocking.
"""

from __future__ import annotations

import collections
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from golden_model import build_golden_model
from omegaconf import OmegaConf
from test_runner import TinyCaptioner
from torch.utils.data import Dataset

import minigpt4  # noqa: F401  (registers every name)
from minigpt4.common.device import move_to_device
from minigpt4.common.schema import RunConfig
from minigpt4.datasets.datasets.dataloader_utils import build_train_loader
from minigpt4.runners.runner_base import RunnerBase, setup_output_dir, wrap_ddp
from minigpt4.tasks import ImageTextPretrainTask

TEXTS = ["a cat on a mat", "a dog", "a woman holding a red flag next to a tree", "an orange bus"]
# Tensor methods that read a value back to the host: on an accelerator each waits for the device.
HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")
# Known per-step reads outside this project. transformers' LLaMA inspects either the padding mask
# (is it all ones?) or, when given none, its own position ids (are sequences packed?) with one
# host read per forward; MiniGPT4.forward passes no mask, which keeps the fused causal kernel.
KNOWN_LIBRARY_READS = {"transformers/masking_utils.py"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two shared cores: tiny matmuls run far faster on one thread than contended on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(golden_dir: Path):
    return build_golden_model(golden_dir)


def images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 56, 56, generator=torch.Generator().manual_seed(0))


def test_frozen_vision_side_builds_no_autograd_graph(model):
    seen = {}

    def record(name):
        def hook(module, args, output):
            tensor = output if torch.is_tensor(output) else output.last_hidden_state
            seen[name] = (torch.is_grad_enabled(), tensor.requires_grad, tensor.grad_fn is not None)

        return hook

    # encode_img calls the ViT's forward_features, which module hooks do not see: watch its blocks.
    parts = {"vit_block": model.visual_encoder.blocks[-1], "ln_vision": model.ln_vision, "Qformer": model.Qformer}
    parts["llama_proj"] = model.llama_proj
    handles = [module.register_forward_hook(record(name)) for name, module in parts.items()]
    try:
        out = model({"image": images(), "text_input": TEXTS})
    finally:
        for handle in handles:
            handle.remove()
    # (grad mode on, output requires grad, has a grad_fn)
    assert seen["vit_block"] == seen["ln_vision"] == seen["Qformer"] == (False, False, False)
    assert seen["llama_proj"] == (True, True, True)
    out["loss"].backward()
    grads = {name for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    assert grads == {"llama_proj.weight", "llama_proj.bias"}


def test_an_unfrozen_qformer_does_build_a_graph(golden_dir: Path):
    """The switch the check above relies on: with freeze_qformer False the graph reaches it."""
    model = build_golden_model(golden_dir, freeze_qformer=False)
    seen = []
    handle = model.Qformer.register_forward_hook(lambda *hook: seen.append(hook[-1].last_hidden_state.grad_fn))
    model({"image": images(2), "text_input": TEXTS[:2]})
    handle.remove()
    assert seen[0] is not None


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Counts calls of torch's fused attention, which timm and transformers look up at call time."""
    calls = []
    fused = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return fused(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    return calls


def test_every_attention_layer_uses_fused_sdpa(model, sdpa_calls):
    vit, qformer, llm = model.visual_encoder, model.Qformer, model.llama_model
    assert all(block.attn.fused_attn for block in vit.blocks)
    assert qformer.config._attn_implementation == "sdpa"
    assert llm.config._attn_implementation == "sdpa"

    with torch.no_grad():
        vision = vit.forward_features(images())
        assert len(sdpa_calls) == len(vit.blocks)
        sdpa_calls.clear()
        queries = model.query_tokens.expand(4, -1, -1)
        qformer(query_embeds=queries, encoder_hidden_states=model.ln_vision(vision))
        cross = sum(layer.has_cross_attention for layer in qformer.encoder.layer)
        assert len(sdpa_calls) == len(qformer.encoder.layer) + cross
        sdpa_calls.clear()
        inputs = model.prepare_llm_inputs({"image": images(), "text_input": TEXTS})
        sdpa_calls.clear()
        llm(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask, use_cache=False)
        assert len(sdpa_calls) == llm.config.num_hidden_layers


def test_ddp_reduces_only_trainable_parameters_without_the_unused_search(golden_dir: Path):
    model = build_golden_model(golden_dir)
    torch.distributed.init_process_group("gloo", rank=0, world_size=1, store=torch.distributed.HashStore())
    try:
        ddp = wrap_ddp(model, torch.device("cpu"))
        assert ddp.find_unused_parameters is False
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert [id(p) for p in ddp._module_parameters] == [id(p) for p in trainable]
        assert ddp.parameters_to_ignore >= {name for name, _ in model.named_buffers()}
        # Two steps: without the search, a trainable parameter left unused would fail the second.
        for _ in range(2):
            ddp({"image": images(2), "text_input": TEXTS[:2]})["loss"].backward()
    finally:
        torch.distributed.destroy_process_group()
    assert all(p.grad is not None for p in trainable)


class Captions(Dataset):
    """More batches than the runs below take, so the loader starts no second pass."""

    def __init__(self, n: int = 40) -> None:
        self.images = torch.randn(n, 3, 56, 56, generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "text_input": TEXTS[i % len(TEXTS)]}


class RunOnly:
    """The part of ``Config`` the runner reads."""

    def __init__(self, **run: object) -> None:
        self.run_cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), run)

    def to_dict(self) -> dict:
        return {"run": OmegaConf.to_container(self.run_cfg)}


def host_reads_of_a_run(tmp_path: Path, golden_dir: Path, monkeypatch, iters: int) -> collections.Counter:
    """``(method, calling file)`` of every host read during a run of ``iters`` iterations that logs
    once, at the end."""
    run = {
        "device": "cpu",
        "max_epoch": 1,
        "iters_per_epoch": iters,
        "batch_size_train": 4,
        "num_workers": 0,
        "log_freq": 1000,
        "output_dir": str(tmp_path / f"out{iters}"),
        "amp": False,
    }
    cfg = RunOnly(**run)
    setup_output_dir(cfg.run_cfg, "job")
    datasets = {"captions": {"train": Captions()}}
    runner = RunnerBase(cfg, ImageTextPretrainTask(), build_golden_model(golden_dir), datasets, "job")
    reads = collections.Counter()
    with monkeypatch.context() as patch:
        for name in HOST_READS:
            original = getattr(torch.Tensor, name)

            def spy(*args, _name=name, _original=original, **kwargs):
                caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
                reads[(_name, caller.split("site-packages/")[-1])] += 1
                return _original(*args, **kwargs)

            patch.setattr(torch.Tensor, name, spy)
        runner.train()
    assert len(runner.history) == 1
    return reads


def test_training_loop_reads_the_device_only_when_logging(tmp_path, golden_dir, monkeypatch):
    short = host_reads_of_a_run(tmp_path, golden_dir, monkeypatch, iters=2)
    long = host_reads_of_a_run(tmp_path, golden_dir, monkeypatch, iters=5)
    per_step = {key: long[key] - short[key] for key in long if long[key] != short[key]}
    ours = {key: n for key, n in per_step.items() if key[1] not in KNOWN_LIBRARY_READS}
    assert ours == {}, f"host reads that grow with the number of steps: {ours}"
    assert sum(n for key, n in per_step.items() if key[1] in KNOWN_LIBRARY_READS) <= 3  # one per LLM forward
    assert sum(short.values()) > 0  # the spy sees the reads of the one log line


def test_accelerator_batches_are_pinned_and_copied_without_blocking(monkeypatch, tmp_path):
    datasets = {"captions": {"train": Captions()}}
    cfg = RunOnly(batch_size_train=4, num_workers=0, output_dir=str(tmp_path), device="cuda")
    # The runner's device decides, not run.device read again; the loader is built, not iterated.
    runner = RunnerBase(cfg, ImageTextPretrainTask(), TinyCaptioner(), datasets, "job", device=torch.device("cpu"))
    assert runner.train_loader(0).loaders[0].loader.pin_memory is False
    runner.device = torch.device("cuda")
    with warnings.catch_warnings():  # torch warns that there is no accelerator to pin for
        warnings.simplefilter("ignore")
        assert runner.train_loader(0).loaders[0].loader.pin_memory is True
    assert build_train_loader(datasets, cfg.run_cfg).loaders[0].loader.pin_memory is False

    copies = []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):
        copies.append(kwargs.get("non_blocking", False))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    moved = move_to_device({"image": torch.zeros(2, 3), "text_input": ["a", "b"], "id": torch.arange(2)}, "cpu")
    assert copies == [True, True] and moved["text_input"] == ["a", "b"]
