"""Checks the driver makes before any trial: weights offline, GPU out-of-memory reporting."""

from __future__ import annotations

import time

import pytest
import torch

from cxrkd.search.run_state import RunOptions
from cxrkd.search.runner import run_study
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.loop import TrialError, run_trial
from cxrkd.trainables.trainable import LocalReporter


def test_paper_profile_offline_fails_once_before_any_trial(tiny_store, tmp_path, monkeypatch):
    """Offline, without a weights folder: one error naming every missing model and the fixes,
    raised before Ray starts (no run folder is left behind)."""
    import ray

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    t0 = time.monotonic()
    with pytest.raises(CxrkdError) as err:
        run_study(
            RunOptions(
                study="pneumonia-kd", profile="paper", dataset="tiny-pneumonia",
                storage=str(tmp_path / "runs"), name="offline",
            )
        )  # fmt: skip
    message = str(err.value)
    assert "resnet18" in message and "resnet50" in message
    assert "cxrkd weights download" in message and "--weights-dir" in message
    assert time.monotonic() - t0 < 20
    assert not ray.is_initialized()
    assert not (tmp_path / "runs" / "offline").exists()


def test_cuda_out_of_memory_becomes_a_trial_error(monkeypatch):
    """The trial ends with the fix in its error; Tune records it and the search goes on."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "trainables"))
    from helpers import binary_bundle

    import cxrkd.trainables.loop as loop

    def boom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop, "_train", boom)
    cfg = {"method": "cnn_baseline", "model": "cnn_baseline", "img_size": 16, "batch_size": 512}
    with pytest.raises(TrialError, match=r"out of memory with batch_size=512.*lower batch_size"):
        run_trial(cfg, binary_bundle(n=16, size=16), reporter=LocalReporter())
