"""The method registry and the Task contract, for every registered method, plus what each
method's builder refuses and wires (freezing, dropout, the KD loss it computes)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    EXAMPLES,
    TEACHERS,
    example_bundle,
    example_config,
    first_batch,
    train_teacher,
)

from cxrkd.trainables.config import ConfigError, parse_config
from cxrkd.trainables.context import DataBundle, TrialContext
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.methods import get_method, load_methods, register_method
from cxrkd.trainables.task import Task

METHODS = sorted(load_methods())
CPU = torch.device("cpu")
BATCH = 6


def task_of(method: str) -> str:
    """The dataset task the registry-wide tests train ``method`` on."""
    return load_methods()[method].tasks[0]


@pytest.fixture(scope="module")
def bundles() -> dict[str, DataBundle]:
    return {task: example_bundle(task) for task in ("binary", "multilabel")}


@pytest.fixture(scope="module")
def data(bundles) -> DataBundle:
    return bundles["binary"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, bundles):
    """``teachers(task)``: a registered teacher for that task's dataset, trained on first use."""
    uris: dict[str, str] = {}

    def get(task: str) -> str:
        if task not in uris:
            storage = tmp_path_factory.mktemp(f"run-{task}")
            uris[task] = train_teacher(storage, bundles[task], **TEACHERS[task])
        return uris[task]

    return get


@pytest.fixture(scope="module")
def teacher_uri(teachers) -> str:
    return teachers("binary")


def build_task(flat: dict, data: DataBundle) -> Task:
    torch.manual_seed(0)
    method = get_method(flat["method"])
    return method.build(parse_config(flat), data.info, TrialContext(device=CPU, data=data))


def example_task(method: str, bundles, teachers) -> tuple[Task, DataBundle]:
    data = bundles[task_of(method)]
    needs = load_methods()[method].needs_teacher
    flat = example_config(method, teachers(task_of(method)) if needs else None)
    return build_task(flat, data), data


def build(method: str, data: DataBundle, teacher_uri: str | None = None, **overrides) -> Task:
    """A binary method's task from its example config plus ``overrides``."""
    return build_task({**example_config(method, teacher_uri), **overrides}, data)


def check_output(output, data: DataBundle) -> None:
    """The Task contract's ``output``: one logit per image (binary), or both heads."""
    if data.info.task == "binary":
        assert output.shape == (BATCH,)
    else:
        assert set(output) == {"mlct", "mcct"}
        assert output["mlct"].shape == (BATCH, len(data.info.finding_labels))
        assert output["mcct"].shape == (BATCH,)


# --- registry -----------------------------------------------------------------------------


def test_registry_holds_the_studies_methods():
    assert {"cnn_baseline", "transfer", "kd_logit"} <= set(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_has_an_example_for_the_registry_wide_tests(method):
    assert method in EXAMPLES, f"add an example config for {method!r} to helpers.EXAMPLES"
    parse_config(example_config(method, "/storage/teachers/x"))


@pytest.mark.parametrize("method", METHODS)
def test_method_entry_is_well_formed(method):
    entry = load_methods()[method]
    assert entry.name == method
    assert entry.tasks and set(entry.tasks) <= {"binary", "multiclass", "multilabel"}
    assert dataclasses.is_dataclass(entry.config_cls)
    assert entry.config_cls.__dataclass_params__.frozen
    entry.config_cls().validate()  # the defaults are valid


def test_a_second_method_under_one_name_is_refused():
    with pytest.raises(CxrkdError, match="method 'transfer' registered twice"):
        register_method("transfer", config=object, tasks=("binary",))(lambda *a: None)


def test_unknown_method_names_close_matches_and_known_methods():
    with pytest.raises(CxrkdError, match=r"unknown method 'kd_logits' \(did you mean kd_logit"):
        get_method("kd_logits")
    with pytest.raises(CxrkdError, match=r"known methods: \["):
        get_method("zzz")


# --- the Task contract, for every method --------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_task_returns_loss_output_and_detached_components(method, bundles, teachers):
    task, data = example_task(method, bundles, teachers)
    task.train()
    views, y, extras = first_batch(task, data)
    out = task(views, y, **extras)

    assert out["loss"].ndim == 0 and out["loss"].requires_grad and torch.isfinite(out["loss"])
    check_output(out["output"], data)
    components = {k: v for k, v in out.items() if k not in ("loss", "output")}
    assert components, "a task names its loss terms (ce, kd, ...)"
    for name, value in components.items():
        assert value.ndim == 0 and not value.requires_grad, name

    out["loss"].backward()
    trainable = {id(p) for p in task.trainable_parameters()}
    for name, p in task.named_parameters():
        if id(p) in trainable:
            assert p.grad is not None, f"{name} is trainable but got no gradient"
        else:
            assert p.grad is None, f"{name} is frozen but got a gradient"


@pytest.mark.parametrize("method", METHODS)
def test_predict_is_the_deployed_models_output(method, bundles, teachers):
    task, data = example_task(method, bundles, teachers)
    task.eval()
    views, y, extras = first_batch(task, data)
    with torch.no_grad():
        torch.testing.assert_close(task.predict(views), task(views, y, **extras)["output"])


@pytest.mark.parametrize("method", METHODS)
def test_frozen_parts_stay_in_eval_mode_and_out_of_the_optimiser(method, bundles, teachers):
    task, data = example_task(method, bundles, teachers)
    task.train()
    assert task.model.training
    trainable = {id(p) for p in task.trainable_parameters()}
    for module in task.frozen_modules():
        assert not module.training
        assert not any(id(p) in trainable for p in module.parameters())
    for split in ("val", "test"):  # side arrays only ever come with training batches
        assert task.side_arrays(split) == {}
    for name, array in task.side_arrays("train").items():
        assert array.shape[0] == len(data.split("train")), name


# --- what each builder refuses and wires --------------------------------------------------


def test_cnn_baseline_refuses_other_models_and_pretrained_weights(data):
    with pytest.raises(ConfigError, match="trains model 'cnn_baseline', not 'resnet18'.*transfer"):
        build("cnn_baseline", data, model="resnet18")
    with pytest.raises(ConfigError, match="set pretrained=false"):
        build("cnn_baseline", data, pretrained=True)


def test_cnn_baseline_uses_the_configured_dropout(data):
    assert build("cnn_baseline", data, dropout=0.3).model.drop.p == 0.3


def test_classifier_loss_is_bce_on_the_label(data):
    task = build("transfer", data).train()
    views, y, _ = first_batch(task, data)
    out = task(views, y)
    expected = F.binary_cross_entropy_with_logits(out["output"], y[:, 0])
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["ce"], expected.detach())


