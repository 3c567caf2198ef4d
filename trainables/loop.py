"""The one training loop every method shares (it never looks at the method's name).

Per epoch: train on shuffled batches (views from the device-side pipeline in each model's own
normalisation, bf16 autocast with fp32 heads and channels_last on CUDA, fp32 on CPU; see
``trainables.precision``), score the validation split, report one row of metrics
with a checkpoint. A restored trial continues exactly where its checkpoint left off: same
weights, optimiser and scheduler state, RNG state and batch order.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from cxrkd.trainables import checkpoint
from cxrkd.trainables.config import ConfigError, TrialConfig, parse_config
from cxrkd.trainables.context import DataBundle, TrialContext
from cxrkd.trainables.data.augment import Augment, epoch_generator
from cxrkd.trainables.data.pipeline import BatchLoader
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.evaluate import predict, softmax, split_metrics, val_threshold
from cxrkd.trainables.methods import get_method
from cxrkd.trainables.optim import make_optimizer, make_scheduler
from cxrkd.trainables.precision import autocast, precision_tag
from cxrkd.trainables.profiling import (
    count_flops,
    count_parameters,
    measure_latency_ms,
    measure_throughput,
)
from cxrkd.trainables.scratch import scratch_dir
from cxrkd.trainables.task import Task

# Augmentation when `augment=True`: small, as chest films are taken in a standard position.
AUGMENT = dict(degrees=7.0, translate=0.05, scale=0.05, brightness=0.1, contrast=0.1)
EVAL_BATCH = 256


class TrialError(CxrkdError):
    """A trial that cannot go on (non-finite loss, out of memory); the search goes on."""


class Reporter(Protocol):
    def report(self, metrics: dict, checkpoint_dir: Path) -> None: ...

    def restore_dir(self) -> Path | None: ...


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_trial(flat: dict, data: DataBundle, *, reporter: Reporter) -> dict:
    """Train one configuration; returns the last reported metrics."""
    cfg = parse_config(flat)
    method = get_method(cfg.train.method)
    if data.info.task not in method.tasks:
        raise ConfigError(
            f"method {method.name!r} trains {'/'.join(method.tasks)} datasets, but "
            f"{data.info.name!r} is {data.info.task}; pick a dataset of that task"
        )
    device = pick_device()
    seed_everything(cfg.train.seed)
    ctx = TrialContext(device=device, data=data)
    task = method.build(cfg, data.info, ctx).to(device)
    if device.type == "cuda":
        task = task.to(memory_format=torch.channels_last)
    try:
        return _train(cfg, task, data, ctx, reporter)
    except RuntimeError as exc:
        if not out_of_memory(exc):
            raise
        raise TrialError(
            f"out of memory with batch_size={cfg.train.batch_size}, "
            f"img_size={cfg.train.img_size}, model={cfg.train.model}: lower batch_size or give "
            f"trials more GPU (--gpus-per-trial). ({exc})"
        ) from None


def out_of_memory(exc: BaseException) -> bool:
    """CUDA's out-of-memory error, or the plain ``RuntimeError("CUDA error: out of memory")``
    of allocations outside PyTorch's caching allocator (cuDNN workspaces, CUDA's own set-up):
    a retry with the same config would run out again."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _train(cfg: TrialConfig, task: Task, data: DataBundle, ctx: TrialContext, reporter) -> dict:
    t = cfg.train
    device = ctx.device
    pipeline = task.make_pipeline(
        input_size=t.img_size, augment=Augment(**AUGMENT) if t.augment else None
    )
    train, val = data.split("train"), data.split("val")
    batch = min(t.batch_size, len(train))
    loader = BatchLoader(
        train.images,
        train.labels,
        batch_size=batch,
        shuffle=True,
        device=device,
        seed=t.seed,
        drop_last=True,
    )
    steps = len(loader) if t.steps_per_epoch == 0 else min(len(loader), t.steps_per_epoch)
    side = {k: torch.from_numpy(np.asarray(v)) for k, v in task.side_arrays("train").items()}
    optimizer = make_optimizer(task, t)
    scheduler = make_scheduler(optimizer, t, steps)
    start, best = 0, -math.inf
    restore = reporter.restore_dir()
    if restore is not None:
        state = checkpoint.load(restore, task=task, optimizer=optimizer, scheduler=scheduler)
        start, best = state["epoch"] + 1, state["extra"]["best_val_auc"]
    workdir = scratch_dir("ckpt")
    try:
        metrics: dict = {}
        for epoch in range(start, t.epochs):
            t0 = time.perf_counter()
            sums = _train_epoch(task, loader, pipeline, side, optimizer, scheduler, epoch, steps, t)
            train_s = time.perf_counter() - t0
            if not math.isfinite(sums["loss"]):
                raise TrialError(
                    f"training loss became {sums['loss']} in epoch {epoch + 1} (lr={t.lr}, "
                    f"batch_size={t.batch_size}); lower lr or set grad_clip"
                )
            val_out, val_y = predict(task, pipeline, val, device=device, batch_size=EVAL_BATCH)
            threshold = val_threshold(data.info, val_out, val_y)
            val_metrics = split_metrics(data.info, val_out, val_y, threshold=threshold)
            metrics = {
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                "images_per_s": steps * batch / train_s,
                "train_s": train_s,
                **{f"train_{k}": v / steps for k, v in sums.items()},
                **{f"val_{k}": v for k, v in val_metrics.items()},
            }
            if math.isfinite(metrics["val_auc"]):
                best = max(best, metrics["val_auc"])
            metrics["best_val_auc"] = best
            scores = None
            if epoch + 1 == t.epochs:
                # Every trial ends with its model's cost, so an open search can weigh it (the
                # searcher reads the last result); only the final stage touches the test split.
                metrics.update(cost_metrics(task, pipeline, device, batch))
                if t.evaluate_test:
                    test, scores = test_metrics(task, pipeline, data, device, threshold)
                    metrics.update(test)
            metrics["epoch_s"] = time.perf_counter() - t0
            folder = checkpoint.save(
                workdir / f"epoch-{epoch + 1:04d}",
                task=task,
                optimizer=optimizer,
                scheduler=scheduler,
                epoch=epoch,
                cfg=cfg,
                extra={"best_val_auc": best},
                test_scores=scores,
            )
            reporter.report(metrics, folder)
    finally:
        # Empty once the reporter has taken every checkpoint; a trial that errors or is
        # stopped mid-way would otherwise leave its last save in /tmp.
        shutil.rmtree(workdir, ignore_errors=True)
    return metrics


