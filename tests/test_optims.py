"""LR schedules against values computed by hand from the reference's formulas."""

import itertools
import math

import pytest
import torch
from omegaconf import OmegaConf

from minigpt4.common.optims import LinearWarmupCosineLRScheduler, LinearWarmupStepLRScheduler
from minigpt4.common.registry import registry
from minigpt4.common.schema import RunConfig


def make_optimizer() -> torch.optim.Optimizer:
    w = torch.nn.Parameter(torch.zeros(2, 2))
    b = torch.nn.Parameter(torch.zeros(2))
    return torch.optim.AdamW([{"params": [w], "weight_decay": 0.05}, {"params": [b], "weight_decay": 0.0}])


def run_cfg(**keys) -> OmegaConf:
    return OmegaConf.merge(OmegaConf.structured(RunConfig), keys)


def test_registered_by_the_reference_names():
    import minigpt4  # noqa: F401  (registers every name)

    assert registry.get_lr_scheduler_class("linear_warmup_cosine_lr") is LinearWarmupCosineLRScheduler
    assert registry.get_lr_scheduler_class("linear_warmup_step_lr") is LinearWarmupStepLRScheduler


def test_stage1_reference_schedule():
    # train_configs/minigpt4_stage1_pretrain.yaml: 4 epochs x 5000 iterations, warmup 5000.
    opt = make_optimizer()
    cfg = run_cfg(init_lr=1e-4, min_lr=8e-5, warmup_lr=1e-6, warmup_steps=5000, max_epoch=4)
    sched = LinearWarmupCosineLRScheduler.from_config(opt, cfg, iters_per_epoch=5000)
    assert sched.step(0, 0) == pytest.approx(1e-6, rel=1e-12)  # warmup start
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(1e-6, rel=1e-12)] * 2  # every group
    assert sched.step(0, 2500) == pytest.approx(1e-6 + 99e-6 * 0.5, rel=1e-12)
    assert sched.step(0, 4999) == pytest.approx(9.99802e-5, rel=1e-12)  # warmup end
    # First step after warmup: the cosine is already a quarter of the way (horizon 20000).
    assert sched.step(1, 0) == pytest.approx(9.707e-5, abs=5e-9)
    assert sched.step(1, 0) == pytest.approx(8e-5 + 1e-5 * (1 + math.cos(math.pi / 4)), rel=1e-12)
    assert sched.step(2, 0) == pytest.approx(9e-5, rel=1e-12)  # mid-cosine: cos(pi/2) = 0
    last = 8e-5 + 1e-5 * (1 + math.cos(math.pi * 19999 / 20000))
    assert sched.step(3, 4999) == pytest.approx(last, rel=1e-12)
    assert 8e-5 < last < 8.0000001e-5


def test_stage2_reference_schedule():
    opt = make_optimizer()
    cfg = run_cfg(init_lr=3e-5, min_lr=1e-5, warmup_lr=1e-6, warmup_steps=200, max_epoch=5)
    sched = LinearWarmupCosineLRScheduler.from_config(opt, cfg, iters_per_epoch=200)
    assert sched.step(0, 0) == pytest.approx(1e-6, rel=1e-12)
    assert sched.step(0, 199) == pytest.approx(1e-6 + 29e-6 * 199 / 200, rel=1e-12)
    assert sched.step(1, 0) == pytest.approx(2.809e-5, abs=5e-9)
    assert sched.step(4, 199) == pytest.approx(1e-5 + 1e-5 * (1 + math.cos(math.pi * 999 / 1000)), rel=1e-12)


