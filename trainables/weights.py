"""Offline-safe pretrained weights: a local weights folder first, then the Hub and torch caches.

Air-gapped sites prepare weights once on a connected machine::

    cxrkd weights download resnet18 resnet50 vit_base_patch16_224 --out /media/weights

copy the folder across, and pass ``--weights-dir /media/weights`` (or set ``CXRKD_WEIGHTS``).

A weights folder (layout version 1)::

    DIR/weights_index.json          {model name: entry}, one entry per model (below)
    DIR/<name>.safetensors          the model's state_dict (.pth only for tied weights)

    entry = {"file": "resnet18.safetensors", "sha256": "<64 hex>", "bytes": 46827520,
             "origin": "timm-hub" | "phantom-pretrained (SYNTHETIC)" | "random-init (TESTS ONLY)",
             "random_init": false, "timm_version": "1.0.x", "hf_hub_id": "timm/resnet18.a1_in1k",
             "in_chans": 3, "num_classes": 1000, ...origin-specific notes}

The index is the authority: a file it does not list is not loaded (its origin is unknown),
its sha256 is checked before every load (a changed or truncated file is refused with the fix:
download it again), and an entry whose origin is ``random-init (TESTS ONLY)`` is refused
unless ``CXRKD_ALLOW_RANDOM_WEIGHTS=1`` (only tests set it), so nobody trains on random
"pretrained" weights by accident. A ``timm-hub`` file is the timm model's own state_dict at
its pretrained layout (3 input channels, 1000 classes), so timm adapts it exactly as it adapts
Hub weights: the first conv is summed to one channel and a head of the wrong size is dropped.
``check_weights_available`` is called once by the search driver before any trial starts, so a
missing or damaged file fails in a second, not in trial 1 after a 30 s network retry.
"""

from __future__ import annotations

import difflib
import os
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.weights_folder import (
    ALLOW_RANDOM_ENV,
    INDEX_FILE,
    ORIGIN_HUB,
    ORIGIN_PHANTOM,
    ORIGIN_RANDOM,
    RandomWeightsRefused,
    WeightsDamaged,
    WeightsUnavailable,
    add_weights,
    origin_of,
    read_index,
    unindexed_file,
    verified_file,
)

__all__ = [
    "ALLOW_RANDOM_ENV",
    "BUILTIN_PREFIX",
    "INDEX_FILE",
    "ORIGIN_HUB",
    "ORIGIN_PHANTOM",
    "ORIGIN_RANDOM",
    "WEIGHTS_ENV",
    "RandomWeightsRefused",
    "UnknownModel",
    "WeightsDamaged",
    "WeightsUnavailable",
    "check_weights_available",
    "create_timm_model",
    "local_weights_file",
    "pretrained_source",
    "read_index",
    "resolve_pretrained",
    "weights_dir_or_env",
    "weights_download",
    "write_random_weights",
]

WEIGHTS_ENV = "CXRKD_WEIGHTS"
# `weights_dir` values naming a folder cxrkd builds itself, under $CXRKD_HOME/weights/ (the
# demo's backbones, see trainables.phantom_backbones): `cxrkd:phantom-findings`.
BUILTIN_PREFIX = "cxrkd:"
PROBE_TIMEOUT_S = 3.0


class UnknownModel(CxrkdError, ValueError):
    """A model name that is neither in cxrkd's registry nor in timm."""


def unknown_model_message(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=6, cutoff=0.6)
    return (
        f"unknown model {name!r}. Close matches: {close or 'none'}. "
        "List timm's names with timm.list_models('*pattern*')."
    )


def weights_dir_or_env(weights_dir: str | os.PathLike | None) -> Path | None:
    """The explicit folder, else ``$CXRKD_WEIGHTS``, else None (read at call time).

    ``cxrkd:<source>`` names a folder cxrkd builds itself under ``$CXRKD_HOME/weights``."""
    chosen = weights_dir if weights_dir is not None else os.environ.get(WEIGHTS_ENV) or None
    if chosen is None:
        return None
    if str(chosen).startswith(BUILTIN_PREFIX):
        from cxrkd.trainables.phantom_backbones import builtin_weights_dir

        return builtin_weights_dir(str(chosen)[len(BUILTIN_PREFIX) :])
    return Path(chosen).expanduser().resolve()


