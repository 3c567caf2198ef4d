"""Tune's own pickles in a run folder are unpickled only when this driver signed them.

Ray Tune keeps an experiment's state (a study is one experiment, ``RUN/study``: the
``stage`` of the names below) in its folder of the run as pickles:
``tuner.pkl``, ``experiment_state-*.json`` (JSON with cloudpickles inside),
``search_gen_state-*.json``, ``searcher-state-*.pkl`` and ``callback-states-*.pkl``
(:func:`tune_state_kind` lists them, from Tune's own names), and unpickles them when
``Tuner.restore`` continues the experiment. Any node may write the run folder (README, "Teacher
registry and the trust boundary"), so unpickling a file from it could run any code.

The driver signs every such file with HMAC-SHA256 under a key that never leaves the driver's
``$CXRKD_HOME`` (:func:`signing_key`) *before* the bytes reach the run folder, and Tune may
unpickle a file only when its signature is there. A signature is an empty object named by
the MAC, ``RUN/signatures/STAGE/<hex>``: the name is the proof (only the key holder can
compute it), objects are only ever added while the experiment can still be resumed, so a
driver killed at any moment leaves every version of a file it may have uploaded signed, and a
version once signed stays valid until the study is done (then the folder is deleted).

Where Tune reads and writes those files is patched in one place, :func:`signed_tune_state`,
as ``search.stage.retry_lost_workers_only`` patches ``Trial.handle_error``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import hmac
import logging
import os
import secrets
import tempfile
from pathlib import Path
from unittest import mock

import pyarrow.fs as pafs

from cxrkd.trainables import storage
from cxrkd.trainables.errors import CxrkdError

logger = logging.getLogger(__name__)

KEY_FILE = "run-signing.key"
SIGNATURES = "signatures"  # RUN/signatures/STAGE/<mac>
BACKUP = "tuner.pkl.prev"  # RUN/STAGE/: the last verified tuner.pkl (see Signer.repair)


class SignatureError(CxrkdError):
    """A Tune state file in a run folder that this driver did not sign."""


def key_path() -> Path:
    """``$CXRKD_HOME/keys/run-signing.key``: with the driver, never in a run folder."""
    from cxrkd.trainables.data.store import cxrkd_home

    return cxrkd_home() / "keys" / KEY_FILE


def signing_key(*, create: bool) -> bytes:
    """The driver's HMAC key: 32 random bytes in a file only its owner can read (created,
    mode 0600, on first use when ``create``). One key per ``CXRKD_HOME``: resuming a run on
    another machine needs this file copied there."""
    path = key_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if create and not path.exists():
        _create_key(path)
    if not path.exists():
        raise SignatureError(
            f"no signing key at {path}: this run's Tune state was signed by a driver with "
            "another CXRKD_HOME (another machine or user); resume it there, or copy that "
            f"driver's {KEY_FILE} to {path} (mode 0600)"
        )
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise SignatureError(
            f"the signing key {path} is readable by others (owner uid {info.st_uid}, mode "
            f"{info.st_mode & 0o777:o}): whoever read it can make a run folder run code in the "
            f"driver. If nobody else can have read it, `chmod 600 {path}`; else delete it (runs "
            "signed with it can then no longer be resumed)"
        )
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise SignatureError(f"the signing key {path} is damaged; restore it from a backup")
    return key


def _create_key(path: Path) -> None:
    """Written under a temporary name (mkstemp: 0600) and hard-linked into place, so two
    drivers starting at once end up with one key and nobody reads half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another driver made it first: use it
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def tune_state_kind(name: str) -> str | None:
    """Which of Tune's state files ``name`` is (its name template), or None for a file
    Tune never unpickles on a restore. From Tune's own names (Ray 2.60)."""
    from ray.tune.callback import CallbackList
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.impl.tuner_internal import _TUNER_PKL
    from ray.tune.search.search_generator import SearchGenerator
    from ray.tune.search.searcher import Searcher

    templates = [
        c.CKPT_FILE_TMPL for c in (TuneController, SearchGenerator, Searcher, CallbackList)
    ]
    if name == _TUNER_PKL:
        return _TUNER_PKL
    return next((t for t in templates if fnmatch.fnmatchcase(name, t.format("*"))), None)


