"""A trial process killed with SIGKILL leaves its checkpoint folder; the next one deletes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from cxrkd.trainables.scratch import scratch_dir, sweep

CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from cxrkd.trainables.scratch import scratch_dir
    d = scratch_dir("ckpt", Path(sys.argv[1]))
    (d / "state.pt").write_bytes(b"x" * 4096)
    print(d, flush=True)
    time.sleep(600)
    """
)


def _killed_child_folder(root):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root)], stdout=subprocess.PIPE, text=True
    )
    try:
        folder = child.stdout.readline().strip()
        assert folder, "the child made no scratch folder"
        assert os.path.isdir(folder)
    finally:
        child.send_signal(signal.SIGKILL)  # no finally block runs in the child
        child.wait()
    return folder


def test_a_killed_process_folder_is_swept_by_the_next_one(tmp_path):
    dead = _killed_child_folder(tmp_path)
    other_kind = tmp_path / f"cxrkd-restore-{os.path.basename(dead).split('-')[2]}-keep"
    other_kind.mkdir()
    live = scratch_dir("ckpt", tmp_path)  # this process is alive: its own folder stays
    assert not os.path.exists(dead)
    assert live.is_dir() and live.name.startswith(f"cxrkd-ckpt-{os.getpid()}-")
    assert other_kind.is_dir()  # only folders of the kind being made are swept
    assert sweep("restore", tmp_path) == [other_kind]
    assert live.is_dir()


def test_a_live_process_folder_is_never_swept(tmp_path):
    parent = tmp_path / f"cxrkd-ckpt-{os.getppid()}-abc"  # pytest's parent is alive
    parent.mkdir()
    unrelated = tmp_path / "cxrkd-ckpt-notapid"
    unrelated.mkdir()
    assert sweep("ckpt", tmp_path) == []
    assert parent.is_dir() and unrelated.is_dir()


def test_kind_becomes_part_of_a_path_so_it_is_checked(tmp_path):
    with pytest.raises(ValueError, match="lowercase letters"):
        scratch_dir("../x", tmp_path)
