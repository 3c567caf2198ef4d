"""The importer registry: ``kind -> planner``; one entry point for the CLI and for tests.

A planner is ``plan(src, *, name, **options) -> ImportPlan``: it reads the source's layout and
labels, checks them (clear errors for bad input, raised before anything is written) and returns
the plan; :func:`trainables.data.writer.write_store` then decodes and stores the images.
Planner modules are imported lazily so that ``cxrkd data list`` does not import pydicom.

Installed packages add importers through the entry-point group ``cxrkd.importers``: the entry
point's name is the kind, its value ``"module:planner"``, the planner docstring's first line
its help (:mod:`trainables.plugins`). They are loaded on the first use of :data:`IMPORTERS`
(once per process); a plugin cannot take a built-in kind.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from cxrkd.trainables.data.import_plan import ImportPlan
from cxrkd.trainables.data.store import (
    DatasetError,
    DatasetStore,
    Manifest,
    check_name,
    datasets_dir,
)
from cxrkd.trainables.data.writer import write_store
from cxrkd.trainables.plugins import Plugin, load_group

GROUP = "cxrkd.importers"


@dataclass(frozen=True)
class Importer:
    kind: str
    target: str  # "module:function" of the planner
    help: str

    def planner(self) -> Callable[..., ImportPlan]:
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)


class Importers(Mapping[str, Importer]):
    """``kind -> Importer``: the built-in ones, then (on first use) the plugins'."""

    def __init__(self, builtin: Mapping[str, Importer]) -> None:
        self._items = dict(builtin)
        self._plugins: list[Plugin] | None = None

    def _loaded(self) -> dict[str, Importer]:
        if self._plugins is None:
            self._plugins = []
            self._plugins = load_group(GROUP, self._load_plugin)
        return self._items

    def _load_plugin(self, ep) -> tuple[str, ...]:
        if ep.name in self._items:
            raise DatasetError(
                f"dataset kind {ep.name!r} is already {self._items[ep.name].target}: plugin "
                f"{ep.name} = {ep.value} cannot replace it; rename the plugin's entry point"
            )
        if not ep.attr:
            raise DatasetError(f"{ep.value!r} names a module; give 'module:planner'")
        planner = ep.load()
        if not callable(planner):
            raise DatasetError(f"{ep.value} is a {type(planner).__name__}, not a planner")
        doc = (planner.__doc__ or "").strip().splitlines()
        self._items[ep.name] = Importer(ep.name, ep.value, doc[0] if doc else ep.value)
        return (ep.name,)

    def plugins(self) -> list[Plugin]:
        self._loaded()
        return list(self._plugins or [])

    def __getitem__(self, kind: str) -> Importer:
        return self._loaded()[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())


_BUILTIN: dict[str, Importer] = {
    imp.kind: imp
    for imp in (
        Importer(
            "phantom",
            "cxrkd.trainables.data.phantom:plan_phantom",
            "built-in SYNTHETIC chest-radiograph phantom; SRC is a preset (pneumonia, findings)",
        ),
        Importer(
            "kaggle-pneumonia",
            "cxrkd.trainables.data.kaggle:plan_kaggle",
            "Kaggle 'Chest X-Ray Images (Pneumonia)' folder (chest_xray/{train,val,test}/...)",
        ),
        Importer(
            "vindr",
            "cxrkd.trainables.data.vindr:plan_vindr",
            "VinDr-CXR as published on PhysioNet (train/, test/, annotations/)",
        ),
        Importer(
            "medmnist",
            "cxrkd.trainables.data.medmnist:plan_medmnist",
            "a MedMNIST .npz file (PneumoniaMNIST or ChestMNIST, any size)",
        ),
        Importer(
            "folder",
            "cxrkd.trainables.data.folder:plan_folder",
            "a folder of two class sub-folders (PNG/JPEG/DICOM), optionally under "
            "train/, val/, test/: a binary dataset",
        ),
        Importer(
            "csv",
            "cxrkd.trainables.data.csv_import:plan_csv",
            "a CSV of image paths (under --image-root) and 0/1 label columns, optional "
            "patient_id and split columns: binary (one label) or multi-label",
        ),
    )
}
IMPORTERS = Importers(_BUILTIN)


def get_importer(kind: str) -> Importer:
    try:
        return IMPORTERS[kind]
    except KeyError:
        raise DatasetError(
            f"unknown dataset kind {kind!r}; known kinds: {sorted(IMPORTERS)}"
        ) from None


def import_dataset(
    kind: str,
    src: str,
    *,
    name: str | None = None,
    size: int = 224,
    home: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
    exist_ok: bool = False,
    **options,
) -> Manifest:
    """Plan and write one import; returns the new (or, with ``exist_ok``, existing) manifest."""
    if name is not None:
        check_name(name)  # before a long planning pass over the source
    plan = get_importer(kind).planner()(src, name=name, **options)
    if exist_ok and (datasets_dir(home) / plan.name).exists():
        existing = DatasetStore.open(plan.name, home).manifest
        wanted = dict(plan.options, size=size)
        old, new = existing.options.get("importer_version"), wanted.get("importer_version")
        if existing.kind == kind and old != new:
            raise DatasetError(
                f"dataset {plan.name!r} was made by version {old or 1} of the {kind} importer; "
                f"this is version {new}, which keeps other images, ids or splits (see `cxrkd data "
                f"show {plan.name}` and the importer's notes). Remove it with `cxrkd data rm "
                f"{plan.name}` and import again, or pass another --name"
            )
        if existing.kind != kind or existing.options != wanted:
            raise DatasetError(
                f"dataset {plan.name!r} exists but was imported from {existing.kind} with "
                f"{existing.options}, not {kind} with {wanted}; pass another --name"
            )
        return existing
    return write_store(plan, size=size, home=home, workers=workers, progress=progress)
