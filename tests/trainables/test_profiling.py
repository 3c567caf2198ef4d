"""Parameter counts and FLOPs known by arithmetic; timings are positive and leave modes alone."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainables.profiling import (
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
