"""No code from the run folder: Tune's pickles there are unpickled only when this driver
signed them (search.signing), and the driver's own searcher and scheduler state is JSON
(search.cells), so a planted file never runs.

Every planted pickle here would create a marker file when unpickled; each test asserts the
marker never appears.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
from pathlib import Path

import pytest
from ray import tune
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from test_s3_storage import s3  # noqa: F401 (the local S3 server fixture)

from cxrkd.search.cells import CellScheduler, CellSearcher, SchedulerState
from cxrkd.search.signing import (
    SignatureError,
    Signer,
    check_stages,
    key_path,
    signatures_uri,
    signed_tune_state,
    signing_key,
    tune_state_kind,
)
from cxrkd.spaces.studies import FixedCell, SearchCell
from cxrkd.trainables.trainable import CELL_KEY, STAGE_KEY

SESSION = "2026-11-30_16-00-00"


class Plant:
    """Unpickling it creates ``marker``: what a hostile node would put in a run folder."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def planted(marker: Path) -> bytes:
    data = pickle.dumps(Plant(marker))
    assert not marker.exists()
    return data


# --- the key ----------------------------------------------------------------------------


def test_the_key_is_made_once_private_to_the_driver_and_never_in_the_run_folder(home):
    with pytest.raises(SignatureError, match=r"no signing key at .*run-signing\.key.*copy"):
        signing_key(create=False)
    key = signing_key(create=True)
    path = key_path()
    assert path == home / "keys" / "run-signing.key" and len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert signing_key(create=True) == signing_key(create=False) == key  # made once
    path.chmod(0o644)
    with pytest.raises(SignatureError, match=r"readable by others.*chmod 600"):
        signing_key(create=False)


def test_the_files_checked_are_the_ones_tune_unpickles():
    from ray.tune.callback import CallbackList
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search.search_generator import SearchGenerator

    for name in [
        "tuner.pkl",
        TuneController.CKPT_FILE_TMPL.format(SESSION),
        SearchGenerator.CKPT_FILE_TMPL.format(SESSION),
        Searcher.CKPT_FILE_TMPL.format(SESSION),
        CallbackList.CKPT_FILE_TMPL.format(SESSION),
    ]:
        assert tune_state_kind(name), name
    # Tune's temporary names, trial files and our own records are never unpickled by Tune.
    for name in [f".1234-tmp-searcher-state-{SESSION}.pkl", "result.json", "run.json"]:
        assert tune_state_kind(name) is None, name


# --- signatures ---------------------------------------------------------------------------


def test_only_the_bytes_the_driver_signed_verify(tmp_path):
    run = str(tmp_path / "R")
    signer = Signer(run, "search")
    data = pickle.dumps({"state": [1, 2, 3]})
    signer.sign("tuner.pkl", data)
    # The signature is one object under RUN/signatures/STAGE, named by the MAC.
    (sig,) = Path(signatures_uri(run, "search")).iterdir()
    assert len(sig.name) == 64 and not (tmp_path / "R" / "search").exists()
    fresh = Signer(run, "search")  # another driver process: reads the signatures back
    fresh.verify("tuner.pkl", data)
    name = str(tmp_path / "R" / "search" / "tuner.pkl")
    for bad, kind in [
        (data[:-1], "tuner.pkl"),  # truncated
        (data[:5] + bytes([data[5] ^ 1]) + data[6:], "tuner.pkl"),  # a changed byte
        (pickle.dumps({"state": [1, 2, 3]}, protocol=2), "tuner.pkl"),  # same value, other bytes
        (data, f"searcher-state-{SESSION}.pkl"),  # signed as another file
    ]:
        with pytest.raises(SignatureError, match="was not written by this run's driver") as e:
            fresh.verify(kind, bad)
        assert str(Path(name).parent / kind) in str(e.value) and "nothing was changed" in str(
            e.value
        )
    # Another key (another CXRKD_HOME) signs differently.
    key_path().write_text(os.urandom(32).hex())
    with pytest.raises(SignatureError, match="signed with another key"):
        Signer(run, "search").verify("tuner.pkl", data)


