"""Entry point ``cxrkd.study_tables``: the table of study ``plugin-kd``."""

from __future__ import annotations

from cxrkd.results.study_tables import register_tables
from cxrkd.results.table_specs import TableSpec
from cxrkd.spaces.pneumonia_kd import TEACHER
from cxrkd.trainables.kd import get_kd

STUDENT = "resnet18_kd_logit_mse"  # cxrkd_plugin_example.study's cell


@register_tables("plugin-kd")
def plugin_kd_tables(study) -> list[TableSpec]:
    loss = get_kd("logit_mse")
    return [
        TableSpec(
            rows=[(TEACHER, "ResNet-50 teacher"), (STUDENT, f"ResNet-18 KD: {loss.label}")],
            metrics=[("test_auc", "AUC"), ("test_auprc", "AUPRC")],
            hyperparams={TEACHER: ["lr"], STUDENT: ["lr", "alpha"]},
            title="Plugin KD loss: ResNet-50 -> ResNet-18, test split",
            stem="plugin_kd",
            registered_teachers=(TEACHER,),
        )
    ]
