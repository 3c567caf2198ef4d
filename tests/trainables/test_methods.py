"""The method registry and the Task contract, for every registered method, plus what each
method's builder refuses and wires (freezing, dropout, the KD loss it computes)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY, binary_bundle, train_teacher

from trainables.config import ConfigError, parse_config
from trainables.context import DataBundle, TrialContext
from trainables.data.augment import Pipeline
from trainables.data.pipeline import BatchLoader
from trainables.errors import CxrkdError
from trainables.methods import get_method, load_methods, register_method
from trainables.task import Task

METHODS = sorted(load_methods())
MODEL_OF = {"cnn_baseline": "cnn_baseline"}  # anything else: timm's tiny test_resnet
CPU = torch.device("cpu")
BATCH = 6


@pytest.fixture(scope="module")
def data() -> DataBundle:
    return binary_bundle(n=24, size=16)


@pytest.fixture(scope="module")
def teacher_uri(tmp_path_factory, data) -> str:
    return train_teacher(tmp_path_factory.mktemp("run"), data)


def build(method: str, data: DataBundle, teacher_uri: str | None = None, **overrides) -> Task:
    flat = {**TINY, "method": method, "model": MODEL_OF.get(method, "test_resnet")}
    if load_methods()[method].needs_teacher:
        flat["teacher_path"] = teacher_uri
    cfg = parse_config({**flat, **overrides})
    torch.manual_seed(0)
    return get_method(method).build(cfg, data.info, TrialContext(device=CPU, data=data))


def first_batch(task: Task, data: DataBundle, size: int = 16):
    """Views, labels and side arrays of the first BATCH training images, as the loop makes them."""
    train = data.split("train")
    loader = BatchLoader(train.images, train.labels, batch_size=BATCH, shuffle=False, device=CPU)
    idx = loader.epoch_order(0)[:BATCH]
    x, y = loader.batch(idx)
    extras = {k: torch.from_numpy(v[idx]) for k, v in task.side_arrays("train").items()}
    return Pipeline(input_size=size, low=task.low_res)(x, train=True), y, extras


# --- registry -----------------------------------------------------------------------------


def test_registry_holds_the_studies_methods():
    assert {"cnn_baseline", "transfer", "kd_logit"} <= set(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_method_entry_is_well_formed(method):
    entry = load_methods()[method]
    assert entry.name == method
    assert entry.tasks and set(entry.tasks) <= {"binary", "multilabel"}
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
def test_task_returns_loss_output_and_detached_components(method, data, teacher_uri):
    task = build(method, data, teacher_uri).train()
    views, y, extras = first_batch(task, data)
    out = task(views, y, **extras)

    assert out["loss"].ndim == 0 and out["loss"].requires_grad and torch.isfinite(out["loss"])
    assert out["output"].shape == (BATCH,)  # one logit per image on a binary dataset
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
def test_predict_is_the_deployed_models_output(method, data, teacher_uri):
    task = build(method, data, teacher_uri).eval()
    views, y, extras = first_batch(task, data)
    with torch.no_grad():
        torch.testing.assert_close(task.predict(views), task(views, y, **extras)["output"])


@pytest.mark.parametrize("method", METHODS)
def test_frozen_parts_stay_in_eval_mode_and_out_of_the_optimiser(method, data, teacher_uri):
    task = build(method, data, teacher_uri).train()
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