def signatures_uri(run_uri: str, stage: str) -> str:
    return storage.join(run_uri, SIGNATURES, stage)


class Signer:
    """Signs and checks one stage's Tune state files (``RUN/STAGE/...``)."""

    def __init__(self, run_uri: str, stage: str) -> None:
        self.run_uri, self.stage = run_uri, stage
        self.exp_uri = storage.join(run_uri, stage)
        self.folder = signatures_uri(run_uri, stage)
        self._signed: set[str] = set()

    def _mac(self, key: bytes, name: str, data: bytes) -> str:
        kind = tune_state_kind(name)
        if kind is None:
            raise ValueError(f"{name!r} is not one of Tune's state files")
        return hmac.new(key, kind.encode() + b"\0" + bytes(data), hashlib.sha256).hexdigest()

    def sign(self, name: str, data: bytes) -> None:
        """Record that this driver wrote ``data`` as the file ``name``; returns once the
        signature is durable (before the caller lets the bytes reach the run folder)."""
        mac = self._mac(signing_key(create=True), name, data)
        if mac not in self._signed:
            storage.write_text(storage.join(self.folder, mac), f"{name}\n")
            self._signed.add(mac)

    def verify(self, name: str, data: bytes) -> None:
        """Raise :class:`SignatureError` unless this driver signed ``data`` as ``name``."""
        try:
            key = signing_key(create=False)
        except SignatureError as exc:
            raise self._refused(name, str(exc)) from None
        mac = self._mac(key, name, data)
        if mac in self._signed or storage.exists(storage.join(self.folder, mac)):
            return
        if not storage.exists(self.folder):
            why = (
                f"the experiment has no signatures ({self.folder} is missing): the run was "
                "started by a cxrkd that did not sign Tune's state, or they were deleted"
            )
        else:
            why = (
                f"no signature in {self.folder} matches it: the file was changed or planted "
                "by something other than this run's driver, is truncated, or was signed "
                f"with another key than {key_path()}"
            )
        raise self._refused(name, why)

    def _refused(self, name: str, why: str) -> SignatureError:
        return SignatureError(
            f"{storage.join(self.exp_uri, name)} was not written by this run's driver "
            f"({why}); Tune would unpickle it (run code from it), so it is not loaded and "
            "nothing was changed. Fixes: resume with the CXRKD_HOME (signing key) of the "
            "driver that started the run; if the file is not that driver's, find what else "
            f"writes into {self.run_uri}, then move {self.exp_uri} away to run its trials "
            "again from scratch (they are lost) or start a new run"
        )

    def _names(self) -> tuple[pafs.FileSystem, str, list[str]]:
        fs, root = storage.filesystem(self.exp_uri)
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        return fs, root, sorted(i.base_name for i in infos if i.type == pafs.FileType.File)

    def _torn_tuner(self, fs, root: str, names: list[str]) -> bytes | None:
        """What to put back for a torn (empty) ``tuner.pkl``: the signed copy kept before
        the last restore, or ``b""`` when the stage never got past creating its Tuner (no
        experiment snapshot: nothing to lose, Tune starts it anew). Tune opens ``tuner.pkl``
        for writing (truncating it) before it pickles the new state, on every restore; a
        driver killed in between leaves it empty. Raises when neither applies."""
        from ray.tune.execution.tune_controller import TuneController
        from ray.tune.impl.tuner_internal import _TUNER_PKL

        if BACKUP in names:
            with fs.open_input_stream(f"{root}/{BACKUP}") as f:
                kept = f.read()
            self.verify(_TUNER_PKL, kept)
            return kept
        snapshot = TuneController.CKPT_FILE_TMPL.format("*")
        if not any(fnmatch.fnmatchcase(n, snapshot) for n in names):
            return b""
        raise self._refused(
            _TUNER_PKL,
            "it is empty (a driver was killed while Tune "
            "rewrote it) and no signed copy of it was kept",
        )

    def check_stage(self) -> None:
        """Check every state file of the stage's folder that a ``Tuner.restore`` would
        unpickle; a stage without ``tuner.pkl`` is not restored (Tune starts it anew). A torn
        ``tuner.pkl`` passes when :meth:`repair` can mend it."""
        from ray.tune.impl.tuner_internal import _TUNER_PKL

        fs, root, names = self._names()
        if _TUNER_PKL not in names:
            return
        names.sort(key=lambda n: n != _TUNER_PKL)  # in the order Tune reads them
        for name in (n for n in names if tune_state_kind(n)):
            with fs.open_input_stream(f"{root}/{name}") as f:
                data = f.read()
            if name == _TUNER_PKL and not data:
                self._torn_tuner(fs, root, names)
                continue
            self.verify(name, data)

    def repair(self, log=None) -> None:
        """Before the stage's Tuner is created or restored (under the run's lease): mend a
        torn ``tuner.pkl`` (see :meth:`_torn_tuner`), then keep a copy of the verified one,
        ``tuner.pkl.prev``, which the restore about to happen cannot tear."""
        from ray.tune.impl.tuner_internal import _TUNER_PKL

        fs, root, names = self._names()
        if _TUNER_PKL not in names:
            return
        with fs.open_input_stream(f"{root}/{_TUNER_PKL}") as f:
            data = f.read()
        uri = storage.join(self.exp_uri, _TUNER_PKL)
        if not data:
            data = self._torn_tuner(fs, root, names)
            if not data:
                fs.delete_file(f"{root}/{_TUNER_PKL}")
                if log:
                    log(
                        f"[{self.stage}] {uri} was empty and the stage had no snapshot yet: "
                        "it starts anew"
                    )
                return
            storage.write_bytes(uri, data)
            if log:
                log(
                    f"[{self.stage}] {uri} was empty (a driver killed while Tune rewrote "
                    f"it): put back the signed copy {BACKUP}"
                )
        self.verify(_TUNER_PKL, data)
        storage.write_bytes(storage.join(self.exp_uri, BACKUP), data)


