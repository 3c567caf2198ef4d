"""Plugins through entry points (issue 12 item 3): two real packages installed with pip into a
folder of this test (tests/plugin_example: a KD loss, a study with its table, an importer;
tests/plugin_broken: an ImportError, an exception at import, a built-in name), then the real
CLI in a subprocess with that folder on PYTHONPATH (Ray's workers inherit it).

Nothing is installed into this process: its registries stay as they are for other tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrkd.results.study_tables import STUDY_TABLES
from cxrkd.spaces import SPACES
from cxrkd.spaces.studies import STUDIES
from cxrkd.trainables.kd import KD_LOSSES
from cxrkd.trainables.losses import LossError
from cxrkd.trainables.methods import METHODS
from cxrkd.trainables.plugins import GROUPS

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
# tests/search/conftest.py's TINY: 16 px, 2 epochs of 2 steps of 8 images, no weights.
TINY = {"img_size": "16", "epochs": "2", "steps_per_epoch": "2", "batch_size": "8",
        "pretrained": "false"}  # fmt: skip
EXAMPLE = "cxrkd-plugin-example 0.3.1"
BROKEN = "cxrkd-plugin-broken 0.0.1"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Both packages, built from copies (pip leaves build/ in what it builds), installed
    offline into one folder."""
    root = tmp_path_factory.mktemp("plugins")
    for name in ("plugin_example", "plugin_broken"):
        shutil.copytree(TESTS / name, root / name)
    target = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "--target", str(target),
         str(root / "plugin_example"), str(root / "plugin_broken")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert (target / "cxrkd_plugin_example-0.3.1.dist-info" / "entry_points.txt").is_file()
    return target


def cli(site: Path, *args: str, timeout: float = 120, **env: str):
    full = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", **env}
    full.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "cxrkd.search.cli", *args],
        cwd=REPO, env=full, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_every_registry_has_a_documented_group():
    groups = [r.group for r in (KD_LOSSES, METHODS, SPACES, STUDIES, STUDY_TABLES)]
    assert groups == ["cxrkd.kd_losses", "cxrkd.methods", "cxrkd.spaces", "cxrkd.studies",
                      "cxrkd.study_tables"]  # fmt: skip
    assert set(GROUPS) == {*groups, "cxrkd.importers"}


def test_plugins_listed_and_each_broken_one_named_once(site):
    out = cli(site, "plugins")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    loaded = {
        "cxrkd.kd_losses: logit_mse = cxrkd_plugin_example.kd": "provides logit_mse",
        "cxrkd.studies: plugin-kd = cxrkd_plugin_example.study": "provides plugin-kd",
        "cxrkd.study_tables: plugin-kd = cxrkd_plugin_example.tables": "provides plugin-kd",
        "cxrkd.importers: npy-folder = cxrkd_plugin_example.npy_folder:plan_npy_folder":
            "provides npy-folder",
    }  # fmt: skip
    for head, provides in loaded.items():
        assert f"{head} (from {EXAMPLE}): {provides}" in lines, out.stdout
    broken = {
        "cxrkd.kd_losses: needs_missing": "ModuleNotFoundError: No module named "
        "'cxrkd_dependency_not_installed'",
        "cxrkd.methods: transfer_again": "method 'transfer' is already registered by "
        "cxrkd.trainables.methods.transfer: plugin transfer_again = cxrkd_plugin_broken.taken",
        "cxrkd.importers: boom": "RuntimeError: boom: this plugin is broken on purpose",
        "cxrkd.importers: folder": "dataset kind 'folder' is already "
        "cxrkd.trainables.data.folder:plan_folder: plugin folder = cxrkd_plugin_broken.taken:build "
        "cannot replace it",
    }
    for head, error in broken.items():
        [line] = [x for x in lines if x.startswith(head)]
        assert f"(from {BROKEN}): NOT LOADED: " in line and error in line, line
        # One warning each, naming the distribution, the entry point and the error.
        warned = [x for x in out.stderr.splitlines() if "PluginWarning" in x and head in x]
        assert len(warned) == 1 and BROKEN in warned[0] and error in warned[0], out.stderr
    assert lines[-1] == "4 loaded, 4 not loaded"
    records = [json.loads(x) for x in cli(site, "plugins", "--json").stdout.splitlines()]
    assert {(r["dist"], r["version"]) for r in records if not r["error"]} == {
        ("cxrkd-plugin-example", "0.3.1")
    }