def test_warmup_longer_than_an_epoch_keeps_warming_up():
    opt = make_optimizer()
    cfg = run_cfg(init_lr=1e-4, min_lr=8e-5, warmup_lr=1e-6, warmup_steps=250, max_epoch=4)
    sched = LinearWarmupCosineLRScheduler.from_config(opt, cfg, iters_per_epoch=100)
    assert sched.step(0, 99) == pytest.approx(1e-6 + 99e-6 * 99 / 250, rel=1e-12)
    # Epoch 1 continues from global step 100 (the reference restarted at the in-epoch step 0).
    assert sched.step(1, 0) == pytest.approx(1e-6 + 99e-6 * 100 / 250, rel=1e-12)
    assert sched.step(1, 50) == pytest.approx(6.04e-5, rel=1e-12)
    assert sched.step(2, 49) == pytest.approx(1e-6 + 99e-6 * 249 / 250, rel=1e-12)
    assert sched.step(2, 50) == pytest.approx(8e-5 + 1e-5 * (1 + math.cos(math.pi * 250 / 400)), rel=1e-12)
    lrs = [sched.lr_at(e, i) for e in range(4) for i in range(100)]
    assert all(a < b for a, b in itertools.pairwise(lrs[:250]))  # rises through the warmup
    assert all(a >= b for a, b in itertools.pairwise(lrs[250:]))  # then only falls


def test_no_warmup_starts_on_the_cosine_and_negative_warmup_lr_means_init_lr():
    opt = make_optimizer()
    sched = LinearWarmupCosineLRScheduler(opt, max_epoch=2, iters_per_epoch=10, min_lr=0.0, init_lr=1e-3)
    assert sched.step(0, 0) == pytest.approx(1e-3, rel=1e-12)
    assert sched.step(1, 0) == pytest.approx(5e-4, rel=1e-12)
    warm = LinearWarmupCosineLRScheduler(
        opt, max_epoch=2, iters_per_epoch=10, min_lr=0.0, init_lr=1e-3, warmup_steps=4, warmup_start_lr=-1
    )
    assert warm.step(0, 1) == pytest.approx(1e-3, rel=1e-12)


def test_step_schedule():
    opt = make_optimizer()
    cfg = run_cfg(init_lr=1e-4, min_lr=5e-6, warmup_lr=1e-6, warmup_steps=10, lr_decay_rate=0.5)
    sched = LinearWarmupStepLRScheduler.from_config(opt, cfg, iters_per_epoch=5)
    assert sched.step(0, 0) == pytest.approx(1e-6, rel=1e-12)
    assert sched.step(1, 4) == pytest.approx(1e-6 + 99e-6 * 9 / 10, rel=1e-12)  # warmup across epochs
    assert sched.step(2, 0) == pytest.approx(2.5e-5, rel=1e-12)  # 1e-4 * 0.5**2
    assert sched.step(4, 3) == pytest.approx(6.25e-6, rel=1e-12)
    assert sched.step(5, 0) == pytest.approx(5e-6, rel=1e-12)  # floor at min_lr
    assert opt.param_groups[1]["lr"] == pytest.approx(5e-6, rel=1e-12)


def test_step_schedule_without_decay_rate_fails_at_start():
    with pytest.raises(ValueError, match=r"run.lr_decay_rate"):
        LinearWarmupStepLRScheduler.from_config(make_optimizer(), run_cfg(), iters_per_epoch=5)


@pytest.mark.parametrize("cls", [LinearWarmupCosineLRScheduler, LinearWarmupStepLRScheduler])
def test_the_reference_keyword_set_builds_both_schedules(cls):
    # A runner written against the reference passes every keyword to whichever schedule it builds.
    keywords = {"max_epoch": 2, "iters_per_epoch": 10, "min_lr": 1e-5, "init_lr": 1e-4, "decay_rate": 0.9}
    optimizer = make_optimizer()
    schedule = cls(optimizer=optimizer, **keywords, warmup_start_lr=1e-6, warmup_steps=5)
    assert schedule.step(0, 0) == pytest.approx(1e-6)
    assert schedule.step(0, 5) == pytest.approx(1e-4 if cls is LinearWarmupStepLRScheduler else cosine(5, 20))
    assert optimizer.param_groups[0]["lr"] == schedule.lr_at(0, 5)


def cosine(step: int, total: int) -> float:
    return (1e-4 - 1e-5) * 0.5 * (1 + math.cos(math.pi * step / total)) + 1e-5
