"""The ``cxrkd`` command ends without tearing the interpreter down (``os._exit``: 2-4 s saved
per command once torch and Ray are loaded), and still does what a normal exit does first:
other threads finish, atexit handlers run, buffered output is written, the code is kept."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import atexit, sys, threading, time
from cxrkd.search import cli
def late():
    time.sleep(0.5)
    print("thread done")  # buffered: the pipe is not a terminal
threading.Thread(target=late).start()
atexit.register(lambda: print("atexit ran"))
print("before", end="")
sys.argv = ["cxrkd", *sys.argv[1:]]
cli.run()
print("never printed")
"""


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_the_command_exits_with_its_code_after_threads_atexit_and_buffers():
    out = _run("--version")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("before") and lines[-1] == "atexit ran", out.stdout
    assert "thread done" in out.stdout and "cxrkd 0." in out.stdout
    assert "never printed" not in out.stdout
    refused = _run("data", "show", "no-such-dataset-here")
    assert refused.returncode == 2 and "unknown dataset" in refused.stderr
    assert refused.stdout.endswith("thread done\natexit ran\n"), refused.stdout
    usage = _run("no-such-command")
    assert usage.returncode == 2 and "invalid choice" in usage.stderr
