"""``cxrkd export RUN --cell CELL [--seed S] --format F --out DIR`` and
``cxrkd predict DIR IMAGE... [--json]``: take a final model out of a run and apply it.

The export folder holds the model file and ``cxrkd-model.json`` (the sidecar: preprocessing,
output names, the decision threshold chosen on validation, the model and where it came from,
and whether its data were SYNTHETIC); see :mod:`trainables.export`. A multi-class model's
sidecar says ``task: multiclass`` and lists its ``classes`` in output order; it has no
threshold: ``predict`` prints the softmax probability of each class and the most probable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from cxrkd.trainables.export_format import (
    FORMATS,
    SIDECAR,
    SIDECAR_VERSION,
    decision_fields,
    is_multiclass,
)

SYNTHETIC_NOTE = (
    "SYNTHETIC: this model was trained on phantom data; its outputs say nothing about real "
    "chest X-rays"
)


def add_export_commands(sub: argparse._SubParsersAction) -> None:
    formats = ", ".join(FORMATS)
    p = sub.add_parser(
        "export",
        help="write a run's final model (safetensors, onnx, torchscript) with its preprocessing",
        description="Write the final model of one cell of a run (the final stage's re-training "
        f"on one seed) as {formats}, with {SIDECAR}: preprocessing (normalisation, input size, "
        "low-resolution view), output names, the decision threshold chosen on validation, "
        "the model, run, cell, seed and trial, and whether the data were SYNTHETIC. ONNX "
        "needs `pip install 'cxrkd[onnx]'`.",
    )
    p.add_argument("run", help="run folder, URI (s3://...), or name under the default storage")
    p.add_argument("--cell", required=True, help="a final-stage cell, e.g. resnet18_kd")
    p.add_argument("--seed", type=int, help="which seed's model (default: the best on validation)")
    p.add_argument("--format", required=True, metavar="FORMAT", help=formats)
    p.add_argument("--out", required=True, help="folder to create (must not exist, or be empty)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "predict",
        help="apply an exported model to PNG, JPEG or DICOM files",
        description="Print one row per image: its path, the probability of each output and "
        "the decision on the global label at the threshold chosen on validation (a "
        "multi-class model: the softmax probability of each class and the most probable "
        "class). Images go through the evaluation's own preprocessing (see the export's "
        "sidecar).",
    )
    p.add_argument("dir", help="an export folder (`cxrkd export ... --out DIR`)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG or DICOM files")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_predict)


def _final_stage(study) -> str:
    from cxrkd.spaces.studies import Role

    return next((s.name for s in study.stages if s.role == Role.FINAL), "final")


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cxrkd.trainables.export import check_out
    from cxrkd.trainables.export_format import check_format

    check_format(args.format)
    check_out(Path(args.out).expanduser().absolute())  # before anything is read or built
    sidecar, folder, done = export_run(args.run, cell=args.cell, seed=args.seed, fmt=args.format,
                                       out=args.out)  # fmt: skip
    print(f"wrote {folder} ({args.format}) in {done:.1f} s")
    print(f"  cell {sidecar['cell']}, seed {sidecar['seed']}, trial {sidecar['trial_id']}")
    print(f"  outputs {sidecar['outputs']}; decision: {sidecar['decision']['rule']}")
    if sidecar["synthetic"]:
        print(f"  !! {SYNTHETIC_NOTE}")
    return 0


def export_run(run: str, *, cell: str, seed: int | None, fmt: str, out: str):
    """``(sidecar, folder, seconds)``: the export of ``cell``'s final model of ``run``."""
    import numpy as np
    import torch

    from cxrkd.results.export import fetch_checkpoint, final_model
    from cxrkd.results.frames import load_trials
    from cxrkd.search.provenance import package_versions
    from cxrkd.search.run_state import read_run, run_uri_of
    from cxrkd.search.runner import study_of_run
    from cxrkd.trainables.checkpoint import CheckpointError
    from cxrkd.trainables.data.pipeline import DatasetInfo
    from cxrkd.trainables.data.store import DatasetStore
    from cxrkd.trainables.errors import CxrkdError
    from cxrkd.trainables.export import (
        deployed_task,
        model_inputs,
        output_names,
        preprocessing,
        write_export,
    )

    started = time.perf_counter()
    run_uri = run_uri_of(run)
    raw = read_run(run_uri)
    study = study_of_run(run_uri)
    trials = load_trials(run_uri)
    dataset = raw["options"]["dataset"]
    store = DatasetStore.open(dataset)
    if store.manifest.fingerprint != raw.get("dataset_fingerprint"):
        raise CxrkdError(
            f"dataset {dataset!r} on this machine is not the one run {run_uri} was trained on "
            f"(fingerprint {store.manifest.fingerprint}, the run's "
            f"{raw.get('dataset_fingerprint')}); import the original data under that name"
        )
    info = DatasetInfo.from_store(store)
    # A multi-class decision is the argmax: its trials record no validation threshold.
    chosen = final_model(run_uri, trials, cell=cell, seed=seed, stage=_final_stage(study),
                         metric=study.metric, mode=study.mode,
                         needs_threshold=info.task != "multiclass")  # fmt: skip
    local, tmp = fetch_checkpoint(chosen.checkpoint_uri)
    try:
        flat = json.loads((local / "config.json").read_text())
        try:
            state = torch.load(local / "model.pt", map_location="cpu", weights_only=True)
        except Exception as exc:  # a foreign object (weights_only refuses it) or a damaged file
            raise CheckpointError(
                f"{chosen.checkpoint_uri}/model.pt cannot be loaded as weights only ({exc})"
            ) from None
    except FileNotFoundError as exc:
        raise CxrkdError(f"checkpoint {chosen.checkpoint_uri} is incomplete: {exc}") from None
    finally:
        if tmp is not None:
            tmp.cleanup()
    task, architecture = deployed_task(flat, info, state)
    pre = preprocessing(task, input_size=int(flat["img_size"]), info=info)
    # Verified on real images: a few of the test split, else of whichever split there is.
    split = next(s for s in ("test", "val", "train") if store.manifest.splits.get(s))
    images = np.ascontiguousarray(store.images[store.split_indices(split)[:4]])
    example = next(model_inputs(images, pre))
    decision = decision_fields(task=info.task, outputs=output_names(info),
                               label=info.global_label, threshold=chosen.threshold)  # fmt: skip
    sidecar = {
        "sidecar_version": SIDECAR_VERSION,
        "cxrkd_version": package_versions(("cxrkd",))["cxrkd"],
        "created": time.time(),
        "model": flat["model"],
        "method": flat["method"],
        "architecture": architecture,
        "run": run_uri,
        "study": study.name,
        "profile": raw["options"]["profile"],
        "cell": chosen.cell,
        "seed": chosen.seed,
        "trial_id": chosen.trial_id,
        "checkpoint": chosen.checkpoint_uri,
        "chosen_by": None if seed is not None else {chosen.metric: chosen.value},
        "synthetic": bool(info.synthetic),
        "dataset": {
            "name": info.name,
            "kind": info.kind,
            "task": info.task,
            "labels": list(info.labels),
            "finding_labels": list(info.finding_labels),
            "global_label": info.global_label,
            "resolution": info.resolution,
            "fingerprint": info.fingerprint,
            "synthetic": bool(info.synthetic),
        },
        "preprocessing": pre,
        "outputs": output_names(info),
        **decision,
    }
    folder = write_export(out, task=task, fmt=fmt, sidecar=sidecar, example=example)
    return sidecar, folder, time.perf_counter() - started


