"""Weights folders for tests: random initialisations in the layout ``cxrkd weights download``
writes, so the ``pretrained=True`` paths of the paper trials run without a network.

``tests/`` is on the import path (tests/conftest.py lives there): ``from weights_fixture import
make_weights_dir, ALLOW_RANDOM_ENV``. The files are marked ``random-init (TESTS ONLY)``; a test
that loads them opts in with ``monkeypatch.setenv(ALLOW_RANDOM_ENV, "1")`` (set it before Ray
starts when trials load them: Ray's workers inherit the environment).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cxrkd.trainables.weights import ALLOW_RANDOM_ENV, write_random_weights

__all__ = ["ALLOW_RANDOM_ENV", "make_weights_dir"]


def make_weights_dir(root: str | os.PathLike, names: Iterable[str], *, seed: int = 0) -> Path:
    """Write a random-init weights folder of the timm models ``names`` at ``root``; returns it.

    Each model is seeded with ``seed`` before it is created, so the same call gives the same
    tensors. Adding names to an existing folder keeps what it holds (the index is merged).
    """
    root = Path(root)
    write_random_weights(names, root, seed=seed)
    return root.resolve()
