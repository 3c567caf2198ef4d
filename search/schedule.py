"""Which ready trial a free slot runs next, for the driver and for ``cxrkd search plan``.

A study is a small graph of cells: a student cell waits for its teacher cell, a final cell for
the cell whose choice it re-trains. Free slots take the trials of the ready cells in order of
their *level*, the work on the longest path from the cell to the study's end: the span of its
own trials on the study's slots plus the largest level of the cells that wait for it
(critical-path list scheduling, "highest level first"). Handing out by stage instead leaves
the end of the longest chain (teacher search -> KD search -> KD final) or a long final cell (a
teacher re-trained on the seeds) to run alone while the other slots idle.

The levels come from the plan's counts (:mod:`search.plan_counts`: trials and epochs of each
cell, ASHA's typical case) and a cost in forward FLOPs per image (3x for a train step, the
teacher's forward where it runs online, the validation and test passes), which needs no
throughput table and no device: the order only needs the cells' ratios, and a measured table
of one device kind must not change what another runs. The driver (:mod:`search.study_run`)
and the plan's wall time (:func:`study_makespan`) use the same levels, so the plan's order is
the driver's.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable

from cxrkd.search.cells import rank
from cxrkd.search.plan_costs import Images, cell_seconds, trial_seconds
from cxrkd.search.plan_counts import CellPlan, StagePlan, plan_counts
from cxrkd.search.plan_throughput import ModelSpec, Rate, ThroughputTable, family, flops_key
from cxrkd.spaces.studies import Role, Study
from cxrkd.spaces.study_cells import front_of
from cxrkd.trainables.errors import CxrkdError

Node = tuple[int, str]  # (stage index, cell key): a final cell has its search cell's key
CASE = "typical"  # the ASHA case the levels assume


class FlopsUnknown(CxrkdError):
    """A model of the study cannot be built here to count its FLOPs."""


def study_graph(stages: list[StagePlan]) -> tuple[dict[Node, CellPlan], dict[Node, set[Node]]]:
    """The study's cells by node, in order, and for each the cells it waits for: a cell needs
    the cell of each key it names in the latest earlier stage that has one, or, in a teacher
    stage, an earlier teacher of its own stage (a teacher distilled from another one)."""
    nodes: dict[Node, CellPlan] = {}
    needs: dict[Node, set[Node]] = {}
    latest: dict[str, Node] = {}
    for index, stage in enumerate(stages):
        for cell in stage.cells:
            node = (index, cell.key)
            nodes[node] = cell
            needs[node] = {latest[k] for k in cell.needs if k in latest}
            if stage.role == Role.TEACHER:
                latest[cell.key] = node
        latest.update({cell.key: (index, cell.key) for cell in stage.cells})
    return nodes, needs


def levels(
    stages: list[StagePlan], trials: Callable[[CellPlan], list[float]], slots: int
) -> dict[Node, float]:
    """Each cell's level: its own span (its longest trial, or all its trials spread over
    ``slots``, whichever is longer) plus the highest level of the cells that need it.
    ``trials``: a cell's trial costs, in any unit."""
    cells, needs = study_graph(stages)
    after: dict[Node, list[Node]] = {n: [] for n in cells}
    for node, before in needs.items():
        for other in before:
            after[other].append(node)
    out: dict[Node, float] = {}
    for node in reversed(cells):  # a cell needs only cells before it
        costs = trials(cells[node])
        span = max(max(costs, default=0.0), sum(costs) / max(1, slots))
        out[node] = span + max((out[n] for n in after[node]), default=0.0)
    return out


