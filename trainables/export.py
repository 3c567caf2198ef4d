"""A trained model taken out of cxrkd: written as safetensors, TorchScript or ONNX beside a JSON
sidecar of its preprocessing, and applied to image files with the evaluation's own code.

The exported function is the deployed model alone (no teacher, no loss): the normalised main
view ``(B, 1, input_size, input_size)`` float32 -> logits ``(B, K)``, one column per name in
the sidecar's ``outputs`` (a binary model: the global label; a multi-task model: each finding
(MLCT), then the global label (MCCT); a multi-class model: its classes, whose softmax gives
the probabilities and whose argmax is the decision). Everything before it is data, in the
sidecar (:func:`preprocessing`), and :func:`model_inputs` applies it with the functions evaluation
uses: the importer's decoding and resize to the store's side (uint8), ``BatchLoader``'s
``/ 255``, ``Pipeline(train=False)`` (resize to the input size, the low-resolution view of a
low-resolution student, the model's normalisation). So a test image written to a PNG and
predicted here gets the scores its trial gave it on test.

A KD student's trial config names its teacher, which the export does not need: the student is
rebuilt by the first teacher-free method of the registry that builds a model its weights load
into exactly (:func:`deployed_task`); a ``kd_logit`` student is a ``transfer`` model, a
``kd_vit`` student a ``vit_mtl`` model of the same low resolution.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrkd.trainables.config import TrainConfig, field_names, parse_config
from cxrkd.trainables.data.augment import Pipeline
from cxrkd.trainables.data.pipeline import BatchLoader, DatasetInfo
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.evaluate import sigmoid, softmax
from cxrkd.trainables.export_format import (
    FORMATS,
    ONNX_INSTALL,
    SIDECAR,
    ExportError,
    check_format,
    is_multiclass,
    read_sidecar,
)
from cxrkd.trainables.task import Task

__all__ = ["FORMATS", "SIDECAR", "ExportError", "check_format", "read_sidecar"]

BATCH = 64
# How far an export read back may be from the model it was made from (float32 logits; ONNX
# Runtime fuses operations in another order).
RTOL, ATOL = 1e-4, 1e-4


# --- the deployed model --------------------------------------------------------------------


def deployed_task(flat: dict, info: DatasetInfo, state: dict) -> tuple[Task, dict]:
    """``(task, architecture)``: a teacher-free task holding the trial's deployed model with
    ``state`` (``model.pt``) loaded, in eval mode, and the flat config that rebuilds it.

    The trial's own method when it needs no teacher, else the first teacher-free method for
    the dataset's task whose model takes the weights with a strict load and that keeps the
    trial's low-resolution view."""
    from cxrkd.trainables.methods import get_method, load_methods

    own = get_method(str(flat.get("method")))
    methods = [own] if not own.needs_teacher else []
    methods += [m for m in load_methods().values() if m is not own and not m.needs_teacher]
    low_res = flat.get("low_res") or None
    tried = []
    for method in methods:
        if info.task not in method.tasks:
            continue
        keys = field_names(TrainConfig) | field_names(method.config_cls)
        arch = {k: v for k, v in flat.items() if k in keys}
        # Weights come from `state`; nothing is downloaded or read from a weights folder.
        arch.update(method=method.name, pretrained=False, weights_dir=None, evaluate_test=False)
        try:
            cfg = parse_config(arch)
            task = method.build(cfg, info, None)
            if task.low_res != low_res:
                raise ExportError(f"sees low_res={task.low_res}, not {low_res}")
            task.model.load_state_dict(state, strict=True)
        except (CxrkdError, RuntimeError, TypeError, ValueError, KeyError) as exc:
            tried.append(f"{method.name}: {(str(exc).splitlines() or [''])[0][:160]}")
            continue
        return task.eval(), cfg.to_flat()
    raise ExportError(
        f"no teacher-free method rebuilds the deployed model of method {own.name!r} "
        f"(model {flat.get('model')!r}) so that its weights load: {'; '.join(tried) or 'none'}"
    )


