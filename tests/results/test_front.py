"""The Pareto front (a pure function, checked by hand and against Optuna's own) and the open
search's table and figure data built from a hand-made trials frame."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest

from cxrkd.results.figure_data import nondominated, pareto_mask
from cxrkd.results.front import front_display, front_table, search_points
from cxrkd.results.table_specs import ParetoSpec
from cxrkd.spaces.studies import front_key

QUALITY_COST = ("max", "min")


def test_front_by_hand_with_dominance_ties_and_nan():
    points = [
        (0.90, 100),  # 0: best AUROC
        (0.80, 10),  # 1: cheapest
        (0.80, 10),  # 2: equal to 1: neither dominates the other, both stay
        (0.85, 50),  # 3: a trade-off between 0 and 1
        (0.85, 60),  # 4: dominated by 3 (same AUROC, costlier)
        (0.70, 10),  # 5: dominated by 1 (same cost, worse)
        (0.95, np.nan),  # 6: incomplete: never on the front, dominates nothing
        (0.50, 5),  # 7: the very cheapest: on the front however bad
    ]
    mask = nondominated(points, QUALITY_COST)
    assert np.flatnonzero(mask).tolist() == [0, 1, 2, 3, 7]
    # Directions matter: minimising both keeps the cheapest-and-worst corner only.
    assert np.flatnonzero(nondominated(points, ("min", "min"))).tolist() == [7]
    # The two-column helper of the final models' figure is the same rule.
    values, costs = zip(*points, strict=True)
    assert pareto_mask(values, costs).tolist() == mask.tolist()


def test_front_edge_cases_and_bad_modes():
    assert nondominated(np.empty((0, 2)), QUALITY_COST).tolist() == []
    assert nondominated([(0.7,), (0.9,), (0.9,)], ("max",)).tolist() == [False, True, True]
    with pytest.raises(ValueError, match=r"'max' or 'min'.*'maximize'"):
        nondominated([(1, 2)], ("maximize", "min"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_front_agrees_with_optunas_best_trials(seed):
    rng = np.random.default_rng(seed)
    # Rounded, so that ties and equal points occur; three objectives, mixed directions.
    points = np.round(rng.random((40, 3)), 1)
    directions = ["maximize", "minimize", "maximize"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=directions)
    for p in points:
        study.add_trial(
            optuna.trial.create_trial(
                values=list(p), params={}, distributions={}, state=optuna.trial.TrialState.COMPLETE
            )
        )
    expected = sorted(t.number for t in study.best_trials)
    modes = [d[:3] for d in directions]
    assert np.flatnonzero(nondominated(points, modes)).tolist() == expected


SPEC = ParetoSpec(
    title="t",
    stem="s",
    stage="search",
    cell="open",
    objectives=(("val_auroc_mcct", "max"), ("params", "min")),
    configs=["model", "low_res", "lr"],
)


def _trial(stage, cell, tid, *, status="completed", **values) -> dict:
    config = {
        f"config/{k}": values.pop(k) for k in ("model", "low_res", "lr", "seed") if k in values
    }
    return {"stage": stage, "cell": cell, "trial_id": tid, "status": status, **config, **values}


def open_run() -> pd.DataFrame:
    t, s = "vit_tiny_patch16_224", "vit_small_patch16_224"

    def searched(tid, model, low, lr, auc=None, params=None, status="completed") -> dict:
        values = {} if auc is None else {"val_auroc_mcct": auc, "params": params}
        return _trial("search", "open", tid, status=status, model=model, low_res=low, lr=lr,
                      **values)  # fmt: skip

    rows = [
        searched("a", t, 8, 1e-3, 0.70, 1e6),
        searched("b", t, 16, 2e-3, 0.80, 1e6),
        searched("c", s, 8, 1e-3, 0.90, 4e6),
        searched("d", s, 16, 3e-3, 0.85, 4e6),
        # Stopped early: not comparable with trials that ran every epoch, never on the front.
        searched("e", t, 8, 5e-3, 0.99, 1e6, status="stopped"),
        searched("f", t, 8, 9e-3, status="errored"),
    ]
    # The final stage re-trains the front, best first: c (pareto1) and b (pareto2).
    finals = {front_key("open", 1): (s, 8, 1e-3, 4e6), front_key("open", 2): (t, 16, 2e-3, 1e6)}
    for key, (model, low, lr, params) in finals.items():
        for seed, auc in enumerate((0.6, 0.8) if model == s else (0.7, 0.7)):
            rows.append(
                _trial("final", key, f"{key}-{seed}", model=model, low_res=low, lr=lr, seed=seed,
                       test_auroc_mcct=auc, test_auroc_mean=auc - 0.1, params=params,
                       latency_ms=2.0 + seed)
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_search_points_mark_the_front_among_completed_trials():
    points = search_points(open_run(), SPEC).set_index("trial_id")
    assert set(points.index) == {"a", "b", "c", "d", "e"}  # the errored one reported nothing
    assert points["front"][points["front"]].index.tolist() == ["b", "c"]
    assert points.loc["c", "config"] == "model=vit_small_patch16_224, low_res=8, lr=0.001"
    assert search_points(open_run().drop(columns=["params"]), SPEC).empty


def test_front_table_joins_each_final_model_to_its_search_trial():
    table = front_table(open_run(), SPEC)
    assert table["row"].tolist() == ["open-pareto1", "open-pareto2"]
    assert table["search_trial"].tolist() == ["c", "b"]  # matched by configuration
    assert table["val val_auroc_mcct"].tolist() == [0.90, 0.80]
    assert table["val params"].tolist() == [4e6, 1e6]
    assert table["test AUROC T2 (MCCT)_mean"].tolist() == pytest.approx([0.7, 0.7])
    assert table["test AUROC T2 (MCCT)_std"].iloc[0] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert table["n_seeds"].tolist() == [2, 2]
    display = front_display(table, SPEC)
    assert display.columns[:4].tolist() == [
        "final cell", "seeds", "val_auroc_mcct (search)", "params (search)"
    ]  # fmt: skip
    assert display["val_auroc_mcct (search)"].tolist() == ["0.900", "0.800"]
    assert display["params (search)"].tolist() == ["4.0M", "1.0M"]
    assert display["test AUROC T2 (MCCT)"].iloc[0] == "0.700 ± 0.141"
    assert "low_res=8" in display["hyperparameters"].iloc[0]


def test_single_objective_table_is_the_cells_own_final_model():
    frame = open_run()
    frame.loc[frame["cell"] == "open-pareto1", "cell"] = "open"
    frame = frame[frame["cell"] != "open-pareto2"]
    spec = ParetoSpec("t", "s", "search", "open", (("val_auroc_mcct", "max"),), ["model"])
    table = front_table(frame, spec)
    assert table["row"].tolist() == ["open"] and table["search_trial"].tolist() == ["c"]


def test_dashboard_section_draws_every_trial_and_the_front():
    from cxrkd.results.sections import open_front

    (part,) = open_front(open_run(), SPEC).parts
    fig, _, _ = part
    front = [t for t in fig.data if t.name and t.name.endswith("(front)")]
    assert sorted(x for t in front for x in t.x) == [1e6, 4e6]  # trials b and c
    assert sum(len(t.x) for t in fig.data if t.mode == "markers") == 5  # a-e, not the errored f
    single = ParetoSpec("t", "s", "search", "open", (("val_auroc_mcct", "max"),), ["model"])
    (note,) = open_front(open_run(), single).parts
    assert "Single objective" in note
