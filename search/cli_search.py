"""``cxrkd search run | resume | status`` and
``cxrkd weights download | pretrain-phantom | check``.
"""

from __future__ import annotations

import argparse

from cxrkd.trainables.errors import CxrkdError


def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CxrkdError(f"--set takes key=value, got {item!r} (e.g. --set epochs=5)")
        out[key.strip()] = value.strip()
    return out


def studies_epilog() -> str:
    """``search run --help``'s list of the studies and their profiles (from the registry)."""
    from cxrkd.spaces.studies import STUDIES, get_study

    lines = ["studies (STUDY) and their profiles (--profile):"]
    for name, (_, profiles) in STUDIES.all().items():
        study = get_study(name, next(iter(profiles)))
        lines.append(f"  {name}: {study.task} dataset (default {study.default_dataset})")
        for pname, profile in profiles.items():
            f = profile.fixed
            size = f"{f['img_size']} px, {f['epochs']} epochs"
            where = f", {profile.device_hint}" if profile.device_hint else ""
            lines.append(
                f"    {pname:<6} {size}, {profile.samples} trials per cell, "
                f"{profile.seeds} seeds{where}"
            )
    lines.append("one GPU: --gpus-per-trial 0.25 runs four small trials on it side by side")
    return "\n".join(lines)


def lazy_epilog(parser: argparse.ArgumentParser, make) -> None:
    """Give ``parser`` the epilog ``make()`` returns, made when its help is printed: every
    other command line (``cxrkd --version``, ``cxrkd data show``) starts without it."""
    plain = parser.format_help

    def format_help() -> str:
        if parser.epilog is None:
            parser.epilog = make()
        return plain()

    parser.format_help = format_help


def add_watch_options(p: argparse.ArgumentParser, *, resume: bool = False) -> None:
    """``--optuna-storage`` and ``--ray-dashboard``: watching a search as it goes."""
    kept = "; default: the one the run was started with" if resume else (
        "; default: <run>/optuna-live.db when the run folder is local; kept by `search resume`"
    )  # fmt: skip
    p.add_argument(
        "--optuna-storage",
        metavar="URL",
        help="mirror each search cell's Optuna study here while the run goes (any SQLAlchemy "
        "URL without a password, e.g. sqlite:////abs/live.db or postgresql://user@host/db; "
        f"'none': no live mirror), for `optuna-dashboard URL`{kept}",
    )
    p.add_argument(
        "--ray-dashboard",
        action="store_true",
        help="start the private local Ray with its dashboard on 127.0.0.1 and print its URL "
        "(needs the ray[default] extra; not with --address: a cluster has its own)",
    )
    p.add_argument(
        "--mlflow-uri",
        metavar="URI",
        help="the MLflow tracking server or store of --log-to mlflow (default: "
        "MLFLOW_TRACKING_URI, else <run>/mlflow.db when the run folder is local); never kept "
        "in the run folder: give it to `search resume` again",
    )


