"""The KD losses of both KD methods: one module each in this package, found by file.

A KD loss is a module here (its name not starting with ``_``) that calls :func:`register_kd`
once; nothing else names it. It registers its name, its table label, the intermediate
outputs it compares (:class:`Blocks`: none, one picked block or stage, every block, their
mean) and one :class:`Variant` per head layout it supports (:data:`LAYOUTS`), each with its
``compute``, the weights it reads, its search-space fragment and their defaults:

- ``mtl``: ``kd_vit``'s two-headed ViTs (seeds/002). The config accepts the loss as
  ``kd_approach``, the ``kd_vit`` space suggests its fragment, ``lowres-kd-open`` offers it
  and ``lowres-kd`` (the MLCAK paper's Table 2 grid) takes the ones declared ``in_paper``.
- ``binary``: ``kd_logit``'s one-logit classifiers (seeds/000, the ResNet-50 -> ResNet-18
  pair), in the ``kd_logit`` space and in ``pneumonia-kd-open``'s cells.

Every list of approaches (config validation, spaces, studies, ``search plan``'s teacher
cache) is :func:`kd_names` of a layout. To add a loss, copy ``fitnets.py`` (features, both
layouts), ``dkd.py`` (logits, both layouts) or ``hinton.py`` and its test
(``tests/trainables/test_kd_*.py``); ``tests/trainables/test_kd.py`` then checks it with every
other one of its layouts.

``compute`` contracts (one keyword signature per layout, so the Task calls it without
branching on the name; weights keyword-only, an unused one must stay None: ``LossError``)::

    mtl:    compute(s_mlct, s_mcct, t_mlct, t_mcct, *, alpha, beta, gamma=None,
                    temperature=None, hs_student=None, hs_teacher=None)
    binary: compute(student, teacher, target, *, alpha=None, beta=None, gamma=None,
                    temperature=None, hs_student=None, hs_teacher=None)

-> ``{"loss": total, **components}`` (components unweighted, as in :mod:`trainables.losses`).
``*_mlct`` are the findings logits ``(B, F)``, ``*_mcct`` and ``student``/``teacher`` one
logit per image, ``target`` the 0/1 label. An ``mtl`` loss is the KD term only (the Task adds
the heads' BCE, MLCAK eq. 3); a ``binary`` loss is the whole training loss, hard-label term
included (Hinton's ``alpha * CE + (1 - alpha) * KD`` weighs them against each other).
``hs_*`` are the lists the loss's :class:`Blocks` picked, the student's already on the
teacher's layout (``trainables.vit.FeatureAdapter`` for ViT tokens,
``trainables.features.FeatureProjection`` for CNN maps); None for a logits-only loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from torch import Tensor

from cxrkd.trainables.config import ConfigError
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.registry import Registry

# The config fields a loss may read (Variant.params); kd_vit's and kd_logit's configs have
# these and no other weights.
WEIGHTS = ("alpha", "beta", "gamma", "temperature")


@dataclass(frozen=True)
class Layout:
    """The heads a KD method trains, which decides the ``compute`` signature."""

    name: str
    method: str  # the KD method of this layout
    default: str  # the method's kd_approach when a config or a cell names none
    # Whether a picked feature target may be cached on the training images: a ViT's one
    # picked block, pooled, is (trainables/methods/kd_vit.py sizes it); a CNN stage's map
    # is not (ResNet-50's layer2 at 224 px: 512 x 28 x 28 floats, 1.6 MB per image).
    caches_features: bool


LAYOUTS = {
    "mtl": Layout("mtl", "kd_vit", "mlcak", caches_features=True),
    # hinton: the pneumonia paper's KD, and kd_logit's only loss before the registry.
    "binary": Layout("binary", "kd_logit", "hinton", caches_features=False),
}


def layout_of(method: str) -> str | None:
    """The layout of a KD method's heads (``kd_logit`` -> ``binary``); None for another."""
    return next((lay.name for lay in LAYOUTS.values() if lay.method == method), None)


