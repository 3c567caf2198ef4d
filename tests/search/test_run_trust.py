"""The run folder is not trusted (DESIGN.md, "Running"): names cannot leave or shadow the
storage layout, the folder never chooses where the driver connects, and a damaged file in it
stops resume/status/report with a clear error instead of a traceback or an overwrite.

No Ray is started: ``ray.init`` is replaced by a spy that records its arguments and stops.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pandas as pd
import pytest
import ray
from cli_checks import fails

from cxrkd.search.cli import main
from cxrkd.search.run_state import RESERVED_RUN_NAMES, RunOptions, check_run_name, write_options
from cxrkd.trainables.data.store import DatasetError, check_name
from cxrkd.trainables.errors import CxrkdError


class RayInitCalled(Exception):
    pass


@pytest.fixture
def ray_init_spy(monkeypatch) -> list[dict]:
    """Every ``ray.init`` call's keyword arguments; the call then stops the command."""
    calls: list[dict] = []

    def spy(*args, **kwargs):
        calls.append({"args": args, **kwargs})
        raise RayInitCalled(kwargs.get("address"))

    monkeypatch.setattr(ray, "init", spy)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    return calls


# --- 1. run names -------------------------------------------------------------------------

BAD_NAMES = ["..", "a/../b", "a/b", "/abs", "a\\b", "a?b", "a#b", "a\x01b", "tab\tname",
             "new\nline", "caf\u00e9", "\u0430bc", "", "x" * 101, ".hidden", "-flag"]  # fmt: skip


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_bad_run_name_exits_2_with_the_fix_and_creates_nothing(
    name, capsys, tmp_path, ray_init_spy
):
    storage = tmp_path / "runs"
    # A store that does not exist: the name must be refused before the dataset is opened.
    fails(capsys, ["search", "run", "pneumonia-kd", "--dataset", "no-such-store",
                    f"--name={name}", "--storage", str(storage)],
           r"bad run name", r"letters, digits", r"e\.g\. --name ")  # fmt: skip
    assert not storage.exists()
    assert not ray_init_spy


@pytest.mark.parametrize("name", ["teachers", "Teachers", "TEACHERS"])
def test_a_name_the_storage_layout_uses_is_reserved(name, capsys, tmp_path, ray_init_spy):
    storage = tmp_path / "runs"
    fails(capsys, ["search", "run", "pneumonia-kd", "--dataset", "no-such-store",
                    f"--name={name}", "--storage", str(storage)],
           rf"run name '{name}' is reserved", r"pass another --name")  # fmt: skip
    assert not storage.exists()
    assert not ray_init_spy


def test_the_reserved_names_cover_the_teacher_registry():
    from cxrkd.trainables.teachers import TeacherRegistry

    root = Path(TeacherRegistry("/tmp/some-storage").root)
    assert root.parent == Path("/tmp/some-storage")
    assert root.name in RESERVED_RUN_NAMES


def test_run_and_dataset_names_share_one_check():
    for name in BAD_NAMES:
        with pytest.raises(DatasetError, match="bad dataset name"):
            check_name(name)
        with pytest.raises(CxrkdError, match="bad run name"):
            check_run_name(name)
        with pytest.raises(CxrkdError, match="bad run name"):
            RunOptions(study="pneumonia-kd", name=name)
    for name in ["pneumonia-kd-demo-20260101-120000", "R", "run_1.v2"]:
        assert check_name(name) == check_run_name(name) == name
        assert RunOptions(study="pneumonia-kd", name=name).name == name


# --- 2. the Ray address -------------------------------------------------------------------


@pytest.fixture
def planted_run(tiny_store, tmp_path) -> Path:
    """A run whose run.json names a cluster address, as a hostile node could write it."""
    storage = tmp_path / "runs"
    run = storage / "R"
    options = RunOptions(
        study="pneumonia-kd",
        dataset=tiny_store.name,
        name="R",
        storage=str(storage),
        address="10.0.0.1:6379",
    )
    write_options(str(run), options, {"dataset_fingerprint": tiny_store.fingerprint})
    return run


def test_resume_never_connects_where_run_json_says(planted_run, ray_init_spy):
    with pytest.raises(RayInitCalled):
        main(["search", "resume", str(planted_run)])
    assert [c["address"] for c in ray_init_spy] == ["local"]


def test_resume_connects_where_the_command_line_or_ray_address_says(
    planted_run, ray_init_spy, monkeypatch
):
    with pytest.raises(RayInitCalled):
        main(["search", "resume", str(planted_run), "--address", "127.0.0.1:1"])
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:2")
    with pytest.raises(RayInitCalled):
        main(["search", "resume", str(planted_run)])
    assert [c["address"] for c in ray_init_spy] == ["127.0.0.1:1", "127.0.0.1:2"]


# --- 3. damaged files ---------------------------------------------------------------------


@pytest.fixture
def run_folder(tmp_path) -> Path:
    """A run as a driver left it: run.json, state.json and one records file (no dataset
    needed: the damage must be found before the dataset is opened)."""
    run = tmp_path / "runs" / "R"
    options = RunOptions(study="pneumonia-kd", dataset="tiny-pneumonia", name="R",
                         storage=str(tmp_path / "runs"))  # fmt: skip
    write_options(str(run), options, {"dataset_fingerprint": "0" * 16})
    (run / "state.json").write_text('{"teachers": {}, "best": {}, "done": []}')
    (run / "records").mkdir()
    frame = pd.DataFrame({"trial_id": ["t1"], "stage": ["teacher"], "cell": ["c"],
                          "status": ["completed"], "error": [None], "val_auc": [0.5]})  # fmt: skip
    frame.to_parquet(run / "records" / "trials-teacher--c.parquet")
    return run


