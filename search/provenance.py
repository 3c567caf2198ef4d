"""What produced a run, recorded in its ``run.json``: package versions and the code's commit.

A table is only as good as what can be said about the code behind it, so the driver records
the versions of the libraries that shape the results and the git commit of the cxrkd
checkout it ran from (``dirty: true`` when the checkout had changes, or that it was not a
checkout at all: an installed wheel, no git). Each trial adds the device it ran on to its own
record (``trainables.trainable.device_name``).
"""

from __future__ import annotations

import importlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("cxrkd", "torch", "timm", "ray", "optuna")
GIT_TIMEOUT_S = 5.0


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Version of each package (None when it is not installed): the module's own
    ``__version__`` where it has one (torch's names its build, e.g. ``2.5.1+cu124``), else
    the installed distribution's (cxrkd installs as several top-level packages)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = str(importlib.import_module(name).__version__)
            continue
        except (ImportError, AttributeError):
            pass
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "")
    return done.stdout


def git_state(folder: Path | None = None) -> dict:
    """``{"checkout": True, "commit": SHA, "dirty": bool}`` for the git checkout holding
    ``folder`` (default: this package), else ``{"checkout": False, "commit": None,
    "reason": ...}``. Never raises: a run must not fail for want of git."""
    folder = folder or Path(__file__).resolve().parent
    try:
        commit = _git(folder, "rev-parse", "HEAD").strip()
        # Untracked files count: a new module that is not committed yet is code too.
        dirty = bool(_git(folder, "status", "--porcelain").strip())
    except FileNotFoundError:
        return {"checkout": False, "commit": None, "reason": "git is not installed"}
    except subprocess.TimeoutExpired:
        return {"checkout": False, "commit": None, "reason": f"git took over {GIT_TIMEOUT_S} s"}
    except (RuntimeError, OSError) as exc:
        reason = str(exc) or "not a git checkout"
        return {"checkout": False, "commit": None, "reason": f"{folder}: {reason}"}
    return {"checkout": True, "commit": commit, "dirty": dirty}


def provenance() -> dict:
    """The ``provenance`` entry of ``run.json``."""
    return {
        "versions": package_versions(),
        "python": platform.python_version(),
        "git": git_state(),
    }
