"""Only a lost worker is retried: an error the trial raised itself ends it at once.

The classification (:func:`search.stage.worker_lost`) is tested on Ray's own exceptions; the
wiring through a real study on a private Ray whose workers count each trial attempt in a
file (a ``worker_process_setup_hook`` wraps ``run_trial`` in every worker): a trial whose
loss turns NaN runs once and ends errored with its reason, beside a trial whose worker process
dies on its first attempt and is retried to the end.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from probes import probe_profile
from ray import exceptions as ray_errors
from ray.tune.experiment import Trial

from cxrkd.search.run_state import RunOptions
from cxrkd.search.runner import run_study
from cxrkd.search.stage import MAX_FAILURES, retry_lost_workers_only, worker_lost
from cxrkd.spaces.studies import STUDIES, FixedCell, Profile, Stage, Study
from cxrkd.trainables.loop import TrialError, out_of_memory

STUDY = "retry-probe"
EPOCHS = 2
PROFILE = probe_profile(EPOCHS)
NAN_SEED, CRASH_SEED = 0, 1  # the trials tell themselves apart by seed


def _raised(exc: BaseException) -> ray_errors.RayTaskError:
    """What Tune gets when the trial raises ``exc``."""
    return ray_errors.RayTaskError("train", "Traceback ...", exc)


@pytest.mark.parametrize(
    "exc, lost",
    [
        (ray_errors.ActorDiedError(), True),  # the trial's process was killed
        (ray_errors.WorkerCrashedError(), True),
        (ray_errors.NodeDiedError("gone"), True),
        (_raised(ray_errors.ActorDiedError()), True),
        (_raised(TrialError("training loss became nan in epoch 2")), False),
        (_raised(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")), False),
        (_raised(ValueError("a bug")), False),
        (TrialError("raised on the driver"), False),
        (None, False),
    ],
)
def test_only_a_lost_worker_or_node_counts_as_lost(exc, lost):
    assert worker_lost(exc) is lost


@pytest.mark.parametrize(
    "exc, oom",
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("CUDA error: out of memory"), True),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
    ],
)
def test_out_of_memory_is_told_from_other_runtime_errors(exc, oom):
    assert out_of_memory(exc) is oom


def test_tune_own_error_handling_is_back_after_the_fit():
    tune_handle_error = Trial.handle_error
    with retry_lost_workers_only():
        assert Trial.handle_error is not tune_handle_error
    assert Trial.handle_error is tune_handle_error


def _attempt_counter(folder: Path):
    """A setup hook for every Ray worker: each call of ``run_trial`` leaves a file
    ``seed<seed>-<pid>-<n>`` in ``folder``; the crash trial's first attempt then exits its
    process at once, as an OOM-kill would. A local function: cloudpickle ships it by value,
    so the workers need not import this test module."""

    def hook() -> None:
        import cxrkd.trainables.trainable as trainable

        run_trial = trainable.run_trial

        def counted(config, data, *, reporter):
            seed = int(config["seed"])
            n = len(list(folder.glob(f"seed{seed}-*")))
            (folder / f"seed{seed}-{os.getpid()}-{n + 1}").touch()
            if seed == CRASH_SEED and n == 0:
                os._exit(1)
            return run_trial(config, data, reporter=reporter)

        trainable.run_trial = counted

    return hook


@pytest.fixture
def counting_ray(node_tmp, tmp_path, monkeypatch):
    import ray

    monkeypatch.setenv("CXRKD_TRIAL_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    folder = tmp_path / "attempts"
    folder.mkdir()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        log_to_driver=False,
        runtime_env={"worker_process_setup_hook": _attempt_counter(folder)},
    )
    try:
        yield folder
    finally:
        ray.shutdown()


def _retry_probe(profile: Profile) -> Study:
    base = {**profile.fixed, "method": "cnn_baseline", "model": "cnn_baseline"}
    cells = [
        FixedCell("nan", ({**base, "seed": NAN_SEED, "lr": 1e6},)),  # the loss turns NaN
        FixedCell("crash", ({**base, "seed": CRASH_SEED},)),
    ]

    # "final": a cell that chose nothing does not stop the study, so its report is written.
    stage = Stage("final", "final", cells, early_stopping=False)
    return Study(name=STUDY, task="binary", default_dataset="unused",
                 default_import=("phantom", "pneumonia", {}), stages=[stage],
                 profile=profile)  # fmt: skip


@pytest.mark.slow
def test_a_deterministic_error_ends_the_trial_at_once_and_a_lost_worker_is_retried(
    counting_ray, tiny_store, tmp_path, monkeypatch
):
    monkeypatch.setitem(STUDIES.all(), STUDY, (_retry_probe, {"demo": PROFILE}))
    run = Path(
        run_study(RunOptions(study=STUDY, dataset=tiny_store.name, name="R",
                             storage=str(tmp_path / "runs"), max_concurrent=2))
    )  # fmt: skip

    def attempts(seed: int) -> int:
        return len(list(counting_ray.glob(f"seed{seed}-*")))

    assert MAX_FAILURES > 0  # retries are on; the NaN trial did not use them
    assert attempts(NAN_SEED) == 1
    assert attempts(CRASH_SEED) == 2  # the first attempt's process died; the retry finished

    trials = pd.read_parquet(run / "trials.parquet").set_index("cell")
    nan, crash = trials.loc["nan"], trials.loc["crash"]
    assert nan["status"] == "errored"
    assert "training loss became nan" in nan["error"], nan["error"]
    assert crash["status"] == "completed" and crash["epoch"] == EPOCHS
    assert crash["error"] is None or pd.isna(crash["error"])