def test_a_driver_killed_between_signing_and_writing_still_resumes(tmp_path):
    """Signatures are only added: the version on storage stays valid while a newer one is
    signed and not yet written (or never written: the driver was killed in between)."""
    run = tmp_path / "R"
    stage = run / "search"
    stage.mkdir(parents=True)
    signer = Signer(str(run), "search")
    for i, version in enumerate([b"v1", b"v2", b"v3"]):
        signer.sign("tuner.pkl", version)  # the driver signs; killed here, ...
        if i:
            check_stages(str(run), ["search"])  # ... the bytes already there still verify
        (stage / "tuner.pkl").write_bytes(version)  # then the bytes land
        check_stages(str(run), ["search"])
    for name in ("tuner.pkl", f"experiment_state-{SESSION}.json"):  # no previous version
        signer.sign(name, b"written " + name.encode())
    check_stages(str(run), ["search"])  # tuner.pkl is v3, the snapshot never landed


def test_a_torn_tuner_pkl_is_mended_from_the_kept_copy_or_started_anew(tmp_path):
    """Tune truncates tuner.pkl before it pickles the new state on every restore: a driver
    killed in between leaves it empty. The copy kept before that restore puts it back; a
    stage that never took a snapshot starts anew; otherwise a clear error."""
    run = tmp_path / "R"
    stage = run / "search"
    stage.mkdir(parents=True)
    signer = Signer(str(run), "search")
    signer.sign("tuner.pkl", b"v1")
    (stage / "tuner.pkl").write_bytes(b"v1")
    signer.repair()  # before the restore: the verified copy is kept
    assert (stage / "tuner.pkl.prev").read_bytes() == b"v1"
    (stage / "tuner.pkl").write_bytes(b"")  # the restore truncated it; killed then
    (stage / f"experiment_state-{SESSION}.json").write_bytes(b"{}")
    signer.sign(f"experiment_state-{SESSION}.json", b"{}")
    check_stages(str(run), ["search"])  # mendable: not refused
    said = []
    Signer(str(run), "search").repair(log=said.append)
    assert (stage / "tuner.pkl").read_bytes() == b"v1" and "signed copy" in said[0]
    # A kept copy that is not the driver's is refused like any planted file.
    marker = tmp_path / "PWNED"
    (stage / "tuner.pkl").write_bytes(b"")
    (stage / "tuner.pkl.prev").write_bytes(planted(marker))
    with pytest.raises(SignatureError, match="tuner.pkl"):
        check_stages(str(run), ["search"])
    # No copy and a snapshot on storage: trials would be lost, so it stops and says why.
    (stage / "tuner.pkl.prev").unlink()
    with pytest.raises(SignatureError, match="it is empty"):
        Signer(str(run), "search").repair()
    # No copy and no snapshot: the Tuner was never past its creation; the stage starts anew.
    (stage / f"experiment_state-{SESSION}.json").unlink()
    check_stages(str(run), ["search"])
    Signer(str(run), "search").repair()
    assert not (stage / "tuner.pkl").exists() and not marker.exists()


def test_a_planted_tuner_pkl_is_refused_before_anything_unpickles_it(tmp_path):
    run = tmp_path / "R"
    marker = tmp_path / "PWNED"
    Signer(str(run), "search").sign("tuner.pkl", b"whatever the driver wrote")
    (run / "search").mkdir(parents=True)
    (run / "search" / "tuner.pkl").write_bytes(planted(marker))
    with pytest.raises(SignatureError) as e:
        check_stages(str(run), ["search"])
    assert str(run / "search" / "tuner.pkl") in str(e.value)
    with pytest.raises(SignatureError), signed_tune_state(Signer(str(run), "search")):
        tune.Tuner.restore(str(run / "search"), trainable=_train)
    assert not marker.exists()
    # A stage without tuner.pkl is not restored by Tune, so its other files are not read.
    (run / "final").mkdir()
    (run / "final" / f"callback-states-{SESSION}.pkl").write_bytes(planted(marker))
    check_stages(str(run), ["final"])
    assert not marker.exists()


