"""Parameter counts and FLOPs known by arithmetic; timings are positive and leave modes alone."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from cxrkd.trainables.profiling import (
    ProfilingError,
    count_flops,
    count_parameters,
    measure_latency_ms,
    measure_throughput,
)


def tiny() -> nn.Sequential:
    # Linear(10, 5): 10*5 + 5 = 55; Linear(5, 2): 5*2 + 2 = 12; BatchNorm1d(5): 5 + 5 = 10.
    return nn.Sequential(nn.Linear(10, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))


def test_count_parameters():
    model = tiny()
    assert count_parameters(model) == (77, 77)
    for p in model[0].parameters():
        p.requires_grad_(False)
    assert count_parameters(model) == (77, 22)
    shared = nn.Linear(3, 3)  # 12 parameters, used twice, counted once
    assert count_parameters(nn.Sequential(shared, shared)) == (12, 12)


def test_count_flops_by_arithmetic():
    # One multiply-accumulate = 2 FLOPs: Linear(10, 5) on one sample is 2 * 10 * 5.
    assert count_flops(nn.Linear(10, 5), torch.randn(1, 10)) == 100
    # Conv2d(1, 2, 3) on 5x5 -> 2 x 3 x 3 outputs, each 1*3*3 MACs: 2 * 9 * 18 = 324.
    assert count_flops(nn.Conv2d(1, 2, 3), torch.randn(1, 1, 5, 5)) == 324
    # Sum of the two Linears of tiny(): 2*10*5 + 2*5*2 (BatchNorm/ReLU are not counted).
    assert count_flops(tiny(), torch.randn(1, 10)) == 120


def test_measurements_restore_each_modules_mode():
    model = tiny().train()
    model[1].eval()  # a frozen BatchNorm must stay in eval afterwards
    count_flops(model, torch.randn(1, 10))
    ms = measure_latency_ms(model, torch.randn(1, 10), warmup=1, repeats=3)
    ips = measure_throughput(model, torch.randn(4, 10), warmup=1, repeats=3)
    assert [m.training for m in model] == [True, False, True, True]
    assert model.training
    assert 0 < ms < 10_000 and math.isfinite(ms)
    assert ips > 0


def test_measurements_run_without_grad_in_eval_mode():
    seen = []
    model = nn.Sequential(nn.Linear(10, 5))
    model.register_forward_hook(lambda m, i, o: seen.append((m.training, o.requires_grad)))
    measure_latency_ms(model, torch.randn(1, 10), warmup=0, repeats=2)
    assert seen == [(False, False), (False, False)]


def test_bad_arguments_raise():
    with pytest.raises(ProfilingError, match=r"batch of 1, got shape \(4, 10\)"):
        count_flops(tiny(), torch.randn(4, 10))
    with pytest.raises(ProfilingError, match=r"batch of 1, got shape \(2, 10\)"):
        measure_latency_ms(tiny(), torch.randn(2, 10))
    with pytest.raises(ProfilingError, match="repeats must be an int >= 1, got 0"):
        measure_latency_ms(tiny(), torch.randn(1, 10), repeats=0)
    with pytest.raises(ProfilingError, match="warmup must be an int >= 0, got -1"):
        measure_throughput(tiny(), torch.randn(2, 10), warmup=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_timings_are_synchronised_and_positive():
    model = tiny().cuda()
    x = torch.randn(1, 10, device="cuda")
    assert count_flops(model, x) == 120
    assert 0 < measure_latency_ms(model, x, warmup=2, repeats=5) < 10_000
    assert measure_throughput(model, x.expand(64, -1).contiguous(), warmup=2, repeats=5) > 0


class _Slow(nn.Module):
    """A forward pass of ~20 ms that counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        time.sleep(0.02)
        return x


def test_a_time_budget_caps_the_calls_but_keeps_a_median_of_at_least_five():
    model = _Slow()
    # Without a budget: all 10 warm-up and 50 timed calls (~1.2 s).
    ms = measure_latency_ms(model, torch.zeros(1, 3))
    assert model.calls == 60 and 15 < ms < 1000
    # A budget of 0.1 s: warm-up calls until it is spent (~5), then the 5 timed calls the
    # median needs, not 60.
    model.calls = 0
    ms = measure_latency_ms(model, torch.zeros(1, 3), budget_s=0.1)
    assert 6 <= model.calls <= 12 and 15 < ms < 1000
    model.calls = 0
    ips = measure_throughput(model, torch.zeros(4, 3), warmup=3, repeats=10, budget_s=0.03)
    assert 6 <= model.calls <= 8 and 0 < ips < 4 / 0.015
    # A budget the calls fit in changes nothing.
    model.calls = 0
    measure_latency_ms(model, torch.zeros(1, 3), warmup=2, repeats=3, budget_s=60)
    assert model.calls == 5
    with pytest.raises(ProfilingError, match="budget_s must be > 0"):
        measure_latency_ms(model, torch.zeros(1, 3), budget_s=0)
