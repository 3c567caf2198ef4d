"""Imports read only real files inside their source folder: symbolic links are refused.

A link in an import folder (unzip restores links stored in an archive) could make an import
read any file the user can read (``train/NORMAL/x.jpeg -> /etc/passwd``) and copy it into a
dataset store, or put one picture under two ids, possibly in two splits. The published
downloads (Kaggle's zip, PhysioNet's files) contain no links, so every link is refused, even one
that resolves inside the folder: one rule, simple to check and to explain, with no link loops
and no linked folder skipped in silence (``os.walk`` does not follow them). The SRC given on the
command line is resolved first, so SRC itself may be a link.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cxrkd.trainables.data.store import DatasetError

_SHOWN = 5


def refuse_symlinks(root: Path, paths: Iterable[Path]) -> None:
    """Raise :class:`DatasetError` naming each link among ``paths`` and what it points to.

    ``root`` is the resolved source folder; ``paths`` are the entries an importer is about to
    read or walk into, checked before any of them is opened.
    """
    links = [Path(p) for p in paths if os.path.islink(p)]
    if not links:
        return
    shown = [_describe(root, link) for link in sorted(links)[:_SHOWN]]
    more = f"\n  ... and {len(links) - _SHOWN} more" if len(links) > _SHOWN else ""
    raise DatasetError(
        f"{root} holds {len(links)} symbolic link(s):\n  " + "\n  ".join(shown) + more + "\n"
        "An import reads only real files and folders inside SRC, so that a link cannot pull a "
        "file from elsewhere into the dataset store or put one picture under two names; nothing "
        "was imported. Remove the links, or replace each with the file or folder it points to "
        "(e.g. `cp -rL SRC COPY` and import COPY), or pass the folder the links point into as "
        "SRC"
    )


def walk_files(root: Path, top: Path) -> Iterable[tuple[Path, list[str], list[str]]]:
    """``os.walk(top)``, sorted, refusing ``top`` or any entry below it that is a link."""
    refuse_symlinks(root, [top])
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        refuse_symlinks(root, [here / name for name in (*dirnames, *filenames)])
        dirnames.sort()
        yield here, dirnames, sorted(filenames)


def _describe(root: Path, link: Path) -> str:
    target = os.readlink(link)
    resolved = Path(os.path.realpath(link))
    where = "inside" if resolved.is_relative_to(root) else "OUTSIDE"
    name = link.relative_to(root) if link.is_relative_to(root) else link
    return f"{name} -> {target} (resolves to {resolved}, {where} SRC)"
