"""A small synthetic run of the ``pneumonia-kd`` study, with known answers, no Ray needed.

Stages: teacher (``resnet50_teacher``: 2 completed trials), search (``baseline_cnn``: 2
completed, 1 stopped early, 1 errored; ``resnet18_kd``: 1 completed, 1 running), final
(``resnet50_teacher``, ``baseline_cnn``, ``resnet18_kd``, ``resnet18_frozen`` x 2 seeds).
Searched values lie inside the demo profile's ranges (lr in [5e-4, 5e-3]).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

STUDY = "pneumonia-kd"
BASE = {"config/epochs": 4, "config/img_size": 32, "config/batch_size": 32}

# (stage, cell, trial_id, status, config, val_auc per epoch, extra columns)
SEARCH = [
    ("teacher", "resnet50_teacher", "t1", "completed", {"lr": 1e-3, "weight_decay": 1e-4},
     [0.60, 0.70, 0.75, 0.80]),
    ("teacher", "resnet50_teacher", "t2", "completed", {"lr": 2e-3, "weight_decay": 1e-3},
     [0.65, 0.72, 0.80, 0.85]),
    ("search", "baseline_cnn", "b1", "completed",
     {"lr": 1e-3, "weight_decay": 1e-5, "dropout": 0.2}, [0.50, 0.60, 0.65, 0.70]),
    ("search", "baseline_cnn", "b2", "stopped",
     {"lr": 3e-3, "weight_decay": 1e-4, "dropout": 0.5}, [0.70, 0.75]),
    ("search", "baseline_cnn", "b3", "errored",
     {"lr": 4e-3, "weight_decay": 1e-3, "dropout": 0.3}, []),
    ("search", "baseline_cnn", "b4", "completed",
     {"lr": 6e-4, "weight_decay": 1e-3, "dropout": 0.1}, [0.55, 0.62, 0.70, 0.72]),
    ("search", "resnet18_kd", "k1", "completed",
     {"lr": 1e-3, "weight_decay": 1e-4, "alpha": 0.5, "temperature": 4.0},
     [0.60, 0.70, 0.75, 0.78]),
    ("search", "resnet18_kd", "k2", "running",
     {"lr": 2e-3, "weight_decay": 1e-5, "alpha": 0.7, "temperature": 2.0}, [0.55, 0.60]),
]  # fmt: skip
METHOD = {
    "resnet50_teacher": "transfer",
    "baseline_cnn": "cnn_baseline",
    "resnet18_kd": "kd_logit",
    "resnet18_frozen": "transfer",
}
# Final cells: test_auc per seed, params, latency per seed, confusion (tn, fp, fn, tp) per seed.
FINAL = {
    "resnet50_teacher": ([0.90, 0.92], 23_500_000, [10.0, 12.0], [(40, 10, 5, 45), (42, 8, 6, 44)]),
    "baseline_cnn": ([0.70, 0.74], 500_000, [1.0, 1.0], [(30, 20, 15, 35), (32, 18, 14, 36)]),
    "resnet18_kd": ([0.86, 0.88], 11_200_000, [4.0, 4.0], [(38, 12, 8, 42), (39, 11, 7, 43)]),
    "resnet18_frozen": ([0.60, 0.62], 11_200_000, [5.0, 5.0], [(25, 25, 20, 30), (26, 24, 19, 31)]),
}  # fmt: skip
# The low-resolution study's columns, added to the final rows with ``lowres=True``:
# (config/low_res, config/kd_approach, config/model, test_auroc_mlct per seed, _mcct per seed)
LOWRES = {
    "resnet50_teacher": (0, None, "vit_tiny", [0.80, 0.82], [0.90, 0.92]),
    "baseline_cnn": (16, None, "vit_tiny", [0.60, 0.64], [0.70, 0.74]),
    "resnet18_kd": (16, "mlcak", "vit_tiny", [0.70, 0.72], [0.86, 0.88]),
    "resnet18_frozen": (32, "mlcak", "vit_tiny", [0.75, 0.77], [0.60, 0.62]),
}


def _ids(stage: str, cell: str, trial_id: str) -> dict:
    return {"study": STUDY, "stage": stage, "cell": cell, "method": METHOD[cell]} | {
        "trial_id": trial_id
    }


def synthetic_frames(*, lowres: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, epochs)`` in the contract columns of ``results.frames``."""
    trials, epochs = [], []
    for i, (stage, cell, tid, status, config, curve) in enumerate(SEARCH):
        row = {**_ids(stage, cell, tid), "status": status, "error": None, **BASE}
        row.update({f"config/{k}": v for k, v in config.items()})
        row["config/method"] = METHOD[cell]
        if cell == "resnet18_kd":
            row["config/teacher_path"] = "/registry/teacher"
        row["experiment_tag"] = f"{i + 1}_lr={config['lr']}"
        row["epoch"] = len(curve)
        row["val_auc"] = curve[-1] if curve else np.nan
        if status == "errored":
            row["error"] = "RuntimeError: boom"
        trials.append(row)
        for epoch, value in enumerate(curve, start=1):
            epochs.append({**_ids(stage, cell, tid), "epoch": epoch, "val_auc": value})
    chosen = {"resnet50_teacher": SEARCH[1][4], "baseline_cnn": SEARCH[5][4]}
    chosen |= {"resnet18_kd": SEARCH[6][4], "resnet18_frozen": {"lr": 9e-4, "weight_decay": 1e-4}}
    for cell, (aucs, params, latency, confusion) in FINAL.items():
        for seed in range(2):
            tid = f"f-{cell}-{seed}"
            row = {**_ids("final", cell, tid), "status": "completed", "error": None, **BASE}
            row.update({f"config/{k}": v for k, v in chosen[cell].items()})
            row.update({"config/seed": seed, "config/evaluate_test": True})
            row["config/method"] = METHOD[cell]
            if cell == "resnet18_kd":
                row["config/teacher_path"] = "/registry/teacher"
            row.update({"epoch": 4, "val_auc": 0.8, "test_auc": aucs[seed], "params": params})
            row["latency_ms"] = latency[seed]
            for key, n in zip(("tn", "fp", "fn", "tp"), confusion[seed], strict=True):
                row[f"test_{key}_at_val_thr"] = n
            for key in ("acc", "precision", "recall", "f1"):
                row[f"test_{key}_at_val_thr"] = 0.5 + 0.1 * seed
            if lowres:
                low, approach, model, mlct, mcct = LOWRES[cell]
                row.update({"config/low_res": low, "config/kd_approach": approach})
                row.update({"config/model": model, "test_auroc_mlct": mlct[seed]})
                row["test_auroc_mcct"] = mcct[seed]
            trials.append(row)
            for epoch in range(1, 5):
                epochs.append({**_ids("final", cell, tid), "epoch": epoch, "val_auc": 0.2 * epoch})
    return pd.DataFrame(trials), pd.DataFrame(epochs)


