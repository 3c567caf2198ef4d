"""Load: a search of a few hundred tiny trials on a three-node Ray cluster, through the real
driver; the driver's memory and what each trial costs beyond its own training.

Run: ``.venv/bin/python bench/load_trials.py`` (200 trials of 16 px, 2 epochs of 2 steps of
8 images). It imports a SYNTHETIC phantom store into a temporary ``CXRKD_HOME``, starts a
``ray.cluster_utils.Cluster`` on this machine (a head with ``--head-cpus`` CPUs, default 0 as
advised for a cluster's head, and two workers with ``--worker-cpus`` each) and runs
``run_study`` attached to it, for a bench-local study of one search cell (``cnn_baseline``,
``--trials`` configs proposed by Optuna TPE, no early stopping so that every trial runs the
same epochs): the driver's records, callbacks, searcher, scheduler and report all run.

Figures:

* driver memory: the driver process's RSS (``/proc/self/status``), sampled every 0.2 s from
  ``run_study``'s start to its end (Ray's driver-side core worker included), its peak, and
  its growth from the first tenth of the trials to the last;
* per-trial cost: ``wall * slots / trials`` (slot-seconds per trial through Tune) against the
  same configurations run by ``trainables.loop.run_trial`` in this process (``--direct``
  of them, one torch thread, as a trial has), side by side in one run; the direct runs are
  done before and after the search, to show how the machine's load moved;
* the driver's time in its records callback per trial, first tenth vs last tenth (each
  epoch row rewrites its cell's records file, so this grows with the trials of a cell).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

STUDY = "load-probe"
OBJECT_STORE = 100 * 1024 * 1024  # per node; the dataset is ~100 KB


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class RssSampler(threading.Thread):
    def __init__(self, every_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.every_s, self.samples = every_s, [rss_mb()]
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.samples.append(rss_mb())


def register_study(args) -> None:
    from cxrkd.spaces.studies import STUDIES, Profile, SearchCell, Stage, Study

    fixed = {
        "img_size": args.img_size,
        "epochs": args.epochs,
        "pretrained": False,
        "steps_per_epoch": args.steps,
        "batch_size": args.batch_size,
        "augment": False,
    }
    profile = Profile(name="demo", fixed=fixed, samples=args.trials, teacher_samples=1,
                      seeds=1, grace_period=1, device_hint="CPU")  # fmt: skip

    def factory(profile: Profile) -> Study:
        cnn = {**profile.fixed, "method": "cnn_baseline", "model": "cnn_baseline"}
        cells = [SearchCell("cnn", "cnn_baseline", cnn, profile.samples)]
        return Study(name=STUDY, task="binary", default_dataset="unused",
                     default_import=("phantom", "pneumonia", {}),
                     stages=[Stage("search", "search", cells, early_stopping=False)],
                     profile=profile)  # fmt: skip

    STUDIES.all()[STUDY] = (factory, {"demo": profile})


class Marks:
    """Per trial: when Tune started it and when it completed, the driver's RSS then, and the
    driver's time in the records callback (added to the study's Tuner)."""

    def __init__(self) -> None:
        self.start: dict[str, float] = {}
        self.end: dict[str, float] = {}
        self.rss_at_end: list[float] = []
        self.records_s: dict[str, float] = {}

    def install(self) -> None:
        from cxrkd.search import records

        marks = self

        class Timed(records.RecordsCallback):
            def _timed(self, name, trial, *args, **kwargs):
                t0 = time.perf_counter()
                getattr(super(), name)(*args, trial=trial, **kwargs)
                key = trial.trial_id
                marks.records_s[key] = marks.records_s.get(key, 0) + time.perf_counter() - t0

            def on_trial_start(self, iteration, trials, trial, **info):
                marks.start[trial.trial_id] = time.perf_counter()

            def on_trial_result(self, iteration, trials, trial, result, **info):
                self._timed("on_trial_result", trial, iteration, trials, result=result, **info)

            def on_trial_complete(self, iteration, trials, trial, **info):
                self._timed("on_trial_complete", trial, iteration, trials, **info)
                marks.end[trial.trial_id] = time.perf_counter()
                marks.rss_at_end.append(rss_mb())

        records.RecordsCallback = Timed  # optuna_live.run_callbacks imports it per run


def run_direct(configs: list[dict], store) -> list[float]:
    import torch

    from cxrkd.trainables.context import DataBundle
    from cxrkd.trainables.loop import run_trial
    from cxrkd.trainables.trainable import LocalReporter

    torch.set_num_threads(1)
    bundle = DataBundle.from_store(store)
    walls = []
    for config in configs:
        t0 = time.perf_counter()
        run_trial(config, bundle, reporter=LocalReporter())
        walls.append(time.perf_counter() - t0)
    return walls


def tenth(values: list[float], last: bool) -> float:
    k = max(1, len(values) // 10)
    return statistics.median(values[-k:] if last else values[:k])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="training steps per epoch")
    parser.add_argument("--img-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--head-cpus", type=int, default=0)
    parser.add_argument("--worker-cpus", type=int, default=1)
    parser.add_argument("--direct", type=int, default=10, help="direct runs before and after")
    parser.add_argument("--keep", help="keep the run folder here (default: a temp folder)")
    args = parser.parse_args()

    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="cxrkd-load-")
    root = Path(args.keep or tmp.name)
    os.environ["CXRKD_HOME"] = str(root / "home")
    # Ray's nodes (and so every trial) inherit this environment: one torch thread per trial.
    os.environ.setdefault("CXRKD_TRIAL_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The trials' temporary files go under the bench's folder (removed with it); Ray's
    # session (socket paths must stay short) stays in the usual place.
    os.environ.setdefault("RAY_TMPDIR", tempfile.gettempdir())
    (root / "node-tmp").mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(root / "node-tmp")

    import ray
    from ray.cluster_utils import Cluster

    from cxrkd.search.run_state import RunOptions
    from cxrkd.search.runner import run_study
    from cxrkd.spaces.studies import STUDIES
    from cxrkd.trainables.data.importers import import_dataset
    from cxrkd.trainables.data.store import DatasetStore

    manifest = import_dataset("phantom", "pneumonia", name="bench", n=120, size=32,
                           progress=False, workers=1)  # fmt: skip
    store = DatasetStore.open(manifest.name)
    register_study(args)
    base = {**STUDIES.get(STUDY)[1]["demo"].fixed, "method": "cnn_baseline",
            "model": "cnn_baseline", "lr": 1e-3}  # fmt: skip
    load = [os.getloadavg()[0]]
    rss_imports = rss_mb()
    run_direct([base], store)  # warm-up: the first trial in a process pays torch's set-up
    before = run_direct([base] * args.direct, store)

    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": args.head_cpus, "object_store_memory": OBJECT_STORE,
        "include_dashboard": False})  # fmt: skip
    for _ in range(2):
        cluster.add_node(num_cpus=args.worker_cpus, object_store_memory=OBJECT_STORE)
    cluster.wait_for_nodes()
    cluster_s = time.perf_counter() - t0
    slots = args.head_cpus + 2 * args.worker_cpus
    marks = Marks()
    marks.install()
    sampler = RssSampler()
    rss_before = rss_mb()
    sampler.start()
    t0 = time.perf_counter()
    try:
        run_uri = run_study(RunOptions(study=STUDY, dataset=manifest.name, name="load",
                                       storage=str(root / "runs"), address=cluster.address,
                                       max_concurrent=slots))  # fmt: skip
        wall = time.perf_counter() - t0
    finally:
        sampler.stop.set()
        sampler.join()
        ray.shutdown()
        cluster.shutdown()
    load.append(os.getloadavg()[0])

    trials = pd.read_parquet(Path(run_uri) / "trials.parquet")
    epochs = pd.read_parquet(Path(run_uri) / "epochs.parquet")
    assert len(trials) == args.trials and trials["trial_id"].is_unique, len(trials)
    assert (trials["status"] == "completed").all(), trials["status"].value_counts()
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert len(epochs) == args.trials * args.epochs, len(epochs)
    step = max(1, args.trials // args.direct)
    configs = [
        {k.removeprefix("config/"): (v.item() if hasattr(v, "item") else v)
         for k, v in row.items() if k.startswith("config/")}
        for _, row in trials.iloc[::step].head(args.direct).iterrows()
    ]  # fmt: skip
    after = run_direct(configs, store)
    load.append(os.getloadavg()[0])

    order = sorted(marks.end, key=marks.end.get)  # trials in the order they completed
    spans = [marks.end[t] - marks.start[t] for t in order]
    records = [marks.records_s[t] for t in order]
    rss_end = marks.rss_at_end
    direct = statistics.median(before + after)
    per_trial = wall * slots / args.trials
    train = epochs["epoch_s"].sum() / args.trials
    print(f"\n{args.trials} trials x {args.epochs} epochs x {args.steps} steps, "
          f"{args.img_size} px, batch {args.batch_size}; cluster: head {args.head_cpus} CPU + "
          f"2 workers x {args.worker_cpus} CPU = {slots} trial slots "
          f"(started in {cluster_s:.1f} s)")  # fmt: skip
    print(f"load average (1 min): {' -> '.join(f'{x:.2f}' for x in load)} "
          f"(before direct runs, after the search, after the direct runs)")  # fmt: skip
    print(f"all {len(trials)} trials completed; {len(epochs)} epoch rows, no duplicate")
    print("\ndriver RSS (MB)")
    print(f"  after imports             {rss_imports:8.0f}  (torch, Ray, pandas, ...)")
    print(f"  before run_study          {rss_before:8.0f}  (after the first direct runs)")
    print(f"  peak during the search    {max(sampler.samples):8.0f}")
    print(f"  at the first tenth done   {tenth(rss_end, last=False):8.0f}")
    print(f"  at the last tenth done    {tenth(rss_end, last=True):8.0f}")
    growth = (rss_end[-1] - rss_end[len(rss_end) // 10]) / max(1, len(rss_end) * 9 // 10)
    print(f"  growth per trial          {growth * 1024:8.1f} KB")
    print("\nper trial (s)")
    print(f"  search wall               {wall:8.1f}  (run_study, report included)")
    print(f"  through Tune: wall*slots/trials {per_trial:6.2f}")
    b, a = statistics.median(before), statistics.median(after)
    print(f"  direct run_trial, median  {direct:8.2f}  (before {b:.2f}, after {a:.2f})")
    print(f"  ratio Tune / direct       {per_trial / direct:8.2f}")
    print(f"  difference                {per_trial - direct:8.2f}")
    print(f"  sum(epoch_s) / trials     {train:8.2f}  (training + validation inside trials)")
    print(f"  Tune start->complete, median first/last tenth  "
          f"{tenth(spans, last=False):.2f} / {tenth(spans, last=True):.2f}")  # fmt: skip
    r0, r1 = tenth(records, last=False) * 1e3, tenth(records, last=True) * 1e3
    print(f"  records callback, median first/last tenth       {r0:.0f} / {r1:.0f} ms")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
