"""Images/s of the paper models' trial steps, appended to ``bench/throughput.json``.

``cxrkd search plan`` reads the table to put hours and dollars on a study. Each row is one
model at one input size on this machine: ``train`` is a whole train step (forward, backward,
AdamW) and ``eval`` a forward pass without gradients, in the trial's precision (bf16 autocast
and channels_last on CUDA, fp32 on the CPU), through the trial's pipeline (resize, the
low-resolution view, normalisation; no augmentation) on a synthetic batch
(``search.plan_throughput.measure``). Rows carry the machine (device, torch, threads), date,
batch, steps timed, FLOPs and parameters.

Run::

    python bench/throughput.py                                # the paper models, GPU or CPU
    python bench/throughput.py --spec resnet18:224 --spec vit_tiny_patch16_224:224:28 \\
        --modes train --batch 8 --seconds 3                   # a subset (the CPU rows here)
    python bench/throughput.py --dry-run                      # print, do not write
    python bench/throughput.py --flops-only                   # FLOPs only (for estimates)

``--spec MODEL:SIZE[:VIEW]``: a timm or cxrkd model at the model input SIZE; VIEW is a ViT
student's low-resolution view (the student still runs at SIZE: the paper's 224 -> 112/56/28
upsampled back). Rows are appended; the plan uses the latest row of each model, size, view,
mode and device kind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrkd.search.plan_throughput import (
    TABLE,
    ModelSpec,
    count_model_flops,
    flops_key,
    machine,
    measure,
)

PAPER = [
    "resnet18:224",
    "resnet50:224",
    "cnn_baseline:224",
    "vit_tiny_patch16_224:224",
    "vit_small_patch16_224:224",
    "vit_base_patch16_224:224",
    "vit_tiny_patch16_224:224:112",
    "vit_tiny_patch16_224:224:56",
    "vit_tiny_patch16_224:224:28",
]


def parse_spec(text: str) -> ModelSpec:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[1:]):
        raise SystemExit(f"--spec takes MODEL:SIZE[:VIEW], e.g. resnet18:224, got {text!r}")
    return ModelSpec(parts[0], int(parts[1]), low_res=int(parts[2]) if len(parts) == 3 else 0)


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", action="append", help="MODEL:SIZE[:VIEW] (default: the paper's)")
    p.add_argument("--modes", nargs="+", default=["train", "eval"], choices=["train", "eval"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, help="images per step (default 64 on GPU, 8 on CPU)")
    p.add_argument("--seconds", type=float, help="timed per row (default 10 GPU, 3 CPU)")
    p.add_argument("--threads", type=int, help="torch threads on the CPU (default torch's)")
    p.add_argument("--out", default=str(TABLE))
    p.add_argument("--dry-run", action="store_true", help="print the rows, write nothing")
    p.add_argument("--flops-only", action="store_true",
                   help="count the specs' forward FLOPs into the table's `flops` section (for "
                   "the plan's estimates; no timing)")  # fmt: skip
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = args.device.startswith("cuda")
    batch = args.batch or (64 if gpu else 8)
    seconds = args.seconds or (10.0 if gpu else 3.0)
    if args.flops_only:
        return write_flops([parse_spec(t) for t in args.spec or PAPER], Path(args.out))
    info = machine(args.device)
    rows = []
    for spec in map(parse_spec, args.spec or PAPER):
        for mode in args.modes:
            t0 = time.perf_counter()
            row = measure(spec, mode, device=args.device, batch=batch, seconds=seconds)
            row = {**info, **row, "load": _load(), "source": "bench/throughput.py"}
            rows.append(row)
            print(f"{spec.label:<44} {mode:<5} {row['images_per_s']:>10,.1f} img/s "
                  f"(batch {batch}, {row['steps']} steps, {time.perf_counter() - t0:.0f} s)",
                  flush=True)  # fmt: skip
    if args.dry_run:
        print(json.dumps(rows, indent=1))
        return 0
    out = Path(args.out)
    table = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    table["rows"] = [*table.get("rows", []), *rows]
    out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"appended {len(rows)} rows ({info['device']}) to {out}")
    return 0


def _load() -> str:
    """The 1-minute load average while the row was measured (this machine may be shared)."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"


def write_flops(specs: list[ModelSpec], out: Path) -> int:
    table = json.loads(out.read_text()) if out.is_file() else {}
    flops = table.setdefault("flops", {})
    for spec in specs:
        flops[flops_key(spec)] = count_model_flops(spec)
        print(f"{flops_key(spec)}: {flops[flops_key(spec)] / 1e9:.3f} GFLOP per image (forward)")
    out.write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