def pretrained_source(weights_dir: str | os.PathLike | None) -> str:
    """Where a run's pretrained weights come from, in words for a table's caption: the
    phantom backbones when the folder is the built-in one or holds only phantom-pretrained
    files (`cxrkd weights pretrain-phantom --out DIR`), random inits when it holds a test's,
    else ImageNet (timm's weights)."""
    from cxrkd.trainables.phantom_backbones import SOURCE_CAPTION

    if str(weights_dir or "").startswith(BUILTIN_PREFIX):
        return SOURCE_CAPTION
    try:
        folder = weights_dir_or_env(weights_dir)
        index = read_index(folder) if folder is not None and folder.is_dir() else {}
    except CxrkdError:  # a damaged index: the run itself says so; the caption stays generic
        index = {}
    origins = {origin_of(e) for e in index.values()}
    if ORIGIN_RANDOM in origins:  # only a test can run with these (CXRKD_ALLOW_RANDOM_WEIGHTS)
        return "RANDOM-INIT weights from a test's weights folder, not pretrained"
    if origins == {ORIGIN_PHANTOM}:
        return SOURCE_CAPTION
    return "ImageNet-pretrained"


def local_weights_file(name: str, weights_dir: str | os.PathLike | None = None) -> Path | None:
    """``name``'s file in the weights folder when its index lists it, checked; else None.

    Raises ``WeightsDamaged`` (listed file missing, sha256 differs) and
    ``RandomWeightsRefused`` (a test's random init without ``CXRKD_ALLOW_RANDOM_WEIGHTS=1``).
    """
    folder = weights_dir_or_env(weights_dir)
    return None if folder is None else verified_file(name, folder)


def resolve_pretrained(name: str, weights_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """timm kwargs that load ``name``'s pretrained weights, preferring a local file.

    With a local file (checked against its index): ``pretrained=True,
    pretrained_cfg_overlay={"file": path}`` (timm then never contacts the Hub). Without:
    ``pretrained=True``, i.e. timm's Hub/cache lookup.
    """
    path = local_weights_file(name, weights_dir)
    if path is None:
        return {"pretrained": True}
    return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}


def hub_offline() -> bool:
    """True when Hugging Face Hub access is switched off (``HF_HUB_OFFLINE``)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return constants.HF_HUB_OFFLINE or env in {"1", "ON", "YES", "TRUE"}


def _hub_location(cfg: Any) -> tuple[str, str | None, list[str]]:
    """(repo id, revision, candidate file names) the way timm's loader looks them up."""
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    if cfg.hf_hub_filename:
        files = [cfg.hf_hub_filename]
    else:  # timm tries the safetensors twin of pytorch_model.bin first
        files = ["model.safetensors", "pytorch_model.bin"]
    return repo_id, revision or None, files


def _cached(cfg: Any) -> bool:
    """Whether timm would find the weights in the local HF or torch-hub cache (no network)."""
    from huggingface_hub import constants, try_to_load_from_cache

    if cfg.hf_hub_id:
        repo_id, revision, files = _hub_location(cfg)
        for filename in files:
            found = try_to_load_from_cache(
                repo_id, filename, cache_dir=constants.HF_HUB_CACHE, revision=revision
            )
            if isinstance(found, str):
                return True
    if cfg.url and not cfg.hf_hub_id:  # timm uses the url only without a Hub id, and caches
        # it under <torch hub dir>/checkpoints/<basename>
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        return cached.is_file()
    return False


