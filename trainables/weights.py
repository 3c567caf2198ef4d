"""Offline-safe pretrained weights: a local weights folder first, then the Hub and torch caches.

Air-gapped sites prepare weights once on a connected machine::

    cxrkd weights download resnet18 resnet50 vit_base_patch16_224 --out /media/weights

copy the folder across, and pass ``--weights-dir /media/weights`` (or set ``CXRKD_WEIGHTS``).
A file is the timm model's own state_dict at its pretrained layout (3 input channels, 1000
classes), so timm adapts it exactly as it adapts Hub weights: the first conv is summed to one
channel and a head of the wrong size is dropped. ``check_weights_available`` is called once by
the search driver before any trial starts, so a missing file fails in a second, not in trial 1
after a 30 s network retry.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from trainables.errors import CxrkdError

WEIGHTS_ENV = "CXRKD_WEIGHTS"
INDEX_FILE = "weights_index.json"
# First match wins; .safetensors first because it cannot execute code when loaded.
EXTENSIONS = (".safetensors", ".pth", ".bin")
PROBE_TIMEOUT_S = 3.0


class WeightsUnavailable(CxrkdError, RuntimeError):
    """Pretrained weights for one or more models cannot be loaded on this machine."""


class UnknownModel(CxrkdError, ValueError):
    """A model name that is neither in cxrkd's registry nor in timm."""


def unknown_model_message(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=6, cutoff=0.6)
    return (
        f"unknown model {name!r}. Close matches: {close or 'none'}. "
        "List timm's names with timm.list_models('*pattern*')."
    )


def weights_dir_or_env(weights_dir: str | os.PathLike | None) -> Path | None:
    """The explicit folder, else ``$CXRKD_WEIGHTS``, else None (read at call time)."""
    chosen = weights_dir if weights_dir is not None else os.environ.get(WEIGHTS_ENV) or None
    return Path(chosen).expanduser().resolve() if chosen is not None else None


def local_weights_file(name: str, weights_dir: str | os.PathLike | None = None) -> Path | None:
    """``<weights_dir>/<name>.safetensors`` (or .pth/.bin) when present, else None."""
    folder = weights_dir_or_env(weights_dir)
    if folder is None:
        return None
    for ext in EXTENSIONS:
        path = folder / f"{name}{ext}"
        if path.is_file():
            return path
    return None


def resolve_pretrained(name: str, weights_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """timm kwargs that load ``name``'s pretrained weights, preferring a local file.

    With a local file: ``pretrained=True, pretrained_cfg_overlay={"file": path}`` (timm then
    never contacts the Hub). Without: ``pretrained=True``, i.e. timm's Hub/cache lookup.
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
    if local_weights_file(name, folder) is not None:
        return None, None
    if not timm.is_model(name):
        return "not a timm model name, so it has no pretrained weights (use pretrained=false)", None
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as exc:  # a bad pretrained tag, e.g. resnet18.nope
        return str(exc), None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        return "timm has no pretrained weights for it (use pretrained=false)", None
    if _cached(cfg):
        return None, cfg
    looked = f"not in {folder}" if folder else "no weights folder given"
    return f"{looked} and not in the local cache ({cfg.hf_hub_id or cfg.url})", cfg


def check_weights_available(
    names: Iterable[str],
    *,
    weights_dir: str | os.PathLike | None = None,
    probe_timeout_s: float = PROBE_TIMEOUT_S,
) -> None:
    """Raise one ``WeightsUnavailable`` naming every model whose weights cannot be loaded.

    Available means: a file in ``weights_dir`` (or ``$CXRKD_WEIGHTS``), or timm's Hub/torch
    cache. Only when the Hub is not offline and a model is in neither does it spend one short
    HEAD request (no retries) to see whether timm could download it; after the first
    unreachable answer it stops asking, so an unplugged machine waits one timeout at most.
    """
    folder = weights_dir_or_env(weights_dir)
    offline = hub_offline()
    reachable = not offline
    problems: dict[str, str] = {}
    downloadable: list[str] = []  # missing, but `cxrkd weights download` would fetch them
    for name in dict.fromkeys(names):
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
        raise WeightsUnavailable(_unavailable_message(problems, downloadable))


def _unavailable_message(problems: dict[str, str], downloadable: list[str]) -> str:
    listed = "\n".join(f"  - {name}: {why}" for name, why in problems.items())
    fixes = []
    if downloadable:
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
    and otherwise fails at once with ``WeightsUnavailable`` instead of a network timeout."""
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    check_weights_available([name], weights_dir=weights_dir)
    return timm.create_model(name, **resolve_pretrained(name, weights_dir), **kwargs)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _save_state_dict(model: nn.Module, stem: Path) -> Path:
    import safetensors.torch

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = stem.with_name(stem.name + ".safetensors")
    try:
        safetensors.torch.save_file(state, str(path))
    except RuntimeError:  # tensors sharing memory (tied weights) cannot go to safetensors
        path = stem.with_name(stem.name + ".pth")
        torch.save(state, path)
    return path


def weights_download(
    names: Iterable[str], out_dir: str | os.PathLike, *, _random_init: bool = False
) -> list[Path]:
    """Create each model with its pretrained weights and save them as ``out_dir/<name>.*``.

    Run on a connected machine (``cxrkd weights download NAMES --out DIR``). Also writes
    ``weights_index.json`` (file, sha256, timm version, Hub id per model), merged with any
    index already in ``out_dir``. Returns the written files in the order of ``names``.
    """
    # `_random_init` is for tests: it writes weights without a network and the index says so.
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX_FILE
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    unique = list(dict.fromkeys(names))
    unknown = [name for name in unique if not timm.is_model(name)]
    if unknown:  # before any download: a typo must not cost the first model's download time
        raise UnknownModel(unknown_model_message(unknown[0], timm.list_models()))
    written = []
    for name in unique:
        model = timm.create_model(name, pretrained=not _random_init)
        path = _save_state_dict(model, out / name)
        timm_cfg = getattr(model, "pretrained_cfg", {}) or {}  # timm metadata, optional keys
        index[name] = {
            "file": path.name,
            "sha256": _sha256(path),
            "bytes": path.stat().st_size,
            "timm_version": timm.__version__,
            "hf_hub_id": timm_cfg.get("hf_hub_id"),
            "random_init": _random_init,
        }
        written.append(path)
        # Rewritten after every model so an interrupted run still indexes what it saved.
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return written
