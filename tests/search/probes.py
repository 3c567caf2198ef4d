"""Small studies that the driver tests register for one test (``monkeypatch.setitem`` on
``STUDIES``): their shared profile."""

from __future__ import annotations

from spaces.studies import Profile


def probe_profile(epochs: int) -> Profile:
    """Every trial tiny (16 px, ``epochs`` epochs of 2 steps of 8 images), one of each."""
    return Profile(
        name="demo",
        fixed={"img_size": 16, "epochs": epochs, "pretrained": False, "steps_per_epoch": 2,
               "batch_size": 8, "augment": False},
        samples=1, teacher_samples=1, seeds=1, grace_period=1,
    )  # fmt: skip