class Predictor(nn.Module):
    """What is exported: the main view -> logits ``(B, K)`` (columns: :func:`output_names`)."""

    def __init__(self, task: Task, view: str) -> None:
        super().__init__()
        self.task, self.view = task, view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.task.predict({self.view: x})
        if isinstance(out, dict):  # the Task contract's multi-label output
            return torch.cat([out["mlct"], out["mcct"].reshape(-1, 1)], dim=1)
        return out if out.ndim == 2 else out.reshape(-1, 1)  # multi-class: (B, C) as is


def output_names(info: DatasetInfo) -> list[str]:
    """The logit columns: a multi-task model's findings, then the global label; a multi-class
    model's classes (softmax over them)."""
    if info.task == "multiclass":
        return list(info.labels)
    return (
        [*info.finding_labels, info.global_label] if info.task != "binary" else [info.global_label]
    )


def preprocessing(task: Task, *, input_size: int, info: DatasetInfo) -> dict:
    """The sidecar's ``preprocessing``: what turns an image file into the model's input."""
    pipeline = task.make_pipeline(input_size=input_size)
    return {
        "grayscale": "one channel (luma; DICOM: modality and VOI LUT, MONOCHROME1 inverted)",
        "store_resolution": info.resolution,
        "store_resize": "to store_resolution x store_resolution, uint8: box (area) when "
        "shrinking, bilinear when enlarging (aspect ratio not kept)",
        "scale": "pixels / 255 -> [0, 1]",
        "input_size": pipeline.input_size,
        "resize": "to input_size: area when shrinking, bilinear when enlarging",
        "low_res": pipeline.low,
        "low_res_view": None
        if pipeline.low is None
        else "area-downsample to low_res, bilinear upsample back to input_size",
        "normalization": {"mean": pipeline.mean, "std": pipeline.std},
        "formula": "x = (pixels / 255 - mean) / std",
        "layout": "(batch, 1, input_size, input_size) float32",
    }


def pipeline_of(pre: dict) -> Pipeline:
    norm = pre["normalization"]
    return Pipeline(
        input_size=int(pre["input_size"]),
        low=pre["low_res"],
        mean=float(norm["mean"]),
        std=float(norm["std"]),
    )


def model_inputs(images: np.ndarray, pre: dict, *, batch_size: int = BATCH) -> Iterator:
    """Batches of model inputs from uint8 images ``(N, S, S)`` at the store's side: the
    evaluation's path (``BatchLoader``, then ``Pipeline(train=False)``'s main view)."""
    pipeline = pipeline_of(pre)
    labels = np.zeros((len(images), 1), dtype=np.float32)
    loader = BatchLoader(images, labels, batch_size=batch_size, shuffle=False, device="cpu")
    for x, _ in loader:
        yield pipeline(x, train=False)[pipeline.main_view]


# --- image files ---------------------------------------------------------------------------


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"


def read_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """A PNG, JPEG or DICOM file as the importers store it: uint8 ``(size, size)``."""
    from cxrkd.trainables.data.import_plan import resize_square

    path = Path(path)
    try:
        if _is_dicom(path):
            from cxrkd.trainables.data.dicom import decode_dicom

            image, _, _ = decode_dicom({"source_path": str(path)}, size)
        else:
            from cxrkd.trainables.data.jpeg import decode_image_file

            image, _, _ = decode_image_file({"source_path": str(path)}, size)
        return resize_square(image, size)
    except Exception as exc:  # PIL's, pydicom's and the OS's errors alike
        raise ExportError(
            f"cannot read image {path} ({type(exc).__name__}: {exc}); give PNG, JPEG or DICOM files"
        ) from None


# --- writing and reading an export ---------------------------------------------------------


def _write_safetensors(predictor: Predictor, path: Path, example: torch.Tensor) -> None:
    from safetensors.torch import save_file

    state = predictor.task.model.state_dict()
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(path))


def _write_torchscript(predictor: Predictor, path: Path, example: torch.Tensor) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings of timm's shape asserts
        torch.jit.save(torch.jit.trace(predictor, example), str(path))


def _write_onnx(predictor: Predictor, path: Path, example: torch.Tensor) -> None:
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise ExportError(f"ONNX export needs the onnx package: {ONNX_INSTALL}") from None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter: the dynamo one needs onnxscript as well.
        torch.onnx.export(
            predictor,
            (example,),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )


_WRITERS = {
    "safetensors": _write_safetensors,
    "torchscript": _write_torchscript,
    "onnx": _write_onnx,
}


