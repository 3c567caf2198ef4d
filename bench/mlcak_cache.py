"""Cost of a ``kd_vit`` (MLCAK) student step: cached teacher targets vs the teacher online.

Run: ``.venv/bin/python bench/mlcak_cache.py [--preset demo|small224] [--rounds 15]``.
In one run, on the CPU with ``--threads`` threads, it

1. registers a ``vit_mtl`` teacher (random weights: the cost of a forward does not depend on
   them) in a temporary teacher registry;
2. builds three trials with the real method builders, optimiser, schedule and pipeline, as
   ``trainables.loop`` does: (a) ``vit_mtl`` at the low resolution: the student alone, no KD;
   (b) ``kd_vit`` mlcak with ``teacher_cache=on`` (the teacher's logits and block-mean tokens
   gathered with the batch); (c) ``kd_vit`` mlcak with ``teacher_cache=off`` (the teacher runs
   forward on every batch, keeping all its blocks);
3. times one optimiser step of each with the loop's own step function, interleaved a, b, c,
   a, b, c, ... so that load changes on a shared machine hit all three alike, and reports the
   ratios of the medians and the median of each round's own ratio;
4. reports the cache's bytes per image (the stored file) and the projected cache of a
   15,000-image VinDr training split at the paper's setting (ViT-Base, 224 px: 197 tokens x
   768), for every token and with ``feature_grid=7``, and for one_to_one's N blocks.

Presets: ``demo``: ViT-Tiny layout at 64 px, 8-px patches, 4 blocks, teacher = student, the
student at 16 px, batch 32. ``small224``: ViT-Small at 224 px (16-px patches, 12 blocks),
student at 28 px, batch 8.
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

from cxrkd.trainables import checkpoint
from cxrkd.trainables.config import parse_config
from cxrkd.trainables.context import DataBundle, TrialContext
from cxrkd.trainables.data.pipeline import BatchLoader, DatasetInfo, SplitData
from cxrkd.trainables.loop import _train_epoch, seed_everything  # the loop's own step, not a copy
from cxrkd.trainables.methods import get_method
from cxrkd.trainables.optim import make_optimizer, make_scheduler
from cxrkd.trainables.teachers import TeacherKey, TeacherRegistry

CPU = torch.device("cpu")
ARMS = ("plain", "cached", "online")
FINDINGS = 14  # VinDr-CXR's local labels are of this order; the heads barely cost anything
PRESETS = {
    "demo": dict(model="vit_tiny_patch16_224", img_size=64, patch_size=8, depth=4, low=16,
                 batch=32, step_images=256),
    "small224": dict(model="vit_small_patch16_224", img_size=224, patch_size=0, depth=0, low=28,
                     batch=8, step_images=32),
}  # fmt: skip
VINDR_TRAIN = 15_000


def make_bundle(n_train: int, size: int) -> DataBundle:
    """Random images and labels: a step's cost does not depend on content."""
    rng = np.random.default_rng(0)
    labels = (*(f"finding_{i}" for i in range(FINDINGS)), "abnormal")
    splits = {}
    for split, n in {"train": n_train, "val": 16}.items():
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        y = (rng.random((n, FINDINGS)) < 0.2).astype(np.float32)
        splits[split] = SplitData.from_arrays(
            images, np.concatenate([y, y.max(1, keepdims=True)], 1)
        )
    info = DatasetInfo(
        name="bench", kind="bench", task="multilabel", labels=labels, finding_labels=labels[:-1],
        global_label="abnormal", resolution=size, n={s: len(d) for s, d in splits.items()},
        positive_rate={}, fingerprint="bench-ml-fp", synthetic=True,
    )  # fmt: skip
    return DataBundle(info=info, splits=splits)


def register_teacher(storage: Path, data: DataBundle, flat: dict) -> str:
    """A freshly built (untrained) vit_mtl teacher, checkpointed and registered."""
    cfg = parse_config(flat)
    seed_everything(cfg.train.seed)
    task = get_method("vit_mtl").build(cfg, data.info, TrialContext(CPU, data))
    optimizer = make_optimizer(task, cfg.train)
    folder = checkpoint.save(
        storage / "teacher-ckpt", task=task, optimizer=optimizer,
        scheduler=make_scheduler(optimizer, cfg.train, 1), epoch=0, cfg=cfg, extra={},
    )  # fmt: skip
    key = TeacherKey.from_config(cfg.to_flat(), data.info.fingerprint)
    return TeacherRegistry(str(storage)).register(key, folder, {})


