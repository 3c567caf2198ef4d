"""lowres-kd's open mode (study ``lowres-kd-open``): one Optuna study over size, resolution and
KD approach; objectives and their bad input; a multi-objective searcher without ASHA; the
stage choosing the Pareto front; and a small real multi-objective run ending in the front's
table."""

from __future__ import annotations

import dataclasses
import json
import re
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import ray

import cxrkd.spaces.lowres_kd as lowres
import cxrkd.spaces.lowres_open as lowres_open
from cxrkd.results.figure_data import nondominated
from cxrkd.search.cells import CellScheduler, CellSearcher
from cxrkd.search.cli import main
from cxrkd.search.run_state import RunOptions
from cxrkd.search.runner import run_study
from cxrkd.search.stage import choose
from cxrkd.search.study_options import apply_overrides, study_with_options
from cxrkd.spaces.cell_space import CellSpace, expand_choices
from cxrkd.spaces.studies import StudyState, front_key, get_study, parse_objectives, resolve
from cxrkd.trainables.config import parse_config
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.kd import get_kd, kd_names

optuna.logging.set_verbosity(optuna.logging.WARNING)
MCCT = "val_auroc_mcct"
TEACHERS = {"teacher_tiny": "/runs/teachers/t", "teacher_small": "/runs/teachers/s"}
MODEL_TEACHER = {
    "vit_tiny_patch16_224": TEACHERS["teacher_tiny"],
    "vit_small_patch16_224": TEACHERS["teacher_small"],
}


def open_cell(profile: str = "demo", objectives=None, overrides=None):
    options = RunOptions(study="lowres-kd-open", profile=profile, objectives=objectives)
    study = study_with_options(options)
    ((cell,),) = [resolve(c, StudyState(teachers=dict(TEACHERS))) for c in study.stages[1].cells]
    return apply_overrides([cell], overrides or {})[0]


