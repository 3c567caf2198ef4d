"""Score a split with the deployed model and turn the outputs into metrics.

Which metrics depends on the dataset's task, never on the method: binary datasets get the
pneumonia paper's metrics (``trainables.metrics.binary_metrics``), multi-label datasets the
MLCAK paper's AUROC of MLCT (macro over findings) and MCCT.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from trainables.data.augment import Pipeline
from trainables.data.pipeline import BatchLoader, DatasetInfo, SplitData
from trainables.metrics import binary_metrics, choose_threshold, multilabel_auroc
from trainables.task import Task


def autocast(device: torch.device):
    """bf16 autocast on CUDA; plain fp32 elsewhere (CPU autocast is slower on these models)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def predict(
    task: Task, pipeline: Pipeline, data: SplitData, *, device: torch.device, batch_size: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Logits of the deployed model over a split, in order: ``({"logits"|"mlct","mcct"}, y)``."""
    was_training = task.training
    task.eval()
    loader = BatchLoader(
        data.images, data.labels, batch_size=batch_size, shuffle=False, device=device
    )
    chunks: dict[str, list[np.ndarray]] = {}
    for x, _ in loader:
        with autocast(device):
            out = task.predict(pipeline(x, train=False))
        if not isinstance(out, dict):
            out = {"logits": out}
        for key, value in out.items():
            chunks.setdefault(key, []).append(value.float().cpu().numpy())
    task.train(was_training)
    return {k: np.concatenate(v) for k, v in chunks.items()}, data.labels


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def split_metrics(
    info: DatasetInfo, outputs: dict[str, np.ndarray], labels: np.ndarray, *, threshold: float
) -> dict[str, float]:
    """Unprefixed metrics of one split (``loss``, ``auc``, ... or ``auroc_mlct``, ...)."""
    finding_idx, global_idx = info.label_columns()
    if info.task == "binary":
        logits = outputs["logits"].reshape(-1)
        y = labels[:, global_idx]
        out = dict(binary_metrics(y, _sigmoid(logits), val_threshold=threshold))
        out["loss"] = float(
            F.binary_cross_entropy_with_logits(torch.tensor(logits), torch.tensor(y))
        )
        return out
    y_find, y_glob = labels[:, list(finding_idx)], labels[:, global_idx]
    macro, per_label = multilabel_auroc(y_find, _sigmoid(outputs["mlct"]), info.finding_labels)
    glob = binary_metrics(y_glob, _sigmoid(outputs["mcct"].reshape(-1)), val_threshold=threshold)
    # auroc_mean weighs both tasks equally: what lowres-kd selects configurations by.
    out = {
        "auroc_mlct": macro,
        "auroc_mcct": glob["auc"],
        "auroc_mean": (macro + glob["auc"]) / 2,
        "auc": glob["auc"],
    }
    out.update({f"auroc_{name}": value for name, value in per_label.items()})
    return out


def val_threshold(info: DatasetInfo, outputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
    """The decision threshold chosen on validation (Youden's J) for the global label."""
    _, global_idx = info.label_columns()
    key = "logits" if info.task == "binary" else "mcct"
    y = labels[:, global_idx]
    if y.min() == y.max():
        return 0.5
    return choose_threshold(y, _sigmoid(outputs[key].reshape(-1)))
