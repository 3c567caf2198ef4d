"""The study runner: one Tune experiment per study (:mod:`search.study_run`); resumable; ends
in tables.

``run_study(options)`` starts a run, ``resume_study(run)`` continues an interrupted one with
the options it was started with. What finished cells chose is recorded in ``state.json``; an
interrupted experiment is restored by Tune (finished trials stay finished, unfinished ones
continue from their last checkpoint, the searcher and ASHA keep their state).

One driver at a time: a run is driven under its lease (:mod:`search.lease`), and Tune's
state in the run folder is signed by the driver and checked before it is restored
(:mod:`search.signing`).
"""

from __future__ import annotations

import dataclasses
import sys
import time

from cxrkd.search import lease, optuna_live, signing, trackers
from cxrkd.search.preflight import check_cells
from cxrkd.search.ray_runtime import check_dashboard, init_ray, max_concurrent, trial_resources
from cxrkd.search.run_state import (
    RunOptions,
    default_storage,
    read_run,
    read_state,
    record_resume,
    run_exists,
    run_uri_of,
    write_options,
)
from cxrkd.search.schedule import FlopsUnknown, cell_levels
from cxrkd.search.study_dataset import open_dataset
from cxrkd.search.study_options import study_with_options, typed_overrides
from cxrkd.search.study_run import EXPERIMENT, StudyContext, run_experiment
from cxrkd.search.study_source import keep_copy, run_copy, with_study_source
from cxrkd.spaces.studies import Study
from cxrkd.trainables import storage
from cxrkd.trainables.errors import CxrkdError


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_study(
    options: RunOptions, *, ray_dashboard: bool = False, mlflow_uri: str | None = None
) -> str:
    options = with_study_source(options)  # STUDY may be a study file: checked, read once
    optuna_live.check_url(options.optuna_storage)  # before anything is written
    trackers.check_trackers(options.log_to, mlflow_uri=mlflow_uri)
    if ray_dashboard:
        check_dashboard(options.address)
    study = study_with_options(options)
    store = open_dataset(study, options.dataset)
    storage_uri = storage.check_writable(options.storage or default_storage())
    name = options.name or f"{study.name}-{options.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_uri = storage.join(storage_uri, name)
    if storage.exists(storage.join(run_uri, "run.json")):
        raise run_exists(run_uri)
    overrides = typed_overrides(study, options.overrides)
    check_cells(study, store, overrides)
    options = dataclasses.replace(
        options, name=name, storage=storage_uri, dataset=store.manifest.name, overrides=overrides
    )
    options = keep_copy(options, run_uri)  # <run>/study.toml or .yaml: what resume reads
    write_options(run_uri, options, {"dataset_fingerprint": store.manifest.fingerprint})
    with lease.hold(run_uri, log=log):  # one driver per run: search.lease
        return _drive(study, options, store, run_uri, ray_dashboard, mlflow_uri)


def resume_study(
    run: str,
    address: str | None = None,
    *,
    optuna_storage: str | None = None,
    ray_dashboard: bool = False,
    mlflow_uri: str | None = None,
) -> str:
    run_uri = run_uri_of(run)
    raw = read_run(run_uri)
    # Where the driver connects comes from the command line or RAY_ADDRESS, never from the run
    # folder (any node may write it: DESIGN.md, "Running").
    options = dataclasses.replace(RunOptions(**raw["options"]), address=address)
    options = run_copy(options, run_uri)  # the run's own copy of its study file
    live, note = optuna_live.resumed_storage(options.optuna_storage, optuna_storage)
    options = dataclasses.replace(options, optuna_storage=live)
    if optuna_storage is not None:  # kept in run.json: a later resume names it again
        raw = {**raw, "options": {**raw["options"], "optuna_storage": optuna_storage}}
    if note:
        log(note)
    optuna_live.check_url(options.optuna_storage)
    trackers.check_trackers(options.log_to, mlflow_uri=mlflow_uri)
    if ray_dashboard:
        check_dashboard(address)
    study = study_with_options(options)
    held = lease.Lease(run_uri, log=log)
    held.check()  # another live driver is named before anything else is read or written
    # Tune's state of every unfinished stage, before anything is written (the same checks
    # run again where Tune reads it: search.signing.signed_tune_state).
    _, done = read_state(run_uri)
    if len(done) < len(study.stages):
        check_layout(run_uri, study, done)
        signing.check_stages(run_uri, [EXPERIMENT])
    store = open_dataset(study, options.dataset)
    if store.manifest.fingerprint != raw["dataset_fingerprint"]:
        raise CxrkdError(
            f"dataset {store.manifest.name!r} changed since the run started (fingerprint "
            f"{store.manifest.fingerprint}, was {raw['dataset_fingerprint']}); re-import the "
            "original data or start a new run"
        )
    with held:  # taken for good (a driver that came in between is refused here)
        record_resume(run_uri, raw)
        log(f"resuming {run_uri}")
        return _drive(study, options, store, run_uri, ray_dashboard, mlflow_uri)