def draws(cell, n: int = 40) -> list[tuple[dict, dict]]:
    """``(config, optuna params)`` of ``n`` random draws through the driver's view."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((CellSpace(cell)(trial), trial.params))
    return out


def test_open_space_searches_size_resolution_and_approach_with_the_matching_teacher():
    cell = open_cell()
    seen = {"model": set(), "low_res": set(), "kd_approach": set()}
    for flat, params in draws(cell):
        parse_config(flat)  # nothing but config fields: no helper key reaches the trial
        assert flat["method"] == "kd_vit"
        assert flat["teacher_path"] == MODEL_TEACHER[flat["model"]]  # teacher = student size
        for name in seen:
            assert params[name] == flat[name]  # searched by Optuna under the config's name
            seen[name].add(flat[name])
        uses_t = "temperature" in get_kd(flat["kd_approach"]).on("mtl").params
        assert ("temperature" in params) == uses_t and ("gamma" in params) != uses_t
    assert seen == {
        "model": set(MODEL_TEACHER),
        "low_res": {16, 8},
        "kd_approach": set(kd_names("mtl")),  # every registered KD loss, not only the paper's
    }


def test_set_pins_a_choice_and_a_value_outside_the_choices_is_refused():
    for flat, params in draws(open_cell(overrides={"low_res": 8}), 10):
        assert flat["low_res"] == 8 and "low_res" not in params
    pinned = open_cell(overrides={"model": "vit_small_patch16_224"})
    assert {f["teacher_path"] for f, _ in draws(pinned, 10)} == {TEACHERS["teacher_small"]}
    # One combination per remaining choice: 1 model x 2 resolutions x every approach.
    n = len(kd_names("mtl"))
    assert len(expand_choices(pinned)) == 2 * n and len(expand_choices(open_cell())) == 4 * n
    assert {c.fixed["teacher_path"] for c in expand_choices(pinned)} == {TEACHERS["teacher_small"]}
    base = open_cell(overrides={"model": "vit_base_patch16_224"})
    for use in (lambda: draws(base, 1), lambda: expand_choices(base)):
        with pytest.raises(CxrkdError, match=r"model='vit_base_patch16_224' is not one of cell"):
            use()


def test_expanded_cells_pin_model_and_teacher_together():
    pairs = {(c.fixed["model"], c.fixed["teacher_path"]) for c in expand_choices(open_cell())}
    assert pairs == set(MODEL_TEACHER.items())


def test_open_and_grid_studies_train_the_same_teachers():
    for profile in ("demo", "paper"):
        grid = get_study("lowres-kd", profile).stages[0].cells
        open_teachers = get_study("lowres-kd-open", profile).stages[0].cells
        if profile == "paper":  # same profile: the very same cells, so one registry entry each
            assert open_teachers == grid
        assert [c.key for c in open_teachers] == [
            f"teacher_{s}" for s in lowres_open.PROFILES[profile].grid.sizes
        ]


def test_objectives_default_options_and_bad_names():
    assert open_cell().objectives == (("val_auroc_mcct", "max"), ("params", "min"))
    cell = open_cell(objectives=["val_auroc_mean", "latency_ms"])
    assert cell.objectives == (("val_auroc_mean", "max"), ("latency_ms", "min"))
    assert open_cell(objectives=["val_auroc_mcct"]).objectives == (("val_auroc_mcct", "max"),)
    for names, pattern in [
        (["val_auroc"], r"unknown objective\(s\) \['val_auroc'\]; known objectives: \["),
        (["params", "val_auroc_mcct"], r"first objective must be a validation AUROC"),
        (["val_auroc_mcct", "params", "params"], r"named twice"),
        ([], r"no objective given"),
    ]:
        with pytest.raises(CxrkdError, match=pattern):
            parse_objectives(names)


def test_objective_on_the_command_line_is_checked_before_anything_starts(capsys):
    for argv, pattern in [
        (["lowres-kd-open", "--objective", "auroc"], r"unknown objective\(s\) \['auroc'\]"),
        (["lowres-kd", "--objective", "val_auroc_mcct"], r"no open search.*'lowres-kd-open'"),
        (["lowres-kd-open", "--objective", "latency_ms"], r"must be a validation AUROC"),
    ]:
        assert main(["search", "run", *argv]) == 2
        err = capsys.readouterr().err
        assert re.search(pattern, err), err
        assert not ray.is_initialized()


def test_multi_objective_cell_gets_an_optuna_study_per_objective_and_no_asha():
    mo, so = open_cell(), open_cell(objectives=["val_auroc_mcct"])
    so = dataclasses.replace(so, key="single")
    teacher = get_study("lowres-kd-open", "demo").stages[0].cells[0]
    cells = [teacher, mo, so]
    searcher = CellSearcher(metric="val_auroc_mean", mode="max", seed=0)
    scheduler = CellScheduler(metric="val_auroc_mean", mode="max", grace_period=1,
                              reduction_factor=2)  # fmt: skip
    for i, cell in enumerate(cells):
        searcher.add_cell("search", cell, order=(0, i))
        scheduler.add_cell("search", cell, early_stopping=True, default_epochs=3)
    assert searcher.optuna["search/open"].metric == ["val_auroc_mcct", "params"]
    assert searcher.optuna["search/single"].metric == "val_auroc_mcct"
    assert searcher.optuna[f"search/{teacher.key}"].metric == "val_auroc_mean"
    # ASHA cannot rank two objectives
    assert set(scheduler.asha) == {f"search/{teacher.key}", "search/single"}
    assert scheduler.asha["search/single"].metric == "val_auroc_mcct"
    # Round robin: the teacher, then the open cell; completing it tells Optuna both values.
    searcher.suggest("t0")
    config = searcher.suggest("t1")
    assert config["cell"] == "open" and "teacher_path" in config
    result = {"val_auroc_mcct": 0.8, "params": 1234, "val_auroc_mean": 0.7, "epoch": 3}
    searcher.on_trial_result("t1", result)  # per-epoch results: ignored by a multi-objective
    searcher.on_trial_complete("t1", result=result)
    (told,) = searcher.optuna["search/open"]._ot_study.get_trials()
    assert told.values == [0.8, 1234]


def _result(tid: str, cell: str, auc: float, params: float, epoch: int = 3, error=None):
    metrics = {"val_auroc_mcct": auc, "params": params, "val_auroc_mean": auc, "epoch": epoch,
               "trial_id": tid}  # fmt: skip
    return SimpleNamespace(config={"cell": cell, "epochs": 3, "lr": auc}, metrics=metrics,
                           error=error)  # fmt: skip


def test_stage_chooses_the_pareto_front_best_first():
    results = [
        _result("a", "open", 0.70, 1e6),
        _result("b", "open", 0.80, 1e6),  # front
        _result("c", "open", 0.90, 4e6),  # front, best
        _result("d", "open", 0.85, 4e6),
        _result("e", "open", 0.99, 1e5, epoch=1),  # stopped early: not comparable
        _result("f", "open", float("nan"), 1e5),  # no finite value
        _result("g", "open", 0.99, 1e5, error=RuntimeError("boom")),
        _result("t", "teacher_tiny", 0.60, 1e6),
    ]
    cells = [open_cell(), get_study("lowres-kd-open", "demo").stages[0].cells[0]]
    chosen = choose(results, metric="val_auroc_mean", cells=cells)
    ids = {key: r.metrics["trial_id"] for key, r in chosen.items()}
    assert ids == {"open": "c", front_key("open", 1): "c", front_key("open", 2): "b",
                   "teacher_tiny": "t"}  # fmt: skip
    state = StudyState(best={key: r.config for key, r in chosen.items()})
    assert state.front("open") == ["open-pareto1", "open-pareto2"]
    (final_cell,) = get_study("lowres-kd-open", "demo").stages[2].cells
    final = resolve(final_cell, state)
    assert [c.key for c in final] == ["open-pareto1", "open-pareto2"]
    # Single objective: no front, the best trial only, re-trained under the cell's own key.
    single = choose(results, metric="val_auroc_mean", cells=[open_cell(objectives=[MCCT])])
    assert {k: r.metrics["trial_id"] for k, r in single.items()} == {
        "open": "c",
        "teacher_tiny": "t",
    }


@pytest.fixture
def tiny_open(monkeypatch):
    demo = lowres_open.PROFILES["demo"]
    grid = lowres.Grid(sizes=("tiny", "small"), factors=(2, 4), approaches=("vanilla", "mlcak"),
                       patch_size=8, depth=2)  # fmt: skip
    tiny = dataclasses.replace(demo, grid=grid)
    monkeypatch.setitem(lowres_open.PROFILES, "demo", tiny)


@pytest.mark.slow
def test_open_multi_objective_run_retrains_the_pareto_front_and_writes_its_table(
    store_maker, tiny_open, tiny, local_ray, tmp_path
):
    store_maker(name="tiny-findings", preset="findings")
    run = run_study(
        RunOptions(
            study="lowres-kd-open", dataset="tiny-findings", storage=str(tmp_path / "runs"),
            name="open", num_samples=5, max_concurrent=2, overrides=tiny,
        )
    )  # fmt: skip
    trials = pd.read_parquet(f"{run}/trials.parquet")
    # One teacher per size, trained once in the teacher stage and registered.
    teachers = trials[trials["stage"] == "teacher"]
    assert sorted(teachers["cell"]) == ["teacher_small", "teacher_tiny"]
    state = json.loads((tmp_path / "runs" / "open" / "state.json").read_text())
    assert len(list((tmp_path / "runs" / "teachers").iterdir())) == 2
    by_model = {
        "vit_tiny_patch16_224": state["teachers"]["teacher_tiny"],
        "vit_small_patch16_224": state["teachers"]["teacher_small"],
    }
    # The open cell: 5 trials, each student with its own size's teacher, all run out (no
    # ASHA), each reporting both objectives with its last epoch.
    search = trials[trials["stage"] == "search"]
    assert set(search["cell"]) == {"open"} and len(search) == 5
    assert (search["status"] == "completed").all()
    for _, row in search.iterrows():
        assert row["config/teacher_path"] == by_model[row["config/model"]]
    assert search["params"].notna().all() and search["val_auroc_mcct"].notna().all()
    # The front of the validation results is what the final stage re-trained and tested.
    front = search[nondominated(search[["val_auroc_mcct", "params"]], ("max", "min"))]
    keys = [front_key("open", i + 1) for i in range(len(front))]
    assert [k for k in state["best"] if k.startswith("open-")] == keys
    final = trials[trials["stage"] == "final"]
    assert sorted(set(final["cell"])) == keys
    assert (final["status"] == "completed").all() and final["test_auroc_mcct"].notna().all()
    assert final.groupby("cell").size().eq(2).all()  # two seeds each
    # The front's table and the dashboard's figure of it.
    tables = tmp_path / "runs" / "open" / "tables"
    # Trial ids as text: pandas reads an id such as "71747e86" as the float 7.1747e+90.
    numbers = pd.read_csv(tables / "lowres_open_front.csv", dtype={"search_trial": str})
    assert numbers["row"].tolist() == keys and numbers["n_seeds"].eq(2).all()
    assert set(numbers["search_trial"]) == set(front["trial_id"])
    text = (tables / "lowres_open_front.md").read_text()
    assert "Pareto front of val_auroc_mcct vs params" in text and "SYNTHETIC" in text
    page = (tmp_path / "runs" / "open" / "dashboard.html").read_text()
    assert "Open search open: validation objectives" in page
