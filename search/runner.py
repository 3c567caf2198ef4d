"""The study runner: stages in order, each one Tune experiment; resumable; ends in tables.

``run_study(options)`` starts a run, ``resume_study(run)`` continues an interrupted one with
the options it was started with. Finished stages are recorded in ``state.json`` and skipped;
an interrupted stage's experiment is restored by Tune (finished trials stay finished,
unfinished ones continue from their last checkpoint, the searcher keeps its state).

One driver at a time: a run is driven under its lease (:mod:`search.lease`), and Tune's
state in the run folder is signed by the driver and checked before it is restored
(:mod:`search.signing`).
"""

from __future__ import annotations

import dataclasses
import sys
import time

from search import lease, setup, signing
from search.run_state import (
    RunOptions,
    default_storage,
    read_run,
    read_state,
    record_resume,
    run_exists,
    run_uri_of,
    write_options,
    write_state,
)
from search.stage import StageContext, choose, config_of, register_teacher, run_stage
from spaces.studies import Study
from trainables import storage
from trainables.errors import CxrkdError
from trainables.trainable import CELL_KEY


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_study(options: RunOptions) -> str:
    study = setup.study_with_options(options)
    store = setup.open_dataset(study, options.dataset)
    storage_uri = storage.check_writable(options.storage or default_storage())
    name = options.name or f"{study.name}-{options.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_uri = storage.join(storage_uri, name)
    if storage.exists(storage.join(run_uri, "run.json")):
        raise run_exists(run_uri)
    overrides = setup.typed_overrides(study, options.overrides)
    setup.check_cells(study, store, overrides)
    options = dataclasses.replace(
        options, name=name, storage=storage_uri, dataset=store.manifest.name, overrides=overrides
    )
    write_options(run_uri, options, {"dataset_fingerprint": store.manifest.fingerprint})
    with lease.hold(run_uri, log=log):  # one driver per run: search.lease
        return _drive(study, options, store, run_uri)


def resume_study(run: str, address: str | None = None) -> str:
    run_uri = run_uri_of(run)
    raw = read_run(run_uri)
    # Where the driver connects comes from the command line or RAY_ADDRESS, never from the run
    # folder (any node may write it: DESIGN.md, "Running").
    options = dataclasses.replace(RunOptions(**raw["options"]), address=address)
    study = setup.study_with_options(options)
    held = lease.Lease(run_uri, log=log)
    held.check()  # another live driver is named before anything else is read or written
    # Tune's state of every unfinished stage, before anything is written (the same checks
    # run again where Tune reads it: search.signing.signed_tune_state).
    _, done = read_state(run_uri)
    signing.check_stages(run_uri, [s.name for s in study.stages if s.name not in done])
    store = setup.open_dataset(study, options.dataset)
    if store.manifest.fingerprint != raw["dataset_fingerprint"]:
        raise CxrkdError(
            f"dataset {store.manifest.name!r} changed since the run started (fingerprint "
            f"{store.manifest.fingerprint}, was {raw['dataset_fingerprint']}); re-import the "
            "original data or start a new run"
        )
    with held:  # taken for good (a driver that came in between is refused here)
        record_resume(run_uri, raw)
        log(f"resuming {run_uri}")
        return _drive(study, options, store, run_uri)


def _drive(study: Study, options: RunOptions, store, run_uri: str) -> str:
    import ray

    from results.report import write_report  # late: plotting stack only when needed
    from trainables.context import DataBundle

    started = setup.init_ray(options.address)
    try:
        bundle = DataBundle.from_store(store)
        data_ref = ray.put(bundle)
        from ray import tune

        from trainables.trainable import tune_trainable

        ctx = StageContext(
            study=study,
            run_uri=run_uri,
            storage_uri=options.storage,
            data_ref=data_ref,
            trainable=tune.with_parameters(tune_trainable, data=data_ref),
            resources=setup.trial_resources(options),
            max_concurrent=setup.max_concurrent(options),
            seed=options.seed,
            dataset_fingerprint=store.manifest.fingerprint,
        )
        log(f"study {study.name} ({study.profile.banner}) on {store.manifest.title}")
        if options.only:
            log(f"only the cells matching {options.only} and their teachers")
        log(f"run folder {run_uri}")
        state, done = read_state(run_uri)
        for stage in study.stages:
            if stage.name in done:
                log(f"[{stage.name}] already done")
                continue
            cells = setup.apply_overrides(stage.cells(state), options.overrides)
            if not cells:  # --only selected none of this stage's cells
                log(f"[{stage.name}] no selected cell (--only {' '.join(options.only or [])})")
                done.append(stage.name)
                write_state(run_uri, state, done)
                continue
            log(f"[{stage.name}] {len(cells)} cell(s): {', '.join(c.key for c in cells)}")
            results = run_stage(ctx, stage, cells)
            chosen = choose(results, metric=study.metric, cells=cells)
            missing = [c.key for c in cells if c.key not in chosen]
            if missing and stage.role != "final":
                raise CxrkdError(_nothing_chosen(stage, missing, results, study.metric, run_uri))
            for key, result in chosen.items():
                state.best[key] = config_of(result)
            if stage.role == "teacher":
                for cell in cells:
                    uri = register_teacher(ctx, cell.key, chosen[cell.key], state)
                    log(f"[{stage.name}] teacher {cell.key} registered at {uri}")
                setup.warm_teacher_caches(ctx, study, state, options.overrides)
            done.append(stage.name)
            write_state(run_uri, state, done)
            # The stage can no longer be resumed, so its training state is dead weight (a
            # ResNet-50 checkpoint is ~130 MB); final-stage models stay, for deployment.
            dead = ("state.pt",) if stage.role == "final" else ("state.pt", "model.pt")
            storage.delete_files_named(storage.join(run_uri, stage.name), dead)
            storage.delete_dir(signing.signatures_uri(run_uri, stage.name))  # never restored
        write_report(run_uri, study, store.manifest)
    finally:
        if started:
            ray.shutdown()
    return run_uri


def _nothing_chosen(stage, missing: list[str], results, metric: str, run_uri: str) -> str:
    """The error that stops a study when a stage chose nothing for some cells: the later
    stages need those choices (students need their teacher), so none of them starts."""
    reasons: list[str] = []
    for result in results:
        if result.error is None or result.config[CELL_KEY] not in missing:
            continue
        lines = [ln.strip() for ln in str(result.error).splitlines() if ln.strip()] or [""]
        line = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1])[:300]
        if line and line not in reasons:
            reasons.append(line)
    what = "teacher cell(s)" if stage.role == "teacher" else "cell(s)"
    then = "no student trial was started" if stage.role == "teacher" else "no later stage started"
    because = f" (errors: {'; '.join(reasons[:3])})" if reasons else ""
    return (
        f"stage {stage.name!r}: no trial of {what} {missing} finished with a finite {metric}, "
        f"so {then}{because}. See `cxrkd search status {run_uri}` for every trial; fix the "
        "cause and start a new run (`cxrkd search resume` keeps what finished but does not "
        "retry errored trials, so it would stop here again)"
    )


def study_of_run(run_uri: str) -> Study:
    """The study as the run ran it (its profile, ``--set``, ``--only``)."""
    return setup.study_with_options(RunOptions(**read_run(run_uri)["options"]))
