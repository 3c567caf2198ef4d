"""``cxrkd search plan``: counts of the built-in studies, the bill's arithmetic, its labels,
bad input, and the counts against what a tiny real run executes."""

from __future__ import annotations

import json

import pytest
from ray.tune.schedulers.async_hyperband import _Bracket

from cxrkd.results.frames import load_records
from cxrkd.search import plan_throughput
from cxrkd.search.cli import main
from cxrkd.search.plan import build_plan
from cxrkd.search.plan_counts import asha_rungs, plan_counts, typical_epochs
from cxrkd.search.run_state import RunOptions
from cxrkd.search.study_options import study_with_options, typed_overrides

FLOPS = {"cnn_baseline@32/patch0/depth0": 10**7, "resnet18@32/patch0/depth0": 7 * 10**7}


def _counts(study: str, profile: str, **options) -> dict:
    opts = RunOptions(study=study, profile=profile, **options)
    built = study_with_options(opts)
    stages = plan_counts(built, typed_overrides(built, opts.overrides))
    return {s.name: {c.key: c for c in s.cells} for s in stages}


@pytest.mark.parametrize("epochs,grace,rf", [(25, 4, 2), (100, 10, 3), (4, 2, 2), (3, 2, 2),
                                             (2, 2, 2), (8, 1, 2), (20, 10, 3)])  # fmt: skip
def test_rungs_are_the_milestones_of_rays_asha(epochs, grace, rf):
    bracket = _Bracket(min(grace, epochs), epochs, rf, 0)
    assert asha_rungs(epochs, grace, rf) == sorted(m for m, _ in bracket._rungs if m < epochs)


def test_typical_keeps_one_in_reduction_factor_per_rung():
    assert typical_epochs(8, 25, [4, 8, 16], 2) == [25, 16, 8, 8, 4, 4, 4, 4]  # 73: ~9 each
    assert typical_epochs(1, 25, [4, 8, 16], 2) == [25]  # the one trial always runs out


def test_pneumonia_paper_counts():
    stages = _counts("pneumonia-kd", "paper")
    teacher = stages["teacher"]["resnet50_teacher"]
    assert teacher.trials["worst"] == 8 and teacher.epochs == 25 and teacher.rungs == [4, 8, 16]
    # Best: the first trial at each rung cannot be stopped (nothing to compare with).
    assert teacher.trial_epochs == {"best": 25 + 7 * 4, "typical": 73, "worst": 200}
    search = stages["search"]
    assert list(search) == ["baseline_cnn", "resnet18_finetuned", "resnet18_frozen", "resnet18_kd"]
    assert all(c.trial_epochs["best"] == 25 + 23 * 4 and c.trial_epochs["worst"] == 600
               for c in search.values())  # fmt: skip
    final = stages["final"]
    assert len(final) == 5
    for cell in final.values():  # exact: 3 seeds x 25 epochs, no early stopping
        assert cell.rungs == [] and set(cell.trial_epochs.values()) == {75}
        assert set(cell.trials.values()) == {3}


def test_lowres_paper_counts_and_a_subset_with_set_and_num_samples():
    stages = _counts("lowres-kd", "paper")
    assert len(stages["teacher"]) == 3 and len(stages["search"]) == 45
    assert len(stages["final"]) == 48
    kd = stages["search"]["kd_base_28px_mlcak"]
    assert kd.rungs == [10, 30, 90]
    assert kd.trial_epochs["best"] == 100 + 15 * 10 and kd.trial_epochs["worst"] == 1600
    assert sum(c.trial_epochs["worst"] for c in stages["final"].values()) == 48 * 3 * 100

    sub = _counts("lowres-kd", "paper", only=["kd_tiny_28px_mlcak"], num_samples=4,
                  overrides={"epochs": "20"})  # fmt: skip
    assert {k: list(v) for k, v in sub.items()} == {
        "teacher": ["teacher_tiny"], "search": ["kd_tiny_28px_mlcak"],
        "final": ["kd_tiny_28px_mlcak"]}  # fmt: skip
    assert sub["teacher"]["teacher_tiny"].trials["worst"] == 4  # min(6 teacher trials, 4)
    cell = sub["search"]["kd_tiny_28px_mlcak"]
    assert cell.epochs == 20 and cell.rungs == [10]
    assert cell.trial_epochs == {"best": 20 + 3 * 10, "typical": 50, "worst": 80}


def test_an_open_search_plans_its_pareto_front_as_a_range():
    stages = _counts("lowres-kd-open", "demo")
    search = stages["search"]["open"]
    assert search.rungs == []  # two objectives: no ASHA, every trial runs out
    assert search.trial_epochs["best"] == search.trial_epochs["worst"] == 12 * 3
    final = stages["final"]["open"]
    assert final.rows == (1, 2)  # (quality, params): at most one configuration per size
    assert final.trials["best"] == 2 and final.trials["worst"] == 4  # x the demo's 2 seeds


def _table(tmp_path, rows=(), prices=None) -> str:
    estimate = {"mfu": 0.5, "mfu_source": "test", "peak_bf16_tflops": {"k2": 1.0}}
    table = {"rows": list(rows), "prices": prices or {}, "flops": FLOPS, "estimate": estimate}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table))
    return str(path)


def _row(model: str, mode: str, ips: float) -> dict:
    return {"kind": "k1", "device": "D", "date": "2026-01-01", "batch": 8, "model": model,
            "img_size": 32, "mode": mode, "images_per_s": ips}  # fmt: skip


CNN = RunOptions(study="pneumonia-kd", profile="demo", only=["baseline_cnn"],
                 overrides={"img_size": "32"})  # fmt: skip


