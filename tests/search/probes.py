"""Small studies that the driver tests register for one test (``monkeypatch.setitem`` on
``STUDIES``): their shared profile; and a CLI that knows the kill-and-resume probe study, for
tests that run the driver in a subprocess (``python -c "import probes; probes.cli()" ARGS``
with this folder on ``PYTHONPATH``).
"""

from __future__ import annotations

import dataclasses
import sys

from cxrkd.spaces.studies import STUDIES, FixedCell, Profile, Stage, Study

# The torture test's study: one stage, one cell of fixed configs (one per seed), no early
# stopping, so every trial runs every epoch and the expected records are known exactly.
KILL_PROBE = "kill-probe"


def probe_profile(epochs: int) -> Profile:
    """Every trial tiny (16 px, ``epochs`` epochs of 2 steps of 8 images), one of each."""
    return Profile(
        name="demo",
        fixed={"img_size": 16, "epochs": epochs, "pretrained": False, "steps_per_epoch": 2,
               "batch_size": 8, "augment": False},
        samples=1, teacher_samples=1, seeds=1, grace_period=1,
    )  # fmt: skip


def kill_probe(profile: Profile, *, name: str = KILL_PROBE) -> Study:
    """``profile.seeds`` trials of the baseline CNN, ``fixed["epochs"]`` epochs each."""
    base = {**profile.fixed, "method": "cnn_baseline", "model": "cnn_baseline"}
    cells = [FixedCell("cnn", tuple({**base, "seed": s} for s in range(profile.seeds)))]
    return Study(
        name=name,
        task="binary",
        default_dataset="unused",
        default_import=("phantom", "pneumonia", {}),
        stages=[Stage("search", "search", cells, early_stopping=False)],
        profile=profile,
    )


def kill_probe_profile(*, trials: int, epochs: int) -> Profile:
    return dataclasses.replace(probe_profile(epochs), seeds=trials)


def cli(argv: list[str] | None = None) -> int:
    """``cxrkd ARGS`` with :data:`KILL_PROBE` registered (trials and epochs from the
    environment: ``KILL_PROBE_TRIALS``, ``KILL_PROBE_EPOCHS``)."""
    import os

    from cxrkd.search.cli import main

    profile = kill_probe_profile(
        trials=int(os.environ.get("KILL_PROBE_TRIALS", "4")),
        epochs=int(os.environ.get("KILL_PROBE_EPOCHS", "4")),
    )
    STUDIES.all()[KILL_PROBE] = (kill_probe, {"demo": profile})
    return main(sys.argv[1:] if argv is None else argv)
