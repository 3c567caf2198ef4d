"""``dashboard.html``: one self-contained page of a run that opens offline.

plotly.js is embedded once (from the installed plotly package), each figure as a div with its
own ``Plotly.newPlot`` call. Sections (:mod:`results.sections`): overview (trials by status,
the best configuration per cell, the final models' test metrics), the search per cell
(Optuna's history, parallel coordinates and importances), an open search's validation
objectives with its Pareto front, the Pareto fronts of the final models, AUROC against
resolution, learning curves, and the final models' confusion matrices and ROC curves. The page
checks itself when it opens: the footer says how many figures were drawn and lists any that
came out empty and any script error (``#cxrkd-status``, which the browser test reads).
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Mapping, Sequence

import pandas as pd
from plotly.offline import get_plotlyjs

from cxrkd.results import sections as S
from cxrkd.results.held_out_scores import load_test_scores
from cxrkd.results.optuna_export import (
    OPTUNA_DB,
    CellKey,
    Distributions,
    cell_studies,
    export_studies,
    study_distributions,
)
from cxrkd.results.study_tables import study_tables
from cxrkd.results.table_specs import ParetoSpec
from cxrkd.trainables import storage

DASHBOARD = "dashboard.html"
_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;margin-top:2em}
.caption,.note{color:#555;max-width:70em} .note{font-style:italic}
.grid3{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:.5em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{padding:3px 9px;border-bottom:1px solid #ddd;text-align:left}
#cxrkd-status{margin-top:3em;color:#555}
#cxrkd-status.bad{color:#b00020;font-weight:bold}
nav a{margin-right:1em}
"""
# Runs first: records every script error, so the footer can report it.
_ERRORS_JS = """
window.cxrkdErrors=[];
window.addEventListener('error',function(e){window.cxrkdErrors.push(String(e.message))});
window.addEventListener('unhandledrejection',function(e){window.cxrkdErrors.push(String(e.reason))});
"""
# Runs last: every plot div must hold a drawn figure with at least one non-empty trace.
_CHECK_JS = """
(function(){
  function size(t){var n=0;['x','y','z','values','dimensions'].forEach(function(k){
    if(t[k]&&t[k].length>n)n=t[k].length});return n}
  var divs=document.querySelectorAll('.plotly-graph-div'),empty=[];
  divs.forEach(function(d){var ok=d._fullLayout&&d._fullData&&
    d._fullData.some(function(t){return size(t)>0});if(!ok)empty.push(d.id)});
  var s=document.getElementById('cxrkd-status'),errors=window.cxrkdErrors;
  s.dataset.figures=divs.length;s.dataset.empty=empty.join(' ');s.dataset.errors=errors.length;
  s.dataset.done='1';
  if(empty.length||errors.length){s.className='bad';s.textContent='Problems: '+empty.length+
    ' empty figure(s) '+empty.join(', ')+'; '+errors.length+' script error(s) '+errors.join(' | ')}
  else{s.textContent='All '+divs.length+' figures drawn.'}
})();
"""


def render_page(sections: Sequence[S.Section], *, title: str, caption: str) -> str:
    """The whole page; figure div ids are ``fig-<n>`` in page order."""
    body, n = [], 0
    for section in sections:
        body.append(f'<h2 id="{section.anchor}">{html.escape(section.title)}</h2>')
        items = []
        for part in section.parts:
            if isinstance(part, str):
                items.append(part)
                continue
            fig, height, caveat = part
            fig.update_layout(height=height, template="plotly_white")
            figure = fig.to_html(
                full_html=False,
                include_plotlyjs=False,
                div_id=f"fig-{n}",
                default_height=f"{height}px",
                config={"displaylogo": False, "responsive": True},
            )
            if caveat:
                figure = f'<div>{figure}<p class="note">{html.escape(caveat)}</p></div>'
            items.append(figure)
            n += 1
        cls = ' class="grid3"' if section.grid else ""
        body.append(f"<div{cls}>{''.join(items)}</div>")
    nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return "\n".join(
        [
            '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style>",
            f"<script>{_ERRORS_JS}</script>",
            f'<script type="text/javascript">{get_plotlyjs()}</script>',
            f"</head>\n<body>\n<h1>{html.escape(title)}</h1>",
            f'<p class="caption">{html.escape(caption)}</p>',
            f'<p class="caption">Written {stamp}; reflects the records at that time.</p>',
            f"<nav>{nav}</nav>",
            *body,
            '<footer id="cxrkd-status">Checking figures…</footer>',
            f"<script>{_CHECK_JS}</script>\n</body>\n</html>\n",
        ]
    )