def _probe(cfg: Any, *, timeout_s: float) -> tuple[str | None, bool]:
    """One HEAD request per candidate file, no retries.

    Returns (None when timm could download the weights, else why not; whether the server
    answered at all, so the caller can stop probing an unplugged machine).
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    try:
        if not cfg.hf_hub_id:
            request = urllib.request.Request(cfg.url, method="HEAD")
            with urllib.request.urlopen(request, timeout=timeout_s):
                return None, True
        repo_id, revision, files = _hub_location(cfg)
        for filename in files:
            try:
                url = hf_hub_url(repo_id, filename, revision=revision)
                get_hf_file_metadata(url, timeout=timeout_s)
                return None, True
            except EntryNotFoundError:  # some repos only hold pytorch_model.bin
                continue
        return f"the Hub repo {repo_id} has none of {files}", True
    except (HfHubHTTPError, urllib.error.HTTPError) as exc:  # answered, but refused
        return f"the download source refused: {str(exc).splitlines()[0]}", True
    except Exception as exc:  # DNS, proxy, timeout: nothing answered
        return f"the download source did not answer ({type(exc).__name__})", False


def _offline_problem(name: str, folder: Path | None) -> tuple[str | None, Any]:
    """(why ``name`` cannot be loaded without a network, or None; its pretrained cfg)."""
    if folder is not None and verified_file(name, folder) is not None:
        return None, None
    if not timm.is_model(name):
        return "not a timm model name, so it has no pretrained weights (use pretrained=false)", None
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as exc:  # a bad pretrained tag, e.g. resnet18.nope
        return str(exc), None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        return "timm has no pretrained weights for it (use pretrained=false)", None
    stray = unindexed_file(name, folder) if folder is not None else None
    if stray is not None:  # never loaded: nothing says where it came from or checks its bytes
        return f"{stray} is not listed in {folder / INDEX_FILE} (origin and sha256 unknown)", cfg
    if _cached(cfg):
        return None, cfg
    if folder is None:
        looked = "no weights folder given"
    else:
        looked = f"not in {folder}" if folder.is_dir() else f"no weights folder at {folder}"
    return f"{looked} and not in the local cache ({cfg.hf_hub_id or cfg.url})", cfg


def check_weights_available(
    names: Iterable[str],
    *,
    weights_dir: str | os.PathLike | None = None,
    probe_timeout_s: float = PROBE_TIMEOUT_S,
    build_builtin: bool = True,
) -> None:
    """Raise one ``WeightsUnavailable`` naming every model whose weights cannot be loaded.

    Available means: a file listed in the index of ``weights_dir`` (or ``$CXRKD_WEIGHTS``),
    whose sha256 matches and which is not a random init, or timm's Hub/torch cache. A damaged
    file raises ``WeightsDamaged`` and a random init ``RandomWeightsRefused`` at once. Only
    when the Hub is not offline and a model is in neither does it spend one short HEAD request
    (no retries) to see whether timm could download it; after the first unreachable answer it
    stops asking, so an unplugged machine waits one timeout at most.

    A ``cxrkd:<source>`` folder (the demo's phantom backbones) is built here for the models it
    lacks (once; later calls find it cached). The driver calls this before any trial; trials
    pass ``build_builtin=False`` and never train a backbone themselves.
    """
    names = list(dict.fromkeys(names))
    if build_builtin and str(weights_dir or "").startswith(BUILTIN_PREFIX):
        from cxrkd.trainables.phantom_backbones import build_builtin_weights

        build_builtin_weights(str(weights_dir)[len(BUILTIN_PREFIX) :], names)
    folder = weights_dir_or_env(weights_dir)
    offline = hub_offline()
    reachable = not offline
    problems: dict[str, str] = {}
    downloadable: list[str] = []  # missing, but `cxrkd weights download` would fetch them
    for name in names:
        why, cfg = _offline_problem(name, folder)
        if why is None:
            continue
        if cfg is not None and reachable:
            reason, reachable = _probe(cfg, timeout_s=probe_timeout_s)
            if reason is None:
                continue
            why += f"; {reason}"
        elif cfg is not None:
            why += "; HF_HUB_OFFLINE is set" if offline else "; the download source is unreachable"
        problems[name] = why
        if cfg is not None:
            downloadable.append(name)
    if problems:
        raise WeightsUnavailable(_unavailable_message(problems, downloadable, weights_dir))


def _unavailable_message(
    problems: dict[str, str], downloadable: list[str], weights_dir: str | os.PathLike | None
) -> str:
    listed = "\n".join(f"  - {name}: {why}" for name, why in problems.items())
    fixes = []
    if str(weights_dir or "").startswith(BUILTIN_PREFIX):
        fixes.append(
            f"build them on this machine: `cxrkd weights pretrain-phantom {' '.join(problems)}` "
            "(the search driver does it before the first trial)"
        )
    elif downloadable:
        fixes.append(
            f"on a machine with internet run `cxrkd weights download {' '.join(downloadable)} "
            "--out DIR`, copy DIR here and pass `--weights-dir DIR` "
            f"(or set {WEIGHTS_ENV}=DIR)"
        )
    fixes.append("train from random initialisation: `--set pretrained=false`")
    return (
        f"Pretrained weights cannot be loaded for {len(problems)} model(s):\n{listed}\n"
        + ("Fix (any one):\n" if len(fixes) > 1 else "Fix:\n")
        + ";\n".join(f"  * {fix}" for fix in fixes)
        + "."
    )


def create_timm_model(
    name: str, *, pretrained: bool, weights_dir: str | os.PathLike | None = None, **kwargs: Any
) -> nn.Module:
    """``timm.create_model`` that takes pretrained weights from ``weights_dir`` when present
    (checked against its index) and otherwise from timm's cache, failing at once with
    ``WeightsUnavailable`` instead of a network timeout. Every trial builds its models here."""
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    source = resolve_pretrained(name, weights_dir)  # checks a listed file's sha256 and origin
    if "pretrained_cfg_overlay" not in source:
        check_weights_available([name], weights_dir=weights_dir, build_builtin=False)
    return timm.create_model(name, **source, **kwargs)


def weights_download(
    names: Iterable[str], out_dir: str | os.PathLike, *, _random_init: bool = False
) -> list[Path]:
    """Create each model with its pretrained weights and save them as ``out_dir/<name>.*``.

    Run on a connected machine (``cxrkd weights download NAMES --out DIR``). Lists each file
    in ``weights_index.json`` (origin ``timm-hub``, sha256, timm version, Hub id), merged with
    any index already in ``out_dir``. Returns the written files in the order of ``names``.
    """
    # `_random_init` is for tests (prefer write_random_weights): no network, marked as such.
    if _random_init:
        return write_random_weights(names, out_dir)
    out = Path(out_dir).expanduser().resolve()
    unique = _known_names(names)
    return [
        add_weights(out, name, timm.create_model(name, pretrained=True), origin=ORIGIN_HUB)
        for name in unique
    ]


def write_random_weights(
    names: Iterable[str], out_dir: str | os.PathLike, *, seed: int = 0
) -> list[Path]:
    """FOR TESTS: a weights folder of random initialisations, in the layout of a download.

    Each is marked ``origin: "random-init (TESTS ONLY)"``, so a run refuses it unless
    ``CXRKD_ALLOW_RANDOM_WEIGHTS=1``; with that set, every loading path of a real run (the
    paper trials' ``pretrained=True``) can be exercised without a network.
    """
    out = Path(out_dir).expanduser().resolve()
    written = []
    for name in _known_names(names):
        torch.manual_seed(seed)
        written.append(
            add_weights(out, name, timm.create_model(name, pretrained=False), origin=ORIGIN_RANDOM)
        )
    return written


def _known_names(names: Iterable[str]) -> list[str]:
    unique = list(dict.fromkeys(names))
    unknown = [name for name in unique if not timm.is_model(name)]
    if unknown:  # before any download: a typo must not cost the first model's download time
        raise UnknownModel(unknown_model_message(unknown[0], timm.list_models()))
    return unique
