"""The command line on a multi-class folder store (issue 12): ``data show`` counts images per
class, and ``search run`` refuses, before any trial and before anything is written, a study
whose KD cells distil one logit per image (``pneumonia-kd-open``'s dkd and fitnets). No Ray."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrkd.search.cli import main
from cxrkd.trainables.data.importers import import_dataset
from cxrkd.trainables.kd import kd_names, layout_of
from cxrkd.trainables.methods.kd_logit import MULTICLASS_APPROACHES

# Folder names; the store's labels are their lower-case forms, in this order.
CLASSES = {"COVID": 12, "NORMAL": 14, "PNEUMONIA": 13}


@pytest.fixture
def three(tmp_path):
    """A multi-class store ``three`` of real PNG files in this test's CXRKD_HOME."""
    rng = np.random.default_rng(0)
    for j, (cls, n) in enumerate(CLASSES.items()):
        for k in range(n):
            image = rng.integers(0, 80, (20, 20)).astype(np.uint8)
            image[2 + 5 * j : 7 + 5 * j, 4:9] = 220
            path = tmp_path / "three" / cls / f"{k:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
    return import_dataset(
        "folder", str(tmp_path / "three"), size=16, workers=1, progress=False, seed=2
    )


def test_data_show_counts_images_per_class(three, capsys):
    labels = [c.lower() for c in CLASSES]
    capsys.readouterr()
    assert main(["data", "show", "three", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["task"] == "multiclass" and shown["classes"] == labels == shown["labels"]
    counts = shown["class_counts"]
    assert set(counts) == set(shown["splits"]) == {"train", "val", "test"}
    for split, n in shown["splits"].items():  # each image counted once, under its class
        assert list(counts[split]) == labels and sum(counts[split].values()) == n
    totals = {c: sum(counts[s][c.lower()] for s in counts) for c in CLASSES}
    assert totals == {c: n for c, n in CLASSES.items()}

    assert main(["data", "show", "three"]) == 0
    out = capsys.readouterr().out
    assert "positives" not in out
    assert "one of 3 classes per image" in out and f"classes     {', '.join(labels)}" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if "images per class" in line)
    assert lines[header + 1].split() == ["split", "images", *labels]
    rows = {line.split()[0]: line.split()[1:] for line in lines[header + 2 : header + 5]}
    assert rows == {
        s: [str(shown["splits"][s]), *(str(counts[s][c]) for c in labels)] for s in counts
    }


def test_a_binary_store_still_shows_positives(tmp_path, capsys):
    import_dataset("phantom", "pneumonia", name="ph", n=40, size=16, progress=False)
    capsys.readouterr()
    assert main(["data", "show", "ph"]) == 0
    out = capsys.readouterr().out
    assert "positives: pneumonia=" in out and "images per class" not in out
    assert main(["data", "show", "ph", "--json"]) == 0
    assert "classes" not in json.loads(capsys.readouterr().out)


def test_one_logit_kd_cells_are_refused_before_anything_is_written(three, tmp_path, capsys):
    """pneumonia-kd-open has one kd_logit cell per KD loss of the binary layout; on a
    multi-class store only softmax KD fits: the others are named, with both fixes."""
    import ray

    misfits = [a for a in kd_names(layout_of("kd_logit")) if a not in MULTICLASS_APPROACHES]
    assert {"dkd", "fitnets"} <= set(misfits)
    storage = tmp_path / "runs"
    argv = ["search", "run", "pneumonia-kd-open", "--dataset", "three", "--name", "R",
            "--storage", str(storage), "--set", "pretrained=false"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cxrkd: error:") and "multi-class dataset 'three'" in err
    named = re.search(r"cannot give: (.*?); every trial", err).group(1)
    assert named == ", ".join(f"resnet18_kd_{a} (kd_approach={a})" for a in misfits)
    assert "--only resnet18_finetuned" in err and "--only resnet18_kd_hinton" in err
    assert "--only resnet18_kd_dkd" not in err and "--set kd_approach=hinton" in err
    assert not (storage / "R").exists() and not ray.is_initialized()
    assert not list(Path(os.environ["CXRKD_HOME"]).glob("**/run.json"))

    # Either fix passes the check (the run itself is not started here).
    from cxrkd.search.preflight import check_cells
    from cxrkd.search.run_state import RunOptions
    from cxrkd.search.study_dataset import open_dataset
    from cxrkd.search.study_options import study_with_options, typed_overrides

    only = {"only": ["resnet18_finetuned", "resnet18_kd_hinton"]}
    for extra, sets in ((only, {}), ({}, {"kd_approach": "hinton"})):
        sets = {"pretrained": "false", **sets}
        options = RunOptions(study="pneumonia-kd-open", dataset="three", overrides=sets, **extra)
        study = study_with_options(options)
        check_cells(study, open_dataset(study, "three"), typed_overrides(study, sets))
    with pytest.raises(Exception, match="resnet18_kd_dkd"):  # the same call refuses the study
        study = study_with_options(RunOptions(study="pneumonia-kd-open", dataset="three"))
        check_cells(study, open_dataset(study, "three"), {"pretrained": False})
