"""The paper path, rehearsed end to end (issue 9, item 11).

Exactly what a researcher runs on a GPU cluster — `cxrkd data import` of the real download's
layout, then `cxrkd search run STUDY --profile paper --weights-dir DIR` — through the real
command line, a real Ray and real Optuna, with only sizes, epochs and trial counts made small
by `--set` and `--num-samples`:

- the data are real-format fixtures: a Kaggle-style JPEG tree (`chest_xray/{train,val,test}/
  {NORMAL,PNEUMONIA}`, person numbers that restart in test, macOS litter, duplicates) and a
  VinDr-style tree (JPEG 2000 DICOMs, three readers per training film). Their pixels are
  SYNTHETIC (shapes with a learnable class signal, made by the fixtures);
- the pretrained weights are a folder in the layout `cxrkd weights download` writes, built
  from random initialisations (nothing can be downloaded here) and marked as such; the test
  opts in to them, as no real run can.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from cxrkd.search.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from fixtures_dicom import write_vindr_learnable_tree
from fixtures_kaggle import write_kaggle_tree
from weights_fixture import ALLOW_RANDOM_ENV, make_weights_dir

# Slow, and one process for both (`scripts/test.sh` runs tests two at a time): each run writes
# GBs of real-size checkpoints, and two at once could fill a CI machine's disk.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("paper-rehearsal")]

# Small, not different: the paper profile's recipe (pretrained, augmentation, warm-up, AdamW,
# cosine) with fewer pixels, epochs and steps.
SMALL = ["img_size=32", "epochs=2", "steps_per_epoch=2", "batch_size=8"]
VITS = ["vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224"]


@pytest.fixture(scope="module")
def _weights_dir(tmp_path_factory):
    """Random-init weights of every model the paper profiles use (about 600 MB: made once)."""
    root = tmp_path_factory.mktemp("paper-weights")
    yield make_weights_dir(root / "weights", ["resnet18", "resnet50", *VITS])
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def weights(_weights_dir, monkeypatch) -> Path:
    """The weights folder, with the random-init opt-in set before Ray starts so the trials
    inherit it."""
    monkeypatch.setenv(ALLOW_RANDOM_ENV, "1")
    return _weights_dir


def _sets(values: list[str]) -> list[str]:
    return [arg for v in values for arg in ("--set", v)]


def _run(study: str, dataset: str, storage: Path, name: str, weights: Path, *extra: str) -> Path:
    argv = ["search", "run", study, "--profile", "paper", "--dataset", dataset,
            "--storage", str(storage), "--name", name, "--weights-dir", str(weights),
            "--max-concurrent", "2", *_sets(SMALL), *extra]  # fmt: skip
    assert main(argv) == 0, argv
    return storage / name


def _check_finished(run: Path, *, pretrained_models: set[str]) -> pd.DataFrame:
    trials = pd.read_parquet(run / "trials.parquet")
    assert (trials["status"].isin(["completed", "stopped"])).all(), trials[["cell", "error"]]
    final = trials[trials["stage"] == "final"]
    assert len(final) and (final["status"] == "completed").all()
    # The paper profile's recipe reached every trial, with only --set's values changed.
    assert (trials["config/img_size"] == 32).all() and (trials["config/epochs"] == 2).all()
    assert trials["config/augment"].all()
    pretrained = trials[trials["config/pretrained"].astype(bool)]
    assert set(pretrained["config/model"]) == pretrained_models
    assert trials["device"].str.startswith("CPU").all()
    record = json.loads((run / "run.json").read_text())
    assert record["options"]["profile"] == "paper"
    assert {"torch", "timm", "ray", "optuna", "cxrkd"} <= set(record["provenance"]["versions"])
    return trials


def test_pneumonia_kd_paper_profile_on_a_kaggle_tree(weights, local_ray, tmp_path, home):
    src = write_kaggle_tree(tmp_path / "kaggle", n_per_class_train=40, n_per_class_test=24)
    assert main(["data", "import", "kaggle-pneumonia", str(src), "--name", "kaggle",
                 "--size", "64", "--workers", "1"]) == 0  # fmt: skip
    run = _run("pneumonia-kd", "kaggle", tmp_path / "runs", "paper", weights, "--num-samples", "1")
    trials = _check_finished(run, pretrained_models={"resnet18", "resnet50"})
    final = trials[trials["stage"] == "final"]
    assert set(final["cell"]) == {"baseline_cnn", "resnet18_finetuned", "resnet18_frozen",
                                  "resnet50_teacher", "resnet18_kd"}  # fmt: skip
    assert final.groupby("cell").size().eq(3).all()  # the paper profile's 3 seeds
    kd = trials[trials["method"] == "kd_logit"]
    assert kd["config/teacher_path"].str.startswith(str(tmp_path / "runs" / "teachers")).all()
    table = (run / "tables" / "pneumonia_kd.md").read_text()
    assert "95% CI" in table and "ResNet-18 KD student" in table
    numbers = pd.read_csv(run / "tables" / "pneumonia_kd.csv").set_index("row")
    assert numbers.loc["resnet18_kd", "vs"] == "ResNet-18 fine-tuned"
    assert 0.0 <= numbers.loc["resnet18_kd", "p"] <= 1.0
    assert numbers["AUC_ci_low"].le(numbers["AUC_mean"]).all()
    # The caption says what the weights were: never "ImageNet" for a test's random inits.
    assert "RANDOM-INIT weights" in table and "ImageNet" not in table


def test_lowres_kd_and_open_search_paper_profile_on_a_vindr_tree(
    weights, local_ray, tmp_path, home
):
    src = write_vindr_learnable_tree(tmp_path / "vindr", n_train=160, n_test=48)
    assert main(["data", "import", "vindr", str(src), "--name", "vindr", "--size", "64",
                 "--workers", "1"]) == 0  # fmt: skip
    storage = tmp_path / "runs"
    # Part of one ViT size of the paper's grid (CI's time budget): its teacher, the no-KD cell
    # and the four KD approaches at the 8:1 resolution (8 px of 32, as 28 of 224).
    run = _run("lowres-kd", "vindr", storage, "grid", weights, "--num-samples", "1",
               "--only", "*tiny_8px*")  # fmt: skip
    trials = _check_finished(run, pretrained_models={"vit_tiny_patch16_224"})
    search = trials[trials["stage"] == "search"]
    assert len(search) == 5 and set(search["config/low_res"]) == {8}
    assert set(search["config/kd_approach"].dropna()) == {"vanilla", "last_block", "one_to_one",
                                                          "mlcak"}  # fmt: skip
    tables = run / "tables"
    for stem in ("lowres_table1", "lowres_table2", "lowres_findings"):
        assert (tables / f"{stem}.md").is_file(), stem
    assert "teacher (distilled from)" in (tables / "lowres_table1.md").read_text()
    table2 = pd.read_csv(tables / "lowres_table2.csv")
    assert table2["p"].between(0, 1).any(), "KD cells are compared with their no-KD baseline"

    # The open search over all three sizes on the same storage reuses the ViT-Tiny teacher
    # (same profile, same seeded teacher search, so the same registry key).
    teachers_before = {p.name for p in (storage / "teachers").iterdir()}
    open_run = _run("lowres-kd-open", "vindr", storage, "open", weights, "--num-samples", "1")
    _check_finished(open_run, pretrained_models=set(VITS))
    state = json.loads((open_run / "state.json").read_text())
    grid_state = json.loads((run / "state.json").read_text())
    assert state["teachers"]["teacher_tiny"] == grid_state["teachers"]["teacher_tiny"]
    assert len({p.name for p in (storage / "teachers").iterdir()} - teachers_before) == 2
    assert (open_run / "tables" / "lowres_open_front.md").is_file()
