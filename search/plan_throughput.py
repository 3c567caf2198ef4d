"""Images per second for ``cxrkd search plan``: the throughput table, its gaps, and a probe.

The table (``bench/throughput.json``, written by ``bench/throughput.py``) holds measured rows
(one model at one input size, ``train`` = a whole train step: forward, backward, AdamW, in the
trial's precision; ``eval`` = a forward pass without gradients) per device kind, the price of
an hour of each GPU kind, and the basis of the fallback estimate. :meth:`ThroughputTable.rate`
answers from the best evidence it has and says which in the :class:`Rate`'s label:

1. a measured row of that model, size and mode on that kind (the latest);
2. the same model and size measured with another low-resolution view (the student runs at
   the model input size whatever its view, so the cost is the model's);
3. the nearest measured row of that kind, scaled by forward FLOPs (an estimate);
4. for ``eval``, a third of the train step (forward ~ 1/3 of forward + backward; an estimate);
5. no measured row of that kind at all: its bf16 peak x an assumed model-FLOPs utilisation
   over 3 x forward FLOPs per image (train) or 1 x (eval) (an estimate).

FLOPs come from a table row of the same model when there is one, else from building the model
without weights on the CPU (``trainables.profiling.count_flops``).
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cxrkd.trainables.errors import CxrkdError

TABLE = Path(__file__).resolve().parents[1] / "bench" / "throughput.json"
MODES = ("train", "eval")
PROBE_ROW_S = 3.0  # seconds timed per model and mode by --probe (after its warm-up)
NUM_FINDINGS = 6  # ViT heads: the VinDr/phantom findings (the heads' cost is negligible)


@dataclass(frozen=True)
class ModelSpec:
    """What a trial's step costs depends on: the model at its input size (ViT overrides
    included); ``low_res`` is the student's view, downsampled and upsampled back."""

    model: str
    img_size: int
    patch_size: int = 0
    depth: int = 0
    low_res: int = 0

    @classmethod
    def of(cls, config: dict) -> ModelSpec:
        return cls(
            model=str(config["model"]),
            img_size=int(config["img_size"]),
            patch_size=int(config.get("patch_size") or 0),
            depth=int(config.get("depth") or 0),
            low_res=int(config.get("low_res") or 0),
        )

    @property
    def arch(self) -> tuple:
        return (self.model, self.img_size, self.patch_size, self.depth)

    @property
    def label(self) -> str:
        extra = [f"patch {self.patch_size}"] * bool(self.patch_size)
        extra += [f"depth {self.depth}"] * bool(self.depth)
        extra += [f"view {self.low_res} px"] * bool(self.low_res)
        return f"{self.model}@{self.img_size}" + (f" ({', '.join(extra)})" if extra else "")


@dataclass(frozen=True)
class Rate:
    images_per_s: float
    source: str
    measured: bool  # a measured row of this very model, size and mode on this kind


def _row_spec(row: dict) -> ModelSpec:
    return ModelSpec(
        row["model"],
        int(row["img_size"]),
        int(row.get("patch_size", 0)),
        int(row.get("depth", 0)),
        int(row.get("low_res", 0)),
    )