class Arm:
    """One trial's training state, set up as ``trainables.loop._train`` sets it up."""

    def __init__(self, name: str, flat: dict, data: DataBundle) -> None:
        self.name = name
        cfg = parse_config(flat)
        self.cfg = cfg.train
        seed_everything(self.cfg.seed)
        self.task = get_method(self.cfg.method).build(cfg, data.info, TrialContext(CPU, data))
        self.pipeline = self.task.make_pipeline(input_size=self.cfg.img_size)
        train = data.split("train")
        self.loader = BatchLoader(
            train.images, train.labels, batch_size=self.cfg.batch_size, shuffle=True,
            device=CPU, seed=self.cfg.seed, drop_last=True,
        )  # fmt: skip
        side = self.task.side_arrays("train")
        self.side = {k: torch.from_numpy(np.asarray(v)) for k, v in side.items()}
        self.optimizer = make_optimizer(self.task, self.cfg)
        self.scheduler = make_scheduler(self.optimizer, self.cfg, len(self.loader))

    def step(self, round_: int) -> float:
        """Seconds for one optimiser step on the first batch of epoch ``round_``."""
        start = time.perf_counter()
        _train_epoch(self.task, self.loader, self.pipeline, self.side, self.optimizer,
                     self.scheduler, round_, 1, self.cfg)  # fmt: skip
        return time.perf_counter() - start


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def cache_table(bytes_per_image: float, n_images: int) -> None:
    """The measured cache, and the paper-scale projection (float16 tokens, float32 logits)."""
    print(f"\ncache measured: {bytes_per_image:,.0f} bytes per image ({n_images} images stored)")
    logits = 4 * (FINDINGS + 1)
    rows = [
        ("mlcak/last_block, every token (197 x 768)", 197, 1),
        ("mlcak/last_block, feature_grid=7 (50 x 768)", 1 + 7 * 7, 1),
        ("one_to_one, 12 blocks x 197 x 768 (online)", 197, 12),
    ]
    print(f"ViT-Base teacher at 224 px, {VINDR_TRAIN:,} training images (VinDr-CXR):")
    for label, tokens, blocks in rows:
        per_image = blocks * tokens * 768 * 2 + logits
        print(
            f"  {label:46} {per_image / 1e3:8.1f} KB/image {per_image * VINDR_TRAIN / 1e9:6.2f} GB"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--rounds", type=int, default=15, help="timed a,b,c rounds (default 15)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    args = parser.parse_args(argv)
    p = PRESETS[args.preset]

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {load()} (start)")
    vit = {"model": p["model"], "img_size": p["img_size"], "patch_size": p["patch_size"],
           "depth": p["depth"], "batch_size": p["batch"], "pretrained": False}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cxrkd-bench-") as tmp:
        data = make_bundle(p["step_images"], p["img_size"])
        uri = register_teacher(Path(tmp), data, {**vit, "method": "vit_mtl"})
        student = {**vit, "low_res": p["low"], "epochs": 1000}
        kd = {**student, "method": "kd_vit", "kd_approach": "mlcak", "gamma": 1.0,
              "teacher_path": uri}  # fmt: skip
        start = time.perf_counter()
        cached = Arm("cached", {**kd, "teacher_cache": "on"}, data)  # builds its cache here
        build_s = time.perf_counter() - start
        arms = [Arm("plain", {**student, "method": "vit_mtl"}, data), cached,
                Arm("online", {**kd, "teacher_cache": "off"}, data)]  # fmt: skip
        assert "t_feat" in arms[1].side and not arms[2].side  # what is measured
        key = next((Path(tmp) / "teachers").glob("*/outputs/*.npz"))
        per_image = key.stat().st_size / p["step_images"]

        print(load(), "(steps start)")
        times: dict[str, list[float]] = {arm.name: [] for arm in arms}
        for round_ in range(args.warmup + args.rounds):
            for arm in arms:
                seconds = arm.step(round_)
                if round_ >= args.warmup:
                    times[arm.name].append(seconds)
        print(load(), "(steps end)")
    report(args, p, times)
    print(f"cache built for {p['step_images']} images in {build_s:.1f} s ({key.name})")
    cache_table(per_image, p["step_images"])
    print(load(), "(end)")


def report(args, p: dict, times: dict) -> None:
    median = {name: statistics.median(ts) for name, ts in times.items()}
    labels = {
        "plain": "(a) vit_mtl student alone (no KD)",
        "cached": "(b) kd_vit mlcak, cached targets",
        "online": "(c) kd_vit mlcak, teacher online",
    }
    print(
        f"\n{args.preset}: {p['model']} at {p['img_size']} px (patch {p['patch_size'] or 16}, "
        f"depth {p['depth'] or 12}) -> same, student at {p['low']} px, batch {p['batch']}; "
        f"median of {args.rounds} interleaved steps each ({args.warmup} warm-up rounds)"
    )
    print(f"{'step':36} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'img/s':>7} {'/ (a)':>6}")
    for name in ARMS:
        ts = times[name]
        print(
            f"{labels[name]:36} {median[name] * 1e3:10.1f} {min(ts) * 1e3:8.1f} "
            f"{max(ts) * 1e3:8.1f} {p['batch'] / median[name]:7.1f} "
            f"{median[name] / median['plain']:6.2f}"
        )
    pairs = (("cached", "plain"), ("online", "plain"), ("online", "cached"))
    for num, den in pairs:
        of_medians = median[num] / median[den]
        per_round = statistics.median(b / a for a, b in zip(times[den], times[num], strict=True))
        print(f"{num}/{den} = {of_medians:.3f} of medians, {per_round:.3f} per round")


if __name__ == "__main__":
    main()
