"""The table of study ``pneumonia-kd-open`` (``spaces.pneumonia_open``): the ResNet-18 students
of every KD loss of the binary layout side by side, each against the same ResNet-18 without KD
(paired test), with the ResNet-50 teacher they distilled from. The KD rows are the study's
``kd_logit`` cells, labelled with their loss's ``label`` from the registry (trainables.kd)."""

from __future__ import annotations

from cxrkd.results.pneumonia_tables import METRICS, OPTIM
from cxrkd.results.study_tables import register_tables
from cxrkd.results.table_specs import TableSpec
from cxrkd.spaces.pneumonia_kd import TEACHER
from cxrkd.spaces.pneumonia_open import BASELINE
from cxrkd.spaces.studies import Study
from cxrkd.trainables.kd import get_kd, layout_of


@register_tables("pneumonia-kd-open")
def pneumonia_open_tables(study: Study) -> list[TableSpec]:
    layout = layout_of("kd_logit")
    kd = {  # cell key -> the KD loss on kd_logit's heads, in the study's order
        c.key: get_kd(c.fixed["kd_approach"]).on(layout)
        for c in study.stage("search").cells
        if c.fixed["method"] == "kd_logit"
    }
    rows = [(BASELINE, "ResNet-18 fine-tuned (no KD)"), (TEACHER, "ResNet-50 teacher")]
    rows += [(key, f"ResNet-18 KD: {loss.label}") for key, loss in kd.items()]
    return [
        TableSpec(
            rows=rows,
            metrics=METRICS,
            hyperparams={
                BASELINE: OPTIM,
                TEACHER: OPTIM,
                **{key: [*OPTIM, *loss.params] for key, loss in kd.items()},
            },
            title="KD losses for ResNet-50 -> ResNet-18: pneumonia vs normal, test split",
            stem="pneumonia_kd_open",
            baselines=dict.fromkeys(kd, BASELINE),
            registered_teachers=(TEACHER,),
            note=(
                "Each KD row is one KD loss, its weights searched in a cell of its own; p "
                "compares it with 'ResNet-18 fine-tuned (no KD)', the same student trained "
                "without a teacher. 'ResNet-50 teacher (distilled from)' is the registered "
                "checkpoint every KD student learned from (one model: no ±)."
            ),
        )
    ]