def build_dashboard(
    trials: pd.DataFrame,
    epochs: pd.DataFrame,
    *,
    title: str,
    caption: str = "",
    metric: str = "val_auc",
    mode: str = "max",
    stages: Sequence[tuple[str, str]] = (),
    distributions: Mapping[CellKey, Distributions] | None = None,
    scores: Mapping[tuple[str, str], Mapping] | None = None,
    fronts: Sequence[ParetoSpec] = (),
) -> str:
    """The page's HTML. ``stages`` are ``(name, role)`` in study order; ``distributions``
    name the search cells (else inferred); ``scores`` are the final models' test scores;
    ``fronts`` the open search cells whose validation objectives are drawn."""
    names = [name for name, _ in stages]
    teacher_stages = [name for name, role in stages if role == "teacher"] or ["teacher"]
    direction = "maximize" if mode == "max" else "minimize"
    studies = cell_studies(
        trials, epochs, metric=metric, direction=direction, distributions=distributions
    )
    studies = {k: studies[k] for k in _study_order(studies, names)}
    sections = [
        S.overview(trials, metric=metric, mode=mode, stages=names, distributions=distributions),
        S.search(studies, metric=metric),
        *(S.open_front(trials, spec) for spec in fronts),
        S.pareto(trials, teacher_stages=teacher_stages),
        S.resolution(trials),
        S.learning(trials, epochs, metric=metric, stages=names),
        S.final_models(trials, scores),
    ]
    return render_page(sections, title=title, caption=caption)


def _study_order(studies, stages: Sequence[str]) -> list[CellKey]:
    rank = {s: i for i, s in enumerate(stages)}
    return sorted(studies, key=lambda k: rank.get(k[0], len(rank)))


def write_dashboard(uri: str, trials: pd.DataFrame, epochs: pd.DataFrame, **options) -> str:
    """Write :func:`build_dashboard`'s page to ``uri`` (local or ``s3://``); returns it."""
    uri = storage.normalize(uri)
    storage.write_text(uri, build_dashboard(trials, epochs, **options))
    return uri


def write_study_dashboard(
    run_uri: str,
    study,
    trials: pd.DataFrame,
    epochs: pd.DataFrame,
    *,
    out_dir: str | None = None,
    caption: str = "",
) -> dict[str, str]:
    """The dashboard and the Optuna storage of a run of ``study`` (a ``spaces.studies.Study``)
    in ``out_dir`` (default: the run folder); returns ``{"dashboard": uri, "optuna": uri}``."""
    out_dir = storage.normalize(out_dir or run_uri)
    distributions = study_distributions(study)
    direction = "maximize" if study.mode == "max" else "minimize"
    db = storage.join(out_dir, OPTUNA_DB)
    export_studies(
        db, trials, epochs, metric=study.metric, direction=direction, distributions=distributions
    )
    page = write_dashboard(
        storage.join(out_dir, DASHBOARD),
        trials,
        epochs,
        title=f"{study.name}: {run_uri.rstrip('/').rsplit('/', 1)[-1]}",
        caption=caption,
        metric=study.metric,
        mode=study.mode,
        stages=[(stage.name, stage.role) for stage in study.stages],
        distributions=distributions,
        scores=load_test_scores(run_uri, trials),
        fronts=[spec for spec in study_tables(study) if isinstance(spec, ParetoSpec)],
    )
    return {"dashboard": page, "optuna": db}
