"""The registered teachers on test: the checkpoints the students actually distilled from.

The final stage re-trains every chosen configuration on fresh seeds, teachers included; those
re-trained teachers are other models than the registered checkpoint every KD student learned
from. A table column or row whose cell is :func:`results.table_specs.registered` (``registered:
<teacher cell>``) shows the registered checkpoint itself: the report scores it on the test
split exactly as the loop scores a final model (threshold chosen on validation, the same
metrics, per-image scores) and adds it to the trials frame as a one-seed final row.

Which checkpoint: the ``teacher_path`` of the final KD trials whose teacher has the teacher
cell's model and input size (read from the registry record). The scores are cached in the run
folder (``teacher_scores/<fingerprint>.npz`` and ``.json``), so they are computed once.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import numpy as np
import pandas as pd

from cxrkd.results.held_out_scores import read_test_scores
from cxrkd.results.table_specs import REGISTERED_PREFIX
from cxrkd.trainables import storage
from cxrkd.trainables.errors import CxrkdError

CACHE_DIR = "teacher_scores"


def teacher_uri_of(trials: pd.DataFrame, teacher_cell: str, *, stage: str = "final") -> str | None:
    """The registered checkpoint that the final KD trials distilled from for ``teacher_cell``
    (matched on model and input size); None when no KD trial names one, or several match."""
    done = trials[(trials["stage"] == stage) & (trials["status"] == "completed")]
    mine = done[done["cell"] == teacher_cell]
    if mine.empty or "config/teacher_path" not in done or "config/model" not in mine:
        return None
    model = mine["config/model"].iloc[0]
    size = mine["config/img_size"].iloc[0] if "config/img_size" in mine else None
    found = set()
    for uri in done["config/teacher_path"].dropna().unique():
        record_uri = storage.join(str(uri), "record.json")
        if not storage.exists(record_uri):
            continue
        key = storage.read_json(record_uri)["key"]
        if key["model"] == model and (size is None or int(key["img_size"]) == int(size)):
            found.add(str(uri))
    return found.pop() if len(found) == 1 else None


def score_teacher(teacher_uri: str, data) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """``(test metrics, per-image test scores)`` of a registered teacher on ``data`` (a
    ``trainables.context.DataBundle`` with val and test splits), as a final trial gets them."""
    import torch

    from cxrkd.trainables import teachers
    from cxrkd.trainables.config import parse_config
    from cxrkd.trainables.context import TrialContext
    from cxrkd.trainables.data.augment import Pipeline
    from cxrkd.trainables.evaluate import predict, split_metrics, val_threshold
    from cxrkd.trainables.loop import per_image_scores, pick_device
    from cxrkd.trainables.methods import get_method
    from cxrkd.trainables.teacher_files import fetch_model_dir

    teachers.read_record(teacher_uri, dataset_fingerprint=data.info.fingerprint)
    folder = fetch_model_dir(teacher_uri)
    flat = json.loads((folder / "config.json").read_text())
    cfg = parse_config({**flat, "pretrained": False})  # the weights come from model.pt
    device = pick_device()
    task = get_method(cfg.train.method).build(cfg, data.info, TrialContext(device, data))
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    task.model.load_state_dict(state)
    task.to(device).eval()
    size = cfg.train.img_size
    make = getattr(task, "make_pipeline", None)
    pipeline = make(input_size=size) if make else Pipeline(input_size=size, low=task.low_res)
    val_out, val_y = predict(task, pipeline, data.split("val"), device=device, batch_size=64)
    threshold = val_threshold(data.info, val_out, val_y)
    out, y = predict(task, pipeline, data.split("test"), device=device, batch_size=64)
    metrics = split_metrics(data.info, out, y, threshold=threshold)
    return {f"test_{k}": float(v) for k, v in metrics.items()}, per_image_scores(data.info, out, y)


def _cache_uris(run_uri: str, teacher_uri: str) -> tuple[str, str]:
    name = teacher_uri.rstrip("/").rsplit("/", 1)[-1]  # the registry fingerprint
    base = storage.join(storage.normalize(run_uri), CACHE_DIR, name)
    return f"{base}.json", f"{base}.npz"


def cached_teacher_scores(run_uri: str, teacher_uri: str, load_data: Callable[[], object]):
    """:func:`score_teacher`, computed once per run and teacher (``load_data()`` is called
    only when the cache is empty)."""
    meta_uri, npz_uri = _cache_uris(run_uri, teacher_uri)
    if storage.exists(meta_uri) and storage.exists(npz_uri):
        return storage.read_json(meta_uri)["metrics"], read_test_scores(npz_uri)
    metrics, scores = score_teacher(teacher_uri, load_data())
    buf = io.BytesIO()
    np.savez(buf, **scores)
    fs, path = storage.filesystem(npz_uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(buf.getvalue())
    storage.write_json(meta_uri, {"teacher": teacher_uri, "metrics": metrics})  # written last
    return metrics, scores


def registered_rows(
    run_uri: str,
    trials: pd.DataFrame,
    cells: list[str],
    load_data: Callable[[], object],
) -> tuple[pd.DataFrame, dict, dict[str, str]]:
    """For each ``registered:<teacher cell>`` in ``cells``: a one-seed final row of the
    registered checkpoint and its scores. Returns ``(rows, scores, notes)``; a teacher that
    cannot be scored (no KD trial names it, dataset not on this machine) gets a note under
    its cell instead."""
    rows, scores, notes = [], {}, {}
    for cell in dict.fromkeys(c for c in cells if c.startswith(REGISTERED_PREFIX)):
        teacher_cell = cell.removeprefix(REGISTERED_PREFIX)
        uri = teacher_uri_of(trials, teacher_cell)
        if uri is None:
            notes[cell] = f"no final KD trial names one registered teacher for {teacher_cell}"
            continue
        try:
            metrics, arrays = cached_teacher_scores(run_uri, uri, load_data)
        except (CxrkdError, OSError, RuntimeError) as exc:  # the report goes on, saying why
            notes[cell] = f"the registered {teacher_cell} could not be scored on test ({exc})"
            continue
        trial_id = uri.rstrip("/").rsplit("/", 1)[-1]
        rows.append(
            {"stage": "final", "cell": cell, "trial_id": trial_id, "status": "completed"}
            | {"method": "registered teacher", "config/teacher_path": None, **metrics}
        )
        scores[(cell, trial_id)] = arrays
    return pd.DataFrame(rows), scores, notes