def add_search_commands(sub: argparse._SubParsersAction) -> None:
    search = sub.add_parser("search", help="run, resume and watch hyperparameter searches")
    ssub = search.add_subparsers(dest="search_cmd", required=True, metavar="COMMAND")
    p = ssub.add_parser(
        "run",
        help="run a study (e.g. pneumonia-kd)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lazy_epilog(p, studies_epilog)  # loads every study (and torch): only for --help
    p.add_argument("study")
    p.add_argument("--dataset", help="dataset store name (default: the study's built-in one)")
    p.add_argument("--profile", default="demo", help="demo (CPU, minutes) or paper")
    p.add_argument("--name", help="run name (default: study-profile-timestamp)")
    p.add_argument("--storage", help="DIR or s3://bucket/prefix (default $CXRKD_HOME/runs)")
    p.add_argument("--address", help="Ray cluster address (default: a private local Ray)")
    p.add_argument("--num-samples", type=int, help="trials per search cell")
    p.add_argument("--max-concurrent", type=int, help="trials at a time")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (fractions allowed)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="seed of the Optuna samplers")
    p.add_argument("--weights-dir", help="local pretrained weights (see `cxrkd weights`)")
    p.add_argument(
        "--objective",
        action="append",
        metavar="METRIC",
        help="what an open search (lowres-kd-open) optimises, repeated for several: a "
        "validation AUROC first (val_auroc_mcct, val_auroc_mean, val_auroc_mlct), then costs "
        "(params, latency_ms, flops); two or more: multi-objective with a Pareto front",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fix a config value in every cell that has it, e.g. --set epochs=5",
    )
    p.add_argument(
        "--only",
        action="append",
        metavar="PATTERN",
        help="run only the cells whose key matches this glob (repeatable; quote it), plus the "
        "teachers they distil from, e.g. --only '*tiny*'; `search resume` keeps the subset",
    )
    p.add_argument(
        "--log-to",
        action="append",
        metavar="TRACKER",
        help="log every trial (config, each epoch's metrics, final test metrics) to an "
        "experiment tracker: tensorboard, mlflow or wandb (repeatable; each needs its extra, "
        'e.g. pip install "cxrkd[mlflow]"); `search resume` keeps them',
    )
    add_watch_options(p)
    p.set_defaults(func=cmd_run)
    p = ssub.add_parser("resume", help="continue an interrupted run")
    p.add_argument("run", help="run folder, URI, or name under the default storage")
    p.add_argument(
        "--address",
        help="Ray cluster address (default: RAY_ADDRESS, else a private local Ray; never the "
        "address the run was started with)",
    )
    add_watch_options(p, resume=True)
    p.set_defaults(func=cmd_resume)
    p = ssub.add_parser("status", help="where a run stands")
    p.add_argument("run")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: stages, teachers, and per cell the trials by status and "
        "the best trial by the study's own metric",
    )
    p.set_defaults(func=cmd_status)
    from cxrkd.search.cli_plan import add_plan_command

    add_plan_command(ssub)

    w = sub.add_parser("weights", help="pretrained weights for air-gapped sites")
    wsub = w.add_subparsers(dest="weights_cmd", required=True, metavar="COMMAND")
    p = wsub.add_parser("download", help="save timm weights to a folder (on a connected machine)")
    p.add_argument("names", nargs="+", help="timm model names, e.g. resnet18 resnet50")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_weights_download)
    p = wsub.add_parser(
        "pretrain-phantom",
        help="pretrain backbones on the SYNTHETIC findings phantom (the demo's weights)",
    )
    p.add_argument("names", nargs="+", help="timm model names, e.g. resnet18")
    p.add_argument(
        "--out",
        help="weights folder (default: the cached one the demo profile uses, "
        "$CXRKD_HOME/weights/phantom-findings-<recipe>/; models already there are kept)",
    )
    p.set_defaults(func=cmd_weights_pretrain_phantom)
    p = wsub.add_parser(
        "check", help="verify a weights folder (sha256, origin) after copying it across"
    )
    p.add_argument("dir", help="the weights folder")
    p.add_argument("names", nargs="*", help="models a run needs (default: all it lists)")
    p.set_defaults(func=cmd_weights_check)


def cmd_run(args: argparse.Namespace) -> int:
    from cxrkd.search.run_state import RunOptions
    from cxrkd.search.runner import run_study

    overrides = parse_sets(args.set)
    if args.weights_dir:
        overrides["weights_dir"] = args.weights_dir
    options = RunOptions(
        study=args.study,
        profile=args.profile,
        dataset=args.dataset,
        name=args.name,
        storage=args.storage,
        address=args.address,
        num_samples=args.num_samples,
        max_concurrent=args.max_concurrent,
        gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial,
        overrides=overrides,
        seed=args.seed,
        weights_dir=args.weights_dir,
        objectives=args.objective,
        only=args.only,
        optuna_storage=args.optuna_storage,
        log_to=args.log_to,
    )
    run_study(options, ray_dashboard=args.ray_dashboard, mlflow_uri=args.mlflow_uri)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from cxrkd.search.runner import resume_study

    resume_study(
        args.run,
        address=args.address,
        optuna_storage=args.optuna_storage,
        ray_dashboard=args.ray_dashboard,
        mlflow_uri=args.mlflow_uri,
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from cxrkd.search.status import print_status, print_status_json

    if args.json:
        print_status_json(args.run)
    else:
        print_status(args.run)
    return 0


def cmd_weights_download(args: argparse.Namespace) -> int:
    from cxrkd.trainables.weights import weights_download

    for path in weights_download(args.names, args.out):
        print(f"saved {path}")
    return 0


def cmd_weights_pretrain_phantom(args: argparse.Namespace) -> int:
    from cxrkd.trainables.phantom_backbones import SOURCE, build_builtin_weights, pretrain_phantom

    if args.out is None:
        folder = build_builtin_weights(SOURCE, args.names)
    else:
        folder = pretrain_phantom(args.names, args.out)
    print(f"weights folder: {folder} (use it with --weights-dir {folder})")
    return 0


def cmd_weights_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cxrkd.trainables.weights import INDEX_FILE, check_weights_available, read_index

    folder = Path(args.dir).expanduser().resolve()
    index = read_index(folder)
    names = args.names or sorted(index)
    if not names:
        raise CxrkdError(
            f"{folder} lists no weights (no {INDEX_FILE}); make the folder with "
            "`cxrkd weights download NAMES --out DIR`"
        )
    check_weights_available(names, weights_dir=folder)
    for name in names:
        entry = index.get(name, {})
        where = f"{entry['file']}, {entry.get('origin', 'timm-hub')}" if entry else "local cache"
        print(f"{name}: ok ({where})")
    return 0
