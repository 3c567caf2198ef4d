"""``cxrkd data ...``: import, list, show, preview and remove dataset stores."""

from __future__ import annotations

import argparse
import json
import shutil
import sys

from cxrkd.trainables.data.store import (
    SYNTHETIC_BANNER,
    DatasetError,
    DatasetStore,
    datasets_dir,
    list_datasets,
)

# The folder and csv importers draw the splits a source does not give (None: the default).
_DRAWN_SPLITS = [
    (
        ("--val-fraction",),
        dict(type=float, default=None, help="share drawn as val when there is none (0.1)"),
    ),
    (
        ("--test-fraction",),
        dict(type=float, default=None, help="share drawn as test when there is none (0.15)"),
    ),
    (("--seed",), dict(type=int, default=0, help="seed of the drawn splits")),
]
# Options of each importer beyond the common ones: (flags, argparse kwargs).
KIND_OPTIONS: dict[str, list[tuple[tuple[str, ...], dict]]] = {
    "phantom": [
        (("--n",), dict(type=int, default=None, help="number of images (default 5000)")),
        (("--seed",), dict(type=int, default=0, help="generator seed (default 0)")),
        (("--val-fraction",), dict(type=float, default=0.1)),
        (("--test-fraction",), dict(type=float, default=0.15)),
    ],
    "kaggle-pneumonia": [
        (("--val-fraction",), dict(type=float, default=0.1, help="patients moved to val")),
        (("--seed",), dict(type=int, default=0, help="seed of the validation split")),
    ],
    "vindr": [
        (
            ("--label-rule",),
            dict(choices=["majority", "any"], default="majority", help="training labels"),
        ),
        (("--val-fraction",), dict(type=float, default=0.1)),
        (("--seed",), dict(type=int, default=0)),
    ],
    "medmnist": [],
    "folder": [
        (
            ("--positive",),
            dict(
                metavar="CLASS",
                help="the positive class folder (default: the class not named normal, "
                "negative, neg, 0, healthy or 'no finding')",
            ),
        ),
        *_DRAWN_SPLITS,
    ],
    "csv": [
        (
            ("--image-root",),
            dict(required=True, metavar="DIR", help="the folder the path column is relative to"),
        ),
        (
            ("--labels",),
            dict(
                metavar="A,B",
                help="label columns, comma-separated (default: every column but path, "
                "patient_id and split)",
            ),
        ),
        *_DRAWN_SPLITS,
    ],
}


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    from cxrkd.trainables.data.importers import IMPORTERS

    data = sub.add_parser("data", help="dataset stores: import, list, show, preview, rm")
    dsub = data.add_subparsers(dest="data_cmd", required=True, metavar="COMMAND")

    imp = dsub.add_parser("import", help="decode a dataset once into a store")
    ksub = imp.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, importer in IMPORTERS.items():
        p = ksub.add_parser(kind, help=importer.help, description=importer.help)
        p.add_argument("src", metavar="SRC", help="source folder/file (phantom: a preset)")
        p.add_argument("--name", help="store name (default: derived from the source)")
        p.add_argument("--size", type=int, default=224, help="stored side in px (default 224)")
        p.add_argument("--workers", type=int, default=None, help="decoding processes")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument(
            "--exist-ok", action="store_true", help="reuse a store of that name if identical"
        )
        options = KIND_OPTIONS.get(kind, [])  # a plugin's importer: the common options
        dests = [p.add_argument(*flags, **kwargs).dest for flags, kwargs in options]
        p.set_defaults(func=cmd_import, kind_options=dests)

    p = dsub.add_parser("list", help="list imported datasets")
    p.set_defaults(func=cmd_list)
    p = dsub.add_parser("show", help="describe one dataset")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print the manifest as one JSON object")
    p.set_defaults(func=cmd_show)
    p = dsub.add_parser("preview", help="write a PNG grid of sample images")
    p.add_argument("name")
    p.add_argument("--out", required=True, help="output PNG file")
    p.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_preview)
    p = dsub.add_parser("rm", help="delete a dataset store (asks first)")
    p.add_argument("name")
    p.add_argument("--yes", action="store_true", help="delete without asking")
    p.set_defaults(func=cmd_rm)


