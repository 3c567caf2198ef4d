"""``kd_logit``: a one-logit student distilled from a registered teacher by a KD loss of the
``binary`` layout (:mod:`trainables.kd`): ``hinton`` (default; the pneumonia paper's Hinton
KD, section 3.3.3), ``dkd``, ``fitnets``, and any loss registered for that layout.

On a multi-class dataset the student and the teacher have one logit per class and only
``hinton`` applies, in Hinton's original softmax form over the classes: ``alpha * CE +
(1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))`` (:func:`trainables.losses.hinton_kd`
with ``(B, C)`` logits and class-index targets); the other losses of the layout compare one
logit per image and are refused there with a ``ConfigError``.

``kd_approach`` names the loss; its weights (``alpha``, ``beta``, ``gamma``, ``temperature``)
mean what its module says. A weight left unset (None) takes the loss's default (``hinton``:
alpha 0.5, T 4, the values of this method before the registry), and the config holds the
value used; one the loss does not read must stay unset (refused, as ``kd_vit`` does). With
``hinton`` the Task computes exactly :func:`trainables.losses.hinton_kd`
(``alpha * CE + (1 - alpha) * T^2 * KL``, softmax over ``[0, z]``), as before the registry.

Teacher outputs (:func:`trainables.kd.use_teacher_cache`): with ``teacher_cache`` ``auto``
(default), a loss that reads only logits and augmentation off, the frozen teacher's logits
on the training images are computed once per teacher (stored in the teacher registry, same
key as before the registry) and gathered with each batch: a student step costs no teacher
forward. With augmentation on (every step a new view) or a loss comparing features (a CNN
stage's map per image is not cached), the teacher runs online on exactly the view the
student sees, its stages tapped with forward hooks (:class:`trainables.features.FeatureTaps`).
``teacher_cache=on`` is refused where it cannot apply; ``off`` forces the online teacher.

Features: the loss's :class:`trainables.kd.Blocks` picks from each model's stages
(:func:`trainables.features.stage_names`: ``layer1..layer4`` of a ResNet), and a
:class:`trainables.features.FeatureProjection` per picked pair puts the student's map on the
teacher's layout; the projections are trained with the student (in the optimiser and the
checkpoint's ``state.pt``) and never exported.

The teacher sees the "teacher" view: the student's high-resolution image normalised with the
teacher's own statistics (they may differ: a ResNet teacher, a ViT student). Its logits come
from an fp32 head (``fp32_head``), online and cached alike, and the cache is computed under
the same autocast as the online forward (``precision.amp_enabled``), so the two are equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from cxrkd.trainables import teachers
from cxrkd.trainables.config import ConfigError, TrialConfig
from cxrkd.trainables.context import TeacherOutputs
from cxrkd.trainables.data.augment import Pipeline
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.features import FeatureProjection, FeatureTaps, probe_shapes, stage_names
from cxrkd.trainables.kd import (
    LAYOUTS,
    WEIGHTS,
    Variant,
    check_approach,
    check_weights,
    get_kd,
    kd_names,
    use_teacher_cache,
)
from cxrkd.trainables.methods import register_method
from cxrkd.trainables.models import create_model, model_normalization
from cxrkd.trainables.precision import amp_enabled, autocast, fp32_head, precision_tag
from cxrkd.trainables.task import Task, class_logits, teacher_view

LAYOUT = "binary"  # the heads of trainables.kd's losses this method takes: one logit
# The losses of that layout that also take C logits per image and class-index targets.
MULTICLASS_APPROACHES = ("hinton",)


@dataclass(frozen=True)
class KDLogitConfig:
    kd_approach: str = LAYOUTS[LAYOUT].default  # a KD loss of layout binary: hinton | dkd ...
    # The KD weights; what each means is the loss's (its module in trainables/kd). Unset:
    # the loss's default (hinton: alpha 0.5, temperature 4), filled in on construction.
    alpha: float | None = None  # hinton: weight of the hard-label term, in [0, 1]
    beta: float | None = None
    gamma: float | None = None  # feature (hint) term
    temperature: float | None = None
    teacher_path: str | None = None  # registry URI; the study runner fills it in
    teacher_cache: str = "auto"  # auto | on | off

    def __post_init__(self) -> None:
        # The resolved config (saved beside each checkpoint) holds the values the loss used.
        if self.kd_approach in kd_names(LAYOUT):
            for name, value in get_kd(self.kd_approach).on(LAYOUT).defaults.items():
                if getattr(self, name) is None:
                    object.__setattr__(self, name, value)

    def validate(self) -> None:
        variant = check_approach(LAYOUT, self.kd_approach)
        check_weights(variant, self.weights())
        missing = [name for name in variant.params if getattr(self, name) is None]
        if missing:
            raise ConfigError(
                f"kd_approach={self.kd_approach!r} needs {' and '.join(missing)} (it has no "
                "default); set it"
            )
        if self.teacher_cache not in ("auto", "on", "off"):
            raise ConfigError(
                f"bad value teacher_cache={self.teacher_cache!r}: expected auto, on or off"
            )

    def weights(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in WEIGHTS}


def teacher_outputs_spec(device: torch.device, *, amp: bool | None = None) -> TeacherOutputs:
    """The cached teacher logits: fp32 head, under the autocast the loop uses on ``device``."""
    amp = amp_enabled(device, amp)

    def extract(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast(x.device, enabled=amp):
            return {"logits": fp32_head(model, x)}

    # fp32: the tag "" shares the key of context.MODEL_OUTPUT, which computes the same logits.
    return TeacherOutputs(precision_tag(device, amp), extract)


class LogitKDTask(Task):
    """``kd``: the loss on the binary layout; ``projections``: one learned projection per
    compared stage pair (None for a logits-only loss), trained, never exported."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        cfg: KDLogitConfig,
        col: int,
        *,
        multiclass: bool = False,
        normalization: tuple[float, float],
        teacher_normalization: tuple[float, float],
        input_size: int,
    ):
        super().__init__(student, normalization=normalization)
        self.teacher = teacher
        self.teacher_normalization = tuple(teacher_normalization)
        self.kd: Variant = check_approach(LAYOUT, cfg.kd_approach)
        self.weights = {name: getattr(cfg, name) for name in self.kd.params}
        self.col = col
        self.multiclass = multiclass
        self.cached: np.ndarray | None = None
        self.student_stages: tuple[str, ...] = ()
        self.teacher_stages: tuple[str, ...] = ()
        self.projections: nn.ModuleList | None = None
        if self.kd.blocks is not None:
            self.student_stages = tuple(stage_names(student))
            self.teacher_stages = tuple(stage_names(teacher))
            pick = self.kd.blocks.pick
            s_shapes = pick(probe_shapes(student, self.student_stages, input_size))
            t_shapes = pick(probe_shapes(teacher, self.teacher_stages, input_size))
            if len(s_shapes) != len(t_shapes):
                raise ConfigError(
                    f"{self.kd.name} compares {len(s_shapes)} student stage(s) with "
                    f"{len(t_shapes)} teacher stage(s); pick models of equal depth"
                )
            self.projections = nn.ModuleList(
                FeatureProjection.between(s, t) for s, t in zip(s_shapes, t_shapes, strict=True)
            )

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher]

    def side_arrays(self, split: str) -> dict[str, np.ndarray]:
        return (
            {"teacher_logits": self.cached} if split == "train" and self.cached is not None else {}
        )

    def forward(self, views: dict, y: torch.Tensor, teacher_logits=None) -> dict:
        hs_teacher = None
        if teacher_logits is None:
            with torch.no_grad(), FeatureTaps(self.teacher, self.teacher_stages) as taps:
                teacher_logits = fp32_head(self.teacher, teacher_view(views))
            hs_teacher = self._compared(taps.outputs(), "pool_teacher")
        elif self.projections is not None:
            raise ValueError(f"{self.kd.name} compares features: run the teacher online")
        with FeatureTaps(self.model, self.student_stages) as taps:
            s = self.predict(views)
        out = self.kd.compute(
            s,
            class_logits(teacher_logits, multiclass=self.multiclass),
            y.argmax(dim=1) if self.multiclass else y[:, self.col],
            **self.weights,
            hs_student=self._compared(taps.outputs(), "adapt_student"),
            hs_teacher=hs_teacher,
        )
        components = {k: v.detach() for k, v in out.items() if k != "loss"}
        return {"loss": out["loss"], "output": s, **components}

    def _compared(self, stages: list[Tensor], side: str) -> list[Tensor] | None:
        """The picked stages of one side on the common layout; None without features."""
        if self.projections is None:
            return None
        picked = self.kd.blocks.pick(stages)
        return [getattr(p, side)(h) for p, h in zip(self.projections, picked, strict=True)]

    def predict(self, views: dict) -> torch.Tensor:
        return class_logits(fp32_head(self.model, views["hr"]), multiclass=self.multiclass)