def test_without_plugins_nothing_is_listed(tmp_path):
    out = cli(tmp_path, "plugins")
    assert out.returncode == 0 and out.stdout.startswith("no plugins installed"), out
    assert "PluginWarning" not in out.stderr


LOOKUPS = """
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.kd import KD_LOSSES, get_kd, kd_names
from cxrkd.trainables.methods import METHODS
from cxrkd.spaces.studies import get_study
print(kd_names("binary"))
print(sorted(METHODS.all()), METHODS.origin("transfer"), KD_LOSSES.origin("logit_mse"))
cells = [c.key for c in get_study("pneumonia-kd-open", "demo").stage("search").cells]
print(cells)
try:
    get_kd("never_there")
except CxrkdError as exc:
    print(exc)
"""


def test_broken_plugins_provide_nothing_and_the_rest_loads(site):
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", LOOKUPS], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    names, methods, cells, unknown = out.stdout.splitlines()
    assert "'logit_mse'" in names and "'hinton'" in names
    # taken.py registered own_method before its refused `transfer`: withdrawn with it.
    assert "own_method" not in methods
    assert methods.endswith("cxrkd.trainables.methods.transfer cxrkd_plugin_example.kd")
    assert "'resnet18_kd_logit_mse'" in cells  # the open study offers every binary loss
    assert unknown.startswith("unknown KD loss 'never_there'; known KD losses: [")
    assert "'logit_mse'" in unknown


def test_plugin_study_is_planned(site):
    out = cli(site, "search", "plan", "plugin-kd")
    assert out.returncode == 0, out.stderr
    for stage, cells in {"teacher": 1, "search": 1, "final": 2}.items():
        assert f"stage {stage} ({cells} cells" in out.stdout, out.stdout
    assert "resnet18_kd_logit_mse" in out.stdout and "resnet50_teacher" in out.stdout
    assert "needs_missing" in out.stderr  # the broken plugin is named, the command works
    unknown = cli(site, "search", "plan", "plugin-kdd")
    assert unknown.returncode == 2 and "did you mean plugin-kd" in unknown.stderr


def test_plugin_importer_imports_a_dataset(site, tmp_path):
    src = tmp_path / "npys"
    rng = np.random.default_rng(0)
    counts = {"train": 6, "val": 2, "test": 3}
    for split, n in counts.items():
        for cls in ("normal", "pneumonia"):
            (src / split / cls).mkdir(parents=True)
            for i in range(n):
                np.save(src / split / cls / f"{i}.npy", rng.normal(size=(20, 24)))
    home = {"CXRKD_HOME": str(tmp_path / "home")}
    help_text = cli(site, "data", "import", "--help", **home).stdout
    assert "npy-folder" in help_text
    assert "NumPy arrays (.npy, 2-D)" in cli(site, "data", "import", "npy-folder", "--help",
                                             **home).stdout  # fmt: skip
    out = cli(site, "data", "import", "npy-folder", str(src), "--name", "npys", "--size", "16",
              "--workers", "1", **home)  # fmt: skip
    assert out.returncode == 0, out.stderr
    shown = json.loads(cli(site, "data", "show", "npys", "--json", **home).stdout)
    assert shown["kind"] == "npy-folder" and shown["task"] == "binary"
    assert shown["splits"] == {k: 2 * n for k, n in counts.items()}
    missing = cli(site, "data", "import", "npy-folder", str(tmp_path / "none"), **home)
    assert missing.returncode == 2 and "no .npy files under" in missing.stderr


