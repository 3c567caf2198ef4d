"""``kd_logit``: Hinton distillation from a registered teacher (pneumonia paper, section 3.3.3).

``loss = alpha * CE(y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))``
(:func:`trainables.losses.hinton_kd`; one logit per image, so the softmax is over ``[0, z]``).

Teacher outputs: with ``teacher_cache`` ``auto`` (default) and augmentation off, the frozen
teacher's logits on the training images are computed once per teacher (stored in the
teacher registry) and gathered with each batch: a student step costs no teacher forward.
With augmentation on, every step sees a new view, so the teacher runs online on exactly the
view the student sees. ``teacher_cache=on`` with augmentation is refused; ``off`` forces the
online teacher (for measuring it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainables.config import ConfigError, TrialConfig
from trainables.data.augment import Pipeline
from trainables.losses import hinton_kd
from trainables.methods import register_method
from trainables.models import create_model
from trainables.task import Task, squeeze_logit


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


class LogitKDTask(Task):
    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: KDLogitConfig, col: int):
        super().__init__(student)
        self.teacher = teacher
        self.alpha, self.temperature, self.col = cfg.alpha, cfg.temperature, col
        self.cached: np.ndarray | None = None

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher]

    def side_arrays(self, split: str) -> dict[str, np.ndarray]:
        return (
            {"teacher_logits": self.cached} if split == "train" and self.cached is not None else {}
        )

    def forward(self, views: dict, y: torch.Tensor, teacher_logits=None) -> dict:
        x = views["hr"]
        if teacher_logits is None:
            with torch.no_grad():
                teacher_logits = self.teacher(x)
        s = squeeze_logit(self.model(x))
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
        return squeeze_logit(self.model(views["hr"]))


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
    teacher = ctx.load_teacher(m.teacher_path)
    task = LogitKDTask(student, teacher, m, info.label_columns()[1])
    if m.teacher_cache == "on" or (m.teacher_cache == "auto" and not cfg.train.augment):
        view = Pipeline(input_size=cfg.train.img_size)
        task.cached = ctx.teacher_outputs(m.teacher_path, split="train", pipeline=view)
    return task
