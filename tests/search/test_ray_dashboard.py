"""``--ray-dashboard`` (issue 12, item 5): a run without it never asks Ray for a dashboard,
one with it asks for 127.0.0.1 only. The real run (its dashboard on 127.0.0.1 at the port it
prints, answering with Ray's token while the run goes, gone after) is in test_watch_live.py.

(The refusals, on a cluster and without the ``ray[default]`` extra, are in
test_optuna_live.py.)"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cxrkd.search import ray_runtime

REPO = Path(__file__).resolve().parents[2]
USAGE = ray_runtime.USAGE_STATS
URL = re.compile(r"Ray dashboard  http://(127\.0\.0\.1):(\d+)")


def _listening(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on at ``port`` (Linux's /proc/net/tcp: local
    address as little-endian hex ip:port, state 0A = LISTEN); "::" for any IPv6 one."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            ip, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                v4 = len(ip) == 8
                found.add(".".join(str(b) for b in bytes.fromhex(ip)[::-1]) if v4 else "::")
    return found


def test_a_run_without_the_flag_asks_ray_for_no_dashboard(monkeypatch):
    """With ray[default] installed Ray would start its dashboard by default: the driver must
    say include_dashboard=False (and 127.0.0.1 when it asks for one)."""
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw) or _Context())
    monkeypatch.setattr(ray_runtime, "check_dashboard", lambda address: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_runtime.init_ray(None) is True
    assert ray_runtime.init_ray(None, dashboard=True) is True
    assert calls[0]["address"] == "local" and calls[0]["include_dashboard"] is False
    assert calls[1]["include_dashboard"] is True and calls[1]["dashboard_host"] == "127.0.0.1"


class _Context:
    dashboard_url = "127.0.0.1:8265"


def test_the_local_ray_reports_no_usage_unless_the_user_asked(monkeypatch):
    """Ray sends usage reports to its makers by default; a Ray the driver starts does not."""
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    seen = []
    monkeypatch.setattr(ray, "init", lambda **kw: seen.append(os.environ.get(USAGE)))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(USAGE, raising=False)
    ray_runtime.init_ray(None)
    monkeypatch.setenv(USAGE, "1")  # the user's own choice stands
    ray_runtime.init_ray(None)
    assert seen == ["0", "1"]