def prediction_rows(sidecar: dict, paths: list[str], probs) -> list[dict]:
    """One row per image: its path, the probability of each output and the decision:
    ``positive`` (the global label at the validation threshold), or for a multi-class model
    ``predicted`` (the most probable class; the first of equals, as evaluation's argmax)."""
    names = sidecar["outputs"]
    rows = []
    for path, p in zip(paths, probs, strict=True):
        row = {"path": path, "probabilities": {n: float(v) for n, v in zip(names, p, strict=True)}}
        if is_multiclass(sidecar):
            row["predicted"] = names[int(p.argmax())]
        else:
            decision = sidecar["decision"]
            row["positive"] = bool(p[names.index(decision["label"])] >= decision["threshold"])
        rows.append(row)
    return rows


def cmd_predict(args: argparse.Namespace) -> int:
    from cxrkd.trainables.export import predict_files

    sidecar, probs = predict_files(args.dir, args.images)
    rows = prediction_rows(sidecar, args.images, probs)
    multiclass = is_multiclass(sidecar)
    if sidecar["synthetic"]:
        print(f"cxrkd: note: {SYNTHETIC_NOTE}", file=sys.stderr)
    if args.json:
        meta = {k: sidecar[k] for k in ("model", "cell", "seed", "run", "synthetic", "outputs")}
        meta["task"] = sidecar["dataset"]["task"]
        if multiclass:
            meta.update(classes=list(sidecar["outputs"]), decision="argmax")
        else:
            meta.update(threshold=sidecar["decision"]["threshold"],
                        label=sidecar["decision"]["label"])  # fmt: skip
        print(json.dumps({**meta, "images": rows}))
        return 0
    names = sidecar["outputs"]
    if multiclass:
        last, decide = "predicted", lambda row: row["predicted"]
    else:
        label, threshold = sidecar["decision"]["label"], sidecar["decision"]["threshold"]
        last = f"{label}>={threshold:.4g}"
        decide = lambda row: "yes" if row["positive"] else "no"  # noqa: E731
    print("\t".join(["path", *(f"p({n})" for n in names), last]))
    for row in rows:
        cells = [f"{row['probabilities'][n]:.4f}" for n in names]
        print("\t".join([row["path"], *cells, decide(row)]))
    return 0
