"""The shared loop through ``run_trial`` + ``LocalReporter``: every method, reports,
checkpoints, exact continuation from a checkpoint, failures, the final evaluation."""

from __future__ import annotations

import gc
import json
import tempfile

import pytest
import torch
from helpers import TEACHERS, TINY, example_bundle, example_config, train_teacher

from cxrkd.trainables import checkpoint
from cxrkd.trainables.config import ConfigError, parse_config
from cxrkd.trainables.context import DataBundle, TrialContext
from cxrkd.trainables.data.store import DatasetError
from cxrkd.trainables.loop import TrialError, run_trial, seed_everything
from cxrkd.trainables.methods import get_method, load_methods
from cxrkd.trainables.methods.classify import ClassifierTask
from cxrkd.trainables.models import create_model
from cxrkd.trainables.trainable import LocalReporter

METHODS = sorted(load_methods())
TASKS = ("binary", "multilabel")
# What every epoch's report holds, whatever the method (the dashboards and ASHA read these),
# and what each dataset task adds.
REPORT_KEYS = {
    "epoch", "lr", "train_loss", "train_s", "images_per_s", "epoch_s", "best_val_auc", "val_auc",
}  # fmt: skip
TASK_KEYS = {
    "binary": {"val_loss", "val_threshold", "val_acc_at_val_thr", "val_f1_at_val_thr"},
    "multilabel": {"val_auroc_mlct", "val_auroc_mcct"},
}
# The model's cost: every trial's last epoch reports it (an open search may weigh it).
FINAL_KEYS = {"params", "params_trainable", "flops", "latency_ms", "throughput"}
TIMINGS = {"train_s", "images_per_s", "epoch_s", "latency_ms", "throughput"}


@pytest.fixture(scope="module")
def bundles() -> dict[str, DataBundle]:
    return {task: example_bundle(task) for task in TASKS}


@pytest.fixture(scope="module")
def data(bundles) -> DataBundle:
    return bundles["binary"]  # 48 training images at 16 px


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, bundles):
    """``teachers(task)``: a registered teacher for that task's dataset, trained on first use."""
    uris: dict[str, str] = {}

    def get(task: str) -> str:
        if task not in uris:
            storage = tmp_path_factory.mktemp(f"run-{task}")
            uris[task] = train_teacher(storage, bundles[task], **TEACHERS[task])
        return uris[task]

    return get


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_an_epoch_and_checkpoints_it(method, bundles, teachers, tmp_path):
    task = load_methods()[method].tasks[0]
    data = bundles[task]
    needs = load_methods()[method].needs_teacher
    flat = example_config(method, teachers(task) if needs else None)
    reporter = LocalReporter(keep=tmp_path)
    last = run_trial(flat, data, reporter=reporter)

    assert len(reporter.rows) == 1 and reporter.rows[0] == last
    expected = REPORT_KEYS | TASK_KEYS[task]
    assert set(last) >= expected, sorted(expected - set(last))
    assert last["epoch"] == 1
    assert last["train_loss"] > 0 and last["images_per_s"] > 0
    assert 0.0 <= last["val_auc"] <= 1.0
    assert last["epoch_s"] >= last["train_s"] > 0
    assert not any(k.startswith("test_") for k in last)  # not evaluate_test: no test split
    assert set(last) >= FINAL_KEYS and last["params"] > 0  # the last epoch: the model's cost

    (folder,) = reporter.checkpoints
    assert folder.parent == tmp_path and folder.name == "epoch-0001"
    assert {p.name for p in folder.iterdir()} == {"state.pt", "model.pt", "config.json"}
    assert parse_config(json.loads((folder / "config.json").read_text())) == parse_config(flat)
    state = torch.load(folder / "state.pt", weights_only=False)
    assert state["epoch"] == 0 and state["extra"]["best_val_auc"] == last["best_val_auc"]
    # model.pt is the deployed model alone: it loads into a freshly built one.
    ctx = TrialContext(device=torch.device("cpu"), data=data)
    model = get_method(method).build(parse_config(flat), data.info, ctx).model
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    # No teacher weights in the trial's state: teachers live once, in the registry.
    assert not any(k.startswith("teacher.") for k in state["task"])


# --- exact continuation -------------------------------------------------------------------

# Every source of state the continuation must restore is in play: dropout (torch's RNG),
# augmentation (per-epoch generators), AdamW moments and a per-step cosine schedule.
RESUMABLE = {
    **TINY, "method": "cnn_baseline", "model": "cnn_baseline", "dropout": 0.5,
    "augment": True, "optimizer": "adamw", "schedule": "cosine", "epochs": 3,
}  # fmt: skip


class Interrupted(Exception):
    """Stands for a node lost after a checkpoint was reported."""