class FlopRates:
    """Images per second as 1e9 over the forward GFLOPs per image (3x for a train step): a
    cost proportional to FLOPs, on no device. A CNN the table has counted at 224 px only is
    scaled from that count by its pixels (a convolution's FLOPs are); anything else is counted
    by the table (once: it keeps what it counted) by building the model without weights."""

    def __init__(self, table: ThroughputTable) -> None:
        self.table = table

    def flops(self, spec: ModelSpec) -> float:
        spec = dataclasses.replace(spec, low_res=0)  # the student runs at the model's size
        at_224 = self.table.counted.get(flops_key(dataclasses.replace(spec, img_size=224)))
        if at_224 and flops_key(spec) not in self.table.counted and family(spec.model) == "cnn":
            return at_224 * (spec.img_size / 224) ** 2
        try:
            return self.table.flops(spec)
        except Exception as exc:  # a model of the user's, built here without its weights
            raise FlopsUnknown(
                f"the FLOPs of {spec.label} cannot be counted on this machine "
                f"({type(exc).__name__}: {exc})"
            ) from exc

    def __call__(self, spec: ModelSpec, mode: str) -> Rate:
        per_image = (3 if mode == "train" else 1) * self.flops(spec)
        return Rate(1e9 / per_image, "FLOPs", False)


def flop_levels(stages: list[StagePlan], images: Images, slots: int) -> dict[Node, float]:
    """The levels the driver orders by, in GFLOPs (:class:`FlopRates`)."""
    try:
        table = ThroughputTable.load()
    except CxrkdError:  # an install without bench/: every model counted
        table = ThroughputTable({}, origin="none")
    rates = FlopRates(table)

    def trials(cell: CellPlan) -> list[float]:
        epoch, test = cell_seconds(cell, images, rates)
        return [e * epoch + test for e in cell.per_trial[CASE]]

    return levels(stages, trials, slots)


def cell_levels(study: Study, overrides: dict, splits: dict, slots: int) -> dict[tuple, float]:
    """The driver's levels by (stage name, cell key), for the study as it runs (profile,
    ``--set``, ``--only``) on a dataset of ``splits``."""
    stages = plan_counts(study, overrides)
    found = flop_levels(stages, Images(dict(splits), "the run's dataset", False), slots)
    return {(stages[i].name, key): level for (i, key), level in found.items()}


def level_of(levels: dict[tuple, float], stage: str, key: str) -> float:
    """A cell's level; a Pareto front's final cells (``KEY-paretoN``) take their cell's."""
    if (stage, key) in levels:
        return levels[(stage, key)]
    return levels.get((stage, front_of(key)), 0.0)


def study_makespan(
    stages: list[StagePlan], case: str, workers: int, order: dict[Node, float] | None = None
) -> float:
    """Seconds until the study's last trial ends when each cell starts as soon as the cells
    it needs are done and free workers take the next trial of the ready cell of the highest
    level (``order``: ``search plan`` passes the driver's :func:`flop_levels`; by default the
    levels of the cells' own seconds), earlier stages first among equals, then the cell that
    has issued fewest, as the driver's searcher hands them out."""
    cells, needs = study_graph(stages)
    if order is None:
        order = levels(stages, lambda cell: trial_seconds(cell, CASE), workers)
    position = {node: i for i, node in enumerate(cells)}
    left = {n: trial_seconds(cell, case) for n, cell in cells.items()}
    issued = dict.fromkeys(cells, 0)
    running = dict.fromkeys(cells, 0)
    done = {n for n in cells if not left[n]}
    events: list[tuple[float, int, Node]] = []  # (end time, tie-break, node)
    now, idle, serial = 0.0, max(1, workers), 0
    while True:
        while idle:
            ready = [n for n in cells if left[n] and needs[n] <= done]
            if not ready:
                break
            node = min(ready, key=lambda n: rank(order.get(n, 0.0), n[0], issued[n], position[n]))
            heapq.heappush(events, (now + left[node].pop(0), serial, node))
            serial, idle = serial + 1, idle - 1
            issued[node], running[node] = issued[node] + 1, running[node] + 1
        if not events:
            return now
        now, _, node = heapq.heappop(events)
        idle, running[node] = idle + 1, running[node] - 1
        if not left[node] and not running[node]:
            done.add(node)
