"""Entry point ``cxrkd.studies``: study ``plugin-kd``, pneumonia-kd's ResNet-50 teacher
distilled into a ResNet-18 with the plugin's ``logit_mse`` loss (one kd_logit cell)."""

from __future__ import annotations

from dataclasses import replace

from cxrkd.spaces.pneumonia_kd import PROFILES, TEACHER
from cxrkd.spaces.studies import (
    Profile,
    SearchCell,
    Study,
    TeacherOf,
    final_cells,
    kd_stages,
    register_study,
)

STUDENT = "resnet18_kd_logit_mse"
# pneumonia-kd's profiles, and a smoke-test one: one trial per cell, one seed.
OWN_PROFILES = {**PROFILES, "smoke": replace(PROFILES["demo"], name="smoke", samples=1,
                                             teacher_samples=1, seeds=1)}  # fmt: skip


@register_study("plugin-kd", OWN_PROFILES)
def plugin_kd(profile: Profile) -> Study:
    base = dict(profile.fixed)
    teacher = {**base, **profile.teacher_fixed, "method": "transfer", "model": "resnet50",
               "freeze": False}  # fmt: skip
    kd = {**base, "method": "kd_logit", "model": "resnet18", "kd_approach": "logit_mse",
          "teacher_path": TeacherOf(TEACHER)}  # fmt: skip
    n, b = profile.samples, profile.bounds
    return Study(
        name="plugin-kd",
        task="binary",
        default_dataset="phantom-pneumonia",
        default_import=("phantom", "pneumonia", {}),
        stages=kd_stages(
            [SearchCell(TEACHER, "transfer", teacher, profile.teacher_samples, b)],
            [SearchCell(STUDENT, "kd_logit", kd, n, b)],
            final_cells([TEACHER, STUDENT], profile.seeds),
        ),
        profile=profile,
    )