def info_of(sidecar: dict) -> DatasetInfo:
    """The dataset facts a model is rebuilt with (no arrays, no store needed)."""
    d = sidecar["dataset"]
    return DatasetInfo(
        name=d["name"],
        kind=d["kind"],
        task=d["task"],
        labels=tuple(d["labels"]),
        finding_labels=tuple(d["finding_labels"]),
        global_label=d["global_label"],
        resolution=int(d["resolution"]),
        n={},
        positive_rate={},
        fingerprint=d["fingerprint"],
        synthetic=bool(d["synthetic"]),
    )


def load_model(folder: str | os.PathLike) -> Callable[[torch.Tensor], np.ndarray]:
    """The exported model as a function: model inputs -> float32 logits ``(B, K)``."""
    folder = Path(folder)
    sidecar = read_sidecar(folder)
    fmt = sidecar["model_format"]
    path = folder / FORMATS[fmt]
    if not path.is_file():
        raise ExportError(f"{folder} has no {FORMATS[fmt]} (its {SIDECAR} names {fmt})")
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            raise ExportError(f"predicting from ONNX needs onnxruntime: {ONNX_INSTALL}") from None
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"image": x.numpy()})[0]
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still works
            module = torch.jit.load(str(path), map_location="cpu").eval()
    else:
        from safetensors.torch import load_file

        from cxrkd.trainables.methods import get_method

        cfg = parse_config(sidecar["architecture"])
        info = info_of(sidecar)
        task = get_method(cfg.train.method).build(cfg, info, None)
        task.model.load_state_dict(load_file(str(path)), strict=True)
        module = Predictor(task.eval(), pipeline_of(sidecar["preprocessing"]).main_view)

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return module(x).float().numpy()

    return run


def write_export(
    out: str | os.PathLike,
    *,
    task: Task,
    fmt: str,
    sidecar: dict,
    example: torch.Tensor,
) -> Path:
    """Write ``out/`` (the model file and :data:`SIDECAR`) all at once: built in a temporary
    folder beside it, read back and compared with ``task`` on ``example``, then renamed."""
    check_format(fmt)
    out = Path(out).expanduser().absolute()
    check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    view = pipeline_of(sidecar["preprocessing"]).main_view
    predictor = Predictor(task.eval(), view).eval()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _WRITERS[fmt](predictor, tmp / FORMATS[fmt], example)
        sidecar = {**sidecar, "model_format": fmt, "model_file": FORMATS[fmt]}
        (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
        with torch.inference_mode():
            want = predictor(example).numpy()
        got = load_model(tmp)(example)
        if got.shape != want.shape or not np.allclose(got, want, rtol=RTOL, atol=ATOL):
            diff = np.max(np.abs(got - want)) if got.shape == want.shape else got.shape
            raise ExportError(
                f"the {fmt} export does not reproduce the model (max difference {diff}); "
                "nothing was written"
            )
        check_out(out)  # still free: another export may have taken it meanwhile
        os.rename(tmp, out)  # replaces an empty folder; atomic on one file system
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def check_out(out: Path) -> None:
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise ExportError(
            f"{out} already exists and is not an empty folder; pass another --out or remove it"
        )


def predict_files(folder: str | os.PathLike, paths: Sequence[str]) -> tuple[dict, np.ndarray]:
    """``(sidecar, probabilities (N, K))`` of the exported model on image files, in the order
    of ``outputs`` (:func:`probabilities`); every file is read before any is scored."""
    sidecar = read_sidecar(folder)
    pre = sidecar["preprocessing"]
    if not paths:
        raise ExportError("no image given; pass PNG, JPEG or DICOM files")
    images = np.stack([read_image(p, int(pre["store_resolution"])) for p in paths])
    run = load_model(folder)
    logits = np.concatenate([run(x) for x in model_inputs(images, pre)])
    return sidecar, probabilities(sidecar, logits)


def probabilities(sidecar: dict, logits: np.ndarray) -> np.ndarray:
    """Float64 probabilities of logits ``(N, K)``, as evaluation computes them: the softmax
    over the classes of a multi-class model, else a sigmoid per output."""
    if is_multiclass(sidecar):
        return softmax(logits)
    return sigmoid(logits)
