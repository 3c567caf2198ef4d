"""``kd_vit``: a low-resolution ViT student distilled by any registered KD loss (seeds/002).

A frozen high-resolution ``vit_mtl`` teacher sees the "teacher" view (the high-resolution
image in the teacher's own normalisation); the student sees the low-resolution view of the
same (augmented) image, "lr", in its own. ``loss = cls + kd`` (paper eq. 3):
``cls = BCE(MLCT) + BCE(MCCT)`` and ``kd`` the loss registered as ``kd_approach`` in
:mod:`trainables.kd` for the ``mtl`` head layout, one module each: the MLCAK paper's four
approaches of its Table 2 (``vanilla``, ``last_block``, ``one_to_one``, ``mlcak``) and others
(``fitnets``, ``dkd``). This module never names one: it hands each the block outputs its
:class:`trainables.kd.Blocks` picks (none for a logits-only loss) and the weights it reads.

Only the weights the loss declares (``Variant.params``) may be set among those without a
default, ``gamma`` and ``temperature``; the others stay None (``validate`` refuses a
set-but-unused value, ``build`` a missing one).

Feature layout: student tokens go through a :class:`trainables.vit.FeatureAdapter` (pools the
larger patch grid to the smaller, projects the student width to the teacher's; trained with
the student, never deployed). ``feature_grid=G > 0`` further average-pools both sides' patch
tokens to at most G x G (class token kept): an approximation of the paper's full-token MSE
(it only sees G x G-sized detail), exact when the grid is already <= G; ``0`` (default) keeps
every token. It defines the loss, so it applies alike with the teacher cached or online.
The blocks are picked (for mlcak: reduced to their mean) before the pooling and the adapter.

Teacher cache (``teacher_cache=auto`` and augmentation off): the teacher's logits and its
one picked feature target (block mean for mlcak, last block for last_block) on every training
image are computed once per teacher, stored in the registry and gathered with each batch (no
teacher forward). Memory: logits in float32, tokens in float16: ``2 * (1 + g^2) * W`` bytes
per image. ViT-Base at 224 px (197 tokens x 768): 303 KB per image, 4.5 GB for VinDr's 15,000
training images; ``feature_grid=7``: 77 KB, 1.15 GB. ``auto`` runs the teacher online when the
cache would pass :data:`CACHE_BUDGET_BYTES` (``on`` caches regardless). A loss comparing every
block (``Blocks.every_block``: one_to_one) always runs the teacher online: caching its N blocks
needs N x that (12 x 4.5 GB for ViT-Base on VinDr). The cache is computed under the same
autocast as the online teacher (``precision.amp_enabled``; the key says which), so cached and
online targets are equal.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxrkd.trainables import teachers
from cxrkd.trainables.config import ConfigError, TrialConfig
from cxrkd.trainables.context import TeacherOutputs
from cxrkd.trainables.data.augment import Pipeline
from cxrkd.trainables.kd import (
    LAYOUTS,
    WEIGHTS,
    Blocks,
    check_approach,
    get_kd,
    kd_names,
    use_teacher_cache,
)
from cxrkd.trainables.methods import register_method
from cxrkd.trainables.methods.vit_mtl import (
    MultiTaskTask,
    ViTMTLConfig,
    build_vit,
    check_low_res,
    heads,
)
from cxrkd.trainables.models import model_normalization
from cxrkd.trainables.precision import amp_enabled, autocast, precision_tag
from cxrkd.trainables.task import teacher_view
from cxrkd.trainables.vit import FeatureAdapter, MultiTaskViT

# Host memory one trial may spend on cached teacher targets before `auto` runs it online.
CACHE_BUDGET_BYTES = 2 * 2**30
LAYOUT = "mtl"  # the heads of trainables.kd's losses this method takes: MLCT and MCCT


@dataclass(frozen=True)
class KDViTConfig(ViTMTLConfig):  # + low_res (the student's, > 0), patch_size, depth, dropout
    kd_approach: str = LAYOUTS[LAYOUT].default  # a KD loss of layout mtl: mlcak | vanilla ...
    # The KD weights; what each means is the loss's (its module in trainables/kd).
    alpha: float = 1.0  # MLCT logit term (dkd: TCKD)
    beta: float = 1.0  # MCCT logit term (dkd: NCKD)
    gamma: float | None = None  # feature term; the losses comparing blocks only
    temperature: float | None = None  # softmax temperature; vanilla and dkd only
    feature_grid: int = 0  # pool patch tokens to at most G x G in the feature term; 0: all
    teacher_path: str | None = None  # registry URI of a vit_mtl teacher; the study fills it in
    teacher_cache: str = "auto"  # auto | on | off

    def validate(self) -> None:
        super().validate()
        uses = check_approach(LAYOUT, self.kd_approach).params
        for name in ("alpha", "beta", "gamma"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(
                    f"bad value {name}={value!r}: expected a weight >= 0 (0 drops the term)"
                )
        if self.temperature is not None and not self.temperature > 0:
            raise ConfigError(f"bad value temperature={self.temperature!r}: expected > 0")
        for unused in (name for name in optional_weights() if name not in uses):
            if getattr(self, unused) is not None:
                raise ConfigError(
                    f"{unused}={getattr(self, unused)!r} is not used by kd_approach="
                    f"{self.kd_approach!r}; leave it unset (None)"
                )
        if self.feature_grid < 0:
            raise ConfigError(f"bad value feature_grid={self.feature_grid}: expected >= 0")
        if self.teacher_cache not in ("auto", "on", "off"):
            raise ConfigError(
                f"bad value teacher_cache={self.teacher_cache!r}: expected auto, on or off"
            )

    def needed(self) -> tuple[str, ...]:
        """The weights without a default that the approach reads (the search space sets them):
        gamma or temperature."""
        uses = get_kd(self.kd_approach).on(LAYOUT).params
        return tuple(name for name in optional_weights() if name in uses)


def optional_weights() -> tuple[str, ...]:
    """The KD weights without a default (gamma, temperature): set only where they are used."""
    return tuple(f.name for f in fields(KDViTConfig) if f.name in WEIGHTS and f.default is None)


def pool_grid(tokens: Tensor, *, prefix: int, side: int) -> Tensor:
    """``(B, P + G^2, W) -> (B, P + s^2, W)``, ``s = min(G, side)``: the patch tokens
    average-pooled on their G x G grid, the P prefix tokens kept; ``side=0``: unchanged."""
    grid = math.isqrt(tokens.shape[1] - prefix)
    if side == 0 or grid <= side:
        return tokens
    b, _, w = tokens.shape
    patches = tokens[:, prefix:].transpose(1, 2).reshape(b, w, grid, grid)
    patches = F.adaptive_avg_pool2d(patches, side).flatten(2).transpose(1, 2)
    return torch.cat([tokens[:, :prefix], patches], dim=1)


def teacher_targets(
    teacher: MultiTaskViT, hr: Tensor, *, blocks: Blocks | None, pool: Callable[[Tensor], Tensor]
) -> dict:
    """What the student is compared with: ``t_mlct``, ``t_mcct`` and ``t_feat`` (the one
    picked block target, pooled, in float32) or ``t_blocks`` (every block, pooled). Used
    online and to build the cache, so both give the same targets."""
    out = teacher(hr, return_blocks=blocks is not None)
    targets = {"t_mlct": out["mlct"].float(), "t_mcct": out["mcct"].float()}
    if blocks is not None:
        picked = blocks.pick(out["blocks"])
        if blocks.every_block:
            targets["t_blocks"] = [pool(h) for h in picked]
        else:
            (target,) = picked
            targets["t_feat"] = pool(target.float())
    return targets


class ViTKDTask(MultiTaskTask):
    def __init__(
        self,
        student: MultiTaskViT,
        teacher: MultiTaskViT,
        info,
        cfg: KDViTConfig,
        *,
        normalization: tuple[float, float],
        teacher_normalization: tuple[float, float],
    ):
        super().__init__(student, info, low_res=cfg.low_res, normalization=normalization)
        self.teacher = teacher
        self.teacher_normalization = tuple(teacher_normalization)
        self.kd = get_kd(cfg.kd_approach).on(LAYOUT)
        self.blocks = self.kd.blocks
        self.weights = {"alpha": cfg.alpha, "beta": cfg.beta, "gamma": cfg.gamma}
        self.weights["temperature"] = cfg.temperature
        self.feature_grid, self.prefix = cfg.feature_grid, student.num_prefix_tokens
        # Trained with the student, saved in the trial state, never in the deployed model.
        self.adapter = FeatureAdapter.between(student, teacher) if self.blocks else None
        self.cached: dict[str, np.ndarray] = {}

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher]

    def side_arrays(self, split: str) -> dict[str, np.ndarray]:
        return self.cached if split == "train" else {}

    def pool_teacher(self, tokens: Tensor) -> Tensor:
        pooled = self.adapter.pool_teacher(tokens)
        return pool_grid(pooled, prefix=self.prefix, side=self.feature_grid)

    def adapt_student(self, tokens: Tensor) -> Tensor:
        adapted = self.adapter.adapt_student(tokens)
        return pool_grid(adapted, prefix=self.prefix, side=self.feature_grid)

    def targets(self, x: Tensor) -> dict:
        """The online teacher's targets on ``x``, the "teacher" view (under the caller's
        autocast: the loop's)."""
        with torch.no_grad():
            return teacher_targets(self.teacher, x, blocks=self.blocks, pool=self.pool_teacher)

    def cache_spec(self, device: torch.device, *, amp: bool | None = None) -> TeacherOutputs:
        """The cached targets: float32 logits, float16 tokens, computed under the autocast the
        loop uses on ``device``; the tag names the pooling and the precision."""
        amp = amp_enabled(device, amp)
        tag = "mtl-logits"
        if self.blocks:
            tag = f"mtl-{self.blocks.name}-grid{self.adapter.grid}-pool{self.feature_grid}-f16"
        if precision_tag(device, amp):
            tag = f"{tag}-{precision_tag(device, amp)}"

        def extract(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
            with autocast(x.device, enabled=amp):
                out = teacher_targets(model, x, blocks=self.blocks, pool=self.pool_teacher)
            return {k: v.half() if k == "t_feat" else v.float() for k, v in out.items()}

        return TeacherOutputs(tag, extract)

    def forward(self, views: dict, y: torch.Tensor, **cached: Tensor) -> dict:
        s = self.model(views[self.view], return_blocks=self.blocks is not None)
        if cached and set(cached) != set(self.cached):
            raise ValueError(f"got cached targets {sorted(cached)}, expected {sorted(self.cached)}")
        t = cached or self.targets(teacher_view(views))
        hs_student = hs_teacher = None
        if self.blocks is not None:
            hs_student = [self.adapt_student(h) for h in self.blocks.pick(s["blocks"])]
            hs_teacher = t["t_blocks"] if self.blocks.every_block else [t["t_feat"]]
        kd = self.kd.compute(
            s["mlct"],
            s["mcct"],
            t["t_mlct"],
            t["t_mcct"],
            **self.weights,
            hs_student=hs_student,
            hs_teacher=hs_teacher,
        )
        cls = self.classification(s, y)
        components = {k: v.detach() for k, v in kd.items() if k != "loss"}
        return {
            "loss": cls["loss"] + kd["loss"],
            "output": heads(s),
            "cls": cls["loss"].detach(),
            "bce_mlct": cls["bce_mlct"].detach(),
            "bce_mcct": cls["bce_mcct"].detach(),
            "kd": kd["loss"].detach(),
            **components,
        }


def check_teacher(cfg: TrialConfig, teacher: nn.Module, student: MultiTaskViT) -> None:
    """The teacher must be a high-resolution vit_mtl at the student's input size."""
    uri = cfg.method.teacher_path
    wanted = "a two-headed vit_mtl teacher: register one (the lowres-kd study's teacher stage does)"
    teachers.check_teacher_config(
        uri, student="kd_vit", methods=("vit_mtl",), img_size=cfg.train.img_size, wanted=wanted
    )
    if not isinstance(teacher, MultiTaskViT):
        raise ConfigError(f"teacher {uri} is a {type(teacher).__name__}; kd_vit distils {wanted}")
    kd = get_kd(cfg.method.kd_approach)
    if kd.blocks is not None and kd.blocks.every_block and teacher.depth != student.depth:
        one_target = [get_kd(n) for n in kd_names(LAYOUT) if get_kd(n).blocks]
        others = [k.name for k in one_target if not k.blocks.every_block]
        raise ConfigError(
            f"{kd.name} pairs block i with block i, but the teacher has {teacher.depth} blocks "
            f"and the student {student.depth}; use models of equal depth, or a kd_approach "
            f"comparing one target per model: {others}"
        )


def cache_mode(cfg: TrialConfig, task: ViTKDTask, n_train: int) -> bool:
    """Whether the teacher's targets are cached (True) or computed online (False)."""
    m = cfg.method
    if not use_teacher_cache(task.kd, teacher_cache=m.teacher_cache, augment=cfg.train.augment):
        return False
    if task.blocks and m.teacher_cache == "auto":
        teacher = task.teacher
        side = min(task.adapter.grid, m.feature_grid or task.adapter.grid)
        nbytes = n_train * 2 * (teacher.num_prefix_tokens + side**2) * teacher.width
        if nbytes > CACHE_BUDGET_BYTES:
            warnings.warn(
                f"teacher targets for {n_train} images would take {nbytes / 2**30:.1f} GiB "
                f"(> {CACHE_BUDGET_BYTES / 2**30:.0f} GiB): the teacher runs online; set "
                "feature_grid (e.g. 7) to pool them, or teacher_cache=on",
                stacklevel=2,
            )
            return False
    return True


@register_method("kd_vit", config=KDViTConfig, tasks=("multilabel",), needs_teacher=True)
def build(cfg: TrialConfig, info, ctx) -> ViTKDTask:
    m, t = cfg.method, cfg.train
    if m.teacher_path is None:
        raise ConfigError("kd_vit needs teacher_path (a registered vit_mtl teacher); run a study")
    missing = [name for name in m.needed() if getattr(m, name) is None]
    if missing:
        raise ConfigError(
            f"kd_approach={m.kd_approach!r} needs {' and '.join(missing)} (it has no default); "
            "set it"
        )
    if m.low_res == 0:
        raise ConfigError(
            f"kd_vit distils into a low-resolution student: set low_res to its resolution in px, "
            f"below img_size={t.img_size} (e.g. {max(1, t.img_size // 4)}); use vit_mtl without KD"
        )
    check_low_res(m.low_res, t.img_size)
    # The student first: its initial weights depend on the seed alone, not on the teacher.
    student = build_vit(cfg, info, method="kd_vit")
    teacher = ctx.load_teacher(m.teacher_path)
    check_teacher(cfg, teacher, student)
    teacher_norm = teachers.teacher_normalization(
        m.teacher_path, dataset_fingerprint=info.fingerprint
    )
    try:
        task = ViTKDTask(
            student,
            teacher,
            info,
            m,
            normalization=model_normalization(t.model),
            teacher_normalization=teacher_norm,
        )
    except ValueError as exc:  # the adapter's token layouts differ
        raise ConfigError(f"teacher and student cannot be compared: {exc}") from None
    if cache_mode(cfg, task, len(ctx.data.split("train"))):
        # The "teacher" view without augmentation: resized, in the teacher's normalisation.
        view = Pipeline(input_size=t.img_size, mean=teacher_norm[0], std=teacher_norm[1])
        task.cached = ctx.teacher_arrays(
            m.teacher_path, split="train", pipeline=view, outputs=task.cache_spec(ctx.device)
        )
    return task