@dataclass(frozen=True)
class Blocks:
    """Which intermediate outputs a KD loss compares: ViT blocks (``kd_vit``) or CNN stages
    (``kd_logit``, ``trainables.features.stage_names``). One rule picks the teacher's and the
    student's, each from its own list (depths may differ)."""

    name: str  # names the cached teacher targets ("mtl-{name}-grid..."): keep it stable
    pick: Callable[[Sequence[Tensor]], list[Tensor]]  # all blocks -> the compared ones
    # One target per block (else exactly one): the depths must match, and the teacher's
    # targets are never cached (N blocks of tokens per image).
    every_block: bool = False


@dataclass(frozen=True)
class Variant:
    """A KD loss on one head layout. Given to :func:`register_kd` with ``compute``,
    ``params``, ``space`` (and ``defaults``, ``limits``); the registry fills in the rest."""

    compute: Callable[..., dict[str, Tensor]]
    params: tuple[str, ...]  # the WEIGHTS it reads; the others set: refused
    space: Callable  # space(trial) -> {param: value}: suggests what it reads
    # Values of params the method's config leaves unset (None); a param without one must be
    # set (the space does). Only kd_logit's config leaves weights unset.
    defaults: Mapping[str, float] = field(default_factory=dict)
    limits: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # closed ranges
    name: str = ""
    layout: str = ""
    label: str = ""
    blocks: Blocks | None = None

    @property
    def cacheable(self) -> bool:
        """Whether the teacher's targets can be cached: logits always; a picked feature only
        where the layout caches features, and never every block (too large)."""
        if self.blocks is None:
            return True
        return LAYOUTS[self.layout].caches_features and not self.blocks.every_block


@dataclass(frozen=True)
class KDLoss:
    name: str  # the kd_approach value, in configs, cell keys and tables
    label: str  # its row label in tables ("Hinton KD", "FitNets")
    variants: Mapping[str, Variant]  # layout -> the loss on it
    blocks: Blocks | None = None  # None: logits only
    order: int = 100  # place in every list of approaches (choices, grids, tables), then name
    in_paper: bool = False  # one of the MLCAK paper's approaches (Table 2): lowres-kd's grid

    @property
    def layouts(self) -> tuple[str, ...]:
        return tuple(self.variants)

    def on(self, layout: str) -> Variant:
        """The loss on ``layout``'s heads; refused (CxrkdError) where it has no form there."""
        if layout not in self.variants:
            method = LAYOUTS[layout].method
            raise CxrkdError(
                f"KD loss {self.name!r} has no {layout} form, so {method} cannot use it (it is "
                f"for {[LAYOUTS[lay].method for lay in self.layouts]}); {method} takes "
                f"{list(kd_names(layout))}"
            )
        return self.variants[layout]


KD_LOSSES: Registry[KDLoss] = Registry("KD loss", package=__name__, plural="KD losses")


def register_kd(
    name: str,
    *,
    label: str,
    blocks: Blocks | None = None,
    order: int = 100,
    in_paper: bool = False,
    **variants: Variant,
) -> KDLoss:
    """Register the KD loss ``name`` with one :class:`Variant` per layout, passed under the
    layout's name (``mtl=...``, ``binary=...``); see the module docstring."""
    unknown_layouts = sorted(set(variants) - set(LAYOUTS))
    if unknown_layouts or not variants:
        raise CxrkdError(
            f"KD loss {name!r} is registered for layouts {unknown_layouts or 'none'}; give one "
            f"Variant per layout it supports, among {list(LAYOUTS)}"
        )
    for layout, variant in variants.items():
        unknown = sorted(set(variant.params) - set(WEIGHTS))
        if unknown:
            raise CxrkdError(
                f"KD loss {name!r} declares params {unknown}, but the KD configs have only "
                f"{list(WEIGHTS)}; add the field to KDViTConfig and KDLogitConfig or use one "
                "of these"
            )
        stray = sorted((set(variant.defaults) | set(variant.limits)) - set(variant.params))
        if stray:
            raise CxrkdError(f"KD loss {name!r} ({layout}) sets defaults or limits of {stray}, "
                             f"which it does not read ({list(variant.params)})")  # fmt: skip
    bound = {
        layout: replace(v, name=name, layout=layout, label=label, blocks=blocks)
        for layout, v in variants.items()
    }
    return KD_LOSSES.add(name, KDLoss(name, label, bound, blocks, order, in_paper))


