"""Score a split with the deployed model and turn the outputs into metrics.

Which metrics depends on the dataset's task, never on the method: binary datasets get the
pneumonia paper's metrics (``trainables.metrics.binary_metrics``), multi-class datasets the
softmax metrics (``trainables.metrics.multiclass_metrics``: one-vs-rest macro AUROC as
``auc``, accuracy, macro F1, the confusion matrix), multi-label datasets the MLCAK paper's
AUROC of MLCT (macro over findings) and MCCT.

Numerics: the forward runs under the trial's autocast (bf16 on CUDA) but the logits come from
fp32 heads (``trainables.precision``); :func:`predict` refuses any other dtype, since bf16
logits tie and bias AUROC. Probabilities are computed in float64 (a float32 sigmoid is exactly
1.0 from a logit of 17 on, which ties confident images); metrics rank in float64.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cxrkd.trainables.data.augment import Pipeline
from cxrkd.trainables.data.pipeline import BatchLoader, DatasetInfo, SplitData
from cxrkd.trainables.metrics import (
    average_precision,
    binary_metrics,
    choose_threshold,
    multiclass_metrics,
    multilabel_auroc,
    multilabel_macro,
    sensitivity_at_95,
)
from cxrkd.trainables.precision import autocast
from cxrkd.trainables.task import Task

__all__ = ["autocast", "predict", "split_metrics", "val_threshold"]


@torch.inference_mode()
def predict(
    task: Task,
    pipeline: Pipeline,
    data: SplitData,
    *,
    device: torch.device,
    batch_size: int,
    amp: bool | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Float32 logits of the deployed model over a split, in order:
    ``({"logits"|"mlct","mcct"}, y)`` (``logits`` ``(N,)`` binary, ``(N, C)`` multi-class).
    ``amp``: autocast as in training (None: on CUDA only)."""
    was_training = task.training
    task.eval()
    loader = BatchLoader(
        data.images, data.labels, batch_size=batch_size, shuffle=False, device=device
    )
    chunks: dict[str, list[np.ndarray]] = {}
    for x, _ in loader:
        with autocast(device, enabled=amp):
            out = task.predict(pipeline(x, train=False))
        if not isinstance(out, dict):
            out = {"logits": out}
        for key, value in out.items():
            if value.dtype != torch.float32:
                raise TypeError(
                    f"{type(task).__name__}.predict gave {key!r} in {value.dtype}; logits must "
                    "be float32 (reduced-precision scores tie and bias AUROC): compute the head "
                    "with trainables.precision.fp32_head"
                )
            chunks.setdefault(key, []).append(value.cpu().numpy())
    task.train(was_training)
    return {k: np.concatenate(v) for k, v in chunks.items()}, data.labels


def sigmoid(z: np.ndarray) -> np.ndarray:
    """In float64: distinct logits up to about 36 stay distinct probabilities (float32: 17)."""
    z = np.asarray(z, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-z))


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, C)`` logits, in float64 (see :func:`sigmoid`)."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def split_metrics(
    info: DatasetInfo, outputs: dict[str, np.ndarray], labels: np.ndarray, *, threshold: float
) -> dict[str, float]:
    """Unprefixed metrics of one split (``loss``, ``auc``, ... or ``auroc_mlct``, ...)."""
    finding_idx, global_idx = info.label_columns()
    if info.task == "multiclass":
        logits = outputs["logits"]
        y = labels.argmax(axis=1)
        out = dict(multiclass_metrics(y, softmax(logits), info.labels))
        out["loss"] = float(F.cross_entropy(torch.tensor(logits), torch.tensor(y)))
        return out
    if info.task == "binary":
        logits = outputs["logits"].reshape(-1)
        y = labels[:, global_idx]
        out = dict(binary_metrics(y, sigmoid(logits), val_threshold=threshold))
        out["loss"] = float(
            F.binary_cross_entropy_with_logits(torch.tensor(logits), torch.tensor(y))
        )
        return out
    y_find, y_glob = labels[:, list(finding_idx)], labels[:, global_idx]
    p_find = sigmoid(outputs["mlct"])
    macro, per_label = multilabel_auroc(y_find, p_find, info.finding_labels)
    glob = binary_metrics(y_glob, sigmoid(outputs["mcct"].reshape(-1)), val_threshold=threshold)
    # auroc_mean weighs both tasks equally: what lowres-kd selects configurations by.
    out = {
        "auroc_mlct": macro,
        "auroc_mcct": glob["auc"],
        "auroc_mean": (macro + glob["auc"]) / 2,
        "auc": glob["auc"],
        # The global label's decision threshold (the validation one): what an export uses.
        "threshold": glob["threshold"],
    }
    # AUPRC and sensitivity at 95% specificity: macro over findings (T1) and global (T2).
    for name, metric in (("auprc", average_precision), ("sens_at_spec95", sensitivity_at_95)):
        macro_of, _ = multilabel_macro(y_find, p_find, info.finding_labels, metric=metric)
        out[f"{name}_mlct"] = macro_of
        out[f"{name}_mcct"] = out[name] = glob[name]
    out.update({f"auroc_{name}": value for name, value in per_label.items()})
    return out


def val_threshold(info: DatasetInfo, outputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
    """The decision threshold chosen on validation (Youden's J) for the global label; 0.5 (not
    used) for a multi-class task, whose prediction is the argmax."""
    if info.task == "multiclass":
        return 0.5
    _, global_idx = info.label_columns()
    key = "logits" if info.task == "binary" else "mcct"
    y = labels[:, global_idx]
    if y.min() == y.max():
        return 0.5
    return choose_threshold(y, sigmoid(outputs[key].reshape(-1)))
