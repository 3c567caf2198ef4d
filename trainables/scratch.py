"""Scratch folders in the system temp dir that a killed trial process cannot leak.

A trial writes each epoch's checkpoint to a local folder before Tune copies it to the run
storage, and keeps a local copy of the checkpoint it restores from. ``finally`` blocks delete
them, but a process that is SIGKILLed (Ray's memory monitor, a preempted node, a torture test)
runs none: each such folder held a whole checkpoint (about 1 GB for a ViT-Base with its
optimizer state) and stayed in /tmp until the disk was full.

Every folder made here carries the creating process's pid in its name; making one first deletes
the folders of the same kind whose process is gone. A pid that was reused by an unrelated live
process keeps its folder (never a live process's folder is deleted), until that process ends too.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

_NAME = re.compile(r"^cxrkd-(?P<kind>[a-z]+)-(?P<pid>\d+)-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep(kind: str, root: Path | None = None) -> list[Path]:
    """Delete the ``kind`` scratch folders under ``root`` (the temp dir) whose process ended."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for path in entries:
        m = _NAME.match(path.name)
        if m is None or m["kind"] != kind or int(m["pid"]) == os.getpid():
            continue
        if not _alive(int(m["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def scratch_dir(kind: str, root: Path | None = None) -> Path:
    """A new empty folder ``cxrkd-<kind>-<pid>-*`` after sweeping ended processes' ones."""
    if not kind.isalpha() or not kind.islower():
        raise ValueError(f"scratch kind must be lowercase letters, got {kind!r}")
    sweep(kind, root)
    return Path(tempfile.mkdtemp(prefix=f"cxrkd-{kind}-{os.getpid()}-", dir=root))