def check_teacher(cfg: TrialConfig, *, task: str) -> None:
    """The teacher must be a classifier of this task (one logit, or one per class: a method
    registered for it, e.g. ``transfer``) trained at the student's input size (as ``kd_vit``
    checks its own)."""
    from cxrkd.trainables.methods import load_methods

    methods = sorted(n for n, m in load_methods().items() if task in m.tasks)
    kind = "a one-logit" if task == "binary" else "a one-logit-per-class"
    teachers.check_teacher_config(
        cfg.method.teacher_path,
        student="kd_logit",
        methods=methods,
        img_size=cfg.train.img_size,
        wanted=f"{kind} {task} classifier (methods {methods}): register one (the "
        "pneumonia-kd study's teacher stage does)",
    )


@register_method(
    "kd_logit", config=KDLogitConfig, tasks=("binary", "multiclass"), needs_teacher=True
)
def build(cfg: TrialConfig, info, ctx) -> LogitKDTask:
    m = cfg.method
    if m.teacher_path is None:
        raise ConfigError("kd_logit needs teacher_path (a registered teacher); run a study")
    variant = check_approach(LAYOUT, m.kd_approach)
    multiclass = info.task == "multiclass"
    if multiclass and m.kd_approach not in MULTICLASS_APPROACHES:
        raise ConfigError(
            f"kd_approach={m.kd_approach!r} distils one logit per image; on the multi-class "
            f"dataset {info.name!r} kd_logit takes only {list(MULTICLASS_APPROACHES)} (softmax "
            "KD over the classes): set kd_approach=hinton"
        )
    cached = use_teacher_cache(variant, teacher_cache=m.teacher_cache, augment=cfg.train.augment)
    # The student first: it draws the same initial weights as a `transfer` student of that seed.
    student = create_model(
        cfg.train.model,
        num_outputs=info.num_outputs,
        pretrained=cfg.train.pretrained,
        weights_dir=cfg.train.weights_dir,
    )
    # Missing, of another dataset, of another kind or input size: refused before it is built.
    teachers.read_record(m.teacher_path, dataset_fingerprint=info.fingerprint)
    check_teacher(cfg, task=info.task)
    teacher = ctx.load_teacher(m.teacher_path)
    teacher_norm = teachers.teacher_normalization(
        m.teacher_path, dataset_fingerprint=info.fingerprint
    )
    try:
        task = LogitKDTask(
            student,
            teacher,
            m,
            info.label_columns()[1],
            multiclass=multiclass,
            normalization=model_normalization(cfg.train.model),
            teacher_normalization=teacher_norm,
            input_size=cfg.train.img_size,
        )
    except ConfigError:
        raise
    except CxrkdError as exc:  # a model without named stages, for a loss comparing them
        raise ConfigError(f"{m.kd_approach} cannot compare these models: {exc}") from None
    if cached:
        # The "teacher" view without augmentation: resized, in the teacher's normalisation.
        view = Pipeline(input_size=cfg.train.img_size, mean=teacher_norm[0], std=teacher_norm[1])
        arrays = ctx.teacher_arrays(
            m.teacher_path, split="train", pipeline=view, outputs=teacher_outputs_spec(ctx.device)
        )
        task.cached = arrays["logits"]
    return task
