"""Model cost figures for the comparison tables: parameters, FLOPs, latency, throughput.

All measurements run the model in eval mode under ``torch.inference_mode()`` and then restore
every submodule's own train/eval flag (a partly frozen model keeps its frozen BatchNorms in eval).
Timings are taken on the device of the input; on CUDA each call is bracketed by
``torch.cuda.synchronize()`` so the figure is the kernel time, not the launch time. CPU timings
depend on ``torch.get_num_threads()``: report it with the figure.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from cxrkd.trainables.errors import CxrkdError

# The fewest timed calls a time budget leaves (their median is the figure).
MIN_REPEATS = 5


class ProfilingError(CxrkdError, ValueError):
    """Bad arguments to a profiling function."""


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` parameter counts; a parameter shared by two modules counts once."""
    params = list(model.parameters())  # parameters() already de-duplicates shared tensors
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return total, trainable


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _one_image(name: str, example_input: Tensor) -> None:
    if example_input.ndim == 0 or example_input.shape[0] != 1:
        raise ProfilingError(
            f"{name} measures one image: pass a batch of 1, got shape "
            f"{tuple(example_input.shape)}; use example_input[:1]"
        )


def count_flops(model: nn.Module, example_input: Tensor) -> int:
    """Forward FLOPs for one image (``example_input`` must have batch size 1).

    Counted by ``torch.utils.flop_counter.FlopCounterMode``: matrix multiplies, convolutions
    and attention, at 2 FLOPs per multiply-accumulate (``nn.Linear(10, 5)`` costs 100);
    element-wise ops (activations, norms) are not counted, as is usual in papers.
    """
    _one_image("count_flops", example_input)
    counter = FlopCounterMode(display=False)
    with _eval_mode(model), torch.inference_mode(), counter:
        model(example_input)
    return int(counter.get_total_flops())


def _check_counts(warmup: int, repeats: int) -> None:
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ProfilingError(f"warmup must be an int >= 0, got {warmup!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ProfilingError(f"repeats must be an int >= 1, got {repeats!r}")


def _timed_calls(
    model: nn.Module, x: Tensor, *, warmup: int, repeats: int, budget_s: float | None = None
) -> list[float]:
    """Seconds per forward call, ``repeats`` of them after ``warmup`` untimed calls.

    With ``budget_s``, the measurement stops early once that many seconds have gone by (warm-up
    included), keeping at least one warm-up call and ``MIN_REPEATS`` timed ones: a ViT-Base
    on a CPU core takes ~0.4 s a call, so 60 calls would cost every trial half a minute."""
    _check_counts(warmup, repeats)
    if budget_s is not None and not budget_s > 0:
        raise ProfilingError(f"budget_s must be > 0 seconds, got {budget_s!r}")
    cuda = x.device.type == "cuda"
    times: list[float] = []
    began = time.perf_counter()
    done_warming = warmup == 0
    with _eval_mode(model), torch.inference_mode():
        calls = 0
        while len(times) < repeats:
            over = budget_s is not None and time.perf_counter() - began > budget_s
            if not done_warming and (calls >= warmup or (over and calls >= 1)):
                done_warming = True
            if done_warming and over and len(times) >= min(MIN_REPEATS, repeats):
                break
            if cuda:
                torch.cuda.synchronize(x.device)
            start = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize(x.device)
            calls += 1
            if done_warming:
                times.append(time.perf_counter() - start)
    return times


def measure_latency_ms(
    model: nn.Module,
    example_input: Tensor,
    *,
    warmup: int = 10,
    repeats: int = 50,
    budget_s: float | None = None,
) -> float:
    """Median forward time of one image (batch size 1) in milliseconds (over fewer calls when
    ``budget_s`` runs out first; see :func:`_timed_calls`)."""
    _one_image("measure_latency_ms", example_input)
    times = _timed_calls(model, example_input, warmup=warmup, repeats=repeats, budget_s=budget_s)
    return statistics.median(times) * 1000.0


def measure_throughput(
    model: nn.Module,
    batch: Tensor,
    *,
    warmup: int = 3,
    repeats: int = 10,
    budget_s: float | None = None,
) -> float:
    """Images per second at ``batch``'s batch size: ``batch_size / median seconds per call``."""
    if batch.ndim == 0 or batch.shape[0] < 1:
        raise ProfilingError(f"batch must hold at least one image, got {tuple(batch.shape)}")
    calls = _timed_calls(model, batch, warmup=warmup, repeats=repeats, budget_s=budget_s)
    seconds = statistics.median(calls)
    # A call faster than the clock's resolution would give inf; report that as it is.
    return batch.shape[0] / seconds if seconds > 0 else math.inf
