"""A small real lowres-kd search on CPU: two student cells (no KD and MLCAK) side by side,
one ViT teacher trained once and reused, Tables 1 and 2 written from real trials."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

import cxrkd.spaces.lowres_kd as lowres
from cxrkd.search.run_state import RunOptions
from cxrkd.search.runner import run_study

pytestmark = pytest.mark.slow


@pytest.fixture
def two_cell_grid(monkeypatch):
    demo = lowres.PROFILES["demo"]
    grid = lowres.Grid(sizes=("tiny",), factors=(2,), approaches=("mlcak",), patch_size=8, depth=2)
    monkeypatch.setitem(lowres.PROFILES, "demo", dataclasses.replace(demo, grid=grid))


def test_lowres_study_two_cells_teacher_reused_tables(
    store_maker, two_cell_grid, local_ray, tmp_path
):
    store_maker(name="tiny-findings", preset="findings")
    tiny = {"img_size": "16", "epochs": "2", "steps_per_epoch": "2", "batch_size": "8"}
    run = run_study(
        RunOptions(
            study="lowres-kd", dataset="tiny-findings", storage=str(tmp_path / "runs"),
            name="lr", num_samples=1, max_concurrent=2, overrides=tiny,
        )
    )  # fmt: skip
    trials = pd.read_parquet(f"{run}/trials.parquet")
    search = trials[trials["stage"] == "search"]
    assert set(search["cell"]) == {"base_tiny_8px", "kd_tiny_8px_mlcak"}
    # One teacher, trained in the teacher stage only, registered once, used by the KD cell.
    assert (trials["cell"] == "teacher_tiny").sum() == 1 + 2  # 1 search trial + 2 seeds
    state = json.loads((tmp_path / "runs" / "lr" / "state.json").read_text())
    registered = list((tmp_path / "runs" / "teachers").iterdir())
    assert len(registered) == 1
    assert state["teachers"] == {"teacher_tiny": str(registered[0])}
    kd = trials[trials["cell"] == "kd_tiny_8px_mlcak"]
    assert set(kd["config/teacher_path"]) == {str(registered[0])}
    assert (kd["config/low_res"] == 8).all() and (kd["config/kd_approach"] == "mlcak").all()
    final = trials[(trials["stage"] == "final") & (trials["status"] == "completed")]
    assert final["test_auroc_mcct"].notna().all() and "test_auroc_mlct" in final
    tables = tmp_path / "runs" / "lr" / "tables"
    t1 = (tables / "lowres_table1.md").read_text()
    t2 = (tables / "lowres_table2.md").read_text()
    assert "SYNTHETIC" in t1 and "HR 16 px" in t1 and "8 px" in t1
    assert "mlcak" in t2 and "T1 (MLCT)" in t2 and "T2 (MCCT)" in t2
    numbers = pd.read_csv(tables / "lowres_table2.csv")
    assert numbers["n_seeds"].eq(2).all()  # both seeds of the MLCAK cell completed
