"""What Ray Tune + the driver cost on top of training: a small demo study, timed end to end.

Run: ``.venv/bin/python bench/tune_overhead.py`` (tiny trials: 16 px, 2 epochs of 2 steps of
8 images) or, with trials the size of the demo profile's, ``... --n 900 --img-size 32
--epochs 4 --steps 20 --batch-size 32``. In one run it imports a SYNTHETIC phantom store
(``--n`` images, 32 px) into a temporary ``CXRKD_HOME``, starts a private local Ray with
``--concurrency`` CPUs (default 2), runs ``pneumonia-kd`` with ``--num-samples`` (default 1:
1 teacher + 4 search + 10 final trials) and compares

* ``wall``: the driver's wall time (``run_study``; Ray's start is reported apart), with
* ``train``: the sum over every reported epoch of the trial's own ``epoch_s`` (train + val
  (+ test) inside the trial), divided by the concurrency: the wall time an ideal scheduler
  with no per-trial cost would need.

``overhead = wall / train - 1``. The breakdown times the study's one experiment (Tuner
set-up + fit) and the report; splits the experiment's wall into training, cost inside trials
(Tune starting a trial -> it completes, beyond its epochs: data from the object store, model
build, checkpoint save + persist per epoch) and cost outside trials (Tuner set-up, actor
start, slots idle with no trial ready to start); and lists the worker pids, which show
whether ``reuse_actors=True`` runs trials of different stages in one actor.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

TINY = {"img_size": "16", "epochs": "2", "steps_per_epoch": "2", "batch_size": "8"}


class Timeline:
    """Wall-clock marks of the driver's phases and of every trial (from Tune's callbacks)."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, float]] = []
        self.trials: dict[str, dict] = {}
        self.stage_begin: dict[str, float] = {}

    def timed(self, name: str, fn):
        """``fn`` that adds its wall time to the phases under ``name``."""

        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.phases.append((name, time.perf_counter() - t0))

        return wrapper

    def callback(self):
        from ray.tune import Callback

        store = self.trials

        class Marks(Callback):  # Tune calls callbacks with keyword arguments
            def on_trial_start(self, iteration, trials, trial, **info):
                stage = trial.config["stage"]
                store.setdefault(trial.trial_id, {"stage": stage, "starts": []})
                store[trial.trial_id]["starts"].append(time.perf_counter())

            def on_trial_result(self, iteration, trials, trial, result, **info):
                row = store[trial.trial_id]
                row.setdefault("results", []).append(
                    (time.perf_counter(), float(result.get("epoch_s", 0.0)))
                )
                row["pid"] = result.get("pid")
                row["cell"] = trial.config["cell"]

            def on_trial_complete(self, iteration, trials, trial, **info):
                store[trial.trial_id]["end"] = time.perf_counter()

        return Marks()


def instrument(timeline: Timeline) -> None:
    """Wrap the driver's phases and add a timing callback to the study's Tuner."""
    import cxrkd.results.report as report_module
    import cxrkd.search.runner as runner_module
    from cxrkd.search import records, study_run

    run_experiment = study_run.run_experiment

    def run_experiment_timed(ctx):
        original = records.RecordsCallback  # optuna_live.run_callbacks imports it per run

        class RecordsAndMarks(original):  # one more callback, same Tuner otherwise
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.marks = timeline.callback()

            def on_trial_start(self, *args, **kwargs):
                self.marks.on_trial_start(*args, **kwargs)

            def on_trial_result(self, *args, **kwargs):
                super().on_trial_result(*args, **kwargs)
                self.marks.on_trial_result(*args, **kwargs)

            def on_trial_complete(self, *args, **kwargs):
                super().on_trial_complete(*args, **kwargs)
                self.marks.on_trial_complete(*args, **kwargs)

        records.RecordsCallback = RecordsAndMarks
        timeline.stage_begin["experiment"] = time.perf_counter()
        try:
            return timeline.timed("experiment", run_experiment)(ctx)
        finally:
            records.RecordsCallback = original

    runner_module.run_experiment = run_experiment_timed
    report_module.write_report = timeline.timed("report", report_module.write_report)


