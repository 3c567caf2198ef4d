"""``cxrkd search plan``: the command line and the text it prints (the plan itself is
:func:`search.plan.build_plan`)."""

from __future__ import annotations

import argparse
import json

CASES = ("best", "typical", "worst")


def add_plan_command(ssub: argparse._SubParsersAction) -> None:
    p = ssub.add_parser(
        "plan",
        help="what `search run` would run and cost, before anything runs",
        description="Print each stage's cells, trials and trial-epochs, device-hours, wall "
        "time on N workers and dollars of `cxrkd search run` with the same options, without "
        "running anything (no Ray, nothing written). Three cases: best (ASHA stops every "
        "trial but one per cell at its first rung), typical (ASHA keeps exactly "
        "1/reduction_factor at each rung) and worst (every trial runs every epoch); fixed "
        "and final cells are exact. Images/s come from bench/throughput.json (written by "
        "bench/throughput.py) or --probe; what the table lacks is estimated and says so.",
    )
    p.add_argument("study")
    p.add_argument("--profile", default="demo", help="demo or paper, as for `search run`")
    p.add_argument(
        "--dataset",
        help="dataset store whose split sizes set images per epoch "
        "(default: the demo's built-in one if imported, else a stated assumption)",
    )
    p.add_argument("--num-samples", type=int, help="trials per search cell")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="as for `search run`, e.g. --set epochs=10",
    )
    p.add_argument(
        "--only",
        action="append",
        metavar="PATTERN",
        help="as for `search run`: these cells and their teachers",
    )
    p.add_argument(
        "--objective", action="append", metavar="METRIC", help="as for `search run` (open searches)"
    )
    p.add_argument(
        "--gpu",
        metavar="KIND",
        help="device kind of the throughput table: a10g (default), a100, h100, cpu",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=8,
        help="trials at a time, one device each (default 8, cluster.yaml's GPUs)",
    )
    p.add_argument(
        "--probe",
        action="store_true",
        help="measure the study's models on this machine (under a minute) instead "
        "of reading the table",
    )
    p.add_argument(
        "--table", metavar="FILE", help="throughput table (default bench/throughput.json)"
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from cxrkd.search.cli_search import parse_sets
    from cxrkd.search.plan import build_plan
    from cxrkd.search.run_state import RunOptions
    from cxrkd.trainables.errors import CxrkdError

    if args.probe and args.gpu:
        raise CxrkdError("--probe measures this machine; leave out --gpu (or --probe)")
    options = RunOptions(
        study=args.study,
        profile=args.profile,
        dataset=args.dataset,
        num_samples=args.num_samples,
        overrides=parse_sets(args.set),
        objectives=args.objective,
        only=args.only,
    )
    plan = build_plan(
        options, kind=args.gpu, workers=args.workers, probe=args.probe, table_path=args.table
    )
    print(json.dumps(plan, indent=1) if args.json else format_plan(plan))
    return 0


def _fmt(x: float) -> str:
    if x >= 100 or float(x).is_integer():
        return f"{x:,.0f}"
    return f"{x:.3g}"


def _range(d: dict, key: str, unit: str = "", money: bool = False) -> str:
    """``best .. typical .. worst``, or one value where the three agree."""
    vals = [d[c][key] for c in CASES]
    if money:
        text = [f"${v:,.0f}" if v >= 100 else f"${v:,.2f}" for v in vals]
    else:
        text = [_fmt(v) for v in vals]
    return (text[0] if len(set(text)) == 1 else " .. ".join(text)) + unit


def format_plan(plan: dict) -> str:
    """The plan as text (what ``cxrkd search plan`` prints)."""
    dev, out = plan["device"], []
    only = f", --only {' '.join(plan['only'])}" if plan["only"] else ""
    sets = " ".join(f"{k}={v}" for k, v in plan["overrides"].items())
    out.append(
        f"plan of {plan['study']}, profile {plan['profile']}{only}"
        + (f", --set {sets}" if sets else "")
        + ": nothing has run"
    )
    out.append(f"images: {plan['images']['source']}")
    source = "measured here now (--probe)" if dev["probe"] else f"table {dev['source']}"
    if not dev["measured"]:
        source += f"; NO measured {dev['kind']} row: every rate below is an ESTIMATE"
    out.append(f"device: {dev['kind']} ({source})")
    if plan["estimate_basis"]:
        est = plan["estimate_basis"]
        out.append(
            f"  estimate: images/s = MFU x bf16 peak / FLOPs per image; MFU {est['mfu']:g}"
            f" ({est.get('mfu_source', '?')}); peak {est.get('peak_source', '?')}"
        )
    price = dev["price"]
    out.append(
        f"price: ${price['usd_per_gpu_hour']:.3f} per {dev['kind']} hour ({price['instance']}; "
        f"{price['source']}, {price['date']})"
        if price
        else f"price: none for {dev['kind']}"
    )
    out.append(
        f"workers: {plan['workers']} (one device per trial); start-up "
        f"{plan['startup_s']:.0f} s per trial (ASSUMED)"
    )
    out.append("rates (images/s; frozen backbones train at the eval rate):")
    for r in plan["rates"]:
        out.append(f"  {r['model']:<44} {r['mode']:<5} {r['images_per_s']:>10,.1f}  {r['source']}")
    asha = plan["asha"]
    out.append(
        f"ASHA: grace {asha['grace_period']}, reduction factor "
        f"{asha['reduction_factor']}; trial-epochs and totals are best .. typical .. "
        "worst (see `cxrkd search plan --help`)"
    )
    for stage in plan["stages"]:
        after = f", after {stage['after']}" if stage["after"] else ""
        out.append(f"\nstage {stage['name']} ({len(stage['cells'])} cells{after})")
        out.append(
            f"  {'cell':<28} {'trials':>7} {'epochs':>6} {'s/epoch':>8}  "
            "trial-epochs (best .. typical .. worst)  ASHA rungs"
        )
        for c in stage["cells"]:
            trials = c["trials"]
            n = (
                f"{trials['best']}"
                if trials["best"] == trials["worst"]
                else (f"{trials['best']}-{trials['worst']}")
            )
            rungs = "/".join(map(str, c["rungs"])) if c["rungs"] else "-"
            te = _range({k: {"n": v} for k, v in c["trial_epochs"].items()}, "n")
            per_epoch = f"{c['epoch_s']:,.0f}" if c["epoch_s"] >= 10 else f"{c['epoch_s']:.2f}"
            out.append(
                f"  {c['key']:<28} {n:>7} {c['epochs']:>6} {per_epoch:>8}  {te:<39}  {rungs}"
            )
        out.append(_total_line("  stage", stage["totals"]))
    out.append("")
    out.append(_total_line("total", plan["totals"]))
    out.append(
        "wall: each cell starts when the cells it needs are done, as the driver runs them "
        "(a stage's own wall assumes it ran alone); not counted: node start-up, checkpoint "
        "uploads, the driver's and head node's time, teacher caches (computed once)"
    )
    return "\n".join(out)


def _total_line(head: str, t: dict) -> str:
    usd = f"; {_range(t, 'usd', money=True)}" if t["best"]["usd"] is not None else ""
    return (
        f"{head}: trials {_range(t, 'trials')}; trial-epochs {_range(t, 'trial_epochs')}; "
        f"device-hours {_range(t, 'device_hours')}; wall {_range(t, 'wall_hours', ' h')}"
        f"{usd}"
    )
