"""What a plan's trials cost (``cxrkd search plan``, :mod:`search.plan`): seconds, device-hours,
dollars and wall time.

Seconds per epoch come from images per epoch (the dataset's splits, or a stated assumption)
over images/s (:mod:`search.plan_throughput`), plus a fixed start-up per trial; device-hours
(one device per trial) and dollars from the table's price. Wall time by list-scheduling the
trials over ``workers``: per stage on its own (``stage.totals``, round robin over its cells);
the whole study as the driver runs it is :func:`search.schedule.study_makespan`.
"""

from __future__ import annotations

import dataclasses
import heapq
from dataclasses import dataclass

from cxrkd.search.plan_counts import CASES, StagePlan, config_value
from cxrkd.search.plan_throughput import ModelSpec, Rate, ThroughputTable
from cxrkd.search.study_dataset import SYNTHETIC_PROFILES
from cxrkd.spaces.studies import Study

STARTUP_S = 30.0  # ASSUMED per trial: worker process, model, weights, teacher; not measured
# Split sizes when no dataset store is named: what the profile is meant for.
ASSUMED_SPLITS = {
    "phantom": (
        {"train": 3750, "val": 500, "test": 750},
        "the built-in phantom (5,000 images; 15% test, 10% validation)",
    ),
    "binary": (
        {"train": 4700, "val": 530, "test": 624},
        "Kaggle chest_xray (about 5,230 train + val images, 10% validation; 624 test)",
    ),
    "multilabel": (
        {"train": 13500, "val": 1500, "test": 3000},
        "VinDr-CXR (15,000 training images, 10% validation; 3,000 test)",
    ),
}


@dataclass(frozen=True)
class Images:
    splits: dict[str, int]
    source: str
    assumed: bool


def dataset_images(study: Study, dataset: str | None) -> Images:
    """Split sizes from the named store (or the demo's built-in one when imported), else the
    assumption for what the profile is meant for."""
    from cxrkd.trainables.data.store import DatasetStore, datasets_dir

    name = dataset
    synthetic = study.profile.name in SYNTHETIC_PROFILES
    if name is None and synthetic and (datasets_dir() / study.default_dataset).exists():
        name = study.default_dataset
    if name is not None:
        manifest = DatasetStore.open(name).manifest
        splits = {k: int(v) for k, v in manifest.splits.items()}
        return Images(splits, f"dataset {manifest.title}: {splits}", False)
    key = "phantom" if study.profile.name in SYNTHETIC_PROFILES else study.task
    splits, what = ASSUMED_SPLITS[key]
    return Images(dict(splits), f"ASSUMPTION (no --dataset): {what}: {splits}", True)


def epoch_images(config: dict, images: Images) -> int:
    """Training images per epoch: whole batches of the train split (the loop drops the last
    partial batch), capped by ``steps_per_epoch``."""
    n_train = images.splits.get("train", 0)
    batch = min(int(config_value(config, "batch_size")), n_train) or 1
    steps = n_train // batch
    cap = int(config_value(config, "steps_per_epoch"))
    return (min(steps, cap) if cap else steps) * batch


def config_seconds(
    config: dict, teacher: dict | None, images: Images, rates
) -> tuple[float, float]:
    """(seconds per epoch, seconds of the test pass) of one configuration whose teacher (if
    any) runs online."""
    spec = ModelSpec.of(config)
    n = epoch_images(config, images)
    frozen = bool(config.get("freeze"))  # backward through the head only: forward's rate
    seconds = n / rates(spec, "eval" if frozen else "train").images_per_s
    seconds += images.splits.get("val", 0) / rates(spec, "eval").images_per_s
    if teacher is not None:
        seconds += n / rates(ModelSpec.of(teacher), "eval").images_per_s
    test = 0.0
    if config.get("evaluate_test"):
        test = images.splits.get("test", 0) / rates(spec, "eval").images_per_s
    return seconds, test


class Rates:
    """Images/s per (model, mode) from a table for one device kind; remembers what it used."""

    def __init__(self, table: ThroughputTable | None, kind: str) -> None:
        self.table, self.kind, self.used = table, kind, {}

    def __call__(self, spec: ModelSpec, mode: str) -> Rate:
        if spec.low_res and not (self.table and self.table.has_row(spec, mode, self.kind)):
            # The student runs at the model input size whatever its view: the model's cost.
            spec = dataclasses.replace(spec, low_res=0)
        if (spec, mode) not in self.used:
            rate = Rate(1.0, "", False)
            if self.table is not None:
                rate = self.table.rate(spec, mode, self.kind)
            self.used[(spec, mode)] = rate
        return self.used[(spec, mode)]


def cell_seconds(cell, images: Images, rates) -> tuple[float, float]:
    """(seconds per epoch, seconds of the test pass) of a cell's trials: the mean over the
    configurations they may run."""
    costs = [config_seconds(c, t, images, rates) for c, t in cell.configs]
    return sum(s for s, _ in costs) / len(costs), sum(t for _, t in costs) / len(costs)


def add_costs(stages: list[StagePlan], images: Images, rates, *, workers: int, price) -> None:
    for stage in stages:
        for cell in stage.cells:
            cell.epoch_s, test_s = cell_seconds(cell, images, rates)
            cell.trial_overhead_s = STARTUP_S + test_s
        stage.totals = {case: _totals(stage, case, workers, price) for case in CASES}


def _totals(stage: StagePlan, case: str, workers: int, price: float | None) -> dict:
    durations = [
        [e * cell.epoch_s + cell.trial_overhead_s for e in cell.per_trial[case]]
        for cell in stage.cells
    ]
    busy = sum(sum(d) for d in durations)
    hours = busy / 3600
    return {
        "trials": sum(c.trials[case] for c in stage.cells),
        "trial_epochs": round(sum(c.trial_epochs[case] for c in stage.cells), 1),
        "device_hours": round(hours, 3),
        "wall_hours": round(makespan(durations, workers) / 3600, 3),
        "usd": None if price is None else round(hours * price, 2),
    }


def trial_seconds(cell, case: str) -> list[float]:
    return [e * cell.epoch_s + cell.trial_overhead_s for e in cell.per_trial[case]]


def makespan(durations: list[list[float]], workers: int) -> float:
    """Seconds until the last trial ends: trials handed out round-robin over the cells (a
    stage's own wall time, as if it ran alone), each to the worker that frees up first."""
    order = [
        d[i] for i in range(max(map(len, durations), default=0)) for d in durations if i < len(d)
    ]
    free = [0.0] * max(1, min(workers, len(order)))
    for seconds in order:
        heapq.heappush(free, heapq.heappop(free) + seconds)
    return max(free) if order else 0.0
