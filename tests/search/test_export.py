"""``cxrkd export`` / ``cxrkd predict``: an exported final model, applied to image files, gives
the scores its own trial gave the same images on test, in every format.

The images are the store's test images written to PNG (lossless: decoding gives the stored
uint8 back) and to an 8-bit DICOM with an identity window, so predict's reading, resize and
normalisation path is the evaluation's.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrkd.search.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "results"))
from fixtures_dicom import write_dicom
from synthetic_run import write_synthetic_run

try:
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401

    FORMATS = ["safetensors", "torchscript", "onnx"]
except ImportError:  # optional: pip install 'cxrkd[onnx]'
    FORMATS = ["safetensors", "torchscript"]

# float32 logits scored in batches of another size (and by ONNX Runtime): equal up to rounding.
TOL = 1e-5


def _sigmoid(z) -> np.ndarray:
    return 1 / (1 + np.exp(-np.asarray(z, dtype=np.float64)))


def _write_images(folder: Path, images: np.ndarray, *, dicom: bool = False) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(folder / f"test-{i}.png"))
        Image.fromarray(image).save(paths[-1])
    if dicom:  # 8-bit values, window (128, 256): display values = stored values
        from pydicom.uid import ExplicitVRLittleEndian

        path = folder / "test-0.dcm"
        write_dicom(path, images[0].astype(np.uint16), bits_stored=8, window=(128, 256),
                    syntax=ExplicitVRLittleEndian)  # fmt: skip
        paths.append(str(path))
    return paths


def test_a_low_resolution_multitask_model_exports_and_predicts_its_test_scores(tmp_path):
    """No Ray: one vit_mtl trial on the low-resolution view, its checkpoint exported."""
    import torch

    from cxrkd.trainables.context import DataBundle
    from cxrkd.trainables.data.pipeline import DatasetInfo, SplitData
    from cxrkd.trainables.export import (
        ExportError,
        deployed_task,
        model_inputs,
        output_names,
        predict_files,
        preprocessing,
        write_export,
    )
    from cxrkd.trainables.loop import run_trial
    from cxrkd.trainables.trainable import LocalReporter

    rng = np.random.default_rng(0)
    labels = (rng.random((60, 3)) < 0.4).astype(np.float32)
    labels[:, 2] = labels[:, :2].max(axis=1)
    images = rng.integers(0, 256, (60, 24, 24), dtype=np.uint8)
    parts = {"train": slice(0, 32), "val": slice(32, 46), "test": slice(46, 60)}
    splits = {k: SplitData.from_arrays(images[s], labels[s]) for k, s in parts.items()}
    info = DatasetInfo(
        name="tiny-findings", kind="test", task="multilabel", labels=("a", "b", "abnormal"),
        finding_labels=("a", "b"), global_label="abnormal", resolution=24,
        n={k: len(v) for k, v in splits.items()}, positive_rate={}, fingerprint="fp",
        synthetic=True,
    )  # fmt: skip
    reporter = LocalReporter(keep=tmp_path / "ckpt")
    flat = {"method": "vit_mtl", "model": "vit_tiny_patch16_224", "img_size": 16, "patch_size": 4,
            "depth": 1, "low_res": 8, "epochs": 1, "steps_per_epoch": 2, "batch_size": 8,
            "evaluate_test": True}  # fmt: skip
    run_trial(flat, DataBundle(info, splits), reporter=reporter)
    last = reporter.checkpoints[-1]
    # The multi-label trial now records its decision threshold (the global label's).
    assert 0 < reporter.rows[-1]["test_threshold"] == reporter.rows[-1]["val_threshold"] < 1
    state = torch.load(last / "model.pt", map_location="cpu", weights_only=True)
    trained = json.loads((last / "config.json").read_text())
    task, arch = deployed_task(trained, info, state)
    assert (arch["method"], task.low_res) == ("vit_mtl", 8)
    # A kd_vit student of that config is the same model without its teacher.
    student = {**trained, "method": "kd_vit", "kd_approach": "mlcak", "gamma": 1.0,
               "teacher_path": "/no/teacher"}  # fmt: skip
    _, student_arch = deployed_task(student, info, state)
    assert student_arch == arch
    with pytest.raises(ExportError, match="no teacher-free method rebuilds.*vit_mtl: "):
        deployed_task(student, info, {k: v for k, v in state.items() if "head" not in k})
    pre = preprocessing(task, input_size=16, info=info)
    assert pre["low_res"] == 8 and pre["normalization"] == {"mean": 0.5, "std": 0.5}
    example = next(model_inputs(images[46:50], pre))
    sidecar = {"sidecar_version": 1, "preprocessing": pre, "architecture": arch,
               "outputs": output_names(info), "dataset": {
                   "name": info.name, "kind": info.kind, "task": info.task,
                   "labels": list(info.labels), "finding_labels": list(info.finding_labels),
                   "global_label": info.global_label, "resolution": 24, "fingerprint": "fp",
                   "synthetic": True}}  # fmt: skip
    with np.load(last / "test_scores.npz") as npz:
        want = np.c_[_sigmoid(npz["finding_logits"]), _sigmoid(npz["global_logit"])]
    paths = _write_images(tmp_path / "images", images[46:52])
    for fmt in FORMATS:
        out = write_export(tmp_path / fmt, task=task, fmt=fmt, sidecar=sidecar, example=example)
        got_sidecar, probs = predict_files(out, paths)
        assert got_sidecar["outputs"] == ["a", "b", "abnormal"]
        np.testing.assert_allclose(probs, want[:6], rtol=0, atol=TOL, err_msg=fmt)


def test_the_final_model_is_picked_by_seed_or_validation_and_needs_a_threshold(tmp_path):
    from cxrkd.results.export import final_model

    trials, _ = write_synthetic_run(tmp_path)
    for last in (tmp_path / "final").glob("*/checkpoint_000001"):
        (last / "model.pt").touch()  # found, not read here
    with pytest.raises(Exception, match="recorded no decision threshold.*Re-run"):
        final_model(str(tmp_path), trials, cell="resnet18_kd")
    trials["test_threshold"] = 0.4
    trials.loc[trials["trial_id"] == "f-resnet18_kd-1", "val_auc"] = 0.9  # seed 1 is better
    best = final_model(str(tmp_path), trials, cell="resnet18_kd")
    assert (best.seed, best.trial_id, best.threshold) == (1, "f-resnet18_kd-1", 0.4)
    assert best.value == 0.9
    assert best.checkpoint_uri.endswith("checkpoint_000001")
    assert final_model(str(tmp_path), trials, cell="resnet18_kd", seed=0).seed == 0
    with pytest.raises(Exception, match=r"no final model of seed 7; its seeds: \[0, 1\]"):
        final_model(str(tmp_path), trials, cell="resnet18_kd", seed=7)
    with pytest.raises(Exception, match="no final model of cell 'resnet18_k'.*did you mean"):
        final_model(str(tmp_path), trials, cell="resnet18_k")
    (Path(best.checkpoint_uri) / "model.pt").unlink()
    with pytest.raises(Exception, match="final checkpoint of cell 'resnet18_kd' seed 1.*moved"):
        final_model(str(tmp_path), trials, cell="resnet18_kd", seed=1)


def check_export_and_predict(run: Path, tiny_store, tmp_path, capsys) -> None:
    """Export and predict on a finished tiny ``pneumonia-kd --only resnet18_kd`` run (test_subset
    makes it: one tiny real run serves several end-to-end checks)."""
    from cxrkd.results.held_out_scores import load_test_scores
    from cxrkd.trainables.data.store import DatasetStore
    from cxrkd.trainables.models import model_normalization

    trials = pd.read_parquet(run / "trials.parquet")
    final = trials[(trials["stage"] == "final") & (trials["cell"] == "resnet18_kd")]
    row = final[final["config/seed"] == 1].iloc[0]
    scores = load_test_scores(str(run), trials)[("resnet18_kd", row["trial_id"])]
    test_images, _ = DatasetStore.open(tiny_store.name).split_arrays("test")
    paths = _write_images(tmp_path / "images", test_images[:6], dicom=True)
    want = _sigmoid(scores["global_logit"][:6])
    capsys.readouterr()

    for fmt in FORMATS:
        out = tmp_path / f"model-{fmt}"
        argv = ["export", str(run), "--cell", "resnet18_kd", "--seed", "1", "--format", fmt]
        assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
        sidecar = json.loads((out / "cxrkd-model.json").read_text())
        files = sorted(p.name for p in out.iterdir())
        assert files == sorted(["cxrkd-model.json", sidecar["model_file"]])
        assert (sidecar["cell"], sidecar["seed"], sidecar["trial_id"]) == (
            "resnet18_kd", 1, row["trial_id"])  # fmt: skip
        assert (sidecar["model"], sidecar["method"], sidecar["synthetic"]) == (
            "resnet18", "kd_logit", True)  # fmt: skip
        assert sidecar["architecture"]["method"] == "transfer"  # the student without its teacher
        pre = sidecar["preprocessing"]
        assert (pre["input_size"], pre["low_res"], pre["store_resolution"]) == (16, None, 32)
        mean, std = model_normalization("resnet18")
        assert pre["normalization"] == {"mean": mean, "std": std}
        assert sidecar["decision"]["threshold"] == pytest.approx(row["test_threshold"])
        assert sidecar["outputs"] == [tiny_store.global_label]
        capsys.readouterr()
        assert main(["predict", str(out), *paths, "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        probs = np.array([r["probabilities"][tiny_store.global_label] for r in got["images"]])
        np.testing.assert_allclose(probs[:6], want, rtol=0, atol=TOL, err_msg=fmt)
        assert probs[6] == pytest.approx(probs[0], abs=TOL)  # the DICOM of test image 0
        positive = [r["positive"] for r in got["images"]][:6]
        assert positive == (want >= row["test_threshold"]).tolist()
        assert got["synthetic"] is True and got["seed"] == 1

    # The table form: a header, then one row per image with its decision.
    assert main(["predict", str(tmp_path / "model-safetensors"), paths[0]]) == 0
    header, line = capsys.readouterr().out.strip().splitlines()
    assert header.startswith("path\t") and line.startswith(paths[0]) and line.split()[-1] in (
        "yes", "no")  # fmt: skip
    # No --seed: the seed best on validation (the study's metric), ties the lowest.
    ranked = final.assign(s=final["config/seed"])
    best = ranked.sort_values(["val_auc", "s"], ascending=[False, True]).iloc[0]
    assert main(["export", str(run), "--cell", "resnet18_kd", "--format", "torchscript",
                 "--out", str(tmp_path / "best")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "best" / "cxrkd-model.json").read_text())["seed"] == best["s"]

    # Bad input: a clear error, exit 2, nothing written.
    unreadable = tmp_path / "images" / "broken.png"
    unreadable.write_text("not an image")
    bad = {
        "no run at": ["export", str(tmp_path / "runs" / "nope"), "--cell", "resnet18_kd"],
        "no final model of cell 'resnet18'": ["export", str(run), "--cell", "resnet18"],
        r"no final model of seed 5; its seeds: \[0, 1\]": [
            "export", str(run), "--cell", "resnet18_kd", "--seed", "5"],
        "unknown export format 'pickle'": [
            "export", str(run), "--cell", "resnet18_kd", "--format", "pickle"],
        "already exists and is not an empty folder": [
            "export", str(run), "--cell", "resnet18_kd", "--out", str(tmp_path / "best")],
    }  # fmt: skip
    for message, argv in bad.items():
        if "--format" not in argv:
            argv = [*argv, "--format", "safetensors"]
        if "--out" not in argv:
            argv = [*argv, "--out", str(tmp_path / "never")]
        assert main(argv) == 2, message
        assert not (tmp_path / "never").exists()
        err = capsys.readouterr().err
        assert err.startswith("cxrkd: error:") and re.search(message, err), err
    assert main(["predict", str(tmp_path / "model-torchscript"), paths[0], str(unreadable)]) == 2
    captured = capsys.readouterr()
    assert f"cannot read image {unreadable}" in captured.err and captured.out == ""
    assert main(["predict", str(tmp_path / "images"), paths[0]]) == 2
    assert "is not a cxrkd export" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left

    # The same run, machine-readable: each cell's best trial by the study's own metric.
    assert main(["search", "status", str(run), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["study"], status["metric"], status["mode"]) == ("pneumonia-kd", "val_auc", "max")
    cells = {(c["stage"], c["cell"]): c for c in status["cells"]}
    kd = cells[("final", "resnet18_kd")]
    assert kd["trials"] == 2 and kd["status"] == {"completed": 2} and kd["metric"] == "val_auc"
    assert kd["best"]["value"] == pytest.approx(final["val_auc"].max())
    assert status["stages_done"] == ["teacher", "search", "final"]

    # The README's pandas recipe runs on this run, and every column its table names is there.
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Reading `trials.parquet` in pandas")[1].split("\n### ")[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = re.sub(r"^RUN = .*$", f"RUN = {str(run)!r}", code, flags=re.M)
    exec(code, {})
    capsys.readouterr()
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    named = {c for row in rows for c in re.findall(r"`([^`<]+)`", row)}
    assert len(named) > 20 and named <= set(trials.columns), named - set(trials.columns)
