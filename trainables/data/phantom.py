"""The built-in SYNTHETIC chest-radiograph phantom: ``cxrkd data import phantom PRESET``.

Lets every command, test and the ``demo`` profile run with no download. The planner draws every
per-image parameter from ``numpy.random.default_rng(seed)`` and stores it in the row (JSON in the
``params`` column), so :func:`render_phantom` is a pure function of the row: deterministic, and
run in the writer's worker processes. Presets:

- ``pneumonia``: binary like the Kaggle pediatric set (~74% positive); positives show a lobar
  (dense, fissure-bounded) or a patchy/interstitial (multi-focal blobs, reticular) opacity;
  the ``pattern`` column (none/lobar/patchy) plays the role of Kaggle's bacteria/virus.
- ``findings``: multi-label like VinDr-CXR: nodule, mass, consolidation, pleural_effusion,
  cardiomegaly, pneumothorax, plus the global ``abnormal`` (any true finding).

Resolution sensitivity is built in (the MLCAK paper's point): nodules are a few pixels wide at
224 px and a pneumothorax is a one-pixel pleural line with missing lung markings, so both fade
into the anatomy after area-downsampling to 28 px, while mass, effusion, cardiomegaly and
consolidation are large and stay visible. A few labels are flipped on purpose (column
``label_noise``, and ``flipped`` names the label) so that no label is trivially separable.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from cxrkd.trainables.data import phantom_anatomy as pa
from cxrkd.trainables.data.import_plan import ImportPlan
from cxrkd.trainables.data.phantom_film import render_params
from cxrkd.trainables.data.splits import grouped_validation
from cxrkd.trainables.data.store import DatasetError

FINDINGS = ["nodule", "mass", "consolidation", "pleural_effusion", "cardiomegaly", "pneumothorax"]
PRESETS = {
    "pneumonia": dict(task="binary", labels=["pneumonia"], findings=[], global_label="pneumonia"),
    "findings": dict(
        task="multilabel",
        labels=[*FINDINGS, "abnormal"],
        findings=FINDINGS,
        global_label="abnormal",
    ),
}
DEFAULT_N = 5000
IMAGES_PER_PATIENT = (0.45, 0.30, 0.15, 0.10)  # P(1), P(2), P(3), P(4) images per patient


def plan_phantom(
    preset: str,
    *,
    name: str | None = None,
    n: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.15,
) -> ImportPlan:
    """Plan ``n`` synthetic images of ``preset``; ``val_fraction``/``test_fraction`` are shares
    of all patients (test patients are drawn first, then validation by ``grouped_validation``)."""
    if preset not in PRESETS:
        raise DatasetError(
            f"unknown phantom preset {preset!r}; choose one of {sorted(PRESETS)}, "
            "e.g. `cxrkd data import phantom pneumonia`"
        )
    n = DEFAULT_N if n is None else int(n)
    if n < 10:
        raise DatasetError(f"phantom needs n >= 10 images to fill three splits, got n={n}")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DatasetError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must each be in "
            "(0, 1) with a sum below 1, e.g. --val-fraction 0.1 --test-fraction 0.15"
        )
    spec = PRESETS[preset]
    rng = np.random.default_rng(seed)
    rows = _sample_rows(preset, n, seed, rng)
    rows = _assign_splits(rows, rng, seed=seed, val=val_fraction, test=test_fraction)
    noise = rows["label_noise"].mean()
    return ImportPlan(
        name=name or f"phantom-{preset}",
        kind="phantom",
        task=spec["task"],
        labels=list(spec["labels"]),
        finding_labels=list(spec["findings"]),
        global_label=spec["global_label"],
        rows=rows,
        decode=render_phantom,
        synthetic=True,
        source=f"synthetic phantom (cxrkd built-in), preset {preset}, seed {seed}",
        options=dict(
            preset=preset, n=n, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction
        ),
        notes=[
            "SYNTHETIC images drawn by cxrkd's phantom generator, not real patients",
            f"{noise:.1%} of rows carry a deliberately flipped label (columns label_noise, "
            "flipped); the params column holds the true findings",
        ],
    )


def _sample_rows(preset: str, n: int, seed: int, rng: np.random.Generator) -> pd.DataFrame:
    people, counts = [], []
    while sum(counts) < n:
        k = 1 + int(rng.choice(len(IMAGES_PER_PATIENT), p=IMAGES_PER_PATIENT))
        people.append(sample_patient(preset, rng))
        counts.append(min(k, n - sum(counts)))
    if preset == "pneumonia":
        _assign_by_quota(people, counts, P_PNEUMONIA, rng)
    records: list[dict] = []
    for patient, (person, k) in enumerate(zip(people, counts, strict=True)):
        for _ in range(k):
            index = len(records)
            params, labels, extra = sample_view(preset, person, rng)
            records.append(
                {
                    "image_id": f"{preset}-{index:06d}",
                    "patient_id": f"{preset}-p{patient:05d}",
                    "split": "train",
                    "source_path": f"phantom://{preset}/{seed}/{index}",
                    **labels,
                    **extra,
                    "params": json.dumps(_rounded(params), separators=(",", ":")),
                }
            )
    rows = pd.DataFrame.from_records(records)
    return _flip_labels(rows, PRESETS[preset]["labels"], rng)


def _assign_by_quota(people: list[dict], counts: list[int], share: float, rng) -> None:
    """Make patients sick, in random order, until ``share`` of the *images* are.

    Status is per patient (all of a patient's films agree), so a coin per patient would let
    the image share wander by a few percent at n = 1000; a quota keeps it within 1/n.
    """
    target, total = share * sum(counts), 0
    for i in rng.permutation(len(people)):
        people[i]["pneumonia"] = total + 0.5 * counts[i] <= target
        total += counts[i] * people[i]["pneumonia"]


def _flip_labels(rows: pd.DataFrame, labels: list[str], rng: np.random.Generator) -> pd.DataFrame:
    """Flip one label in ~4% of rows (pneumonia) / ~5% (findings): documented label noise."""
    rate = 0.04 if len(labels) == 1 else 0.05
    noisy = rng.random(len(rows)) < rate
    which = rng.integers(len(labels), size=len(rows))
    rows["label_noise"] = noisy
    rows["flipped"] = np.where(noisy, np.asarray(labels)[which], "")
    for i in np.flatnonzero(noisy):
        col = labels[which[i]]
        rows.loc[i, col] = 1 - rows.loc[i, col]
    for col in labels:
        rows[col] = rows[col].astype(np.int8)
    return rows


def _assign_splits(rows, rng, *, seed: int, val: float, test: float) -> pd.DataFrame:
    patients = rows["patient_id"].unique()
    n_test = min(max(1, round(test * len(patients))), len(patients) - 2)
    chosen = set(rng.permutation(patients)[:n_test])
    rows.loc[rows["patient_id"].isin(chosen), "split"] = "test"
    return grouped_validation(rows, fraction=val / (1.0 - test), seed=seed)


def _rounded(value):
    """Round floats to 5 decimals: short JSON, and the renderer sees exactly what is stored."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    if isinstance(value, float | np.floating):
        return round(float(value), 5)
    if isinstance(value, np.integer):
        return int(value)
    return value


def render_phantom(row: dict, size: int) -> tuple[np.ndarray, int, int]:
    """The plan's decoder: render one row's stored parameters at ``size`` x ``size`` px."""
    return render_params(json.loads(row["params"]), size), size, size


# --- sampling: patient-level anatomy and chronic findings, then per-view pose and findings -----

P_PNEUMONIA = 0.761  # true image share; after 4% symmetric flips ~0.74 are labelled positive
P_FINDING = dict(  # per patient (chronic) or per view (acute); ~45-50% of views are abnormal
    cardiomegaly=0.14, nodule=0.16, mass=0.06, consolidation=0.11, pneumothorax=0.09
)
LOBES = list(pa.LOBE_SIDE)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _lung_point(anat: dict, rng: np.random.Generator, margin: float) -> tuple[float, float]:
    """A point well inside a lung field and clear of the heart shadow."""
    while True:
        x, y = _u(rng, -0.85, 0.85), _u(rng, -0.8, 0.5)
        if pa.inside_lung(x, y, anat, margin) and pa.heart_level(x, y, anat) < -0.2:
            return x, y


def sample_patient(preset: str, rng: np.random.Generator) -> dict:
    """Anatomy shared by all of a patient's views (and, for ``findings``, chronic lesions)."""
    anat = dict(
        med=_u(rng, 0.10, 0.14),  # mediastinal half-width at the lung's mid-height
        lat=_u(rng, 0.74, 0.86),  # lateral lung edge
        apex=_u(rng, -0.84, -0.74),
        base=_u(rng, 0.40, 0.52),  # costophrenic angle height (left lung)
        right_up=_u(rng, 0.02, 0.07),  # the right hemidiaphragm sits higher
        dome=_u(rng, 0.13, 0.22),
        hilum=_u(rng, -0.16, -0.08),
        rib_period=_u(rng, 0.115, 0.14),
        rib_phase=_u(rng, 0.0, 1.0),
        clav_y=_u(rng, -0.70, -0.60),
        body=_u(rng, 0.90, 0.99),
        knob_y=_u(rng, -0.45, -0.36),
        ctr=_u(rng, 0.38, 0.48),  # cardiothoracic ratio; > 0.5 is cardiomegaly
    )
    person: dict = {"anat": anat}
    if preset == "pneumonia":
        person["pattern"] = "lobar" if rng.random() < 0.62 else "patchy"
        return person
    person["cardiomegaly"] = rng.random() < P_FINDING["cardiomegaly"]
    if person["cardiomegaly"]:
        anat["ctr"] = _u(rng, 0.53, 0.66)
    person["nodules"] = []
    if rng.random() < P_FINDING["nodule"]:
        for _ in range(int(rng.choice((1, 2, 3), p=(0.45, 0.35, 0.2)))):
            # radius 2.2-3.1 px at 224 px (a 7-10 mm nodule on a 35 cm film), < 0.4 px at 28
            x, y = _lung_point(anat, rng, 0.06)
            person["nodules"].append([x, y, _u(rng, 0.020, 0.028), _u(rng, 0.38, 0.50)])
    person["masses"] = []
    if rng.random() < P_FINDING["mass"]:
        x, y = _lung_point(anat, rng, 0.12)
        r, c = _u(rng, 0.075, 0.13), _u(rng, 0.22, 0.32)
        person["masses"].append([x, y, r, c, _u(rng, 0.0, 6.28)])
    return person


def _patchy(anat: dict, rng: np.random.Generator, *, k: int, r: tuple, a: tuple) -> list:
    blobs = []
    for _ in range(k):
        x, y = _lung_point(anat, rng, 0.03)
        blobs.append([x, y, _u(rng, *r), _u(rng, *a)])
    return blobs


def _lobar(rng: np.random.Generator, k: int, op: tuple) -> list:
    return [[str(lobe), _u(rng, *op)] for lobe in rng.choice(LOBES, size=k, replace=False)]


def _pose_and_exposure(rng: np.random.Generator) -> tuple[list, dict]:
    """Nuisance of one film: patient position and the exposure/detector settings."""
    tilt = float(np.clip(rng.normal(0.0, 0.03), -0.07, 0.07))  # radians, about +-2 degrees
    pose = [_u(rng, -0.05, 0.05), _u(rng, -0.04, 0.04), tilt, _u(rng, 0.88, 1.02)]
    expo = dict(
        lo=_u(rng, -0.08, 0.04),  # density shown black ...
        hi=_u(rng, 0.9, 1.08),  # ... and white
        gamma=_u(rng, 0.75, 1.3),
        noise=_u(rng, 0.008, 0.028),  # density units per 224-px pixel
        blur=_u(rng, 0.3, 1.0),  # Gaussian sigma in 224-px pixels
        heel=_u(rng, -0.06, 0.06),  # top-to-bottom brightness ramp
    )
    return pose, expo


def _pneumonia_view(person: dict, anat: dict, rng) -> tuple[dict, dict, dict]:
    sick = bool(person["pneumonia"])
    find: dict = {}
    if sick and person["pattern"] == "lobar":
        find["lobar"] = _lobar(rng, 1 if rng.random() < 0.85 else 2, (0.16, 0.33))
    elif sick:
        blobs = _patchy(anat, rng, k=int(rng.integers(3, 9)), r=(0.04, 0.10), a=(0.10, 0.22))
        find["patchy"] = {"blobs": blobs, "retic": _u(rng, 0.04, 0.10)}
    pattern = person["pattern"] if sick else "none"
    return find, {"pneumonia": int(sick)}, {"pattern": pattern}


def _findings_view(person: dict, anat: dict, rng) -> tuple[dict, dict, dict]:
    def jitter(lesion: list) -> list:  # the same lesion, as placed on another film
        return [lesion[0] + rng.normal(0, 0.004), lesion[1] + rng.normal(0, 0.004), *lesion[2:]]

    find: dict = {
        "nodules": [jitter(v) for v in person["nodules"]],
        "masses": [jitter(v) for v in person["masses"]],
    }
    has = {
        "nodule": bool(find["nodules"]),
        "mass": bool(find["masses"]),
        "consolidation": rng.random() < P_FINDING["consolidation"],
        # effusion is likelier with an enlarged heart (heart failure), as on real films
        "pleural_effusion": rng.random() < 0.08 + 0.22 * person["cardiomegaly"],
        "cardiomegaly": bool(person["cardiomegaly"]),
        "pneumothorax": rng.random() < P_FINDING["pneumothorax"],
    }
    if has["consolidation"] and rng.random() < 0.7:
        find["lobar"] = _lobar(rng, 1, (0.2, 0.33))
    elif has["consolidation"]:
        blobs = _patchy(anat, rng, k=3, r=(0.06, 0.1), a=(0.18, 0.3))
        find["patchy"] = {"blobs": blobs, "retic": 0.0}
    if has["pleural_effusion"]:
        sides = [[-1], [1], [-1, 1]][int(rng.choice(3, p=(0.45, 0.35, 0.2)))]
        find["effusion"] = [[side, _u(rng, 0.15, 0.45)] for side in sides]
    if has["pneumothorax"]:
        find["ptx"] = [[int(rng.choice((-1, 1))), _u(rng, 0.05, 0.15)]]
    labels = {name: int(has[name]) for name in FINDINGS}
    labels["abnormal"] = int(any(has.values()))
    return find, labels, {}


def sample_view(preset: str, person: dict, rng: np.random.Generator) -> tuple[dict, dict, dict]:
    """One film of ``person``: ``(render params, labels before noise, extra metadata)``."""
    anat = dict(person["anat"], base=person["anat"]["base"] + _u(rng, -0.035, 0.035))
    pose, expo = _pose_and_exposure(rng)
    view = _pneumonia_view if preset == "pneumonia" else _findings_view
    find, labels, extra = view(person, anat, rng)
    params = {"tex": int(rng.integers(2**31)), "pose": pose, "anat": anat, "expo": expo}
    return dict(params, find=find), labels, {"ctr": anat["ctr"], **extra}