def test_logit_mse_loss_matches_its_formula(monkeypatch):
    """The plugin's loss against numpy (its module only: nothing is registered here)."""
    monkeypatch.syspath_prepend(str(TESTS / "plugin_example"))
    from cxrkd_plugin_example.losses import logit_mse_kd

    rng = np.random.default_rng(1)
    s, t = rng.normal(size=8), rng.normal(size=8)
    y = rng.integers(0, 2, size=8).astype(float)
    alpha = 0.3
    bce = np.mean(np.log1p(np.exp(-s)) * y + np.log1p(np.exp(s)) * (1 - y))
    expected = alpha * bce + (1 - alpha) * np.mean((s - t) ** 2)
    out = logit_mse_kd(torch.tensor(s), torch.tensor(t), torch.tensor(y), alpha=alpha)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert out["kd"].item() == pytest.approx(np.mean((s - t) ** 2), rel=1e-5)
    with pytest.raises(LossError, match="needs alpha"):
        logit_mse_kd(torch.tensor(s), torch.tensor(t), torch.tensor(y))
    with pytest.raises(LossError, match="one weight, alpha"):
        logit_mse_kd(torch.tensor(s), torch.tensor(t), torch.tensor(y), alpha=0.5,
                     temperature=2.0)  # fmt: skip


@pytest.mark.slow
def test_pneumonia_kd_open_with_the_plugin_compares_every_kd_loss_in_one_table(site, tmp_path):
    """One tiny demo run of the built-in ``pneumonia-kd-open`` through the CLI with the plugin
    installed: the driver starts its own local Ray, whose workers load the plugin's loss from
    PYTHONPATH; the study has one ResNet-18 cell per binary KD loss, the plugin's among them
    (the plugin's own study is planned above), and one table compares them all with the
    fine-tuned ResNet-18. (This run is also pneumonia-kd-open's end-to-end test.)"""
    from cxrkd.spaces.pneumonia_open import BASELINE, kd_key
    from cxrkd.trainables.data.importers import import_dataset
    from cxrkd.trainables.kd import get_kd, kd_names

    home = tmp_path / "home"
    import_dataset("phantom", "pneumonia", name="tiny", n=120, size=32, home=home,
                   progress=False, workers=1)  # fmt: skip
    ray_tmp = Path(tempfile.mkdtemp(prefix="cxrkd-rt-", dir="/tmp"))  # short socket paths
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    try:
        env = dict(CXRKD_HOME=str(home), RAY_TMPDIR=str(ray_tmp), CXRKD_TRIAL_THREADS="1",
                   OMP_NUM_THREADS="1")  # fmt: skip
        out = cli(site, "search", "run", "pneumonia-kd-open", "--profile", "demo", "--dataset",
                  "tiny", "--name", "open", "--storage", str(tmp_path / "runs"),
                  "--num-samples", "1", "--max-concurrent", "2", *sets, timeout=400,
                  **env)  # fmt: skip
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = tmp_path / "runs" / "open"
    builtin = list(kd_names("binary"))  # this process has no plugin loaded
    assert "logit_mse" not in builtin
    approaches = [*builtin, "logit_mse"]
    kd_cells = [kd_key(a) for a in approaches]
    trials = pd.read_parquet(run / "trials.parquet")
    assert (trials["status"] == "completed").all(), trials[["cell", "error"]]
    ran = trials.groupby("stage")["cell"].unique().map(sorted).to_dict()
    assert ran == {"teacher": ["resnet50_teacher"], "search": sorted([BASELINE, *kd_cells]),
                   "final": sorted(["resnet50_teacher", BASELINE, *kd_cells])}  # fmt: skip
    assert (trials[trials["stage"] == "final"].groupby("cell").size() == 2).all()  # 2 seeds
    kd = trials[trials["method"] == "kd_logit"]
    assert (kd["cell"] == "resnet18_kd_" + kd["config/kd_approach"]).all()
    assert kd["config/teacher_path"].nunique() == 1  # every student, the one teacher
    fitnets = kd[kd["config/kd_approach"] == "fitnets"]
    assert fitnets["config/gamma"].notna().all() and fitnets["config/alpha"].isna().all()
    numbers = pd.read_csv(run / "tables" / "pneumonia_kd_open.csv").set_index("row")
    assert set(kd_cells) <= set(numbers.index)
    assert (numbers.loc[kd_cells, "vs"] == "ResNet-18 fine-tuned (no KD)").all()
    text = (run / "tables" / "pneumonia_kd_open.md").read_text()
    for approach in builtin:
        assert f"ResNet-18 KD: {get_kd(approach).label}" in text
    assert "ResNet-18 KD: logit MSE (plugin)" in text
    assert "ResNet-50 teacher (distilled from)" in text and "SYNTHETIC" in text
