"""Checkpoints hold tensors and plain values only: nothing read back from storage runs code."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from cxrkd.trainables import checkpoint


class _Planted:
    """Unpickling this object writes a marker file: what an attacker's state.pt would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _draws() -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(),
            np.random.randn(), torch.rand(3).tolist())  # fmt: skip


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    np.random.randn()  # and in numpy's
    path = tmp_path / "state.pt"
    torch.save({"rng": checkpoint.rng_state()}, path)
    expected = _draws()
    _draws()  # move every generator on
    checkpoint.set_rng_state(checkpoint.read_state(path)["rng"])
    assert _draws() == expected


@pytest.mark.parametrize("how", ["torch.save", "raw pickle"])
# torch says so when it meets the planted raw pickle's protocol, before refusing it.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_a_planted_state_file_is_refused_and_runs_nothing(tmp_path, how):
    marker = tmp_path / "marker"
    folder = tmp_path / "checkpoint_000001"
    folder.mkdir()
    payload = {"task": {}, "epoch": 1, "evil": _Planted(marker)}
    if how == "torch.save":
        torch.save(payload, folder / "state.pt")
    else:
        (folder / "state.pt").write_bytes(pickle.dumps(payload))
    with pytest.raises(checkpoint.CheckpointError, match="must not run code"):
        checkpoint.load(folder, task=None, optimizer=None, scheduler=None)
    assert not marker.exists()


def test_an_old_format_checkpoint_gets_the_clear_error(tmp_path):
    # Checkpoints of earlier versions pickled numpy's RNG state as an array.
    folder = tmp_path / "checkpoint_000001"
    folder.mkdir()
    torch.save({"rng": {"numpy": np.random.get_state()}}, folder / "state.pt")
    with pytest.raises(checkpoint.CheckpointError, match="Remove that checkpoint folder"):
        checkpoint.read_state(folder / "state.pt")


def _tiny(seed: int):
    from types import SimpleNamespace

    from cxrkd.trainables.task import Task

    torch.manual_seed(seed)
    task = Task(torch.nn.Linear(3, 2), normalization=(0.5, 0.5))
    optimizer = torch.optim.SGD(task.parameters(), lr=0.1, momentum=0.9)
    task.model(torch.ones(1, 3)).sum().backward()
    optimizer.step()  # momentum buffers: optimiser state to restore
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    cfg = SimpleNamespace(to_json=lambda: "{}")
    return task, optimizer, scheduler, cfg


@pytest.mark.parametrize("layout", ["model once, in model.pt", "older: model inside state.pt"])
def test_a_checkpoint_restores_the_model_from_either_layout(tmp_path, layout):
    task, optimizer, scheduler, cfg = _tiny(0)
    folder = checkpoint.save(tmp_path / "c", task=task, optimizer=optimizer, scheduler=scheduler,
                             epoch=3, cfg=cfg, extra={"best_val_auc": 0.5})  # fmt: skip
    state = checkpoint.read_state(folder / "state.pt")
    assert not any(k.startswith("model.") for k in state["task"])  # stored once
    if layout.startswith("older"):
        state.pop("model_file")
        state["task"] = checkpoint.trainable_state(task)  # as cxrkd wrote it before
        torch.save(state, folder / "state.pt")
        (folder / "model.pt").unlink()
    other, other_opt, other_sched, _ = _tiny(1)
    assert not torch.equal(other.model.weight, task.model.weight)
    restored = checkpoint.load(folder, task=other, optimizer=other_opt, scheduler=other_sched)
    assert restored["epoch"] == 3
    assert torch.equal(other.model.weight, task.model.weight)
    assert torch.equal(other.model.bias, task.model.bias)
    momentum = other_opt.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, optimizer.state_dict()["state"][0]["momentum_buffer"])


def test_a_checkpoint_is_written_without_record_crcs_and_loads_the_same(tmp_path):
    """The per-epoch save skips the zip CRC-32 (about half its time), which torch.load does not
    check anyway: a flipped byte in a tensor loads without error either way."""
    import zipfile

    task, optimizer, scheduler, cfg = _tiny(0)
    folder = checkpoint.save(tmp_path / "c", task=task, optimizer=optimizer, scheduler=scheduler,
                             epoch=1, cfg=cfg, extra={"best_val_auc": 0.5})  # fmt: skip
    for name in ("state.pt", checkpoint.MODEL_FILE):
        with zipfile.ZipFile(folder / name) as archive:
            assert {info.CRC for info in archive.infolist()} == {0}, name
    # Only the checkpoint's own writes: torch.save elsewhere keeps its default.
    torch.save({"w": torch.ones(3)}, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as archive:
        assert all(info.CRC for info in archive.infolist())
    # The premise: torch.load reads a damaged record without complaint, CRC or not.
    weights = {"w": torch.arange(10_000, dtype=torch.float32)}
    torch.save(weights, tmp_path / "with_crc.pt")
    damaged = bytearray((tmp_path / "with_crc.pt").read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (tmp_path / "damaged.pt").write_bytes(bytes(damaged))
    assert not torch.equal(torch.load(tmp_path / "damaged.pt", weights_only=True)["w"],
                           weights["w"])  # fmt: skip
