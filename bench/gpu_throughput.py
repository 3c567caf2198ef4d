"""The issue's GPU goals, side by side in one run: trial throughput vs a bare timm loop, and MFU.

Run (on a CUDA machine; no Ray or Optuna needed):
``python bench/gpu_throughput.py [--model vit_small_patch16_224] [--img 224] [--batch 64]``
``[--steps 60] [--mfu-model vit_base_patch16_224]``.
``--device cpu --img 32 --batch 8 --steps 3 --mfu-model ""`` is a smoke run of the same code.

In one process it

1. imports a ``findings`` phantom at ``--img`` px into a temporary ``CXRKD_HOME`` (enough
   images for ``--steps`` batches);
2. **trial**: runs ``vit_mtl`` with ``--model`` through the project's own loop
   (``trainables.loop.run_trial``: batches from the store, uint8 -> float on the device,
   augmentation off, bf16 autocast and channels_last on CUDA, AdamW, the two heads), 2 epochs
   of ``--steps`` steps; its figure is the second epoch's ``images_per_s`` (train steps only,
   after warm-up);
3. **bare**: the same timm model (one input channel, 7 outputs), AdamW, bf16 autocast,
   channels_last, on one pre-made device batch, timed over ``--steps`` steps after 10 warm-up
   steps with ``torch.cuda.synchronize()`` around the timed span;
4. prints images/s of both and their ratio (goal >= 0.9), then the model-FLOPs utilisation of
   ``--mfu-model`` in the bare loop: 3 x forward FLOPs per image (``count_flops``) x images/s
   over the GPU's dense bf16 peak (``--peak-tflops``, else looked up from the device name).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import timm
import torch

from cxrkd.trainables.context import DataBundle
from cxrkd.trainables.data.importers import import_dataset
from cxrkd.trainables.data.store import DatasetStore
from cxrkd.trainables.loop import run_trial
from cxrkd.trainables.profiling import count_flops
from cxrkd.trainables.trainable import LocalReporter

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
PEAKS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
         "A10G": 70.0, "L4": 121.0}  # fmt: skip
N_OUT = 7  # the findings phantom: 6 findings (MLCT) + abnormal (MCCT)


def trial_images_per_s(store: DatasetStore, model: str, *, img: int, batch: int, steps: int):
    flat = {"method": "vit_mtl", "model": model, "img_size": img, "pretrained": False,
            "epochs": 2, "steps_per_epoch": steps, "batch_size": batch, "augment": False,
            "warmup_epochs": 0.0, "lr": 5e-4}  # fmt: skip
    reporter = LocalReporter()
    run_trial(flat, DataBundle.from_store(store), reporter=reporter)
    return reporter.rows[-1]["images_per_s"]


def bare_images_per_s(model_name: str, *, img: int, batch: int, steps: int, device):
    model = timm.create_model(
        model_name, pretrained=False, in_chans=1, num_classes=N_OUT, img_size=img
    )
    model = model.to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    x = torch.randn(batch, 1, img, img, device=device).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, N_OUT, device=device) < 0.2).float()
    cuda = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(10 if cuda else 1):
        step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    rate = steps * batch / (time.perf_counter() - t0)
    with torch.no_grad():
        flops = count_flops(model.float(), x[:1].float())
    return rate, flops


def peak_tflops(device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAKS.items() if k in name), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--mfu-model", default="vit_base_patch16_224", help='"" to skip')
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the GPU")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    else:
        print(f"device: CPU ({torch.get_num_threads()} threads): a smoke run, not a figure")

    with tempfile.TemporaryDirectory() as home:
        n = max(300, int(1.3 * args.batch * args.steps))  # ~77% of a phantom goes to train
        import_dataset("phantom", "findings", n=n, size=args.img, home=home, workers=2,
                       progress=False)  # fmt: skip
        store = DatasetStore.open("phantom-findings", home)
        trial = trial_images_per_s(store, args.model, img=args.img, batch=args.batch,
                                   steps=args.steps)  # fmt: skip
    bare, _ = bare_images_per_s(args.model, img=args.img, batch=args.batch, steps=args.steps,
                                device=device)  # fmt: skip
    print(f"{args.model} at {args.img} px, batch {args.batch}: trial {trial:.0f} img/s, bare "
          f"timm loop {bare:.0f} img/s, ratio {trial / bare:.3f} (goal >= 0.9)")  # fmt: skip
    if args.mfu_model:
        rate, flops = bare_images_per_s(args.mfu_model, img=args.img, batch=args.batch,
                                        steps=args.steps, device=device)  # fmt: skip
        achieved = 3 * flops * rate / 1e12
        peak = peak_tflops(device, args.peak_tflops)
        mfu = f", MFU {achieved / peak:.1%} of {peak:.0f} TFLOP/s (goal >= 35%)" if peak else ""
        print(f"{args.mfu_model} training: {rate:.0f} img/s, {3 * flops / 1e9:.1f} GFLOP per "
              f"image (3x forward), {achieved:.1f} TFLOP/s{mfu}")  # fmt: skip


if __name__ == "__main__":
    main()