def check_stages(run_uri: str, stages: list[str]) -> None:
    """Before a resume touches anything: every unfinished stage's Tune state is signed."""
    for stage in stages:
        Signer(run_uri, stage).check_stage()


class _Refusal(BaseException):
    """Carries an error out of ``TuneController.resume``: Tune catches every ``Exception``
    there, logs it and starts the stage over in the same folder (dropping its trials). A
    ``BaseException`` passes, and :func:`signed_tune_state` turns it back into the error."""

    def __init__(self, error: CxrkdError) -> None:
        super().__init__(str(error))
        self.error = error


class _SigningPickle:
    """``ray.cloudpickle`` as ``ray.tune.impl.tuner_internal`` sees it: the tuner state it
    dumps (a dict; its other ``dumps`` only tests that the trainable pickles) is signed
    before ``TunerInternal.__init__`` writes it, and ``tuner.pkl`` is checked before
    ``_restore_from_path_or_uri`` unpickles it."""

    def __init__(self, real, signer: Signer) -> None:
        from ray.tune.impl.tuner_internal import _TUNER_PKL

        self._real, self._signer, self._name = real, signer, _TUNER_PKL

    def dumps(self, obj, *args, **kwargs) -> bytes:
        data = self._real.dumps(obj, *args, **kwargs)
        if isinstance(obj, dict):
            self._signer.sign(self._name, data)
        return data

    def loads(self, data, *args, **kwargs):
        self._signer.verify(self._name, bytes(data))
        return self._real.loads(data, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._real, name)


