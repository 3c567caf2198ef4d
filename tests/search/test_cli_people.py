"""The command line for people: ``--version``, the studies in ``search run --help``,
``search status --json``, ``data rm`` asking first, and the README's promises."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from cxrkd.search.cli import build_parser, main
from cxrkd.search.run_state import RunOptions

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "results"))
from synthetic_run import write_synthetic_run

README = Path(__file__).resolve().parents[2] / "README.md"


def test_version_names_the_installed_cxrkd(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"cxrkd {metadata.version('cxrkd')}"


def test_the_command_line_is_built_without_torch_or_ray():
    """Every command starts in about a second (`cxrkd --version` took 4-10 s while building
    `search run`'s list of studies imported torch); only `search run --help` loads them."""
    import subprocess

    code = (
        "import sys; from cxrkd.search.cli import build_parser; build_parser(); "
        "print(sorted({'torch', 'ray', 'timm'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_search_run_help_lists_every_study_and_profile(capsys):
    from cxrkd.spaces.studies import STUDIES

    with pytest.raises(SystemExit):
        main(["search", "run", "--help"])
    epilog = capsys.readouterr().out.split("studies (STUDY) and their profiles")[1]
    for name, (_, profiles) in STUDIES.all().items():
        assert f"  {name}: " in epilog
        block = epilog.split(f"  {name}: ")[1]
        for profile in profiles:
            assert re.search(rf"^    {profile} +\d+ px, \d+ epochs", block, re.M), (name, profile)
    assert "--gpus-per-trial 0.25" in epilog


def test_status_json_ranks_each_cell_by_the_studys_metric(tmp_path, capsys):
    run = tmp_path / "runs" / "syn"
    trials, _ = write_synthetic_run(run)
    options = RunOptions(study="pneumonia-kd", dataset="phantom-pneumonia", name="syn",
                         storage=str(tmp_path / "runs"))  # fmt: skip
    raw = {"options": dataclasses.asdict(options), "dataset_fingerprint": "fp"}
    (run / "run.json").write_text(json.dumps(raw))
    state = {"teachers": {"resnet50_teacher": "/registry/t"}, "best": {}, "done": ["teacher"]}
    (run / "state.json").write_text(json.dumps(state))
    assert main(["search", "status", str(run), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["study"], status["profile"], status["metric"], status["mode"]) == (
        "pneumonia-kd", "demo", "val_auc", "max")  # fmt: skip
    assert status["stages"] == ["teacher", "search", "final"]
    assert status["stages_done"] == ["teacher"]
    assert status["teachers"] == {"resnet50_teacher": "/registry/t"}
    cells = {(c["stage"], c["cell"]): c for c in status["cells"]}
    assert len(cells) == trials.groupby(["stage", "cell"]).ngroups
    cnn = cells[("search", "baseline_cnn")]
    # b2 (0.75) was stopped early, b1 0.70, b4 0.72, b3 errored: the best is b2's last value.
    assert cnn["trials"] == 4 and cnn["metric"] == "val_auc" and cnn["mode"] == "max"
    assert cnn["status"] == {"completed": 2, "stopped": 1, "errored": 1}
    assert cnn["best"] == {"trial_id": "b2", "value": 0.75}
    assert cnn["errors"] == ["RuntimeError: boom"]
    assert cells[("search", "resnet18_kd")]["status"] == {"completed": 1, "running": 1}
    # An open search's cell is ranked by its own first objective, as the driver chose it.
    from cxrkd.search.status import _cell_metrics, _study_of

    opts = {"study": "lowres-kd-open", "profile": "demo"}
    opts["objectives"] = ["val_auroc_mlct", "params"]
    assert _cell_metrics(_study_of(opts)) == {("search", "open"): ("val_auroc_mlct", "max")}


def _home_with_store(tmp_path, monkeypatch) -> Path:
    from cxrkd.trainables.data.writer import write_store
    from tests.data.test_store import make_plan

    monkeypatch.setenv("CXRKD_HOME", str(tmp_path))
    write_store(make_plan(), size=8, home=tmp_path, workers=1)
    return tmp_path / "datasets" / "tiny"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_data_rm_asks_first_and_without_a_terminal_needs_yes(tmp_path, monkeypatch, capsys):
    store = _home_with_store(tmp_path, monkeypatch)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # a script: nobody to ask
    assert main(["data", "rm", "tiny"]) == 2
    assert "pass --yes" in capsys.readouterr().err and store.is_dir()
    monkeypatch.setattr(sys, "stdin", _Terminal("n\n"))
    assert main(["data", "rm", "tiny"]) == 1
    assert "nothing deleted" in capsys.readouterr().out and store.is_dir()
    monkeypatch.setattr(sys, "stdin", _Terminal("y\n"))
    assert main(["data", "rm", "tiny"]) == 0
    assert not store.exists()
    _home_with_store(tmp_path, monkeypatch)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["data", "rm", "tiny", "--yes"]) == 0 and not store.exists()


def test_the_readme_cites_both_papers_and_its_commands_parse():
    text = README.read_text()
    seeds = Path(__file__).resolve().parents[3] / "shared" / "seeds"
    for seed, (author, words) in {
        "000": ("Gebre Haftom Desbele", "Transfer Learning and Knowledge Distillation"),
        "002": ("Yasmeena Akhter", "Low-Resolution Chest X-Ray Classification"),
    }.items():
        assert author in text and words in text, seed
        papers = list(seeds.glob(f"{seed}_*.txt")) if seeds.is_dir() else []
        for paper in papers:  # the citation is the paper's own (where the seeds are at hand)
            assert author in paper.read_text()
    assert "https://download.pytorch.org/whl/cpu" in text
    assert "--gpus-per-trial 0.25" in text
    # Every complete `cxrkd ...` command of the README parses (no placeholder syntax).
    parser = build_parser()
    commands = [
        line.split("#")[0].strip()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S)
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip().startswith("cxrkd ")
    ]
    complete = [c for c in commands if not re.search(r"[\[|]|\.\.\.", c)]
    assert any(c.startswith("cxrkd export") for c in complete)
    for command in complete:
        parser.parse_args(shlex.split(command)[1:])
