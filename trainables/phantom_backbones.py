"""Backbones pretrained on the SYNTHETIC ``findings`` phantom: something for the demo to transfer.

The demo runs where nothing can be downloaded, so it has no ImageNet weights; a ResNet-18 used
as a frozen feature extractor from a random init sits at chance. Instead, each backbone is
trained once on a *source* task, the multi-label ``findings`` phantom (six findings and
normal/abnormal; other images, other labels than the ``pneumonia`` phantom the demo is scored
on), and the demo's transfer, frozen and KD rows start from it. That is transfer learning in
the papers' sense with a synthetic source in place of ImageNet, and the tables say so.

The result is an ordinary weights folder (``trainables.weights_folder``), origin
``phantom-pretrained (SYNTHETIC)``, cached under ``$CXRKD_HOME/weights/phantom-findings-<key>/``
where the key hashes the recipe below: change the recipe and a new folder is built, never a
stale one reused. A run names it ``weights_dir="cxrkd:phantom-findings"``; the search driver
builds what is missing before the first trial (``cxrkd weights pretrain-phantom`` does it by
hand).

Sizing: the store is 3,000 images at 32 px, rendered once. A ResNet-18 training step at
32 px, batch 64, is ~14 GFLOP (3 x 37 M multiply-adds x 64 images x 2); channels-last makes
the convolutions' backward ~2x faster on CPU than the default layout. At the ~10-15 GFLOP/s
a core reaches on convolutions that is ~0.6-0.8 s a step on 2 idle cores, so 120 steps
(about three passes over the ~2,300 training images) take 1-1.5 minutes. A ResNet-50 step
costs ~1.7x more, so the demo trains its teacher from scratch instead. The recipe is fixed,
not time-bounded, so the same recipe gives the same weights on every machine.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

from cxrkd.trainables.data.pipeline import BatchLoader, Pipeline
from cxrkd.trainables.data.store import DatasetStore, cxrkd_home, datasets_dir
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.metrics import roc_auc
from cxrkd.trainables.weights_folder import ORIGIN_PHANTOM, add_weights, read_index

SOURCE = "phantom-findings"
SOURCE_CAPTION = "backbones pretrained on the SYNTHETIC findings phantom, not ImageNet"
# Everything that decides the weights. Bump "version" when the training code changes.
RECIPE = {
    "version": 1,
    "preset": "findings",
    "images": 3000,
    "store_px": 32,
    "img_size": 32,
    "batch_size": 64,
    "steps": 120,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "seed": 0,
}
STORE_NAME = "phantom-findings-32px"  # `cxrkd data show` lists it like any other store


def recipe_key(recipe: dict | None = None) -> str:
    """12 hex digits of the recipe's hash: the cache folder's name."""
    text = json.dumps(RECIPE if recipe is None else recipe, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def builtin_weights_dir(source: str, *, home: str | None = None) -> Path:
    """The cached folder of a built-in weights source (``cxrkd:phantom-findings``)."""
    if source != SOURCE:
        raise CxrkdError(
            f"unknown built-in weights source 'cxrkd:{source}'; the one built in is "
            f"'cxrkd:{SOURCE}' (or pass a folder made by `cxrkd weights download`)"
        )
    return cxrkd_home(home) / "weights" / f"{SOURCE}-{recipe_key()}"


def build_builtin_weights(
    source: str, names: Iterable[str], *, log: Callable[[str], None] = print
) -> Path:
    """Make sure ``builtin_weights_dir(source)`` holds every model of ``names``; returns it."""
    folder = builtin_weights_dir(source)
    missing = [n for n in dict.fromkeys(names) if n not in read_index(folder)]
    return pretrain_phantom(missing, folder, log=log) if missing else folder


def source_store(*, log: Callable[[str], None] = print) -> DatasetStore:
    """The ``findings`` phantom store the backbones learn from (imported once)."""
    from cxrkd.trainables.data.importers import import_dataset

    if not (datasets_dir() / STORE_NAME).exists():
        log(f"importing {STORE_NAME!r} (SYNTHETIC findings phantom, {RECIPE['images']} images)")
    manifest = import_dataset(
        "phantom",
        RECIPE["preset"],
        name=STORE_NAME,
        n=RECIPE["images"],
        seed=RECIPE["seed"],
        size=RECIPE["store_px"],
        progress=False,
        exist_ok=True,
    )
    return DatasetStore.open(manifest.name)


def pretrain_phantom(
    names: Iterable[str], out: str | Path, *, log: Callable[[str], None] = print
) -> Path:
    """Train each timm model of ``names`` on the findings phantom; save them into ``out``."""
    from cxrkd.trainables.models import model_normalization

    unknown = [n for n in names if not timm.is_model(n)]
    if unknown:
        raise CxrkdError(f"pretrain-phantom takes timm model names, got {unknown}")
    out = Path(out).expanduser().resolve()
    store = source_store(log=log)
    for name in names:
        start = time.perf_counter()
        log(f"pretraining {name} on the SYNTHETIC findings phantom ({RECIPE['steps']} steps)")
        model, val_auroc = _train(name, store, model_normalization(name))
        seconds = round(time.perf_counter() - start, 1)
        add_weights(
            out,
            name,
            model,
            origin=ORIGIN_PHANTOM,
            source_dataset={"name": store.manifest.name, "fingerprint": store.manifest.fingerprint},
            labels=list(store.manifest.labels),
            recipe=RECIPE,
            val_auroc_mean=round(val_auroc, 4),
            train_seconds=seconds,
        )
        log(f"  {name}: source-task validation AUROC {val_auroc:.3f} ({seconds:.0f} s)")
    return out


def _train(name: str, store: DatasetStore, norm: tuple[float, float]):
    r = RECIPE
    torch.manual_seed(r["seed"])
    model = timm.create_model(
        name, pretrained=False, in_chans=1, num_classes=len(store.manifest.labels)
    ).to(memory_format=torch.channels_last)
    images, labels = store.split_arrays("train")
    loader = BatchLoader(
        images, labels, batch_size=r["batch_size"], shuffle=True, device="cpu",
        seed=r["seed"], drop_last=True,
    )  # fmt: skip
    view = Pipeline(input_size=r["img_size"], mean=norm[0], std=norm[1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, r["lr"], total_steps=r["steps"])
    model.train()
    step = 0
    while step < r["steps"]:
        for x, y in loader:
            x = view(x, train=True)["hr"].contiguous(memory_format=torch.channels_last)
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step == r["steps"]:
                break
    model = model.eval().to(memory_format=torch.contiguous_format)  # saved as plain tensors
    return model, _val_auroc(model, store, view)


@torch.no_grad()
def _val_auroc(model, store: DatasetStore, view: Pipeline) -> float:
    images, labels = store.split_arrays("val")
    loader = BatchLoader(images, labels, batch_size=256, shuffle=False, device="cpu")
    scores = torch.cat([model(view(x, train=False)["hr"]) for x, _ in loader]).numpy()
    aucs = [roc_auc(labels[:, j], scores[:, j]) for j in range(labels.shape[1])]
    return float(np.nanmean(aucs))
