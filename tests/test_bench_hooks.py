"""The benches time the real driver by wrapping its parts (the records callback, the study's
experiment, the report). A refactor that moves one of those parts made both benches fail at
their first trial, unnoticed until someone ran them; these tests install each bench's hooks
and check that the driver builds its callbacks through them, without running a study."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def driver_callbacks(tmp_path) -> list:
    """The callbacks the driver adds to a study's Tuner (search.optuna_live.run_callbacks)."""
    from cxrkd.search.optuna_live import run_callbacks

    return run_callbacks(str(tmp_path), "probe")


def test_the_load_bench_times_the_drivers_records_callback(tmp_path, monkeypatch):
    from cxrkd.search import records

    monkeypatch.setattr(records, "RecordsCallback", records.RecordsCallback)  # put back after
    original = records.RecordsCallback
    marks = bench("load_trials").Marks()
    marks.install()
    first = driver_callbacks(tmp_path)[0]
    assert type(first) is not original and isinstance(first, original)
    assert hasattr(first, "_timed")


def test_the_overhead_bench_wraps_the_experiment_and_the_report(tmp_path, monkeypatch):
    import cxrkd.results.report as report_module
    import cxrkd.search.runner as runner_module
    from cxrkd.search import records, study_run

    seen = []
    # The experiment, as the driver runs it, reduced to building its callbacks.
    monkeypatch.setattr(
        study_run, "run_experiment", lambda ctx: seen.extend(driver_callbacks(tmp_path))
    )
    for module, name in [(runner_module, "run_experiment"), (report_module, "write_report"),
                         (records, "RecordsCallback")]:  # fmt: skip
        monkeypatch.setattr(module, name, getattr(module, name))  # put back after the test
    original = records.RecordsCallback
    overhead = bench("tune_overhead")
    timeline = overhead.Timeline()
    overhead.instrument(timeline)
    runner_module.run_experiment(None)
    assert isinstance(seen[0], original) and type(seen[0]) is not original
    assert hasattr(seen[0], "marks")
    assert records.RecordsCallback is original  # put back once the experiment ended
    assert [name for name, _ in timeline.phases] == ["experiment"]


def test_the_overhead_bench_splits_idle_slot_time_before_between_and_after():
    import pandas as pd

    # Two slots: a [1, 5], b [1, 6], c [5, 15], d [6, 8]; the experiment began at 0.
    costs = pd.DataFrame({"started": [1.0, 1.0, 5.0, 6.0], "span_s": [4.0, 5.0, 10.0, 2.0],
                          "cell": list("abcd"), "stage": ["final"] * 4})  # fmt: skip
    idle = bench("tune_overhead").idle_slots(costs, 0.0, 2)
    assert idle["before"] == 2.0  # both slots until the first trial
    assert idle["between"] == 0.0  # c took a's slot, d took b's at once
    assert idle["tail"] == 7.0  # c alone from 8 to 15
    assert idle["total"] == 30.0 == idle["before"] + idle["tail"] + costs["span_s"].sum()
    assert idle["last"].startswith("d (final)")