def scores_of(seed: int, n: int = 200) -> dict[str, np.ndarray]:
    """Test scores as the loop writes them: informative logits of a balanced label."""
    rng = np.random.default_rng(seed)
    label = (np.arange(n) % 2).astype(np.float32)
    logit = (label * 1.5 + rng.normal(size=n)).astype(np.float32)
    return {"global_logit": logit, "global_label": label}


def write_synthetic_run(run: Path, *, lowres: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run folder as the driver leaves it: records per (stage, cell), and a Tune trial
    folder with ``test_scores.npz`` in its last checkpoint per final trial. Odd seeds record
    their checkpoint in ``checkpoint_uri``; even ones must be found by the folder scan."""
    trials, epochs = synthetic_frames(lowres=lowres)
    final = trials["stage"] == "final"
    trials["checkpoint_uri"] = None
    for i, (idx, row) in enumerate(trials[final].iterrows()):
        trial_dir = run / "final" / f"tune_trainable_{row['trial_id']}_{i + 1}_lr=0.001_2026"
        for n in range(2):  # Tune keeps two; the older one has no scores
            (trial_dir / f"checkpoint_00000{n}").mkdir(parents=True)
        last = trial_dir / "checkpoint_000001"
        np.savez(last / "test_scores.npz", **scores_of(i))
        if row["config/seed"] == 1:
            trials.loc[idx, "checkpoint_uri"] = str(last)
    records = run / "records"
    records.mkdir(parents=True, exist_ok=True)
    for (stage, cell), group in trials.groupby(["stage", "cell"]):
        group.to_parquet(records / f"trials-{stage}--{cell}.parquet", index=False)
        sel = epochs[(epochs["stage"] == stage) & (epochs["cell"] == cell)]
        sel.to_parquet(records / f"epochs-{stage}--{cell}.parquet", index=False)
    return trials, epochs


# --- lowres-kd: final cells of a study, with multi-label per-image test scores ----------------

FINDINGS = ("effusion", "nodule", "opacity")


def _lowres_quality(cell: str) -> float:
    """How well a cell separates the classes: teacher > KD (mlcak best) > no-KD baseline."""
    if cell.startswith("teacher_"):
        return 2.0
    if cell.startswith("kd_"):
        return 1.8 if cell.endswith("_mlcak") else 1.1
    return 0.8


def lowres_test_labels(n: int = 240) -> np.ndarray:
    """``(n, findings + 1)`` 0/1 labels of the shared test split; the last column is global."""
    rng = np.random.default_rng(0)
    findings = (rng.random((n, len(FINDINGS))) < 0.3).astype(np.float32)
    return np.c_[findings, findings.max(axis=1)]


def lowres_scores(cell: str, seed: int, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image scores as ``trainables.loop.per_image_scores`` writes them (float32 logits)."""
    rng = np.random.default_rng(zlib.crc32(f"{cell}/{seed}".encode()))  # stable across runs
    q = _lowres_quality(cell)
    k = len(FINDINGS)
    return {
        "global_logit": (q * labels[:, k] + rng.normal(size=len(labels))).astype(np.float32),
        "global_label": labels[:, k],
        "finding_logits": (q * labels[:, :k] + rng.normal(size=(len(labels), k))).astype(
            np.float32
        ),
        "finding_labels": labels[:, :k],
        "finding_names": np.asarray(FINDINGS, dtype=str),
    }


def lowres_final_run(cells: list[str], *, seeds: int = 2) -> tuple[pd.DataFrame, dict]:
    """``(trials, scores)`` of the final stage of a ``lowres-kd`` run over ``cells``: test
    metrics computed from the scores by the loop's own ``split_metrics``."""
    from types import SimpleNamespace

    from cxrkd.trainables.evaluate import split_metrics

    k = len(FINDINGS)
    info = SimpleNamespace(
        task="multilabel", finding_labels=FINDINGS, label_columns=lambda: (tuple(range(k)), k)
    )
    labels = lowres_test_labels()
    rows, scores = [], {}
    for cell in cells:
        for seed in range(seeds):
            tid = f"f-{cell}-{seed}"
            arrays = lowres_scores(cell, seed, labels)
            outputs = {"mlct": arrays["finding_logits"], "mcct": arrays["global_logit"][:, None]}
            test = split_metrics(info, outputs, labels, threshold=0.5)
            rows.append(
                {"study": "lowres-kd", "stage": "final", "cell": cell, "method": "vit_mtl"}
                | {"trial_id": tid, "status": "completed", "error": None, "config/seed": seed}
                | {"config/lr": 1e-3, "test_threshold": 0.5}
                | {f"test_{key}": value for key, value in test.items()}
            )
            scores[(cell, tid)] = arrays
    return pd.DataFrame(rows), scores