def test_frozen_transfer_trains_only_the_classifier(data):
    task = build("transfer", data, freeze=True, dropout=0.2)
    head = {id(p) for p in task.model.get_classifier().parameters()}
    assert {id(p) for p in task.trainable_parameters()} == head
    assert task.model.drop_rate == 0.2
    norms = [type(m).__name__ for m in task.model.modules() if "BatchNorm" in type(m).__name__]
    assert norms and all(n.startswith("Frozen") for n in norms)  # statistics frozen too
    assert len(build("transfer", data).trainable_parameters()) > len(head)


def test_kd_logit_refuses_to_run_without_a_teacher(data):
    with pytest.raises(ConfigError, match="kd_logit needs teacher_path"):
        build("kd_logit", data, teacher_path=None)


def bernoulli_kl(t: torch.Tensor, s: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the two-class softmaxes over [0, z/T], written out."""
    pt, ps = torch.sigmoid(t / temperature), torch.sigmoid(s / temperature)
    return pt * torch.log(pt / ps) + (1 - pt) * torch.log((1 - pt) / (1 - ps))


def test_kd_logit_loss_is_hintons_with_the_configured_alpha_and_temperature(data, teacher_uri):
    task = build("kd_logit", data, teacher_uri, alpha=0.3, temperature=3.0).train()
    views, y, _ = first_batch(task, data)
    teacher = torch.linspace(-2.0, 2.0, BATCH).reshape(BATCH, 1)
    out = task(views, y, teacher_logits=teacher)
    s = out["output"]
    ce = F.binary_cross_entropy_with_logits(s, y[:, 0])
    kd = 9.0 * bernoulli_kl(teacher[:, 0], s, 3.0).mean()
    torch.testing.assert_close(out["ce"], ce.detach())
    torch.testing.assert_close(out["kd"], kd.detach())
    torch.testing.assert_close(out["loss"], 0.3 * ce + 0.7 * kd)


def test_kd_logit_runs_the_teacher_when_no_logits_are_given(data, teacher_uri):
    task = build("kd_logit", data, teacher_uri, teacher_cache="off", alpha=0.0).train()
    views, y, extras = first_batch(task, data)
    assert extras == {}
    with torch.no_grad():
        teacher = task.teacher(views["hr"])
        online = task(views, y)
        given = task(views, y, teacher_logits=teacher)
    torch.testing.assert_close(online["kd"], given["kd"])
    # ... and the teacher matters: other teacher logits give another loss.
    with torch.no_grad():
        other = task(views, y, teacher_logits=teacher + 1.0)
    assert not torch.allclose(other["kd"], online["kd"])