class StopAfter(LocalReporter):
    def __init__(self, epochs: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.epochs = epochs

    def report(self, metrics, checkpoint_dir) -> None:
        super().report(metrics, checkpoint_dir)
        if len(self.rows) == self.epochs:
            raise Interrupted


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data):
    """3 epochs uninterrupted, and the same trial interrupted after epoch 2."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        root = tmp_path_factory.mktemp("continuation")
        full = LocalReporter(keep=root / "full")
        run_trial(RESUMABLE, data, reporter=full)
        cut = StopAfter(2, keep=root / "cut")
        with pytest.raises(Interrupted):
            run_trial(RESUMABLE, data, reporter=cut)
    finally:
        torch.use_deterministic_algorithms(before)
    return full, cut


def without_timings(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMINGS}


def resume(runs, data) -> LocalReporter:
    _, cut = runs
    resumed = LocalReporter(restore=cut.checkpoints[-1])
    run_trial(RESUMABLE, data, reporter=resumed)
    return resumed


def test_one_report_per_epoch_with_a_running_best(runs):
    rows = runs[0].rows
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    best = [max(r["val_auc"] for r in rows[: i + 1]) for i in range(3)]
    assert [r["best_val_auc"] for r in rows] == best
    assert rows[0]["lr"] > rows[1]["lr"] > rows[2]["lr"]  # the cosine schedule is stepped
    assert len({r["train_loss"] for r in rows}) == 3


def test_restored_trial_continues_exactly(runs, data, deterministic):
    full, cut = runs
    assert [r["epoch"] for r in cut.rows] == [1, 2]
    resumed = resume(runs, data)
    assert [r["epoch"] for r in resumed.rows] == [3]  # only the missing epoch is trained
    # Bit-identical on CPU: loss, lr, every validation metric, the running best.
    assert without_timings(resumed.rows[0]) == without_timings(full.rows[2])
    ours = torch.load(resumed.checkpoints[0] / "state.pt", weights_only=False)
    theirs = torch.load(full.checkpoints[2] / "state.pt", weights_only=False)
    for key, value in theirs["task"].items():
        torch.testing.assert_close(ours["task"][key], value, rtol=0, atol=0, msg=key)


def load_weights_only(folder, *, task, optimizer, scheduler) -> dict:
    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
    task.load_state_dict(state["task"], strict=False)
    return {"epoch": state["epoch"], "extra": state["extra"]}


@pytest.mark.parametrize("broken", ["weights_only", "no_rng_state"])
def test_continuation_check_catches_a_partial_restore(
    broken, runs, data, deterministic, monkeypatch
):
    # The test above can fail: restoring less than everything changes epoch 3.
    if broken == "weights_only":  # no optimiser moments, no schedule position, no RNG
        monkeypatch.setattr(checkpoint, "load", load_weights_only)
    else:  # everything but torch's RNG: dropout masks differ
        monkeypatch.setattr(checkpoint, "set_rng_state", lambda state: None)
    full, _ = runs
    resumed = resume(runs, data)
    assert resumed.rows[0]["train_loss"] != full.rows[2]["train_loss"]


# --- failures -----------------------------------------------------------------------------


def test_diverging_lr_ends_the_trial_with_the_fix(data, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    flat = {**TINY, "method": "cnn_baseline", "model": "cnn_baseline", "optimizer": "sgd"}
    reporter = LocalReporter()
    expected = r"loss became nan in epoch 1 \(lr=1000000000000\.0, batch_size=8\); lower lr"
    with pytest.raises(TrialError, match=expected):
        run_trial({**flat, "lr": 1e12}, data, reporter=reporter)
    assert reporter.rows == []  # nothing non-finite reaches Tune
    assert not list(tmp_path.glob("cxrkd-ckpt-*"))  # the errored trial left no work folder


def test_nan_loss_names_the_epoch_it_appeared_in(data, monkeypatch):
    forward, steps = ClassifierTask.forward, []

    def poisoned(self, views, y):
        out = forward(self, views, y)
        steps.append(1)
        if len(steps) > TINY["steps_per_epoch"]:  # from the first step of epoch 2
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(ClassifierTask, "forward", poisoned)
    reporter = LocalReporter()
    flat = {**TINY, "method": "cnn_baseline", "model": "cnn_baseline", "epochs": 3}
    with pytest.raises(TrialError, match=r"became nan in epoch 2 .*lower lr or set grad_clip"):
        run_trial(flat, data, reporter=reporter)
    assert [r["epoch"] for r in reporter.rows] == [1]


@pytest.mark.parametrize(
    ("method", "task"),
    [(m, t) for m in METHODS for t in TASKS if t not in load_methods()[m].tasks],
)
def test_method_refuses_a_dataset_of_another_task(method, task, bundles):
    # Refused before anything is built: the teacher path is never opened.
    flat = example_config(method, "/nowhere/teachers/x")
    with pytest.raises(ConfigError) as err:
        run_trial(flat, bundles[task], reporter=LocalReporter())
    message = str(err.value)
    assert f"method {method!r} trains {'/'.join(load_methods()[method].tasks)} datasets" in message
    assert f"{bundles[task].info.name!r} is {task}" in message and "pick a dataset" in message


# --- final evaluation, frozen transfer ----------------------------------------------------


def test_test_split_is_scored_only_in_the_last_epoch(data):
    flat = {**TINY, "method": "cnn_baseline", "model": "cnn_baseline", "epochs": 2}
    reporter = LocalReporter()
    run_trial({**flat, "evaluate_test": True}, data, reporter=reporter)
    first, last = reporter.rows
    assert not any(k.startswith("test_") for k in first) and not FINAL_KEYS & set(first)
    assert set(last) >= FINAL_KEYS
    assert {"test_auc", "test_loss", "test_acc_at_val_thr", "test_f1_at_val_thr"} <= set(last)
    assert last["test_threshold"] == last["val_threshold"]  # chosen on validation only
    model = create_model("cnn_baseline", num_outputs=1, pretrained=False)
    assert last["params"] == last["params_trainable"] == sum(p.numel() for p in model.parameters())
    assert last["flops"] > 0 and last["latency_ms"] > 0 and last["throughput"] > 0


def test_without_evaluate_test_the_test_split_is_never_needed(data):
    no_test = DataBundle(info=data.info, splits={s: data.splits[s] for s in ("train", "val")})
    flat = {**TINY, "method": "cnn_baseline", "model": "cnn_baseline"}
    run_trial(flat, no_test, reporter=LocalReporter())  # does not touch "test"
    with pytest.raises(DatasetError, match="no 'test' split"):
        run_trial({**flat, "evaluate_test": True}, no_test, reporter=LocalReporter())


def test_frozen_transfer_trains_only_the_head(data, tmp_path):
    flat = {**TINY, "method": "transfer", "model": "test_resnet", "freeze": True, "lr": 1e-2}
    reporter = LocalReporter(keep=tmp_path)
    run_trial(flat, data, reporter=reporter)
    trained = torch.load(reporter.checkpoints[-1] / "model.pt", weights_only=True)
    seed_everything(0)  # the trial's seed: the same initial weights as the trial built
    initial = create_model("test_resnet", num_outputs=1, pretrained=False, freeze=True)
    head = {f"fc.{k}" for k, _ in initial.get_classifier().named_parameters()}
    assert head == {"fc.weight", "fc.bias"}
    for key, value in initial.state_dict().items():
        if key in head:
            assert not torch.equal(trained[key], value), f"head {key} did not train"
        else:  # backbone weights and (frozen) BatchNorm statistics
            assert torch.equal(trained[key], value), f"backbone {key} changed"


def test_a_run_leaves_no_checkpoints_in_the_temp_folder(data, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp & co. write
    reporter = LocalReporter()
    run_trial({**TINY, "method": "cnn_baseline", "model": "cnn_baseline"}, data, reporter=reporter)
    (folder,) = reporter.checkpoints
    assert (folder / "state.pt").is_file()  # readable while the reporter is alive
    del reporter, folder
    gc.collect()
    assert list(tmp_path.iterdir()) == []  # the loop's folder and the reporter's are gone


def test_a_models_cost_is_measured_once_per_architecture_size_and_batch(monkeypatch):
    """The trials of one cell that a process runs get one timing of their architecture (not one
    noisy timing each); another input size, batch or architecture is timed again."""
    from types import SimpleNamespace

    from cxrkd.trainables import loop

    timed = []
    monkeypatch.setattr(loop, "_MEASURED", {})
    monkeypatch.setattr(
        loop, "measure_latency_ms", lambda model, x, **kw: timed.append(x.shape[-1]) or 1.5
    )
    monkeypatch.setattr(loop, "measure_throughput", lambda model, x, **kw: 10.0 * x.shape[0])

    def cost(model, size=16, batch=4):
        return loop.cost_metrics(SimpleNamespace(model=model), SimpleNamespace(input_size=size),
                                 "cpu", batch)  # fmt: skip

    torch.manual_seed(0)
    first = cost(create_model("cnn_baseline", num_outputs=1, pretrained=False))
    torch.manual_seed(1)  # the same architecture, other weights (another trial of the cell)
    other = create_model("cnn_baseline", num_outputs=1, pretrained=False)
    assert cost(other) == first and timed == [16]
    for p in other.parameters():  # a frozen backbone has fewer trainable parameters
        p.requires_grad_(False)
    assert cost(other)["params_trainable"] == 0 and timed == [16]
    assert cost(other, size=32)["flops"] > first["flops"] and timed == [16, 32]
    assert cost(other, batch=8)["throughput"] == 80.0 and len(timed) == 3
    cost(create_model("cnn_baseline", num_outputs=3, pretrained=False))  # another head
    assert len(timed) == 4
