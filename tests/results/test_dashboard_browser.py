"""dashboard.html opened in a real browser (headless Chromium, offline, from file://).

The page checks itself when it opens (``#cxrkd-status``: figures drawn, empty ones, script
errors); the test reads that from the DOM after the scripts ran, reads Chromium's console log
for errors, and takes a screenshot. A negative control shows the harness does catch a broken
page. ``scripts/test.sh`` installs Chromium where it can (root + apt-get); elsewhere these
tests skip, saying so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs
from synthetic_run import synthetic_frames, write_synthetic_run

from cxrkd.results.dashboard import build_dashboard, render_page, write_study_dashboard
from cxrkd.results.frames import load_records
from cxrkd.results.sections import Section
from cxrkd.spaces.studies import get_study

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed and could not be (scripts/test.sh installs the Debian "
    "`chromium` package when run as root on a machine with apt-get)",
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
]
STAGES = [("teacher", "teacher"), ("search", "search"), ("final", "final")]


def open_page(page: Path, tmp: Path, *extra: str) -> tuple[str, list[str]]:
    """Load ``page`` from file:// in a fresh profile; ``(stdout, console lines)``."""
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, console


def page_status(dom: str) -> dict[str, str]:
    match = re.search(r'<footer id="cxrkd-status"([^>]*)>([^<]*)<', dom)
    assert match, "the page's self-check did not run (no #cxrkd-status footer in the DOM)"
    attrs = dict(re.findall(r'data-([a-z]+)="([^"]*)"', match.group(1)))
    return {**attrs, "text": match.group(2)}


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory) -> Path:
    """The dashboard of a synthetic run with every section drawn (incl. the resolution one)."""
    run = tmp_path_factory.mktemp("run")
    write_synthetic_run(run, lowres=True)
    trials, epochs = load_records(str(run))
    study = get_study("pneumonia-kd", "demo")
    return Path(write_study_dashboard(str(run), study, trials, epochs, caption="c")["dashboard"])


@needs_chromium
def test_every_figure_is_drawn_with_data_and_no_script_error(dashboard, tmp_path):
    dom, console = open_page(dashboard, tmp_path, "--dump-dom")
    status = page_status(dom)
    assert status.get("done") == "1"
    assert status["errors"] == "0" and status["empty"] == "", status["text"]
    assert console == []
    # Search: teacher 3 + baseline 3 + KD 2 (one completed trial: no importances); overview 1,
    # Pareto 2, resolution 1, learning curves 3 stages, confusion 1, ROC 1.
    assert status["figures"] == "17"
    assert dom.count('class="plotly-graph-div js-plotly-plot"') == 17  # plotly.js drew them


@needs_chromium
def test_screenshot(dashboard, tmp_path):
    from PIL import Image

    shot = tmp_path / "dashboard.png"
    open_page(dashboard, tmp_path, f"--screenshot={shot}", "--window-size=1400,4000")
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 4000)
    # A drawn page has many colours; a blank or error page has a handful.
    assert len(image.resize((350, 1000)).getcolors(maxcolors=1 << 16) or []) > 500


@needs_chromium
def test_the_harness_catches_a_broken_page(tmp_path):
    broken = Section("broken", "Broken")
    broken.figure(go.Figure())  # no trace: must be reported empty
    broken.parts.append("<script>throw new Error('boom')</script>")
    page = tmp_path / "broken.html"
    page.write_text(render_page([broken], title="t", caption="c"))
    dom, console = open_page(page, tmp_path, "--dump-dom")
    status = page_status(dom)
    assert status["empty"] == "fig-0" and status["errors"] == "1"
    assert "boom" in status["text"]
    assert any("boom" in line for line in console)


def test_the_page_embeds_plotly_once_and_loads_nothing(dashboard):
    text = dashboard.read_text()
    assert text.count(get_plotlyjs()) == 1
    page = text.replace(get_plotlyjs(), "")  # plotly.js itself holds links it never loads
    assert not re.search(r"<script[^>]+src=", page)  # every script inline: opens offline
    assert not re.search(r"<link[^>]+href=|https?://", page)


def test_sections_without_data_say_why():
    trials, epochs = synthetic_frames()
    early = trials[trials["stage"] == "teacher"]
    text = build_dashboard(early, epochs, title="t", metric="val_auc", stages=STAGES)
    assert "No final-stage model has been tested yet." in text
    assert "Not part of this study" in text
    assert "No confusion counts" in text and "No ROC curves" in text
    nothing = build_dashboard(early.iloc[0:0], epochs.iloc[0:0], title="t", stages=STAGES)
    assert "No trial has reported yet." in nothing


def test_confusion_matrices_of_a_large_grid_study_fit_on_one_figure():
    from cxrkd.results.figure_data import CONFUSION
    from cxrkd.results.plots import confusion_figure

    cells = [f"kd_tiny_{low}px_{a}" for low in (112, 56, 28) for a in range(16)]  # 48 cells
    rows = [
        {"cell": c, "actual": actual, "predicted": pred, "count": 5, "n_seeds": 3}
        for c in cells
        for _, actual, pred in CONFUSION
    ]
    fig = confusion_figure(pd.DataFrame(rows))
    assert len(fig.data) == 48 and fig.layout.height == 180 + 260 * 12


def test_a_test_split_with_one_class_is_named_as_the_reason_for_no_roc_curve():
    trials, epochs = synthetic_frames()
    one_class = {("baseline_cnn", "f-baseline_cnn-0"): {
        "global_label": np.ones(4), "global_logit": np.arange(4.0)
    }}  # fmt: skip
    text = build_dashboard(trials, epochs, title="t", stages=STAGES, scores=one_class)
    assert "holds one class only" in text and "no final model saved" not in text
