"""The driver's Ray runtime: attach to a cluster or start a private local Ray, and size the
trials (resources per trial, how many run at once) from what the cluster has."""

from __future__ import annotations

import logging
import os

from cxrkd.search.run_state import RunOptions
from cxrkd.trainables.errors import CxrkdError

# What Ray's dashboard imports beyond plain `pip install ray` (the `ray[default]` extra).
DASHBOARD_MODULES = ("aiohttp", "aiohttp_cors", "opencensus", "prometheus_client")


def find_spec(module: str) -> bool:
    """Whether ``module`` can be imported here (without importing it)."""
    import importlib.util

    return importlib.util.find_spec(module) is not None


def check_dashboard(address: str | None) -> None:
    """``--ray-dashboard``: refused when the driver attaches to a cluster (the cluster has its
    own dashboard) or when Ray's dashboard cannot start here (the extra is not installed)."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if address or ray.is_initialized():
        where = address or "the Ray this process already runs"
        raise CxrkdError(
            f"--ray-dashboard starts the dashboard of the private local Ray, but this run "
            f"attaches to {where}; open that cluster's own dashboard instead (`ray dashboard "
            "cluster.yaml` forwards it), or drop --address/RAY_ADDRESS"
        )
    missing = [m for m in DASHBOARD_MODULES if not find_spec(m)]
    if missing:
        raise CxrkdError(
            f"--ray-dashboard needs Ray's dashboard extra, not installed here (missing: "
            f"{', '.join(missing)}); install it with "
            f"`pip install 'ray[default]=={ray.__version__}'` or run without --ray-dashboard"
        )


USAGE_STATS = "RAY_USAGE_STATS_ENABLED"


def init_ray(address: str | None, *, dashboard: bool = False) -> bool:
    """Attach to ``address`` (or ``RAY_ADDRESS``), else start a private local Ray (with its
    dashboard on 127.0.0.1 when ``dashboard``: :func:`check_dashboard` first).
    Returns True when this call started Ray (the caller shuts it down)."""
    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Our own progress line replaces Tune's tables; the legacy output engine at verbose=0 is
    # silent, the new one still prints its banners.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Two of Tune's warnings that every study printed and that do not apply to it (a user's own
    # setting wins): snapshots come often on purpose (a checkpoint Tune lets go of is deleted
    # only after a snapshot that no longer names it: search.snapshots), and a run's results are
    # its records, so the missing result.json/progress.csv of every trial is no news.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    analysis = logging.getLogger("ray.tune.analysis.experiment_analysis")
    if analysis.level == logging.NOTSET:
        analysis.setLevel(logging.ERROR)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray reports usage to its makers by default (a request to the internet from the local
    # Ray's dashboard process): off unless the user turned it on (RAY_USAGE_STATS_ENABLED=1).
    os.environ.setdefault(USAGE_STATS, "0")
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
    if address:
        ray.init(address=address, **quiet)
        return False
    if dashboard:
        check_dashboard(address)
        context = ray.init(
            address="local", include_dashboard=True, dashboard_host="127.0.0.1", **quiet
        )
        print(f"Ray dashboard  http://{context.dashboard_url}", flush=True)
        # Ray 2.60 turns token auth on for a new local Ray (ray.init sets RAY_AUTH_MODE)
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            print(
                "               it asks for Ray's token: `ray get-auth-token` prints it "
                "(RAY_AUTH_TOKEN or ~/.ray/auth_token)",
                flush=True,
            )
        return True
    ray.init(address="local", include_dashboard=False, **quiet)
    return True


def trial_resources(options: RunOptions) -> dict:
    import ray

    gpus = options.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        if not gpus and options.address:
            print(
                "note: the cluster has no GPU right now, so trials run on CPUs; on an "
                "autoscaling cluster whose GPU workers start on demand pass --gpus-per-trial 1 "
                "and --max-concurrent N",
                flush=True,
            )
    return {"cpu": options.cpus_per_trial, "gpu": gpus}


def max_concurrent(options: RunOptions) -> int:
    import ray

    if options.max_concurrent:
        return options.max_concurrent
    res = trial_resources(options)
    total = ray.cluster_resources()
    by_cpu = total.get("CPU", 1) // res["cpu"]
    by_gpu = total.get("GPU", 0) // res["gpu"] if res["gpu"] else by_cpu
    return max(1, int(min(by_cpu, by_gpu)))