COMMANDS = [["search", "resume"], ["search", "status"], ["report"]]


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
@pytest.mark.parametrize(
    "damage",
    [
        '{"teachers": {}, "best": {',
        '{"teachers": {}, "best": {}}',
        '{"teachers": [], "best": {}, "done": []}',
        "",
    ],
    ids=["truncated", "no-done", "wrong-type", "empty"],
)
def test_a_damaged_state_json_is_a_clear_error(command, damage, run_folder, capsys, ray_init_spy):
    (run_folder / "state.json").write_text(damage)
    before = _snapshot(run_folder)
    fails(capsys, [*command, str(run_folder)], re.escape(str(run_folder / "state.json")),
           r"is damaged \(\w+: ", r"restore it from a backup or start a new run")  # fmt: skip
    assert _snapshot(run_folder) == before
    assert not ray_init_spy


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
@pytest.mark.parametrize("kind", ["trials", "epochs"])
def test_a_truncated_records_file_is_a_clear_error(command, kind, run_folder, capsys, ray_init_spy):
    path = run_folder / "records" / f"{kind}-teacher--c.parquet"
    whole = (run_folder / "records" / "trials-teacher--c.parquet").read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    before = _snapshot(run_folder)
    fails(capsys, [*command, str(run_folder)], re.escape(str(path)),
           r"is damaged \(ArrowInvalid: .*[Pp]arquet",
           r"restore it from a backup or start a new run")  # fmt: skip
    assert _snapshot(run_folder) == before
    assert not ray_init_spy


def test_an_intact_run_folder_still_reads(run_folder, capsys):
    assert main(["search", "status", str(run_folder)]) == 0
    out = capsys.readouterr().out
    assert "[teacher] c" in out and "1 completed" in out


# --- 4. Tune's pickles ----------------------------------------------------------------------


class Plant:
    """Unpickling it creates ``marker``: what a hostile node would put in a run folder."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _plant_everywhere(stage: Path, marker: Path) -> None:
    """A pickle that runs code in every file of ``stage`` that Tune would unpickle."""
    from ray._common.utils import binary_to_hex

    bomb = pickle.dumps(Plant(marker))
    session = "2026-11-30_16-00-00"
    stage.mkdir(parents=True, exist_ok=True)
    (stage / "tuner.pkl").write_bytes(bomb)
    for name in [f"searcher-state-{session}.pkl", f"callback-states-{session}.pkl",
                 f"search_gen_state-{session}.json"]:  # fmt: skip
        (stage / name).write_bytes(bomb)
    blob = {"_type": "CLOUDPICKLE_FALLBACK", "value": binary_to_hex(bomb)}
    (stage / f"experiment_state-{session}.json").write_text(json.dumps({"runner_data": blob}))


@pytest.mark.parametrize("file", ["tuner.pkl", "searcher-state-2026-11-30_16-00-00.pkl"])
def test_resume_never_unpickles_planted_tune_state(file, run_folder, capsys, ray_init_spy):
    from cxrkd.search.signing import Signer

    marker = run_folder.parent / "PWNED"
    stage = run_folder / "study"
    if file == "tuner.pkl":
        _plant_everywhere(stage, marker)
    else:  # the driver's own tuner.pkl, and a planted searcher snapshot beside it
        genuine = b"tuner state the driver wrote"
        stage.mkdir()
        (stage / "tuner.pkl").write_bytes(genuine)
        Signer(str(run_folder), "study").sign("tuner.pkl", genuine)
        (stage / file).write_bytes(pickle.dumps(Plant(marker)))
    before = _snapshot(run_folder)
    fails(capsys, ["search", "resume", str(run_folder)], re.escape(str(stage / file)),
           r"was not written by this run's driver", r"nothing was changed",
           r"resume with the CXRKD_HOME \(signing key\) of the driver that started the run",
           rf"move {re.escape(str(stage))} away")  # fmt: skip
    assert not marker.exists()
    assert _snapshot(run_folder) == before
    assert not ray_init_spy


def test_a_signed_stage_resumes_and_a_finished_stage_is_not_read(
    planted_run, ray_init_spy, tmp_path
):
    from cxrkd.search.run_state import write_state
    from cxrkd.search.signing import Signer
    from cxrkd.spaces.studies import StudyState

    marker = tmp_path / "PWNED"
    # A finished stage's folder (as a cxrkd before 2026-12 left it): never restored.
    _plant_everywhere(planted_run / "teacher", marker)
    write_state(str(planted_run), StudyState(), ["teacher"])
    signer = Signer(str(planted_run), "study")
    (planted_run / "study").mkdir()
    for name, data in [("tuner.pkl", b"tuner"), ("experiment_state-2026-11-30_16-00-00.json",
                                                 b'{"trial_data": []}')]:  # fmt: skip
        (planted_run / "study" / name).write_bytes(data)
        signer.sign(name, data)
    with pytest.raises(RayInitCalled):  # past every check, the driver starts
        main(["search", "resume", str(planted_run)])
    assert not marker.exists()
