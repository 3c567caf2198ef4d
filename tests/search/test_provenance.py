"""``run.json`` says what produced a run (issue 9, item 9): versions, the code's commit, and
each trial's device (the device column itself is checked by the real run in test_subset.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import cxrkd.search.provenance as prov
from cxrkd.search.provenance import git_state, package_versions, provenance
from cxrkd.trainables.trainable import device_name

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def test_versions_of_the_packages_that_shape_the_results():
    import optuna
    import ray
    import timm
    import torch

    versions = package_versions()
    assert versions["torch"] == torch.__version__ and versions["timm"] == timm.__version__
    assert versions["ray"] == ray.__version__ and versions["optuna"] == optuna.__version__
    assert versions["cxrkd"]  # the installed distribution's version
    assert package_versions(("no-such-package-cxrkd",)) == {"no-such-package-cxrkd": None}


def _git(folder: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(folder), "PATH": "/usr/bin:/bin"}  # fmt: skip
    out = subprocess.run(["git", *args], cwd=folder, env=env, check=True, capture_output=True)
    return out.stdout.decode().strip()


@needs_git
def test_commit_and_dirty_tree_of_a_checkout(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "mod.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "HEAD")
    # Asked from the package's folder, as the driver asks from cxrkd's.
    assert git_state(repo / "pkg") == {"checkout": True, "commit": head, "dirty": False}
    (repo / "pkg" / "mod.py").write_text("x = 2\n")
    assert git_state(repo / "pkg") == {"checkout": True, "commit": head, "dirty": True}
    _git(repo, "checkout", "-q", "--", ".")
    (repo / "pkg" / "new.py").write_text("")  # an uncommitted new module is a change too
    assert git_state(repo / "pkg")["dirty"] is True


@needs_git
def test_not_a_checkout(tmp_path):
    state = git_state(tmp_path)
    assert state["checkout"] is False and state["commit"] is None
    assert str(tmp_path) in state["reason"]


def test_git_not_installed_or_hanging(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on it
    assert git_state(tmp_path) == {
        "checkout": False, "commit": None, "reason": "git is not installed"
    }  # fmt: skip

    def hang(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], kwargs["timeout"])

    monkeypatch.setattr(prov.subprocess, "run", hang)
    state = git_state(tmp_path)
    assert state["checkout"] is False and "git took over" in state["reason"]


def test_provenance_of_this_code():
    record = provenance()
    assert set(record) == {"versions", "python", "git"}
    git = record["git"]
    # Run from a checkout (the development tree) or from an installed copy: either is said.
    assert (git["checkout"] and len(git["commit"]) == 40 and isinstance(git["dirty"], bool)) or (
        not git["checkout"] and git["reason"]
    )


def test_device_name_is_the_cpu_model_without_a_gpu():
    import torch

    name = device_name()
    if torch.cuda.is_available():
        assert name == torch.cuda.get_device_name(0)
    else:
        assert name.startswith("CPU: ") and len(name) > len("CPU: ")