def test_a_planted_experiment_snapshot_is_refused_where_tune_reads_it(tmp_path):
    """Planted after the resume's first check (a race): Tune's own reads refuse it too."""
    from ray._common.utils import binary_to_hex
    from ray.tune import ExperimentAnalysis
    from ray.tune.execution import tune_controller

    run, marker = tmp_path / "R", tmp_path / "PWNED"
    stage = run / "search"
    stage.mkdir(parents=True)
    blob = {"_type": "CLOUDPICKLE_FALLBACK", "value": binary_to_hex(planted(marker))}
    newest = stage / "experiment_state-2099-01-01_00-00-00.json"
    newest.write_text(json.dumps({"trial_data": [], "runner_data": blob}))
    Signer(str(run), "search").sign("tuner.pkl", b"the driver's")  # the stage is signed
    with signed_tune_state(Signer(str(run), "search")):
        with pytest.raises(SignatureError, match=re.escape(str(newest))):
            ExperimentAnalysis(str(stage))
        with pytest.raises(SignatureError, match=re.escape(str(newest))):
            tune_controller._loads_with_cloudpickle(newest.read_bytes())
    assert not marker.exists()


def test_a_run_without_signatures_says_so(tmp_path):
    run = tmp_path / "R"
    (run / "search").mkdir(parents=True)
    (run / "search" / "tuner.pkl").write_bytes(pickle.dumps({}))
    signing_key(create=True)
    with pytest.raises(SignatureError, match=r"has no signatures .*did not sign Tune's state"):
        check_stages(str(run), ["search"])


def _train(config):
    tune.report({"val_auc": 0.5 + config.get("lr", 0.0)})


def test_tuner_pkl_is_signed_before_it_is_written_and_restores(tmp_path):
    run = tmp_path / "R"
    signer = Signer(str(run), "search")
    with signed_tune_state(signer):
        tune.Tuner(_train, run_config=tune.RunConfig(storage_path=str(run), name="search"))
        tune.Tuner.restore(str(run / "search"), trainable=_train)
    check_stages(str(run), ["search"])
    # Outside the context Tune is itself again.
    from ray.tune.impl import tuner_internal

    assert tuner_internal.pickle.__name__ == "ray.cloudpickle"


@pytest.mark.slow
def test_a_stage_signs_its_snapshots_and_a_planted_one_stops_the_restore(
    local_ray, tmp_path, monkeypatch
):
    """A real Tune experiment: every state file it leaves is signed; restored, it runs on;
    a newer planted snapshot stops the restore with the error (Tune would otherwise log it
    and start the stage over), and nothing runs from it."""
    run = tmp_path / "R"
    cells = [SearchCell("cnn", "cnn_baseline", {"method": "cnn_baseline"}, 3)]

    def train(config):  # local: Ray's workers get it by value, not by this module's name
        tune.report({"val_auc": 0.5 + config["lr"]})

    def fit(tuner) -> None:
        with signed_tune_state(Signer(str(run), "search")):
            tuner.fit()

    def new_tuner():
        searcher = _searcher(cells, seed=0, finishing=True)
        scheduler = _scheduler(cells, epochs=1)
        return tune.Tuner(
            train,
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=1),
                scheduler=scheduler,
                num_samples=-1,
            ),
            run_config=tune.RunConfig(
                name="search",
                storage_path=str(run),
                verbose=0,
                callbacks=[SchedulerState(scheduler)],
            ),
        )

    with signed_tune_state(Signer(str(run), "search")):
        tuner = new_tuner()
    fit(tuner)
    stage = run / "search"
    kinds = {tune_state_kind(p.name) for p in stage.iterdir()} - {None}
    assert len(kinds) == 5, sorted(p.name for p in stage.iterdir())  # tuner + 4 snapshots
    check_stages(str(run), ["search"])
    snapshot = next(stage.glob("searcher-state-*.pkl"))
    assert json.loads(snapshot.read_text())["issued"] == {"search/cnn": 3}  # JSON, not a pickle

    with signed_tune_state(Signer(str(run), "search")):
        restored = tune.Tuner.restore(str(stage), trainable=train)
    fit(restored)  # every trial had finished: the restored searcher knows it
    assert len(restored.get_results()) == 3

    marker = tmp_path / "PWNED"
    (stage / "search_gen_state-2099-01-01_00-00-00.json").write_bytes(planted(marker))
    with pytest.raises(SignatureError, match=r"search_gen_state-2099-01-01_00-00-00\.json"):
        check_stages(str(run), ["search"])
    with signed_tune_state(Signer(str(run), "search")):
        restored = tune.Tuner.restore(str(stage), trainable=train)
    with pytest.raises(SignatureError, match="search_gen_state-2099"):
        fit(restored)
    assert not marker.exists()