def kd_losses(layout: str | None = None) -> dict[str, KDLoss]:
    """Every registered KD loss (of ``layout`` when given), by ``order`` then name."""
    if layout is not None and layout not in LAYOUTS:
        raise CxrkdError(f"unknown head layout {layout!r}; known: {list(LAYOUTS)}")
    every = sorted(KD_LOSSES.all().values(), key=lambda k: (k.order, k.name))
    return {k.name: k for k in every if layout is None or layout in k.variants}


def kd_names(layout: str | None = None) -> tuple[str, ...]:
    return tuple(kd_losses(layout))


def paper_approaches() -> tuple[str, ...]:
    """The MLCAK paper's approaches (its Table 2), in ``order``."""
    return tuple(name for name, k in kd_losses().items() if k.in_paper)


def get_kd(name: str) -> KDLoss:
    return KD_LOSSES.get(name)


def check_approach(layout: str, approach: str) -> Variant:
    """The ``kd_approach`` of a ``layout`` method's config, or a ConfigError listing that
    layout's losses (and saying which method a loss of another layout belongs to)."""
    if approach not in kd_names(layout):
        other = ""
        if approach in kd_names():
            methods = [LAYOUTS[lay].method for lay in get_kd(approach).layouts]
            other = f" ({approach!r} is a KD loss of {' and '.join(methods)})"
        raise ConfigError(
            f"bad value kd_approach={approach!r}: expected one of {list(kd_names(layout))}{other}"
        )
    return get_kd(approach).on(layout)


def check_weights(variant: Variant, values: Mapping[str, float | None]) -> None:
    """ConfigError for a set weight ``variant`` does not read, a weight below 0 (a
    temperature <= 0), and a value outside the loss's own ``limits``."""
    for name, value in values.items():
        if value is None:
            continue
        if name not in variant.params:
            raise ConfigError(
                f"{name}={value!r} is not used by kd_approach={variant.name!r}; leave it "
                "unset (None)"
            )
        if name == "temperature":
            if not value > 0:
                raise ConfigError(f"bad value temperature={value!r}: expected > 0")
        elif not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"bad value {name}={value!r}: expected a weight >= 0 (0 drops "
                              "the term)")  # fmt: skip
        low, high = variant.limits.get(name, (-math.inf, math.inf))
        if not low <= value <= high:
            raise ConfigError(
                f"bad value {name}={value!r}: expected in [{low:g}, {high:g}] for "
                f"kd_approach={variant.name!r}"
            )


def use_teacher_cache(variant: Variant, *, teacher_cache: str, augment: bool) -> bool:
    """Where a KD trial's teacher targets come from: True for the cached outputs on the
    un-augmented training images, False for the teacher run online on every batch.

    ``auto`` caches when the loss's targets are cacheable (:attr:`Variant.cacheable`) and
    augmentation is off (every augmented step is a new view); ``off`` runs it online;
    ``on`` caches, and is refused where the cache cannot hold what the loss compares."""
    if teacher_cache == "on" and augment:
        raise ConfigError(
            "teacher_cache=on needs augment=false (cached teacher outputs are for un-augmented "
            "images); use teacher_cache=auto to run the teacher online when augmenting"
        )
    if teacher_cache == "on" and not variant.cacheable:
        what = "every block's tokens of every image (N x the mlcak cache)"
        if variant.blocks is not None and not LAYOUTS[variant.layout].caches_features:
            what = "a CNN feature map of every image (features are not cached on that layout)"
        raise ConfigError(
            f"teacher_cache=on cannot cache {variant.name}'s targets: {what}; use "
            "teacher_cache=auto or off (teacher online)"
        )
    return teacher_cache != "off" and not augment and variant.cacheable
