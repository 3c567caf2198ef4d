"""Study ``pneumonia-kd``: the pneumonia paper (seeds/000) as a search.

Stages: a fine-tuned ResNet-50 teacher (small search, registered once per fingerprint) ->
the baseline CNN, ResNet-18 fine-tuned, ResNet-18 as a frozen feature extractor and the
ResNet-18 KD student, side by side, each with its own Optuna study and ASHA -> the best
configuration of each (and the teacher's) re-trained on several seeds and tested.
"""

from __future__ import annotations

from cxrkd.spaces.studies import (
    Profile,
    SearchCell,
    Study,
    TeacherOf,
    final_cells,
    kd_stages,
    register_study,
)

PROFILES = {
    # CPU-sized: minutes on 2 cores. Nothing can be downloaded, so no ImageNet: the ResNet-18
    # rows start from a backbone pretrained once on the OTHER phantom preset, `findings`
    # (trainables.phantom_backbones: ~1 minute, cached in $CXRKD_HOME/weights/), so the frozen
    # extractor has features to transfer instead of sitting at chance. The ResNet-50 teacher
    # is trained from scratch (pretraining it would cost ~1.7x ResNet-18's minute).
    # 80 steps of batch 32 at 32 px: ResNet-18 from scratch reaches a validation AUC of about
    # 0.78 on the phantom at lr 2e-3, at 1e-4 it is still near chance; hence the lr range.
    "demo": Profile(
        name="demo",
        fixed={
            "img_size": 32,
            "epochs": 4,
            "pretrained": True,
            "weights_dir": "cxrkd:phantom-findings",
            "steps_per_epoch": 20,
            "batch_size": 32,
            "augment": False,
            "warmup_epochs": 0.0,
        },
        teacher_fixed={"pretrained": False},
        samples=3,
        teacher_samples=2,
        seeds=2,
        grace_period=2,
        bounds={"lr": (5e-4, 5e-3)},
        device_hint="CPU",
    ),
    # The paper's setting: 224 px ImageNet-pretrained ResNets on a GPU cluster.
    "paper": Profile(
        name="paper",
        fixed={
            "img_size": 224,
            "epochs": 25,
            "pretrained": True,
            "steps_per_epoch": 0,
            "augment": True,
            "warmup_epochs": 1.0,
        },
        samples=24,
        teacher_samples=8,
        seeds=3,
        grace_period=4,
        device_hint="GPU cluster",
    ),
}

TEACHER = "resnet50_teacher"
# The cells the final stage re-trains, in the order of the table's rows
# (results.pneumonia_tables).
FINAL = ("baseline_cnn", "resnet18_finetuned", "resnet18_frozen", TEACHER, "resnet18_kd")


def teacher_cell(profile: Profile) -> SearchCell:
    """The fine-tuned ResNet-50 teacher's cell (pneumonia-kd-open has the same one, so runs of
    both studies on one storage share the registered teacher)."""
    fixed = {**profile.fixed, **profile.teacher_fixed, "method": "transfer",
             "model": "resnet50", "freeze": False}  # fmt: skip
    return SearchCell(TEACHER, "transfer", fixed, profile.teacher_samples, profile.bounds)


def kd_student(profile: Profile) -> dict:
    """What the ResNet-18 KD student's cell fixes (its KD loss: kd_logit's default, hinton)."""
    return {**profile.fixed, "method": "kd_logit", "model": "resnet18",
            "teacher_path": TeacherOf(TEACHER)}  # fmt: skip


@register_study("pneumonia-kd", PROFILES)
def pneumonia_kd(profile: Profile) -> Study:
    base = dict(profile.fixed)
    n, b = profile.samples, profile.bounds
    cnn = {**base, "method": "cnn_baseline", "model": "cnn_baseline", "pretrained": False}
    tl = {**base, "method": "transfer", "model": "resnet18"}
    kd = kd_student(profile)
    return Study(
        name="pneumonia-kd",
        task="binary",
        default_dataset="phantom-pneumonia",
        default_import=("phantom", "pneumonia", {}),
        stages=kd_stages(
            [teacher_cell(profile)],
            [
                SearchCell("baseline_cnn", "cnn_baseline", cnn, n, b),
                SearchCell("resnet18_finetuned", "transfer", {**tl, "freeze": False}, n, b),
                SearchCell("resnet18_frozen", "transfer", {**tl, "freeze": True}, n, b),
                SearchCell("resnet18_kd", "kd_logit", kd, n, b),
            ],
            final_cells(FINAL, profile.seeds),
        ),
        profile=profile,
    )
