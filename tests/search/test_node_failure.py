"""A worker node lost mid-trial: the trial goes on from its last checkpoint on another node.

Three Ray nodes on this machine: a head with no CPU (the driver attaches to it, no trial can
run there) and two 1-CPU workers, so two trials run side by side, one per worker. Once the
first trial has checkpointed its first epoch, its node is killed (every process of it, no
graceful shutdown: a lost machine) and a fresh worker joins. Tune retries the trial from
that checkpoint on a surviving node, the study completes, and the run's records hold every
epoch of every trial exactly once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from probes import kill_probe, kill_probe_profile
from trial_spy import Spy, install

from cxrkd.search.run_state import RunOptions
from cxrkd.search.runner import run_study
from cxrkd.spaces.studies import STUDIES, Profile, Study

STUDY = "node-loss-probe"
OBJECT_STORE = 100 * 1024 * 1024  # per node; the tiny dataset is ~100 KB
EPOCHS = 3
PROFILE = kill_probe_profile(trials=2, epochs=EPOCHS)  # two trials: seeds 0 and 1
# The GCS declares a node dead after this many missed health checks (defaults: 5 of 3 s).
FAST_NODE_DEATH = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}


def _node_loss_probe(profile: Profile) -> Study:
    """Two baseline-CNN trials (the profile's seeds: 2), so one can be on the lost node."""
    return kill_probe(profile, name=STUDY)


@pytest.fixture
def worker_cluster(node_tmp, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("CXRKD_TRIAL_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": OBJECT_STORE,
                        "include_dashboard": False, "_system_config": FAST_NODE_DEATH},
    )  # fmt: skip
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()  # the driver stays attached to a cluster it did not start
        cluster.shutdown()


@pytest.mark.slow
def test_a_trial_on_a_lost_node_resumes_from_its_checkpoint_elsewhere(
    worker_cluster, tiny_store, tmp_path, monkeypatch
):
    cluster = worker_cluster
    killed: list[tuple[str, str, list[int]]] = []  # (trial, node, epochs reported by then)

    def kill_node_of_first_checkpoint(stage: str, trial) -> None:
        if killed:
            return
        node_id = str(trial.last_result["node_id"])
        (node,) = [n for n in cluster.worker_nodes if n.node_id == node_id]
        killed.append((trial.trial_id, node_id, spy.epochs_of(trial.trial_id)))
        cluster.remove_node(node, allow_graceful=False)
        cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)  # capacity stays

    spy = install(monkeypatch, Spy(on_saved=kill_node_of_first_checkpoint))
    monkeypatch.setitem(STUDIES.all(), STUDY, (_node_loss_probe, {"demo": PROFILE}))
    run = Path(
        run_study(RunOptions(study=STUDY, dataset=tiny_store.name, name="R",
                             storage=str(tmp_path / "runs"), address=cluster.address,
                             max_concurrent=2))
    )  # fmt: skip

    assert len(killed) == 1
    trial_id, node_id, before = killed[0]
    assert before == [1]  # killed mid-trial, after its first checkpoint
    # Tune saw each epoch once: the retry began after the checkpoint, not at epoch 1.
    assert spy.epochs_of(trial_id) == list(range(1, EPOCHS + 1))
    nodes = [r[4] for r in spy.rows(trial_id)]
    assert nodes[0] == node_id and node_id not in nodes[1:]

    trials = pd.read_parquet(run / "trials.parquet")
    assert len(trials) == 2 and trial_id in set(trials["trial_id"])
    assert (trials["status"] == "completed").all(), trials[["trial_id", "status", "error"]]
    assert (trials["epoch"] == EPOCHS).all()
    epochs = pd.read_parquet(run / "epochs.parquet")
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert epochs.groupby("trial_id")["epoch"].apply(sorted).to_dict() == {
        t: list(range(1, EPOCHS + 1)) for t in trials["trial_id"]
    }
    # The records kept the first report of epoch 1 (from the lost node): nothing re-ran it.
    mine = epochs[epochs["trial_id"] == trial_id].set_index("epoch")["node_id"]
    assert mine[1] == node_id and node_id not in set(mine[2:])
    state = json.loads((run / "state.json").read_text())
    assert state["done"] == ["search"]