# --- the driver's own state is JSON ---------------------------------------------------------


class _Finishing(CellSearcher):
    """Without the study's driver (which says when every stage has ended): finished once
    every cell has had its budget."""

    def suggest(self, trial_id: str):
        if not any(self.may_issue(c) for c in self.cells):
            self.finish()
        return super().suggest(trial_id)


def _searcher(cells: list, *, seed: int, finishing: bool = False) -> CellSearcher:
    searcher = (_Finishing if finishing else CellSearcher)(metric="val_auc", mode="max", seed=seed)
    for i, cell in enumerate(cells):
        searcher.add_cell("search", cell, order=(0, i))
    return searcher


def _scheduler(cells: list, *, epochs: int) -> CellScheduler:
    scheduler = CellScheduler(metric="val_auc", mode="max", grace_period=1, reduction_factor=2)
    for cell in cells:
        scheduler.add_cell("search", cell, early_stopping=True, default_epochs=epochs)
    return scheduler


def _cells() -> list:
    base = {"img_size": 16, "epochs": 4, "pretrained": False}
    cnn = {**base, "method": "cnn_baseline", "model": "cnn_baseline"}
    return [
        SearchCell("cnn", "cnn_baseline", cnn, 6, {"lr": (1e-3, 2e-3)}),
        FixedCell("fixed", ({**cnn, "seed": 0}, {**cnn, "seed": 1})),
    ]


def _step(searcher: CellSearcher, i: int) -> dict:
    """Suggest trial ``t<i>``, report two epochs and complete the one before it."""
    config = searcher.suggest(f"t{i}")
    searcher.on_trial_result(f"t{i}", {"val_auc": 0.1 * i, "training_iteration": 1})
    if i:
        searcher.on_trial_complete(f"t{i - 1}", result={"val_auc": 0.5 + 0.05 * i})
    return config


def test_a_restored_searcher_goes_on_exactly_as_an_uninterrupted_one(tmp_path):
    """Saved mid-search (one trial still running) as JSON, restored into the searcher a
    fresh ``tuner.pkl`` holds: the same suggestions follow, the running trial completes
    into its study, and the file holds nothing that unpickles."""
    straight = _searcher(_cells(), seed=3, finishing=True)
    expected = [_step(straight, i) for i in range(8)]

    first = _searcher(_cells(), seed=3, finishing=True)
    got = [_step(first, i) for i in range(4)]
    path = tmp_path / f"searcher-state-{SESSION}.pkl"
    first.save(str(path))
    state = json.loads(path.read_text())  # plain JSON
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(path.read_bytes())
    assert state["issued"] == {"search/cnn": 2, "search/fixed": 2}
    # Restored into the searcher of a fresh tuner.pkl, which has no cell yet: the driver
    # opens them again after the restore.
    restored = _searcher([], seed=3, finishing=True)
    restored.restore(str(path))
    for i, cell in enumerate(_cells()):
        restored.add_cell("search", cell, order=(0, i))
    got += [_step(restored, i) for i in range(4, 8)]
    assert got == expected
    assert restored.suggest("t99") == Searcher.FINISHED

    def told(searcher: CellSearcher) -> list[tuple]:
        trials = searcher.optuna["search/cnn"]._ot_study.trials
        return [(t.params, t.values, t.intermediate_values, t.state) for t in trials]

    assert told(restored) == told(straight)