def _train_epoch(task, loader, pipeline, side, optimizer, scheduler, epoch, steps, t) -> dict:
    task.train()
    device = loader.device
    generator = epoch_generator(t.seed, epoch)
    order = loader.epoch_order(epoch)
    size = loader.batch_size
    sums: dict[str, torch.Tensor] = {}
    for step in range(steps):
        idx = order[step * size : (step + 1) * size]
        x, y = loader.batch(idx)
        extras = {k: v[idx].to(device, non_blocking=True) for k, v in side.items()}
        views = pipeline(x, train=True, generator=generator)
        with autocast(device):
            out = task(views, y, **extras)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(task.trainable_parameters(), t.grad_clip)
        optimizer.step()
        scheduler.step()
        # Summed on the device: no host sync per step; non-finite values surface at epoch end.
        for key, value in out.items():
            if key != "output":
                sums[key] = sums.get(key, 0.0) + value.detach().float()
    return {k: float(v) for k, v in sums.items()}


def per_image_scores(info, outputs: dict[str, np.ndarray], labels: np.ndarray) -> dict:
    """Per test image: the global label's logit and truth (plus the findings' when there are
    any), which the report turns into ROC curves; logits, as ROC curves need only the order.

    A multi-class task has no global logit: its classes are given as findings (one-vs-rest),
    ``finding_logits`` the log-odds of the softmax probabilities (a float64 sigmoid of them
    gives the probabilities back), ``global_label`` the class index (what the report's
    resamples are stratified by), and no ``global_logit``."""
    finding_idx, global_idx = info.label_columns()
    if info.task == "multiclass":
        p = np.clip(softmax(outputs["logits"]), 1e-300, 1 - 1e-16)
        return {
            "global_label": labels.argmax(axis=1),
            "finding_logits": np.log(p) - np.log1p(-p),
            "finding_labels": labels,
            "finding_names": np.asarray(info.labels, dtype=str),
        }
    key = "logits" if info.task == "binary" else "mcct"
    out = {"global_logit": outputs[key].reshape(-1), "global_label": labels[:, global_idx]}
    if finding_idx:
        out["finding_logits"] = outputs["mlct"]
        out["finding_labels"] = labels[:, list(finding_idx)]
        out["finding_names"] = np.asarray(info.finding_labels, dtype=str)
    return out


def test_metrics(task, pipeline, data, device, threshold) -> tuple[dict, dict]:
    """Test metrics at the validation threshold and the per-image test scores
    (:func:`per_image_scores`)."""
    out, y = predict(task, pipeline, data.split("test"), device=device, batch_size=EVAL_BATCH)
    test = split_metrics(data.info, out, y, threshold=threshold)
    return {f"test_{k}": v for k, v in test.items()}, per_image_scores(data.info, out, y)


# Seconds each of latency and throughput may take at the end of a trial: on a GPU the full 50
# (10) calls fit easily; on a CPU a large model is timed over fewer calls (at least 5).
COST_BUDGET_S = 1.0


# What this trial process has measured: (architecture, input size, batch, device, precision)
# -> FLOPs, latency and throughput. They depend on the architecture, not on its weights.
_MEASURED: dict[tuple, dict] = {}


def cost_metrics(task, pipeline, device, batch) -> dict:
    """The deployed model's cost: parameters, FLOPs, latency (one image), throughput.

    FLOPs, latency and throughput are measured once per trial process for each architecture
    (the model's structure as ``repr`` prints it: layers and their shapes, not weights), input
    size, batch size, device and precision: the trials of one cell that a process runs get the
    same figures, not one noisy timing each, and the ~2 s of timing is not repeated."""
    model = task.model.eval()
    total, trainable = count_parameters(model)
    key = (repr(model), pipeline.input_size, batch, str(device), precision_tag(device))
    if key not in _MEASURED:
        one = torch.zeros(1, 1, pipeline.input_size, pipeline.input_size, device=device)
        many = one.expand(batch, -1, -1, -1).contiguous()
        with autocast(device):
            latency = measure_latency_ms(model, one, budget_s=COST_BUDGET_S)
            throughput = measure_throughput(model, many, budget_s=COST_BUDGET_S)
        flops = count_flops(model, one)
        _MEASURED[key] = {"flops": flops, "latency_ms": latency, "throughput": throughput}
    return {"params": total, "params_trainable": trainable, **_MEASURED[key]}
