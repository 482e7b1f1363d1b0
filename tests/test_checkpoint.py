"""Checkpoint helpers: the trainable subset, atomic writes, weights-only loading, RNG round trips."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from golden_model import build_golden_model
from torch import nn

from minigpt4.common.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_trainable_state_dict,
    rng_state,
    save_checkpoint,
    set_rng_state,
    trainable_state_dict,
)


class Tied(nn.Module):
    """A frozen embedding tied to a frozen head (two names, one parameter), a trainable
    projection, a persistent and a non-persistent buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight
        self.embed.requires_grad_(False)
        self.proj = nn.Linear(3, 3)
        self.register_buffer("position_ids", torch.arange(4))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)


def test_trainable_state_dict_keeps_trainable_parameters_and_buffers():
    assert sorted(trainable_state_dict(Tied())) == ["position_ids", "proj.bias", "proj.weight"]


def test_load_trainable_state_dict_is_strict_about_trainable_keys():
    model = Tied()
    state = {k: torch.full_like(v, 7) for k, v in trainable_state_dict(model).items()}
    frozen = model.embed.weight.detach().clone()
    load_trainable_state_dict(model, state, "ckpt.pth")
    assert torch.equal(model.proj.weight, torch.full((3, 3), 7.0)) and torch.equal(model.embed.weight, frozen)
    with pytest.raises(KeyError, match=r"ckpt.pth .* missing \['proj.bias'\]; unexpected none"):
        load_trainable_state_dict(model, {k: v for k, v in state.items() if k != "proj.bias"}, "ckpt.pth")
    with pytest.raises(KeyError, match=r"missing none; unexpected \['llama_proj.weight'\]"):
        load_trainable_state_dict(model, {**state, "llama_proj.weight": torch.zeros(1)}, "ckpt.pth")


def test_a_reference_runner_checkpoint_resumes(golden_dir: Path):
    """The 2023 runner also saved the Q-Former's position_ids and LLaMA's inv_freq buffers."""
    model = build_golden_model(golden_dir, ckpt="")
    state = load_checkpoint(golden_dir / "checkpoint_0.pth")["model"]
    assert "Qformer.bert.embeddings.position_ids" in state
    with pytest.raises(KeyError, match=r"unexpected \['Qformer.bert.embeddings.position_ids'"):
        load_trainable_state_dict(model, state, "checkpoint_0.pth")  # under the reference's names
    load_trainable_state_dict(model, model.checkpoint_state(state), "checkpoint_0.pth")
    assert torch.equal(model.llama_proj.weight, state["llama_proj.weight"])
    assert torch.equal(model.llama_proj.bias, state["llama_proj.bias"])


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "checkpoint_0.pth"
    save_checkpoint(path, {"epoch": 0, "model": {"w": torch.ones(2)}})
    with pytest.raises(Exception, match="pickle"):
        save_checkpoint(path, {"epoch": 1, "model": {"w": torch.zeros(2)}, "bad": lambda: None})
    assert load_checkpoint(path)["epoch"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_0.pth"]  # no temporary file left


def test_checkpoints_load_weights_only_and_refuse_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": os.system}, path)  # a callable: loading could run code
    with pytest.raises(CheckpointError, match=r"evil.pth: holds objects .*weights_only=True"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*missing\.pth"):
        load_checkpoint(tmp_path / "missing.pth")


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    path = tmp_path / "rng.pth"
    save_checkpoint(path, {"rng": rng_state(torch.device("cpu"))})
    expected = (random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(load_checkpoint(path)["rng"], torch.device("cpu"))
    again = (random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(3))
    assert again[:3] == expected[:3] and torch.equal(again[3], expected[3])


@pytest.mark.parametrize("mmap", [False, True])
def test_an_unreadable_checkpoint_is_named_in_one_line(tmp_path, mmap):
    good = tmp_path / "good.pth"
    save_checkpoint(good, {"epoch": 0, "model": {"w": torch.ones(1000)}})
    for name, data in [("cut.pth", good.read_bytes()[:-100]), ("text.pth", b"x\n"), ("empty.pth", b"")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(
            CheckpointError, match=rf"^{re.escape(str(tmp_path / name))}: not a readable checkpoint"
        ) as e:
            load_checkpoint(tmp_path / name, mmap=mmap)
        assert "\n" not in str(e.value)
    legacy = tmp_path / "legacy.pth"  # the pre-zip format cannot be mapped: it is read instead
    torch.save({"epoch": 3}, legacy, _use_new_zipfile_serialization=False)
    assert load_checkpoint(legacy, mmap=mmap) == {"epoch": 3}
