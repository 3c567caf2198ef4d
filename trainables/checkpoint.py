"""Per-epoch checkpoints: everything needed to continue a trial exactly.

A checkpoint folder holds ``model.pt`` (the deployed model alone: what a teacher or an export
needs), ``state.pt`` (the other trainable weights, such as a KD feature adapter, the optimiser,
scheduler, epoch, RNG states, best metric; the model's weights are read from ``model.pt``, not
stored twice: a ViT-Base checkpoint is 1.0 GB instead of 1.4 GB) and ``config.json`` (the
resolved trial config, STYLE.md 3). The last checkpoint of a trial that evaluated the test
split also holds :data:`TEST_SCORES_FILE` (per-image test scores for the report's ROC curves:
too long for a Tune metric).

Trust: on a cluster a checkpoint folder lives on shared storage that every node writes, so
nothing read back may run code. ``state.pt`` holds tensors and plain values only (the Python
and numpy RNG states are stored as tensors and numbers, not as pickled tuples and arrays) and is
read with ``torch.load(weights_only=True)``, which refuses any other object.

Speed: a checkpoint is written every epoch and the trial waits for it, so its files are written
without the zip format's CRC-32 of each record (:func:`_write`): computing it was about half of
the save (ResNet-18 with AdamW state, 128 MB: 0.21 -> 0.11 s; ResNet-50, 269 MB: 0.40 -> 0.25 s)
and ``torch.load`` never checks it (a flipped byte in a tensor loads without error, with or
without it), so it guarded nothing here.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.serialization import config as serialization_config

from cxrkd.trainables.config import TrialConfig
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.task import Task

TEST_SCORES_FILE = "test_scores.npz"
MODEL_FILE = "model.pt"
MODEL_PREFIX = "model."  # the deployed model's keys in the Task's state dict (Task.model)


class CheckpointError(CxrkdError):
    """A checkpoint that cannot be trusted or read."""


def rng_state() -> dict:
    """Every RNG state as tensors and plain numbers (loadable with ``weights_only=True``)."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(v) for v in py["mt"].tolist()), py["gauss"]))
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_state(path: Path) -> dict:
    """``state.pt`` read without unpickling anything but tensors and plain values."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises UnpicklingError (and others) for foreign objects
        raise CheckpointError(
            f"checkpoint {path} holds something other than tensors and plain values, so it "
            "was not loaded (a file on shared storage must not run code; it may have been "
            "written by a cxrkd older than this one, or planted). Remove that checkpoint "
            f"folder to restart the trial from its previous checkpoint or from scratch ({e})"
        ) from e


def trainable_state(task: Task) -> dict:
    """The task's state without its frozen parts (teachers are stored once, elsewhere)."""
    frozen = {id(p) for m in task.frozen_modules() for p in m.parameters()}
    frozen |= {id(b) for m in task.frozen_modules() for b in m.buffers()}
    keep = {}
    named = dict(task.named_parameters())
    named.update(dict(task.named_buffers()))
    for key, value in task.state_dict(keep_vars=True).items():
        if id(named.get(key, value)) not in frozen:
            keep[key] = value.detach()
    return keep


def save(
    folder: Path,
    *,
    task: Task,
    optimizer,
    scheduler,
    epoch: int,
    cfg: TrialConfig,
    extra: dict,
    test_scores: dict[str, np.ndarray] | None = None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if test_scores is not None:
        np.savez(folder / TEST_SCORES_FILE, **test_scores)
    # The model's weights are in model.pt; state.pt says so ("model_file") and holds the rest.
    rest = {k: v for k, v in trainable_state(task).items() if not k.startswith(MODEL_PREFIX)}
    _write(
        {
            "task": rest,
            "model_file": MODEL_FILE,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "rng": rng_state(),
            "extra": extra,
        },
        folder / "state.pt",
    )
    _write(task.model.state_dict(), folder / MODEL_FILE)
    (folder / "config.json").write_text(cfg.to_json())
    return folder


def _write(obj, path: Path) -> None:
    """``torch.save`` without the per-record CRC-32 (see the module's docstring)."""
    with serialization_config.patch({"save.compute_crc32": False}):
        torch.save(obj, path)


def load(folder: Path, *, task: Task, optimizer, scheduler) -> dict:
    """Restore in place; returns ``{"epoch": last finished epoch, "extra": ...}``."""
    state = read_state(Path(folder) / "state.pt")
    weights = dict(state["task"])
    if "model_file" in state:  # else a checkpoint of an older cxrkd, with the model inside
        model = read_state(Path(folder) / MODEL_FILE)
        weights.update({MODEL_PREFIX + k: v for k, v in model.items()})
    missing, unexpected = task.load_state_dict(weights, strict=False)
    frozen = {k for k in task.state_dict() if k not in trainable_state(task)}
    missing = [k for k in missing if k not in frozen]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint mismatch: missing {missing}, unexpected {unexpected}")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return {"epoch": state["epoch"], "extra": state["extra"]}