def test_a_searcher_snapshot_from_elsewhere_is_a_clear_error(tmp_path):
    path = tmp_path / "searcher-state.pkl"
    path.write_bytes(pickle.dumps({"issued": {}}))  # what an older cxrkd wrote
    searcher = _searcher(_cells(), seed=0)
    with pytest.raises(Exception, match=r"cannot be read .*another cxrkd version"):
        searcher.restore(str(path))


def test_asha_rungs_cross_a_restart_as_plain_json():
    def scheduler() -> CellScheduler:
        return _scheduler([SearchCell("a", "cnn_baseline", {}, 4)], epochs=4)

    def trial(tid: str):
        return type("T", (), {"trial_id": tid, "config": {CELL_KEY: "a", STAGE_KEY: "search"}})()

    def report(s, t, value, it=1) -> str:
        return s.on_trial_result(None, t, {"training_iteration": it, "val_auc": value})

    before = scheduler()
    a1, a2, a3 = trial("a1"), trial("a2"), trial("a3")
    for t in (a1, a2, a3):
        before.on_trial_add(None, t)
    assert report(before, a1, 0.9) == TrialScheduler.CONTINUE
    assert report(before, a2, 0.5) == TrialScheduler.STOP
    assert report(before, a1, 0.95, it=2) == TrialScheduler.CONTINUE
    state = json.loads(json.dumps(SchedulerState(before).get_state(), allow_nan=False))
    after = scheduler()
    SchedulerState(after).set_state(state)
    asha, old = after.asha["search/a"], before.asha["search/a"]
    assert asha._brackets[0]._rungs == old._brackets[0]._rungs
    assert (asha._num_stopped, asha._counter) == (old._num_stopped, old._counter) == (1, 0)
    assert set(asha._trial_info) == {"a1", "a2", "a3"}
    assert report(after, a3, 0.6) == report(before, a3, 0.6) == TrialScheduler.STOP


def test_signatures_and_checks_on_s3(s3, tmp_path):  # noqa: F811 (the fixture)
    """The same on S3: signatures are objects under RUN/signatures/STAGE, and a planted
    tuner.pkl there is refused by the check a resume makes."""
    from cxrkd.trainables import storage

    run = f"{s3.root}/runs/R"
    marker = tmp_path / "PWNED"
    signer = Signer(run, "search")
    genuine = pickle.dumps({"tuner": 1})
    signer.sign("tuner.pkl", genuine)
    fs, path = storage.filesystem(f"{run}/search/tuner.pkl")
    with fs.open_output_stream(path) as f:
        f.write(genuine)
    check_stages(run, ["search"])
    (sig,) = [k for k in s3.objects("runs/R/signatures/search/") if not k.endswith("/")]
    assert len(sig.rsplit("/", 1)[1]) == 64
    with fs.open_output_stream(path) as f:
        f.write(planted(marker))
    with pytest.raises(SignatureError, match=r"s3://.*/runs/R/search/tuner\.pkl was not"):
        check_stages(run, ["search"])
    with pytest.raises(SignatureError), signed_tune_state(Signer(run, "search")):
        tune.Tuner.restore(f"{run}/search", trainable=_train)
    assert not marker.exists()