class ThroughputTable:
    def __init__(self, data: dict, *, origin: str) -> None:
        self.rows: list[dict] = list(data.get("rows", []))
        self.prices: dict = dict(data.get("prices", {}))
        self.estimate: dict = dict(data.get("estimate", {}))
        self.counted: dict = dict(data.get("flops", {}))  # flops_key(spec) -> forward FLOPs
        self.origin = origin
        self._flops: dict[tuple, int] = {}

    @classmethod
    def load(cls, path: str | Path | None = None) -> ThroughputTable:
        path = Path(path) if path else TABLE
        if not path.is_file():
            raise CxrkdError(
                f"no throughput table at {path}; write one with `python bench/throughput.py` "
                "(in a checkout of cxrkd), pass --table FILE, or measure here with --probe"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CxrkdError(f"cannot read the throughput table {path}: {exc}") from None
        return cls(data, origin=str(path))

    def kinds(self) -> list[str]:
        peaks = self.estimate.get("peak_bf16_tflops", {})
        return sorted({r["kind"] for r in self.rows} | set(self.prices) | set(peaks))

    def check_kind(self, kind: str) -> None:
        if kind not in self.kinds():
            raise CxrkdError(
                f"unknown GPU kind {kind!r}; the throughput table {self.origin} knows "
                f"{self.kinds()} (measure another with `python bench/throughput.py` on it)"
            )

    def price(self, kind: str) -> dict | None:
        return self.prices.get(kind)

    def measured(self, kind: str) -> bool:
        return any(r["kind"] == kind for r in self.rows)

    def has_row(self, spec: ModelSpec, mode: str, kind: str) -> bool:
        return any(
            r["kind"] == kind and r["mode"] == mode and _row_spec(r) == spec for r in self.rows
        )

    def flops(self, spec: ModelSpec) -> int:
        """Forward FLOPs per image of the model at its input size."""
        key = spec.arch
        if key not in self._flops:
            known = [r["flops"] for r in self.rows if _row_spec(r).arch == key and r.get("flops")]
            counted = self.counted.get(flops_key(spec))
            known = known or ([counted] if counted else [])
            self._flops[key] = int(known[-1]) if known else count_model_flops(spec)
        return self._flops[key]

    def rate(self, spec: ModelSpec, mode: str, kind: str) -> Rate:
        rows = [r for r in self.rows if r["kind"] == kind and r["mode"] == mode]
        exact = [r for r in rows if _row_spec(r) == spec]
        if exact:
            return Rate(exact[-1]["images_per_s"], f"measured: {_where(exact[-1])}", True)
        same = [r for r in rows if _row_spec(r).arch == spec.arch]
        if same:  # the same model input, another low-resolution view
            row = same[-1]
            view = f"view {row['low_res']} px" if row.get("low_res") else "no low-res view"
            return Rate(row["images_per_s"], f"measured with {view}: {_where(row)}", False)
        if rows:
            row = min(rows, key=lambda r: self._distance(r, spec))
            ratio = self.flops(spec) / self.flops(_row_spec(row))
            return Rate(
                row["images_per_s"] / ratio,
                f"ESTIMATE: {_row_spec(row).label} measured ({_where(row)}) / {ratio:.3g}x FLOPs",
                False,
            )
        if mode == "eval" and self.measured(kind):
            train = self.rate(spec, "train", kind)
            return Rate(3 * train.images_per_s, "ESTIMATE: 3x its train step", False)
        return self._peak_estimate(spec, mode, kind)

    def _distance(self, row: dict, spec: ModelSpec) -> tuple:
        other = _row_spec(row)
        other_family = family(other.model) != family(spec.model)
        return (other_family, abs(math.log(self.flops(other) / self.flops(spec))))

    def _peak_estimate(self, spec: ModelSpec, mode: str, kind: str) -> Rate:
        est = self.estimate
        peak = est.get("peak_bf16_tflops", {}).get(kind)
        if peak is None or "mfu" not in est:
            raise CxrkdError(
                f"the throughput table {self.origin} has no measured row for {kind!r} and no "
                f"peak to estimate from; measure it with `python bench/throughput.py` on a "
                f"{kind}, or use --probe there"
            )
        per_image = (3 if mode == "train" else 1) * self.flops(spec)
        ips = est["mfu"] * peak * 1e12 / per_image
        basis = f"{est['mfu']:g} MFU x {peak:g} TFLOP/s / {per_image / 1e9:.3g} GFLOP per image"
        return Rate(ips, f"ESTIMATE: {basis}", False)


def _where(row: dict) -> str:
    return f"{row['device']}, batch {row['batch']}, {row['date']}"


def family(model: str) -> str:
    """Transformers and convolutional networks use a device differently: scale within one."""
    return "vit" if model.startswith(("vit", "deit")) else "cnn"


def flops_key(spec: ModelSpec) -> str:
    """The key of a model's FLOPs in the table's ``flops`` section."""
    return f"{spec.model}@{spec.img_size}/patch{spec.patch_size}/depth{spec.depth}"


def build_model(spec: ModelSpec):
    """The model a trial of ``spec`` trains, without weights (ViTs with the two heads)."""
    if spec.model.startswith("vit_"):
        from cxrkd.trainables.vit import create_vit

        return create_vit(
            spec.model,
            num_findings=NUM_FINDINGS,
            pretrained=False,
            img_size=spec.img_size,
            patch_size=spec.patch_size or None,
            depth=spec.depth or None,
        )
    from cxrkd.trainables.models import create_model

    return create_model(spec.model, num_outputs=1, pretrained=False)


def count_model_flops(spec: ModelSpec) -> int:
    import torch

    from cxrkd.trainables.profiling import count_flops

    model = build_model(spec)
    return count_flops(model, torch.zeros(1, 1, spec.img_size, spec.img_size))


def _loss(out):
    parts = out.values() if isinstance(out, dict) else [out]
    return sum(p.float().mean() for p in parts if hasattr(p, "float"))


def measure(
    spec: ModelSpec, mode: str, *, device, batch: int, seconds: float, warmup: int | None = None
) -> dict:
    """Images/s of one ``train`` step (forward + backward + AdamW) or ``eval`` forward of
    ``spec`` in the trial's precision (bf16 autocast and channels_last on CUDA, fp32 on the
    CPU: ``trainables.precision``), on a synthetic batch through the trial's pipeline (resize,
    low-resolution view, normalisation; no augmentation). ``warmup`` untimed steps (default:
    two on the CPU, five on a GPU), then timed steps until ``seconds`` have passed (at least
    one)."""
    import torch

    from cxrkd.trainables.data.augment import Pipeline
    from cxrkd.trainables.precision import autocast
    from cxrkd.trainables.profiling import count_parameters

    device = torch.device(device)
    cuda = device.type == "cuda"
    model = build_model(spec).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    pipeline = Pipeline(input_size=spec.img_size, low=spec.low_res or None)
    x = torch.rand(batch, 1, spec.img_size, spec.img_size, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if mode == "train" else None
    model.train(mode == "train")

    def step() -> None:
        view = pipeline(x, train=mode == "train")[pipeline.main_view]
        if mode == "train":
            with autocast(device):
                loss = _loss(model(view))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            with torch.no_grad(), autocast(device):
                model(view)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for _ in range((5 if cuda else 2) if warmup is None else warmup):
        step()
    sync()
    steps, t0 = 0, time.perf_counter()
    while steps == 0 or time.perf_counter() - t0 < seconds:
        step()
        sync()
        steps += 1
    elapsed = time.perf_counter() - t0
    total, _ = count_parameters(model)
    return {
        **asdict(spec),
        "mode": mode,
        "batch": batch,
        "steps": steps,
        "images_per_s": round(batch * steps / elapsed, 3),
        "flops": _flops_of(model, spec, device),
        "params": total,
        "precision": "bf16 autocast" if cuda else "fp32",
    }


def _flops_of(model, spec: ModelSpec, device) -> int:
    import torch

    from cxrkd.trainables.profiling import count_flops

    return count_flops(model, torch.zeros(1, 1, spec.img_size, spec.img_size, device=device))


def device_kind(device) -> str:
    """``cpu``, or the GPU kind the price and peak tables use (``a10g``, ``a100``, ``h100``...)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower().replace(" ", "").replace("-", "")
    for kind in ("h200", "h100", "a100", "a10g", "l40s", "l4", "a10", "v100", "t4"):
        if kind in name:
            return kind
    return name.removeprefix("nvidia")


def machine(device) -> dict:
    """What a measured row was measured on."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU: {_cpu_model()}, {torch.get_num_threads()} threads"
    return {
        "kind": device_kind(device),
        "device": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe_table(
    table: ThroughputTable, specs: list[tuple[ModelSpec, str]], *, budget_s: float = 45.0
) -> tuple[ThroughputTable, str]:
    """Measure ``specs`` here, cheapest first, within ``budget_s`` seconds; what the budget
    leaves unmeasured is scaled by FLOPs from what was (labelled an estimate). Returns a
    table of the measured rows (with ``table``'s prices) and this machine's kind."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    info = machine(device)
    rows: list[dict] = []
    start = time.perf_counter()
    todo = sorted(set(specs), key=lambda s: (table.flops(s[0]), s[1]))
    for i, (spec, mode) in enumerate(todo):
        left = budget_s - (time.perf_counter() - start)
        if left <= 0 or (rows and left < 2):
            break
        batch = 32 if device == "cuda" else 4
        seconds = min(PROBE_ROW_S, left / max(1, len(todo) - i))
        rows.append(
            {
                **info,
                **measure(
                    spec,
                    mode,
                    device=device,
                    batch=batch,
                    seconds=seconds,
                    warmup=None if device == "cuda" else 1,
                ),
                "source": "cxrkd search plan --probe",
            }
        )
    data = {"rows": rows, "prices": table.prices, "estimate": table.estimate}
    probed = ThroughputTable(data, origin=f"--probe on {info['device']}")
    probed._flops.update(table._flops)
    return probed, info["kind"]