def trial_costs(timeline: Timeline) -> pd.DataFrame:
    rows = []
    for trial_id, t in sorted(timeline.trials.items(), key=lambda kv: kv[1]["starts"][0]):
        results = t.get("results", [])
        if not results:
            continue
        first_at, first_epoch_s = results[0]
        gaps = [b[0] - a[0] - b[1] for a, b in itertools.pairwise(results)]
        rows.append(
            {
                "trial_id": trial_id,
                "stage": t["stage"],
                "cell": t.get("cell"),
                "pid": t.get("pid"),
                "started": t["starts"][0],
                "span_s": t.get("end", results[-1][0]) - t["starts"][0],
                # Tune starting the trial -> its first result, less the first epoch itself:
                # data from the object store, model build, first checkpoint save + persist.
                "start_cost_s": first_at - t["starts"][0] - first_epoch_s,
                # Between two results, beyond the epoch: checkpoint save + persist + report.
                "epoch_cost_s": statistics.median(gaps) if gaps else float("nan"),
                # Last result -> Tune calling the trial complete.
                "end_cost_s": t.get("end", results[-1][0]) - results[-1][0],
            }
        )
    frame = pd.DataFrame(rows)
    if len(frame):  # the first trial of each worker process paid for starting the actor
        frame["new_actor"] = ~frame.duplicated(["pid"])
    return frame


def idle_slots(costs: pd.DataFrame, begin: float, slots: int) -> dict:
    """Slot-seconds with no trial running, from the experiment's start to its last trial's
    end: before the first trial, between trials, and after the last trial began (the tail,
    where slots wait for the trials still running)."""
    ends = costs["started"] + costs["span_s"]
    events = sorted([(t, 1) for t in costs["started"]] + [(t, -1) for t in ends])
    last_start, end = costs["started"].max(), ends.max()
    out = {"before": (costs["started"].min() - begin) * slots, "between": 0.0, "tail": 0.0}
    running, now = 0, costs["started"].min()
    for t, step in events:
        free = max(0, slots - running) * (t - now)
        out["tail" if now >= last_start else "between"] += free
        running, now = running + step, t
    last = costs.loc[costs["started"].idxmax()]
    out["total"] = (end - begin) * slots
    out["last"] = f"{last['cell']} ({last['stage']}), {last['span_s']:.1f} s"
    return out