@contextlib.contextmanager
def signed_tune_state(signer: Signer):
    """While a stage's Tune experiment is created, restored and run: Tune signs what it
    writes and checks what it unpickles. The places, in Ray 2.60:

    - ``tuner_internal.pickle``: ``tuner.pkl`` (:class:`_SigningPickle`).
    - ``TuneController.save_to_dir``: the experiment snapshot it writes to the driver's
      private staging folder, before the background upload copies it to the run folder. It
      first waits for the previous upload, so no upload reads a file while it is rewritten.
    - ``_loads_with_cloudpickle`` in ``tune_controller`` and ``experiment_analysis``: the
      newest ``experiment_state-*.json``, read from the run folder.
    - ``_ExperimentCheckpointManager.sync_down_experiment_state``: the searcher and callback
      snapshots, checked once downloaded to the staging folder, from where Tune reads them.
    - ``TuneController.resume``: an error there stops the driver (:class:`_Refusal`) instead
      of Tune starting the stage over, unless the stage has no snapshot yet (nothing to lose).
    - ``Trial.get_pickled_error``: never unpickles a trial's ``error.pkl`` (the driver wrote
      it, but reads it back from the run folder); results carry ``error.txt``'s text.
    """
    from ray import cloudpickle
    from ray.tune.analysis import experiment_analysis
    from ray.tune.execution import experiment_state, tune_controller
    from ray.tune.experiment import Trial
    from ray.tune.impl import tuner_internal

    controller = tune_controller.TuneController
    manager = experiment_state._ExperimentCheckpointManager
    real_loads = tune_controller._loads_with_cloudpickle
    real_save, real_resume = controller.save_to_dir, controller.resume
    real_sync_down = manager.sync_down_experiment_state
    state_name = controller.CKPT_FILE_TMPL

    def loads_experiment_state(data):
        newest = experiment_state._find_newest_experiment_checkpoint(signer.exp_uri)
        name = Path(newest).name if newest else state_name.format("*")  # the one Tune read
        signer.verify(name, data.encode() if isinstance(data, str) else bytes(data))
        return real_loads(data)

    def save_to_dir(self) -> None:
        try:
            self._storage.syncer.wait()
        except Exception:  # as Tune's own wait does: the next upload tries again
            logger.warning("uploading the experiment state failed", exc_info=True)
        real_save(self)
        staging = Path(self._storage.experiment_driver_staging_path)
        for path in sorted(staging.iterdir()):
            if self._session_str in path.name and tune_state_kind(path.name):
                signer.sign(path.name, path.read_bytes())

    def sync_down(self) -> None:
        real_sync_down(self)
        staging = Path(self._storage.experiment_driver_staging_path)
        for path in sorted(staging.iterdir()):
            if tune_state_kind(path.name) and path.is_file():
                signer.verify(path.name, path.read_bytes())

    def resume(self, resume_config) -> None:
        try:
            real_resume(self, resume_config)
        except Exception as exc:
            newest = experiment_state._find_newest_experiment_checkpoint(
                self._storage.experiment_fs_path, fs=self._storage.storage_filesystem
            )
            if newest is None:  # killed before its first snapshot: Tune starts it anew
                raise
            if not isinstance(exc, CxrkdError):
                exc = CxrkdError(
                    f"Tune could not restore stage {signer.stage!r} from {signer.exp_uri} "
                    f"({type(exc).__name__}: {exc}); the stage was not started over. Fix the "
                    f"cause, or move {signer.exp_uri} away to run the stage again from "
                    "scratch (its trials are lost)"
                )
            raise _Refusal(exc) from None

    patches = [
        (tuner_internal, "pickle", _SigningPickle(cloudpickle, signer)),
        (controller, "save_to_dir", save_to_dir),
        (tune_controller, "_loads_with_cloudpickle", loads_experiment_state),
        (experiment_analysis, "_loads_with_cloudpickle", loads_experiment_state),
        (manager, "sync_down_experiment_state", sync_down),
        (controller, "resume", resume),
        (Trial, "get_pickled_error", lambda trial: None),
    ]
    with contextlib.ExitStack() as stack:
        for target, name, value in patches:
            stack.enter_context(mock.patch.object(target, name, value))
        try:
            yield
        except _Refusal as refusal:
            raise refusal.error from None