def cmd_import(args: argparse.Namespace) -> int:
    from cxrkd.trainables.data.importers import import_dataset

    options = {dest: getattr(args, dest) for dest in args.kind_options}
    if args.kind == "phantom" and options.get("n") is None:
        options.pop("n")
    manifest = import_dataset(
        args.kind,
        args.src,
        name=args.name,
        size=args.size,
        workers=args.workers,
        progress=not args.no_progress and sys.stderr.isatty(),
        exist_ok=args.exist_ok,
        **options,
    )
    print(f"dataset {manifest.title}")
    print(f"  stored at {datasets_dir() / manifest.name}")
    print(f"  splits {manifest.splits}, fingerprint {manifest.fingerprint}")
    for note in manifest.notes:
        print(f"  note: {note}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    manifests = list_datasets()
    if not manifests:
        print(f"no datasets in {datasets_dir()}; try `cxrkd data import phantom pneumonia`")
        return 0
    for m in manifests:
        splits = " ".join(f"{k}={v}" for k, v in m.splits.items())
        print(f"{m.title}  {splits}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    m = DatasetStore.open(args.name).manifest
    if args.json:
        print(json.dumps(show_json(m), indent=2))
        return 0
    print(m.title)
    if m.synthetic:
        print(f"  !! {SYNTHETIC_BANNER}")
    print(f"  source      {m.source}")
    multiclass = m.task == "multiclass"
    if multiclass:
        print(f"  task        multiclass: one of {len(m.labels)} classes per image (softmax)")
        print(f"  classes     {', '.join(m.labels)}")
    else:
        print(f"  task        {m.task}; labels {', '.join(m.labels)}")
    if m.finding_labels:
        print(f"  findings    {', '.join(m.finding_labels)}; global label {m.global_label}")
    print(f"  images      {m.n_images} at {m.resolution}x{m.resolution} px (uint8, one channel)")
    if multiclass:
        for line in class_table(m):
            print(f"  {line}")
    else:
        for split, n in m.splits.items():
            pos = ", ".join(f"{k}={v}" for k, v in m.label_counts.get(split, {}).items())
            print(f"  {split:<5} {n:>7} images; positives: {pos}")
    print(f"  fingerprint {m.fingerprint}")
    for note in m.notes:
        print(f"  note: {note}")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from cxrkd.trainables.data.preview import write_preview

    store = DatasetStore.open(args.name)
    path = write_preview(store, args.out, n=args.n, split=args.split, seed=args.seed)
    print(f"wrote {path}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    store = DatasetStore.open(args.name)
    if not args.yes:
        m = store.manifest
        if not sys.stdin.isatty():
            raise DatasetError(
                f"`cxrkd data rm {args.name}` asks before it deletes, but there is no terminal "
                f"to ask on; pass --yes to delete {store.path}"
            )
        answer = input(f"delete dataset {m.title} ({m.n_images} images) at {store.path}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    shutil.rmtree(store.path)
    print(f"removed {store.path}")
    return 0


def class_table(m) -> list[str]:
    """A multi-class store's images per class and split: a header, then one line a split (each
    image is counted once, under its class; the manifest's label_counts)."""
    width = [max(6, len(c)) for c in m.labels]
    lines = ["images per class:"]
    lines.append(
        "  ".join(
            [
                f"  {'split':<5}",
                f"{'images':>7}",
                *(f"{c:>{w}}" for c, w in zip(m.labels, width, strict=True)),
            ]
        )
    )
    for split, n in m.splits.items():
        counts = m.label_counts.get(split, {})
        cells = [f"{counts.get(c, 0):>{w}}" for c, w in zip(m.labels, width, strict=True)]
        lines.append("  ".join([f"  {split:<5}", f"{n:>7}", *cells]))
    return lines


def show_json(m) -> dict:
    """The ``data show --json`` object: the manifest; for a multi-class store also ``classes``
    (its labels, in the order of a model's outputs) and ``class_counts`` ({split: {class:
    images}}; the manifest's ``label_counts``, whose "positives" are a class's images)."""
    out = json.loads(m.to_json())
    if m.task == "multiclass":
        out["classes"] = list(m.labels)
        out["class_counts"] = {split: dict(c) for split, c in m.label_counts.items()}
    return out


def manifest_json(name: str) -> dict:
    """The ``data show --json`` object (for tests and other tools)."""
    return show_json(DatasetStore.open(name).manifest)


__all__ = ["DatasetError", "add_data_commands"]