def print_trial_costs(costs: pd.DataFrame, timeline: Timeline, slots: int) -> None:
    print("\nper trial (s): median [min, max] (n)")
    for label, values in [
        ("start, new actor", costs.loc[costs["new_actor"], "start_cost_s"]),
        ("start, reused actor", costs.loc[~costs["new_actor"], "start_cost_s"]),
        ("per epoch beyond epoch_s", costs["epoch_cost_s"].dropna()),
        ("end", costs["end_cost_s"]),
    ]:
        if len(values):
            print(f"  {label:<26} {statistics.median(values):5.2f} "
                  f"[{values.min():5.2f}, {values.max():5.2f}] ({len(values)})")  # fmt: skip
    begin = timeline.stage_begin["experiment"]
    print(f"\nexperiment start -> its first trial starts (Tuner set-up, actor scheduling): "
          f"{costs['started'].min() - begin:5.2f} s")  # fmt: skip
    idle = idle_slots(costs, begin, slots)
    print(f"\nslot-seconds with no trial (of {idle['total']:.1f} slot-s in the experiment):")
    print(f"  before the first trial      {idle['before']:6.1f}")
    print(f"  between trials              {idle['between']:6.1f}  (actor hand-over, cells waiting)")
    print(f"  after the last trial began  {idle['tail']:6.1f}  (last trial: {idle['last']})")
    print("\nactor reuse (fewer worker pids than trials = reused):")
    by_pid = costs.groupby("pid")["stage"].apply(lambda s: sorted(set(s)))
    mixed = sum(len(stages) > 1 for stages in by_pid)
    print(
        f"  {len(costs)} trials in {costs['pid'].nunique()} worker process(es); {mixed} "
        "process(es) ran trials of more than one stage"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per trial")
    parser.add_argument("--steps", type=int, default=2, help="training steps per epoch")
    parser.add_argument("--img-size", type=int, default=16, help="model input side (px)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n", type=int, default=120, help="images in the phantom store")
    parser.add_argument("--timeline", action="store_true", help="print every trial's span")
    parser.add_argument("--keep", help="keep the run folder here (default: a temp folder)")
    args = parser.parse_args()

    root = Path(args.keep or tempfile.mkdtemp(prefix="cxrkd-bench-"))
    os.environ["CXRKD_HOME"] = str(root / "home")
    os.environ.setdefault("CXRKD_TRIAL_THREADS", "1")  # one core per trial
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import ray

    from cxrkd.search.preflight import check_cells
    from cxrkd.search.run_state import RunOptions
    from cxrkd.search.runner import run_study
    from cxrkd.search.study_dataset import open_dataset
    from cxrkd.search.study_options import study_with_options, typed_overrides
    from cxrkd.trainables.data.importers import import_dataset

    store = import_dataset(
        "phantom", "pneumonia", name="bench", n=args.n, size=32, progress=False, workers=1
    )
    options = RunOptions(
        study="pneumonia-kd",
        dataset=store.name,
        name="bench",
        storage=str(root / "runs"),
        num_samples=args.num_samples,
        max_concurrent=args.concurrency,
        overrides={
            **TINY,
            "epochs": str(args.epochs),
            "steps_per_epoch": str(args.steps),
            "img_size": str(args.img_size),
            "batch_size": str(args.batch_size),
        },
    )
    # The demo's pretrained backbones are built once per machine and cached in CXRKD_HOME (a
    # user's second run finds them): the driver's own pre-flight builds them here, timed
    # apart, not counted in the run's wall (whose pre-flight then finds them cached).
    t0 = time.perf_counter()
    study = study_with_options(options)
    check_cells(study, open_dataset(study, store.name), typed_overrides(study, options.overrides))
    backbones = time.perf_counter() - t0
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    # As the driver's own init_ray (which then uses this Ray), with a fixed CPU count.
    ray.init(address="local", num_cpus=args.concurrency, include_dashboard=False,
             log_to_driver=False)  # fmt: skip
    ray_start = time.perf_counter() - t0

    timeline = Timeline()
    instrument(timeline)
    t0 = time.perf_counter()
    run_uri = run_study(options)
    wall = time.perf_counter() - t0
    ray.shutdown()
    load_after = os.getloadavg()

    epochs = pd.read_parquet(Path(run_uri) / "epochs.parquet")
    trials = pd.read_parquet(Path(run_uri) / "trials.parquet")
    conc = args.concurrency
    train = epochs["epoch_s"].sum() / conc
    print(f"\nrun {run_uri}: {len(trials)} trials, {len(epochs)} epochs, concurrency {conc}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    print(f"demo backbones, pre-flight    {backbones:7.1f} s  (once per machine; not in wall)")
    print(f"ray start                     {ray_start:7.1f} s  (not in wall)")
    print(f"wall (run_study)              {wall:7.1f} s")
    print(f"sum(epoch_s) / concurrency    {train:7.1f} s")
    print(f"overhead wall / train - 1     {wall / train - 1:7.0%}   (goal <= 15%)")
    print("\nphases (wall s):")
    phases = dict(timeline.phases)
    for name, seconds in timeline.phases:
        print(f"  {name:<24} {seconds:7.1f}")
    rest = wall - sum(phases.values())
    print(f"  {'driver set-up, other':<24} {rest:7.1f}  (checks, data to object store, ...)")
    costs = trial_costs(timeline)
    print("\nexperiment (s): wall = train + in trials + outside trials")
    print("  (in trials: Tune starting a trial -> it completes, beyond its epochs' epoch_s;")
    print("   outside: Tuner set-up, actor start, slots idle with no trial ready to start)")
    exp_wall = phases.get("experiment", float("nan"))
    busy = costs["span_s"].sum() / conc
    print(f"  {len(trials):3d} trials  wall {exp_wall:6.1f} = train {train:6.1f} "
          f"+ in {busy - train:5.1f} + outside {exp_wall - busy:5.1f}  "
          f"overhead {exp_wall / train - 1:5.0%}")  # fmt: skip
    print("\nper stage: trials, first start -> last end (s) (stages overlap)")
    for stage, rows in costs.groupby("stage", sort=False):
        span = (rows["started"] + rows["span_s"]).max() - rows["started"].min()
        print(f"  {stage:<8} {len(rows):3d} trials  {span:6.1f}")
    if len(costs):
        print_trial_costs(costs, timeline, conc)
    if args.timeline and len(costs):
        begin = timeline.stage_begin["experiment"]
        print("\ntimeline (s from the experiment's start): start, end, pid, stage/cell")
        for row in costs.sort_values("started").itertuples():
            print(f"  {row.started - begin:7.1f} {row.started - begin + row.span_s:7.1f} "
                  f"{row.pid:>8} {row.stage}/{row.cell}")  # fmt: skip


if __name__ == "__main__":
    main()