def test_the_bill_from_a_measured_row(tmp_path):
    price = {"usd_per_gpu_hour": 2.0, "instance": "i", "source": "s", "date": "d"}
    table = _table(tmp_path, [_row("cnn_baseline", "train", 100), _row("cnn_baseline", "eval",
                   1000)], {"k1": price})  # fmt: skip
    plan = build_plan(CNN, kind="k1", workers=1, table_path=table)
    # No store: the demo's phantom sizes are assumed (and said so): 20 steps x 32 images.
    assert plan["images"]["assumed"] and plan["images"]["splits"]["val"] == 500
    assert [s["name"] for s in plan["stages"]] == ["search", "final"]  # no teacher needed
    search, final = plan["stages"]
    cell = search["cells"][0]
    assert cell["epoch_s"] == pytest.approx(640 / 100 + 500 / 1000)
    assert cell["trial_overhead_s"] == 30.0
    assert final["cells"][0]["trial_overhead_s"] == pytest.approx(30 + 750 / 1000)  # test pass
    worst = search["totals"]["worst"]
    seconds = 3 * (4 * 6.9 + 30)  # 3 trials of 4 epochs, one worker: one after another
    assert worst["device_hours"] == pytest.approx(seconds / 3600, abs=1e-3)
    assert worst["wall_hours"] == pytest.approx(seconds / 3600, abs=1e-3)
    assert worst["usd"] == pytest.approx(2 * seconds / 3600, abs=0.01)
    assert all(r["measured"] and r["source"].startswith("measured") for r in plan["rates"])
    wide = build_plan(CNN, kind="k1", workers=100, table_path=table)
    assert wide["stages"][0]["totals"]["worst"]["wall_hours"] == pytest.approx(
        (4 * 6.9 + 30) / 3600, abs=1e-3)  # fmt: skip


def test_missing_rows_are_estimates_and_say_so(tmp_path, capsys):
    table = _table(tmp_path, [_row("resnet18", "train", 70), _row("resnet18", "eval", 700)])
    plan = build_plan(CNN, kind="k1", table_path=table)
    rates = {r["mode"]: r for r in plan["rates"]}
    # Scaled by FLOPs from the nearest measured row: 7x fewer FLOPs, 7x the images/s.
    assert rates["train"]["images_per_s"] == pytest.approx(490)
    assert rates["train"]["source"].startswith("ESTIMATE") and not rates["train"]["measured"]
    # A kind without any measured row: peak x MFU over 3 x forward FLOPs.
    plan = build_plan(CNN, kind="k2", table_path=table)
    assert plan["device"]["measured"] is False and plan["device"]["price"] is None
    train = next(r for r in plan["rates"] if r["mode"] == "train")
    assert train["images_per_s"] == pytest.approx(0.5 * 1e12 / (3 * 10**7))
    assert main(["search", "plan", "pneumonia-kd", "--only", "baseline_cnn", "--set",
                 "img_size=32", "--gpu", "k2", "--table", table]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "NO measured k2 row" in out and "ESTIMATE" in out and "price: none" in out


def test_probe_measures_here(tmp_path, monkeypatch):
    monkeypatch.setattr(plan_throughput, "PROBE_ROW_S", 0.2)
    plan = build_plan(CNN, probe=True, table_path=_table(tmp_path))
    assert plan["device"]["probe"] and plan["device"]["kind"] == "cpu"
    assert {r["mode"] for r in plan["rates"]} == {"train", "eval"}
    assert all(r["measured"] and r["images_per_s"] > 0 for r in plan["rates"])


@pytest.mark.parametrize("argv,message", [
    (["nope"], "unknown study 'nope'"),
    (["pneumonia-kd", "--profile", "huge"], "unknown profile 'huge'"),
    (["pneumonia-kd", "--gpu", "tpu9"], "unknown GPU kind 'tpu9'"),
    (["pneumonia-kd", "--only", "*vit*"], "matches no cell"),
    (["pneumonia-kd", "--workers", "0"], "--workers must be at least 1"),
])  # fmt: skip
def test_bad_input_is_refused_with_exit_2(argv, message, capsys):
    assert main(["search", "plan", *argv]) == 2
    assert message in capsys.readouterr().err


def assert_plan_matches_run(args: list[str], run, tmp_path, capsys) -> None:
    """``search plan`` with the arguments a finished run was started with: the trials and
    trial-epochs the run executed lie within each cell's planned best .. worst case.
    Called by test_subset's end-to-end run (one tiny real run serves both tests)."""
    capsys.readouterr()
    assert main(["search", "plan", *args, "--gpu", "k2", "--table", _table(tmp_path),
                 "--json"]) == 0  # fmt: skip
    plan = json.loads(capsys.readouterr().out)
    trials, epochs = load_records(str(run))
    ran = epochs.groupby(["stage", "cell"]).size().to_dict()
    assert set(ran) == {(s["name"], c["key"]) for s in plan["stages"] for c in s["cells"]}
    for stage in plan["stages"]:
        for cell in stage["cells"]:
            n = int((trials[["stage", "cell"]] == [stage["name"], cell["key"]]).all(1).sum())
            assert cell["trials"]["best"] <= n <= cell["trials"]["worst"], cell
            done = ran[(stage["name"], cell["key"])]
            assert cell["trial_epochs"]["best"] <= done <= cell["trial_epochs"]["worst"], cell
    final = plan["stages"][-1]
    assert all(c["trial_epochs"]["best"] == c["trial_epochs"]["worst"] for c in final["cells"])
    assert plan["images"]["assumed"] is False  # the store's own split sizes
