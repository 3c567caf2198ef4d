"""The installed package is ``cxrkd`` alone: the layers' folders stay at the repository's top
level and are mapped under it (pyproject.toml), so no generic name (``search``, ``results``,
``spaces``, ``trainables``) lands in site-packages, and ``import cxrkd`` works from anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("trainables", "spaces", "results", "search")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (found,) = out.glob("cxrkd-*.whl")
    return found


def test_the_wheel_claims_only_the_cxrkd_name_and_holds_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"cxrkd"}
    # Every module of every package folder: a sub-package missing from pyproject.toml's
    # [tool.setuptools] packages would be silently left out of the wheel.
    expected = {"cxrkd/__init__.py"}
    for layer in LAYERS:
        for init in (ROOT / layer).rglob("__init__.py"):
            for module in init.parent.glob("*.py"):
                expected.add("cxrkd/" + module.relative_to(ROOT).as_posix())
    missing = sorted(expected - names)
    assert not missing, f"list these packages in pyproject.toml [tool.setuptools]: {missing}"


def test_import_cxrkd_works_outside_the_checkout_and_search_does_not(wheel, tmp_path):
    """The wheel unpacked on its own (dependencies from this environment) in a folder away
    from the checkout: the public API answers, the layers import as ``cxrkd.<layer>``, and the
    generic names do not import."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import importlib, sys, cxrkd, cxrkd.search.cli, cxrkd.trainables.kd\n"
        "assert cxrkd.__file__.startswith(sys.argv[1]), cxrkd.__file__\n"
        "print(sorted(cxrkd.studies()), cxrkd.kd_losses()[:1])\n"
        "for name in ('search', 'results', 'spaces', 'trainables'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    raise SystemExit(f'{name} imports outside the checkout')\n"
    )
    # Away from the checkout: cwd elsewhere and the unpacked wheel first on the path (ahead
    # of this environment's editable install, which maps cxrkd.* to the checkout).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    done = subprocess.run(
        [sys.executable, "-c", probe, str(site)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "pneumonia-kd" in done.stdout and "vanilla" in done.stdout


def test_import_cxrkd_is_cheap_and_lists_the_registries():
    """``import cxrkd`` loads neither torch nor Ray (a notebook's first cell stays fast); the
    listing functions answer from the registries."""
    probe = (
        "import sys, cxrkd\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray'))\n"
        "assert not heavy, heavy[:5]\n"
        "assert cxrkd.profiles('pneumonia-kd') == ['demo', 'paper']\n"
        "names = {'study', 'study_tables', 'method', 'space', 'kd_loss'}\n"
        "assert set(cxrkd.registries()) == names\n"
        "assert 'kd_logit' in cxrkd.methods() and 'mlcak' in cxrkd.kd_losses()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
