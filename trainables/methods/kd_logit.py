"""``kd_logit``: Hinton distillation from a registered teacher (pneumonia paper, section 3.3.3).

``loss = alpha * CE(y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))``
(:func:`trainables.losses.hinton_kd`; one logit per image, so the softmax is over ``[0, z]``).

Teacher outputs: with ``teacher_cache`` ``auto`` (default) and augmentation off, the frozen
teacher's logits on the training images are computed once per teacher (stored in the
teacher registry) and gathered with each batch: a student step costs no teacher forward.
With augmentation on, every step sees a new view, so the teacher runs online on exactly the
view the student sees. ``teacher_cache=on`` with augmentation is refused; ``off`` forces the
online teacher (for measuring it).

The teacher sees the "teacher" view: the student's high-resolution image normalised with the
teacher's own statistics (they may differ: a ResNet teacher, a ViT student). Its logits come
from an fp32 head (``fp32_head``), online and cached alike, and the cache is computed under
the same autocast as the online forward (``precision.amp_enabled``), so the two are equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cxrkd.trainables import teachers
from cxrkd.trainables.config import ConfigError, TrialConfig
from cxrkd.trainables.context import TeacherOutputs
from cxrkd.trainables.data.augment import Pipeline
from cxrkd.trainables.losses import hinton_kd
from cxrkd.trainables.methods import register_method
from cxrkd.trainables.models import create_model, model_normalization
from cxrkd.trainables.precision import amp_enabled, autocast, fp32_head, precision_tag
from cxrkd.trainables.task import Task, squeeze_logit, teacher_view


@dataclass(frozen=True)
class KDLogitConfig:
    alpha: float = 0.5  # weight of the hard-label term
    temperature: float = 4.0
    teacher_path: str | None = None  # registry URI; the study runner fills it in
    teacher_cache: str = "auto"  # auto | on | off

    def validate(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"bad value alpha={self.alpha!r}: expected in [0, 1]")
        if not self.temperature > 0:
            raise ConfigError(f"bad value temperature={self.temperature!r}: expected > 0")
        if self.teacher_cache not in ("auto", "on", "off"):
            raise ConfigError(
                f"bad value teacher_cache={self.teacher_cache!r}: expected auto, on or off"
            )


def teacher_outputs_spec(device: torch.device, *, amp: bool | None = None) -> TeacherOutputs:
    """The cached teacher logits: fp32 head, under the autocast the loop uses on ``device``."""
    amp = amp_enabled(device, amp)

    def extract(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast(x.device, enabled=amp):
            return {"logits": fp32_head(model, x)}

    # fp32: the tag "" shares the key of context.MODEL_OUTPUT, which computes the same logits.
    return TeacherOutputs(precision_tag(device, amp), extract)


class LogitKDTask(Task):
    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        cfg: KDLogitConfig,
        col: int,
        *,
        normalization: tuple[float, float],
        teacher_normalization: tuple[float, float],
    ):
        super().__init__(student, normalization=normalization)
        self.teacher = teacher
        self.teacher_normalization = tuple(teacher_normalization)
        self.alpha, self.temperature, self.col = cfg.alpha, cfg.temperature, col
        self.cached: np.ndarray | None = None

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher]

    def side_arrays(self, split: str) -> dict[str, np.ndarray]:
        return (
            {"teacher_logits": self.cached} if split == "train" and self.cached is not None else {}
        )

    def forward(self, views: dict, y: torch.Tensor, teacher_logits=None) -> dict:
        if teacher_logits is None:
            with torch.no_grad():
                teacher_logits = fp32_head(self.teacher, teacher_view(views))
        s = squeeze_logit(fp32_head(self.model, views["hr"]))
        out = hinton_kd(
            s,
            squeeze_logit(teacher_logits),
            y[:, self.col],
            alpha=self.alpha,
            temperature=self.temperature,
        )
        return {
            "loss": out["loss"],
            "output": s,
            "ce": out["ce"].detach(),
            "kd": out["kd"].detach(),
        }

    def predict(self, views: dict) -> torch.Tensor:
        return squeeze_logit(fp32_head(self.model, views["hr"]))


def check_teacher(cfg: TrialConfig, *, task: str) -> None:
    """The teacher must be a one-logit classifier of this task (a method registered for it,
    e.g. ``transfer``) trained at the student's input size (as ``kd_vit`` checks its own)."""
    from cxrkd.trainables.methods import load_methods

    methods = sorted(n for n, m in load_methods().items() if task in m.tasks)
    teachers.check_teacher_config(
        cfg.method.teacher_path,
        student="kd_logit",
        methods=methods,
        img_size=cfg.train.img_size,
        wanted=f"a one-logit {task} classifier (methods {methods}): register one (the "
        "pneumonia-kd study's teacher stage does)",
    )


@register_method("kd_logit", config=KDLogitConfig, tasks=("binary",), needs_teacher=True)
def build(cfg: TrialConfig, info, ctx) -> LogitKDTask:
    m = cfg.method
    if m.teacher_path is None:
        raise ConfigError("kd_logit needs teacher_path (a registered teacher); run a study")
    if m.teacher_cache == "on" and cfg.train.augment:
        raise ConfigError(
            "teacher_cache=on needs augment=false (cached outputs are for un-augmented images); "
            "use teacher_cache=auto to run the teacher online when augmenting"
        )
    # The student first: it draws the same initial weights as a `transfer` student of that seed.
    student = create_model(
        cfg.train.model,
        num_outputs=1,
        pretrained=cfg.train.pretrained,
        weights_dir=cfg.train.weights_dir,
    )
    # Missing, of another dataset, of another kind or input size: refused before it is built.
    teachers.read_record(m.teacher_path, dataset_fingerprint=info.fingerprint)
    check_teacher(cfg, task="binary")
    teacher = ctx.load_teacher(m.teacher_path)
    teacher_norm = teachers.teacher_normalization(
        m.teacher_path, dataset_fingerprint=info.fingerprint
    )
    task = LogitKDTask(
        student,
        teacher,
        m,
        info.label_columns()[1],
        normalization=model_normalization(cfg.train.model),
        teacher_normalization=teacher_norm,
    )
    if m.teacher_cache == "on" or (m.teacher_cache == "auto" and not cfg.train.augment):
        # The "teacher" view without augmentation: resized, in the teacher's normalisation.
        view = Pipeline(input_size=cfg.train.img_size, mean=teacher_norm[0], std=teacher_norm[1])
        arrays = ctx.teacher_arrays(
            m.teacher_path, split="train", pipeline=view, outputs=teacher_outputs_spec(ctx.device)
        )
        task.cached = arrays["logits"]
    return task
