"""Where a run's study comes from: a built-in study's name, or a study file (TOML or YAML,
``spaces.study_file`` for its study part and ``results.tables_file`` for its tables).

``cxrkd search run path/to/study.toml`` (or ``.yaml``/``.yml``) records the file's path in the
run's options (``RunOptions.study_file``) and keeps a copy of it, in its own format, in the run
folder (``<run>/study.toml``, ``<run>/study.yaml``): ``search resume`` and the report read that
copy, never the user's file, which may have changed since. ``cxrkd study show NAME [--format
yaml]`` prints a built-in study in the same form (:func:`builtin_study_text`), which runs the
same cells when read back.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cxrkd.results.study_tables import study_tables
from cxrkd.results.tables_file import tables_data, tables_from_data, use_file_tables
from cxrkd.search.run_state import RunOptions
from cxrkd.spaces.studies import STUDIES, Study, get_study
from cxrkd.spaces.study_file import YAML_SUFFIXES, dump_study_file, is_yaml, load_study_text
from cxrkd.spaces.study_templates import EXTENDS
from cxrkd.trainables import storage
from cxrkd.trainables.errors import CxrkdError

RUN_COPY = "study"  # the run folder's copy of its study file, + the file's suffix


def copy_name(study_file: str) -> str:
    """The run folder's name for a copy of ``study_file``: its format kept (a YAML file is
    read as YAML only under a YAML name; any other name is read as TOML)."""
    suffix = next((s for s in YAML_SUFFIXES if study_file.lower().endswith(s)), ".toml")
    return RUN_COPY + suffix


def is_study_file(study: str) -> bool:
    """Whether a STUDY argument names a file (ends in .toml/.yaml/.yml, or is a file)."""
    return study.endswith(".toml") or is_yaml(study) or Path(study).is_file()


def builtin_study_text(name: str, profile: str | None = None, *, fmt: str = "toml") -> str:
    """The built-in study ``name`` as a study file (``fmt``: toml or yaml): every profile, or
    only ``profile``."""
    _, profiles = STUDIES.get(name)
    names = [profile] if profile else list(profiles)
    studies = [get_study(name, p) for p in names]
    tables = {s.profile.name: tables_data(study_tables(s)) for s in studies}
    return dump_study_file(studies, tables, fmt=fmt)


def read_study_file(uri: str, profile: str) -> Study:
    """The study of the study file at ``uri`` under ``profile``, its tables registered as the
    tables of that study (every part is checked before anything is registered)."""
    source = str(uri)
    try:
        text = storage.read_text(source)
    except OSError as e:
        raise CxrkdError(f"cannot read study file {source}: {e}") from None
    studies, data = load_study_text(text, source)
    if profile not in studies:
        raise CxrkdError(
            f"{source}: no profile {profile!r}; the file's profiles: {sorted(studies)} "
            "(pass one with --profile)"
        )
    study, body = studies[profile], data["profiles"][profile]
    if "tables" not in body and EXTENDS in body:  # a built-in profile changed: its tables
        use_file_tables(study.name, None)
        return study
    try:  # a file without tables has none (not those registered under its study's name)
        specs = tables_from_data(body.get("tables", []), f"profiles.{profile}.tables")
    except CxrkdError as e:
        raise CxrkdError(f"{source}: {e}") from None
    use_file_tables(study.name, specs)
    return study


def with_study_source(options: RunOptions) -> RunOptions:
    """Options whose STUDY argument is a file: ``study`` becomes the file's study name and
    ``study_file`` its absolute path (checked now: a bad file is refused before any run
    folder is written)."""
    if options.study_file is not None or not is_study_file(options.study):
        return options
    path = str(Path(options.study).expanduser().resolve())
    study = read_study_file(path, options.profile)
    return dataclasses.replace(options, study=study.name, study_file=path)


def source_study(options: RunOptions) -> Study:
    """The study the options name, before ``--num-samples``/``--set`` are applied."""
    if options.study_file is not None:
        return read_study_file(options.study_file, options.profile)
    use_file_tables(options.study, None)  # a built-in study has its registered tables
    return get_study(options.study, options.profile)


def keep_copy(options: RunOptions, run_uri: str) -> RunOptions:
    """Copy a run's study file into its run folder; the options then name the copy."""
    if options.study_file is None:
        return options
    copy = storage.join(run_uri, copy_name(options.study_file))
    storage.write_text(copy, storage.read_text(options.study_file))
    return dataclasses.replace(options, study_file=copy)


def run_copy(options: RunOptions, run_uri: str) -> RunOptions:
    """A stored run's options reading its own copy of the study file (wherever the run
    folder is now), never the file the run was started from."""
    if options.study_file is None:
        return options
    copy = copy_name(options.study_file)  # the stored path names the copy (its format)
    return dataclasses.replace(options, study_file=storage.join(run_uri, copy))
