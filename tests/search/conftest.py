"""Shared fixtures of the driver tests: a tiny dataset store, private Ray instances.

Ray rules: every Ray these tests use is started here (a local one or a multi-node cluster on
this machine) and shut down in the fixture's finalizer; nothing attaches to a cluster it did
not start.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import pytest

from cxrkd.trainables.data.importers import import_dataset
from cxrkd.trainables.data.store import Manifest

# Every trial of these tests: 16 px, 2 epochs of 2 steps of 8 images (seconds on a CPU), and
# no pretrained weights: the demo profile's phantom backbones take a minute to build
# (tests/trainables/test_phantom_backbones.py tests them).
TINY = {
    "img_size": "16",
    "epochs": "2",
    "steps_per_epoch": "2",
    "batch_size": "8",
    "pretrained": "false",
}
TINY_SETS = [f"{k}={v}" for k, v in TINY.items()]
STORE = "tiny-pneumonia"
# Small object stores: the dataset is ~100 KB and the machine is shared.
OBJECT_STORE = 100 * 1024 * 1024


def make_store(home: Path, *, name: str = STORE, preset: str = "pneumonia") -> Manifest:
    """~120 synthetic 32 px radiographs with patients and train/val/test splits."""
    return import_dataset(
        "phantom", preset, name=name, n=120, size=32, home=home, progress=False, workers=1
    )


@pytest.fixture
def home() -> Path:
    """This test's private CXRKD_HOME (tests/conftest.py sets it)."""
    return Path(os.environ["CXRKD_HOME"])


@pytest.fixture
def node_tmp(monkeypatch, tmp_path) -> Path:
    """The trials' temporary files in this test's folder (requested before Ray starts: its
    processes inherit TMPDIR): a killed trial leaves its checkpoint folder behind, as a lost
    machine would, and it must not pile up in the machine's /tmp."""
    path = tmp_path / "node-tmp"
    path.mkdir()
    # Ray's own session (sockets, whose paths must stay short) stays where it was.
    monkeypatch.setenv("RAY_TMPDIR", os.environ.get("RAY_TMPDIR", tempfile.gettempdir()))
    monkeypatch.setenv("TMPDIR", str(path))
    return path


@pytest.fixture
def tiny_store(home: Path) -> Manifest:
    return make_store(home)


@pytest.fixture
def store_maker(home: Path):
    """``store_maker(name=..., preset=...)``: another tiny store in this test's home."""
    return functools.partial(make_store, home)


@pytest.fixture
def tiny() -> dict[str, str]:
    """``--set`` values that make every trial tiny."""
    return dict(TINY)


def _thread_env(monkeypatch) -> None:
    # One torch thread per trial: trials already run side by side on the 2 cores.
    monkeypatch.setenv("CXRKD_TRIAL_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def local_ray(monkeypatch):
    """A private single-node Ray with 2 CPUs; the driver uses it instead of starting one."""
    import ray

    _thread_env(monkeypatch)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=OBJECT_STORE,
        log_to_driver=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def ray_cluster(monkeypatch):
    """Three Ray nodes on this machine (head + two workers, 1 CPU each), not connected: the
    driver attaches to ``cluster.address`` as it would to a real cluster."""
    import ray
    from ray.cluster_utils import Cluster

    _thread_env(monkeypatch)
    common = {"num_cpus": 1, "object_store_memory": OBJECT_STORE}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**common, "include_dashboard": False, "resources": {"head": 1}},
    )
    try:
        cluster.add_node(**common, resources={"node_a": 1})
        cluster.add_node(**common, resources={"node_b": 1})
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()  # the driver stays attached to a cluster it did not start
        cluster.shutdown()
