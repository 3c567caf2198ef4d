"""Cost of a KD training step: plain student vs KD with cached teacher outputs vs naive KD.

Run: ``.venv/bin/python bench/kd_step.py [--threads 2] [--rounds 15] [--images 5000]``.
In one run, on the CPU with ``--threads`` threads, ResNet-50 teacher -> ResNet-18 student at
64 px, batch 32, it

1. registers a ResNet-50 teacher (random weights: the cost of a forward does not depend on
   them) in a temporary teacher registry;
2. builds three trials on a ``--step-images`` training split with the real method builders
   (``get_method(...).build``), optimiser, schedule and pipeline, as ``trainables.loop`` does:
   (a) ``transfer``: the plain student;
   (b) ``kd_logit`` with the cache (teacher logits gathered with the batch, no teacher forward);
   (c) ``kd_logit`` with ``teacher_cache=off``: the teacher runs forward on every batch;
3. times one optimiser step of each with the loop's own step function (batch gather, side
   arrays, pipeline, autocast, forward, backward, optimiser and scheduler step), interleaved
   a, b, c, a, b, c, ... on the same batch in each round, so that load changes on a shared
   machine hit all three alike. Ratios are given two ways: of the medians, and the median of
   each round's own ratio (the three steps of a round ran back to back: the figure to trust
   when other jobs come and go);
4. times building the teacher-output cache for an ``--images``-image training split
   (``TrialContext.teacher_outputs``, in a second registry) and reports the file's size.

Goal: (b)/(a) <= 1.10. Reference: the issue measured (c)/(a) = 1.68 for naive KD.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxrkd.trainables import checkpoint, teacher_outputs
from cxrkd.trainables.config import parse_config
from cxrkd.trainables.context import DataBundle, TrialContext
from cxrkd.trainables.data.augment import Pipeline
from cxrkd.trainables.data.pipeline import BatchLoader, DatasetInfo, SplitData
from cxrkd.trainables.loop import _train_epoch, seed_everything  # the loop's own step, not a copy
from cxrkd.trainables.methods import get_method
from cxrkd.trainables.optim import make_optimizer, make_scheduler
from cxrkd.trainables.teachers import TeacherKey, TeacherRegistry

CPU = torch.device("cpu")
ARMS = ("plain", "cached", "naive")


def make_bundle(n_train: int, size: int) -> DataBundle:
    """Random uint8 images with balanced labels: a step's cost does not depend on content."""
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in {"train": n_train, "val": 64}.items():
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        splits[split] = SplitData.from_arrays(images, (np.arange(n) % 2)[:, None])
    info = DatasetInfo(
        name="bench", kind="bench", task="binary", labels=("pneumonia",), finding_labels=(),
        global_label="pneumonia", resolution=size, n={s: len(d) for s, d in splits.items()},
        positive_rate={}, fingerprint="bench-fp", synthetic=True,
    )  # fmt: skip
    return DataBundle(info=info, splits=splits)


def register_teacher(storage: Path, data: DataBundle, flat: dict) -> str:
    """A freshly built (untrained) teacher, checkpointed and registered as a study would."""
    cfg = parse_config(flat)
    seed_everything(cfg.train.seed)
    task = get_method("transfer").build(cfg, data.info, TrialContext(CPU, data))
    optimizer = make_optimizer(task, cfg.train)
    folder = checkpoint.save(
        storage / "teacher-ckpt",
        task=task,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, cfg.train, 1),
        epoch=0,
        cfg=cfg,
        extra={},
    )
    key = TeacherKey.from_config(cfg.to_flat(), data.info.fingerprint)
    return TeacherRegistry(str(storage)).register(key, folder, {})