def _drive(
    study: Study, options: RunOptions, store, run_uri: str, dashboard: bool, mlflow_uri=None
) -> str:
    import ray

    from cxrkd.results.report import write_report  # late: plotting stack only when needed
    from cxrkd.trainables.context import DataBundle

    started = init_ray(options.address, dashboard=dashboard)
    try:
        bundle = DataBundle.from_store(store)
        data_ref = ray.put(bundle)
        from ray import tune

        from cxrkd.trainables.trainable import tune_trainable

        ctx = StudyContext(
            study=study,
            run_uri=run_uri,
            storage_uri=options.storage,
            data_ref=data_ref,
            trainable=tune.with_parameters(tune_trainable, data=data_ref),
            resources=trial_resources(options),
            max_concurrent=max_concurrent(options),
            seed=options.seed,
            dataset_fingerprint=store.manifest.fingerprint,
            overrides=options.overrides,
        )
        log(f"study {study.name} ({study.profile.banner}) on {store.manifest.title}")
        if options.only:
            log(f"only the cells matching {options.only} and their teachers")
        log(f"run folder {run_uri}")
        live = optuna_live.live_url(options.optuna_storage, run_uri)
        log(optuna_live.live_note(live, run_uri))
        _, done = read_state(run_uri)
        if len(done) < len(study.stages):
            tracking = trackers.tracking(
                options.log_to, run_uri=run_uri, study=study.name, mlflow_uri_given=mlflow_uri
            )
            levels = study_levels(study, ctx.overrides, store.manifest.splits, ctx.max_concurrent)
            with optuna_live.mirroring(live, study), tracking:
                run_experiment(dataclasses.replace(ctx, levels=levels))
        # Tune's state can no longer be resumed: its signatures are never read again.
        storage.delete_dir(signing.signatures_uri(run_uri, EXPERIMENT))
        write_report(run_uri, study, store.manifest)
        print("\n".join(optuna_live.where(run_uri, live)), flush=True)
    finally:
        if started:
            ray.shutdown()
    return run_uri


def study_levels(study: Study, overrides: dict, splits: dict, slots: int) -> dict:
    """The cells' levels (:mod:`search.schedule`), which order the trials; a study with a
    model that cannot be built on this machine to count its FLOPs runs in stage order rather
    than not at all (only the order depends on them)."""
    try:
        return cell_levels(study, overrides, splits, slots)
    except FlopsUnknown as exc:
        log(f"trials handed out in stage order: {exc}")
        return {}


def study_of_run(run_uri: str) -> Study:
    """The study as the run ran it (its profile, ``--set``, ``--only``)."""
    return study_with_options(run_copy(RunOptions(**read_run(run_uri)["options"]), run_uri))


def check_layout(run_uri: str, study: Study, done: list[str]) -> None:
    """A run started by a cxrkd that ran one experiment per stage cannot be continued by this
    one (its Tune state is laid out per stage): say so before anything is touched."""
    for stage in study.stages:
        if stage.name not in done and storage.exists(storage.join(run_uri, stage.name)):
            raise CxrkdError(
                f"{run_uri} was started by an earlier cxrkd, which ran each stage as its own "
                f"experiment ({storage.join(run_uri, stage.name)}); this one runs a study as "
                "one experiment and cannot continue it. Resume it with the cxrkd that started "
                "it, or start a new run"
            )
