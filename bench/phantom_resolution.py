"""Does the phantom lose small findings at low resolution, as real radiographs do (MLCAK)?

Run: ``.venv/bin/python bench/phantom_resolution.py [--n 5000] [--epochs 24] [--res 224,28]``.
In one run it

1. imports the ``findings`` phantom preset at 224 px with 2 workers (timed), into a temporary
   ``CXRKD_HOME`` that is deleted afterwards;
2. trains the same small CNN, from the same seed and for the same number of steps, once per
   resolution: 224 px as stored, and each low resolution as the MLCAK paper's view
   (``trainables.data.augment.low_resolution``: area-downsample to ``low`` and bilinear-upsample
   back to 224), so every model sees a 224-px input and only the information differs;
3. prints per-label test AUROC per resolution and the drop from 224 px.

By construction nodules (a few px at 224) and pneumothorax (a 1.5-px pleural line, missing
markings) should lose much more AUROC at 28 px than mass, effusion and cardiomegaly. CPU only,
``torch.set_num_threads(2)``; about 7 minutes on a 2-core machine with the defaults.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from torch import nn

from cxrkd.trainables.data.augment import low_resolution
from cxrkd.trainables.data.importers import import_dataset
from cxrkd.trainables.data.store import DatasetStore
from cxrkd.trainables.metrics import multilabel_auroc

INPUT = 224


class SmallCNN(nn.Module):
    """A patchify stem (4x4, stride 4, like ConvNeXt's: no detail is thrown away before the
    first learned filter), strided 3x3 stages down to 7x7, and a head on the global max of the
    28x28 stage plus the max and mean of the last one.

    The max over the 28x28 stage gives a small-lesion detector in an early layer a direct path
    to the logits, which the small data set otherwise does not teach in a CPU budget.
    """

    SPEC = ((24, 4, 4), (48, 3, 2), (64, 3, 2), (64, 3, 1), (96, 3, 2))  # (out, kernel, stride)
    TAP = 2  # index of the 28x28 block whose global max the head also reads

    def __init__(self, n_out: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        cin = 1
        for cout, k, stride in self.SPEC:
            pad = 0 if k == stride else k // 2
            self.blocks.append(
                nn.Sequential(
                    nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True),
                )
            )
            cin = cout
        self.head = nn.Linear(self.SPEC[self.TAP - 1][0] + 2 * cin, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.TAP - 1:
                pooled.append(x.amax(dim=(2, 3)))
        pooled += [x.amax(dim=(2, 3)), x.mean(dim=(2, 3))]
        return self.head(torch.cat(pooled, dim=1))


def shifted(batch: np.ndarray, rng: np.random.Generator, max_shift: int = 8) -> np.ndarray:
    """Random translation by up to ``max_shift`` px per image (edge pixels repeated): cheap
    augmentation against memorising the few thousand training films."""
    out = np.empty_like(batch)
    padded = np.pad(batch, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)), mode="edge")
    size = batch.shape[-1]
    for i, (dy, dx) in enumerate(rng.integers(0, 2 * max_shift + 1, size=(len(batch), 2))):
        out[i] = padded[i, dy : dy + size, dx : dx + size]
    return out


def view(batch: np.ndarray, res: int) -> torch.Tensor:
    """uint8 (B, S, S) -> float (B, 1, 224, 224) in [0, 1], at the information level ``res``."""
    x = torch.from_numpy(batch).unsqueeze(1).float().div_(255.0)
    if res < INPUT:
        x = low_resolution(x, low=res, out=INPUT)
    return ((x - 0.5) / 0.25).contiguous(memory_format=torch.channels_last)


def train_and_test(store: DatasetStore, res: int, *, epochs: int, batch: int, seed: int):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_tr, y_tr = store.split_arrays("train")
    x_te, y_te = store.split_arrays("test")
    model = SmallCNN(y_tr.shape[1]).to(memory_format=torch.channels_last)
    steps = epochs * (len(x_tr) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    # Rare labels get a larger positive weight so the small CNN does not ignore them.
    pos = y_tr.mean(axis=0).clip(0.02, 0.98)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((1 - pos) / pos).sqrt().float())
    model.train()
    for epoch in range(epochs):
        total = 0.0
        order = rng.permutation(len(x_tr))
        for i in range(len(x_tr) // batch):
            idx = np.sort(order[i * batch : (i + 1) * batch])
            images = shifted(x_tr[idx], rng)
            loss = loss_fn(model(view(images, res)), torch.from_numpy(y_tr[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        mean = total / (len(x_tr) // batch)
        print(f"    {res} px epoch {epoch}: train loss {mean:.4f}", flush=True)
    model.eval()
    with torch.no_grad():
        scores = torch.cat(
            [torch.sigmoid(model(view(x_te[i : i + 256], res))) for i in range(0, len(x_te), 256)]
        ).numpy()
    return multilabel_auroc(y_te, scores, store.labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="phantom images (default 5000)")
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--res", default="224,28", help="resolutions, e.g. 224,112,56,28")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--home", help="keep the store in this CXRKD_HOME (reused if identical)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    resolutions = [int(r) for r in args.res.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        home = args.home or tmp
        t0 = time.perf_counter()
        import_dataset("phantom", "findings", n=args.n, size=INPUT, home=home, workers=2,
                       progress=False, exist_ok=True)  # fmt: skip
        gen = time.perf_counter() - t0
        store = DatasetStore.open("phantom-findings", home)
        print(f"generated {args.n} phantom images at {INPUT} px with 2 workers in {gen:.1f} s "
              f"({args.n / gen:.0f} img/s); splits {store.manifest.splits}")  # fmt: skip
        results = {}
        for res in resolutions:
            t0 = time.perf_counter()
            results[res] = train_and_test(store, res, epochs=args.epochs, batch=args.batch,
                                          seed=args.seed)  # fmt: skip
            print(f"  {res:>3} px: macro AUROC {results[res][0]:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
        labels = store.labels
        prevalence = store.label_matrix("test").mean(axis=0)

    hr = resolutions[0]
    head = " | ".join(f"{r} px" for r in resolutions)
    drops = " | ".join(f"drop {r}" for r in resolutions[1:])
    print(f"\n| label | test prev. | {head} | {drops} |")
    print("|---" * (2 + 2 * len(resolutions) - 1) + "|")
    for j, name in enumerate([*labels, "macro"]):
        vals = [results[r][1].get(name, results[r][0]) for r in resolutions]
        prev = f"{prevalence[j]:.2f}" if j < len(labels) else ""
        cells = " | ".join(f"{v:.3f}" for v in vals)
        dcells = " | ".join(f"{results[hr][1].get(name, results[hr][0]) - v:+.3f}"
                            for v in vals[1:])  # fmt: skip
        print(f"| {name} | {prev} | {cells} | {dcells} |")


if __name__ == "__main__":
    main()