class Arm:
    """One trial's training state, set up as ``trainables.loop._train`` sets it up."""

    def __init__(self, name: str, flat: dict, data: DataBundle) -> None:
        self.name = name
        self.cfg = parse_config(flat).train
        seed_everything(self.cfg.seed)
        cfg = parse_config(flat)
        self.task = get_method(self.cfg.method).build(cfg, data.info, TrialContext(CPU, data))
        self.pipeline = self.task.make_pipeline(input_size=self.cfg.img_size)
        train = data.split("train")
        self.loader = BatchLoader(
            train.images,
            train.labels,
            batch_size=self.cfg.batch_size,
            shuffle=True,
            device=CPU,
            seed=self.cfg.seed,
            drop_last=True,
        )
        self.side = {
            k: torch.from_numpy(np.asarray(v)) for k, v in self.task.side_arrays("train").items()
        }
        self.optimizer = make_optimizer(self.task, self.cfg)
        self.scheduler = make_scheduler(self.optimizer, self.cfg, len(self.loader))

    def step(self, round_: int) -> float:
        """Seconds for one optimiser step on the first batch of epoch ``round_``."""
        start = time.perf_counter()
        _train_epoch(
            self.task,
            self.loader,
            self.pipeline,
            self.side,
            self.optimizer,
            self.scheduler,
            round_,
            1,
            self.cfg,
        )
        return time.perf_counter() - start


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--rounds", type=int, default=15, help="timed a,b,c rounds (default 15)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--images", type=int, default=5000, help="training split for the cache")
    parser.add_argument("--step-images", type=int, default=512, help="training split for steps")
    parser.add_argument("--size", type=int, default=64, help="input side in px (default 64)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--teacher", default="resnet50")
    parser.add_argument("--student", default="resnet18")
    args = parser.parse_args(argv)
    if min(args.images, args.step_images) < args.batch:
        parser.error(f"--images and --step-images must be at least --batch ({args.batch})")

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {load()} (start)")
    common = {"img_size": args.size, "batch_size": args.batch, "pretrained": False}
    teacher = {**common, "method": "transfer", "model": args.teacher}
    with tempfile.TemporaryDirectory(prefix="cxrkd-bench-") as tmp:
        data = make_bundle(args.step_images, args.size)
        uri = register_teacher(Path(tmp) / "steps", data, teacher)
        student = {**common, "model": args.student, "epochs": 1000}
        kd = {**student, "method": "kd_logit", "teacher_path": uri}
        arms = [
            Arm("plain", {**student, "method": "transfer"}, data),
            Arm("cached", {**kd, "teacher_cache": "on"}, data),  # builds its cache here
            Arm("naive", {**kd, "teacher_cache": "off"}, data),
        ]
        assert "teacher_logits" in arms[1].side and not arms[2].side  # what is measured

        print(load(), "(steps start)")
        times: dict[str, list[float]] = {arm.name: [] for arm in arms}
        for round_ in range(args.warmup + args.rounds):
            for arm in arms:  # a, b, c, a, b, c, ...
                seconds = arm.step(round_)
                if round_ >= args.warmup:
                    times[arm.name].append(seconds)
        print(load(), "(steps end)")

        # The cache of a full training split: built once per teacher, read by every trial.
        data = make_bundle(args.images, args.size)
        uri = register_teacher(Path(tmp) / "cache", data, teacher)
        start = time.perf_counter()
        outputs = TrialContext(CPU, data).teacher_outputs(
            uri, split="train", pipeline=Pipeline(input_size=args.size)
        )
        build_s = time.perf_counter() - start
        cache_bytes = os.path.getsize(teacher_outputs.outputs_uri(uri, f"train-{args.size}px"))
    report(args, times, build_s=build_s, cache_bytes=cache_bytes, n_outputs=len(outputs))


def report(args, times: dict, *, build_s: float, cache_bytes: int, n_outputs: int) -> None:
    median = {name: statistics.median(ts) for name, ts in times.items()}
    labels = {
        "plain": "(a) plain student (transfer)",
        "cached": "(b) KD, cached teacher outputs",
        "naive": "(c) KD, teacher forward each step",
    }
    print(
        f"\n{args.teacher} -> {args.student}, {args.size} px, batch {args.batch}, "
        f"median of {args.rounds} interleaved steps each ({args.warmup} warm-up rounds)"
    )
    print(f"{'step':36} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'img/s':>7} {'/ (a)':>6}")
    for name in ARMS:
        ts = times[name]
        print(
            f"{labels[name]:36} {median[name] * 1e3:10.1f} {min(ts) * 1e3:8.1f} "
            f"{max(ts) * 1e3:8.1f} {args.batch / median[name]:7.1f} "
            f"{median[name] / median['plain']:6.2f}"
        )
    for name, label in (("cached", "cached/plain"), ("naive", "naive/plain ")):
        of_medians = median[name] / median["plain"]
        rounds = zip(times["plain"], times[name], strict=True)
        per_round = statistics.median(b / a for a, b in rounds)
        note = (
            f"goal <= 1.10: {'met' if per_round <= 1.10 else 'MISSED'}"
            if name == "cached"
            else "issue's reference: 1.68"
        )
        print(f"{label} = {of_medians:.3f} of medians, {per_round:.3f} per round ({note})")
    saved = median["naive"] - median["cached"]
    steps_per_epoch = n_outputs // args.batch
    print(
        f"teacher-output cache, {n_outputs} images at {args.size} px: {cache_bytes:,} bytes, "
        f"built in {build_s:.1f} s (= {build_s / saved:.0f} naive-KD steps' teacher overhead; "
        f"one student epoch is {steps_per_epoch} steps)"
    )
    print(load(), "(end)")


if __name__ == "__main__":
    main()
