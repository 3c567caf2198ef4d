"""Study ``pneumonia-kd-open``: which KD loss distils the pneumonia paper's ResNet-50 into a
ResNet-18 best (issue 11).

Stages: ``pneumonia-kd``'s ResNet-50 teacher (the same cell and profiles, so runs of both
studies on one storage share the registered teacher) -> side by side, the ResNet-18
fine-tuned without KD (the paired baseline) and one ``kd_logit`` cell per KD loss of the
binary layout (:mod:`trainables.kd`: ``hinton``, ``dkd``, ``fitnets``, and any loss added
there), each with its own Optuna study and ASHA, searching the optimiser and what its loss
reads -> every cell's chosen configuration (and the teacher's) re-trained on seeds and
tested. Its table (one row per cell, labels from the registry) is
``results.pneumonia_open_tables``.
"""

from __future__ import annotations

from cxrkd.spaces.pneumonia_kd import PROFILES, TEACHER, kd_student, teacher_cell
from cxrkd.spaces.studies import (
    Profile,
    SearchCell,
    Study,
    final_cells,
    kd_stages,
    register_study,
)
from cxrkd.trainables.kd import kd_names, layout_of

BASELINE = "resnet18_finetuned"  # the same ResNet-18 without a teacher: each KD row's pair


def kd_key(approach: str) -> str:
    return f"resnet18_kd_{approach}"


@register_study("pneumonia-kd-open", PROFILES)
def pneumonia_kd_open(profile: Profile) -> Study:
    n, b = profile.samples, profile.bounds
    tl = {**profile.fixed, "method": "transfer", "model": "resnet18", "freeze": False}
    kd = kd_student(profile)
    approaches = kd_names(layout_of("kd_logit"))
    students = [SearchCell(BASELINE, "transfer", tl, n, b)] + [
        SearchCell(kd_key(a), "kd_logit", {**kd, "kd_approach": a}, n, b) for a in approaches
    ]
    return Study(
        name="pneumonia-kd-open",
        task="binary",
        default_dataset="phantom-pneumonia",
        default_import=("phantom", "pneumonia", {}),
        stages=kd_stages(
            [teacher_cell(profile)],  # pneumonia-kd's, value for value
            students,
            final_cells([TEACHER, *(c.key for c in students)], profile.seeds),
        ),
        profile=profile,
    )
