"""The KD losses of ``kd_vit``: one module each in this package, found by file.

A KD loss is a module here (its name not starting with ``_``) that registers a :class:`KDLoss`
with :func:`register_kd`; nothing else names it. The ``kd_vit`` config accepts it as
``kd_approach`` and refuses a weight it does not read, its Task hands it the block outputs it
declares (and caches the teacher's when it can), the ``kd_vit`` space suggests its fragment,
and ``lowres-kd-open`` offers it as a choice. ``lowres-kd`` (the MLCAK paper's Table 2 grid)
takes the ones declared ``in_paper``. To add one, copy ``fitnets.py`` (a feature loss) or
``dkd.py`` (logits only) and its test, ``tests/trainables/test_kd_fitnets.py`` or
``test_kd_dkd.py``; ``tests/trainables/test_kd.py`` then checks it with every other one.

``compute`` contract (one keyword signature for all, so the Task calls it without branching
on the name)::

    compute(s_mlct, s_mcct, t_mlct, t_mcct, *, alpha, beta, gamma=None, temperature=None,
            hs_student=None, hs_teacher=None) -> {"loss": total, **components}

``*_mlct`` are the findings logits ``(B, F)``, ``*_mcct`` the one normal/abnormal logit per
image; ``hs_*`` are lists of block tokens as the loss's :class:`Blocks` picked them (the
student's already on the teacher's layout, see ``trainables.vit.FeatureAdapter``), None for a
logits-only loss. Components are unweighted, as in :mod:`trainables.losses`; a loss refuses
(``LossError``) a keyword it does not use and a bad value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.registry import Registry

# The kd_vit config fields a loss may read (KDLoss.params); the config has no others.
WEIGHTS = ("alpha", "beta", "gamma", "temperature")


@dataclass(frozen=True)
class Blocks:
    """Which block outputs of a ViT a KD loss compares; one rule picks the teacher's and the
    student's, each from its own list of blocks (depths may differ)."""

    name: str  # names the cached teacher targets ("mtl-{name}-grid..."): keep it stable
    pick: Callable[[Sequence[Tensor]], list[Tensor]]  # all blocks -> the compared ones
    # One target per block (else exactly one): the depths must match, and the teacher's
    # targets are never cached (N blocks of tokens per image).
    every_block: bool = False


@dataclass(frozen=True)
class KDLoss:
    name: str  # the kd_approach value, in configs, cell keys and tables
    compute: Callable[..., dict[str, Tensor]]
    params: tuple[str, ...]  # the WEIGHTS it reads; gamma/temperature set for others: refused
    space: Callable  # space(trial) -> {param: value}: suggests what it reads (spaces/kd_vit.py)
    blocks: Blocks | None = None  # None: logits only
    order: int = 100  # place in every list of approaches (choices, grids, tables), then name
    in_paper: bool = False  # one of the MLCAK paper's approaches (Table 2): lowres-kd's grid

    @property
    def cacheable(self) -> bool:
        """Whether the teacher's targets can be cached (every_block's are too large)."""
        return self.blocks is None or not self.blocks.every_block


KD_LOSSES: Registry[KDLoss] = Registry("KD loss", package=__name__, plural="KD losses")


def register_kd(
    name: str,
    *,
    params: Sequence[str],
    space: Callable,
    blocks: Blocks | None = None,
    order: int = 100,
    in_paper: bool = False,
) -> Callable:
    """Decorator registering ``compute`` as the KD loss ``name`` (see the module docstring)."""
    unknown = sorted(set(params) - set(WEIGHTS))
    if unknown:
        raise CxrkdError(
            f"KD loss {name!r} declares params {unknown}, but kd_vit's config has only "
            f"{list(WEIGHTS)}; add the field to KDViTConfig or use one of these"
        )

    def decorate(compute: Callable) -> Callable:
        KD_LOSSES.add(name, KDLoss(name, compute, tuple(params), space, blocks, order, in_paper))
        return compute

    return decorate


def kd_losses() -> dict[str, KDLoss]:
    """Every registered KD loss, by ``order`` then name."""
    return {k.name: k for k in sorted(KD_LOSSES.all().values(), key=lambda k: (k.order, k.name))}


def kd_names() -> tuple[str, ...]:
    return tuple(kd_losses())


def paper_approaches() -> tuple[str, ...]:
    """The MLCAK paper's approaches (its Table 2), in ``order``."""
    return tuple(name for name, k in kd_losses().items() if k.in_paper)


def get_kd(name: str) -> KDLoss:
    return KD_LOSSES.get(name)
