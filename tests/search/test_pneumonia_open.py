"""Study ``pneumonia-kd-open``: the ResNet-50 -> ResNet-18 pair with one search cell per KD loss
of the binary layout (``trainables/kd``), its table, its plan (which cells run the teacher
online), ``pneumonia-kd``'s KD cell drawing exactly what it drew before the KD-loss registry.
Its small real run of the demo profile through the CLI is in tests/test_plugins.py, with the
example plugin's loss as one more cell (one run for both)."""

from __future__ import annotations

import optuna
import pytest

from cxrkd.results.study_tables import study_tables
from cxrkd.search.plan_counts import plan_counts
from cxrkd.spaces import suggest_optimizer
from cxrkd.spaces.cell_space import CellSpace, FixingTrial
from cxrkd.spaces.pneumonia_open import BASELINE, kd_key
from cxrkd.spaces.studies import SearchCell, TeacherOf, get_study
from cxrkd.trainables.config import parse_config
from cxrkd.trainables.kd import get_kd, kd_names

optuna.logging.set_verbosity(optuna.logging.WARNING)
BINARY = list(kd_names("binary"))
KD_CELLS = [kd_key(a) for a in BINARY]


def search_cells(profile: str = "demo") -> dict[str, SearchCell]:
    return {c.key: c for c in get_study("pneumonia-kd-open", profile).stage("search").cells}


@pytest.mark.parametrize("profile", ["demo", "paper"])
def test_one_cell_per_binary_kd_loss_beside_the_baseline_with_pneumonia_kds_teacher(profile):
    study = get_study("pneumonia-kd-open", profile)
    grid = get_study("pneumonia-kd", profile)
    assert study.stage("teacher").cells == grid.stage("teacher").cells  # one registered teacher
    cells = search_cells(profile)
    assert list(cells) == [BASELINE, *KD_CELLS]
    assert cells[BASELINE].fixed == grid.stage("search").cells[1].fixed  # resnet18_finetuned
    for approach, key in zip(BINARY, KD_CELLS, strict=True):
        fixed = cells[key].fixed
        assert (fixed["method"], fixed["model"], fixed["kd_approach"]) == (
            "kd_logit", "resnet18", approach
        )  # fmt: skip
        assert fixed["teacher_path"] == TeacherOf("resnet50_teacher")
    final = [c.key for c in study.stage("final").cells]
    assert final == ["resnet50_teacher", BASELINE, *KD_CELLS]


def test_each_kd_cell_searches_the_optimiser_and_what_its_loss_reads():
    cells = search_cells()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for key, approach in zip(KD_CELLS, BINARY, strict=True):
        loss = get_kd(approach).on("binary")
        for _ in range(4):
            trial = study.ask()
            flat = CellSpace(cells[key])(trial)
            searched = {"lr", "weight_decay", "batch_size", *loss.params} - set(cells[key].fixed)
            assert set(trial.params) == searched and set(loss.params) <= searched
            flat = {k: (v if not isinstance(v, TeacherOf) else "/runs/t") for k, v in flat.items()}
            cfg = parse_config(flat).method
            assert cfg.kd_approach == approach
            assert {k for k in ("alpha", "beta", "gamma", "temperature")
                    if getattr(cfg, k) is not None} == set(loss.params)  # fmt: skip


def test_the_table_has_a_row_per_cell_labelled_from_the_registry_paired_with_the_baseline():
    (table,) = study_tables(get_study("pneumonia-kd-open", "demo"))
    assert table.rows == [
        (BASELINE, "ResNet-18 fine-tuned (no KD)"),
        ("resnet50_teacher", "ResNet-50 teacher"),
        *[(kd_key(a), f"ResNet-18 KD: {get_kd(a).label}") for a in BINARY],
    ]
    assert table.baselines == dict.fromkeys(KD_CELLS, BASELINE)
    assert table.hyperparams[kd_key("fitnets")] == ["lr", "weight_decay", "batch_size", "gamma"]
    assert table.registered_teachers == ("resnet50_teacher",)


@pytest.mark.parametrize(("profile", "online"), [("demo", {"fitnets"}), ("paper", set(BINARY))])
def test_plan_runs_the_teacher_online_for_features_or_augmentation(profile, online):
    # demo: no augmentation, so only FitNets' tapped stages need the online teacher; paper:
    # augmented views, so every KD cell does.
    study = get_study("pneumonia-kd-open", profile)
    (search,) = [s for s in plan_counts(study, {}) if s.name == "search"]
    teacher_of = {c.key: {t is not None for _, t in c.configs} for c in search.cells}
    assert teacher_of[BASELINE] == {False}
    assert {a for a in BINARY if teacher_of[kd_key(a)] == {True}} == online
    assert {a for a in BINARY if teacher_of[kd_key(a)] == {False}} == set(BINARY) - online


def old_kd_logit_space(trial) -> dict:
    """kd_logit's space before the KD-loss registry (commit 4ebd19c), written out."""
    out = suggest_optimizer(trial)
    out["alpha"] = trial.suggest_float("alpha", 0.0, 1.0)
    out["temperature"] = trial.suggest_float("temperature", 1.0, 20.0, log=True)
    return out


@pytest.mark.parametrize("profile", ["demo", "paper"])
def test_pneumonia_kds_kd_cell_draws_what_it_drew_before_the_registry(profile):
    (cell,) = [c for c in get_study("pneumonia-kd", profile).stage("search").cells
               if c.key == "resnet18_kd"]  # fmt: skip
    assert "kd_approach" not in cell.fixed  # hinton by default
    new = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3))
    old = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3))
    for _ in range(16):  # past TPE's 10 random start-up trials
        a, b = new.ask(), old.ask()
        drawn = CellSpace(cell)(a)
        before = old_kd_logit_space(FixingTrial(b, dict(cell.fixed), dict(cell.bounds)))
        params = a.params  # a copy
        assert drawn["kd_approach"] == params.pop("kd_approach") == "hinton"  # recorded, fixed
        assert params == b.params and {k: drawn[k] for k in before} == before
        value = a.params["lr"] * 100 + a.params["alpha"]
        new.tell(a, value)
        old.tell(b, value)
