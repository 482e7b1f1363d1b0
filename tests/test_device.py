import pytest
import torch

from minigpt4.common.device import autocast, autocast_dtype, dist_backend, parse_dtype, resolve_device


def test_cpu_device_backend_and_precision():
    device = resolve_device("cpu", local_rank=1)
    assert device == torch.device("cpu")
    assert dist_backend(device) == "gloo"
    assert autocast_dtype(device) is None


def test_auto_picks_cpu_without_accelerators():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert resolve_device("auto").type == "cpu"


def test_bad_device_names():
    with pytest.raises(ValueError, match="unsupported device 'mps'"):
        resolve_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="sees no CUDA GPU"):
            resolve_device("cuda")


def test_parse_dtype():
    assert parse_dtype("bf16") is torch.bfloat16
    assert parse_dtype("fp32") is torch.float32
    with pytest.raises(ValueError, match="unknown precision 'int3'"):
        parse_dtype("int3")


def test_autocast_context_runs_bf16_on_cpu_when_asked():
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert lin(x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), None):
        assert lin(x).dtype == torch.float32


def test_a_device_index_beyond_the_node_names_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    with pytest.raises(RuntimeError, match=r"device cuda:2 does not exist: torch sees 2 cuda device\(s\)"):
        resolve_device("cuda", local_rank=2)
    with pytest.raises(RuntimeError, match=r"device cuda:5 does not exist"):
        resolve_device("cuda:5")
