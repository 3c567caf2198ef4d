"""``kd_logit`` with every KD loss of the binary layout (``trainables/kd``): one training run of
each through the real loop on CPU (tiny sizes), the default ``hinton`` pinned bit for bit to a
direct ``losses.hinton_kd`` call (the pneumonia-kd numbers must not move), where the teacher's
outputs come from, FitNets' stage taps and CNN projection (trained, checkpointed, never
exported), and what the config and the builder refuse."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from helpers import TINY, binary_bundle, first_batch, train_teacher

from cxrkd.trainables import teacher_outputs
from cxrkd.trainables.checkpoint import MODEL_FILE, read_state
from cxrkd.trainables.config import ConfigError, parse_config
from cxrkd.trainables.context import DataBundle, TrialContext
from cxrkd.trainables.features import FeatureTaps
from cxrkd.trainables.kd import get_kd, kd_names
from cxrkd.trainables.loop import run_trial
from cxrkd.trainables.losses import hinton_kd
from cxrkd.trainables.methods import get_method
from cxrkd.trainables.optim import make_optimizer
from cxrkd.trainables.precision import fp32_head
from cxrkd.trainables.task import Task, squeeze_logit
from cxrkd.trainables.trainable import LocalReporter

CPU = torch.device("cpu")
BATCH = 6
BINARY = list(kd_names("binary"))
# A ResNet-18 student of a narrower registered teacher (test_resnet: 48 channels in layer2,
# ResNet-18 128), so FitNets' projection has weights, as for the paper's ResNet-50 teacher.
STUDENT = {**TINY, "method": "kd_logit", "model": "resnet18"}
VALUES = {"alpha": 0.6, "beta": 1.0, "gamma": 0.5, "temperature": 2.0}
COMPONENTS = {"hinton": {"ce", "kd"}, "dkd": {"ce", "tckd"}, "fitnets": {"ce", "feat"}}


def weights(approach: str) -> dict:
    """A value for each weight the loss reads and has no default for (the space sets them)."""
    variant = get_kd(approach).on("binary")
    return {k: VALUES[k] for k in variant.params if k not in variant.defaults}


@pytest.fixture(scope="module")
def data() -> DataBundle:
    return binary_bundle(n=48, size=16)


@pytest.fixture(scope="module")
def teacher_uri(tmp_path_factory, data) -> str:
    return train_teacher(tmp_path_factory.mktemp("run"), data)


def config(teacher_uri: str, approach: str | None = None, **overrides) -> dict:
    flat = {**STUDENT, "teacher_path": teacher_uri, **overrides}
    if approach is not None:
        flat.update(kd_approach=approach, **weights(approach))
    return flat


def build(flat: dict, data: DataBundle) -> Task:
    torch.manual_seed(0)
    return get_method("kd_logit").build(
        parse_config(flat), data.info, TrialContext(device=CPU, data=data)
    )


# --- every approach, through the loop -----------------------------------------------------


def test_the_binary_approaches_are_the_registrys_hinton_first():
    assert BINARY[0] == "hinton" and {"dkd", "fitnets"} <= set(BINARY)
    assert set(COMPONENTS) == set(BINARY), "a new binary loss: add its components here"


@pytest.mark.parametrize("approach", BINARY)
def test_every_binary_approach_trains_through_the_loop(approach, data, teacher_uri, tmp_path):
    reporter = LocalReporter(keep=tmp_path)
    metrics = run_trial(config(teacher_uri, approach), data, reporter=reporter)
    train = {k.removeprefix("train_") for k in metrics if k.startswith("train_") and k != "train_s"}
    assert train == {"loss"} | COMPONENTS[approach]
    assert all(math.isfinite(metrics[f"train_{k}"]) for k in train)
    assert math.isfinite(metrics["val_auc"])
    # The projection is trained state of the trial, never part of the deployed student.
    folder = reporter.checkpoints[-1]
    state = read_state(folder / "state.pt")["task"]
    projection = {k for k in state if k.startswith("projections.")}
    has_features = get_kd(approach).blocks is not None
    assert projection == ({"projections.0.proj.weight"} if has_features else set())
    assert not any("projection" in k for k in read_state(folder / MODEL_FILE))
    assert not any(k.startswith("teacher.") for k in state)  # the teacher is stored once


# --- hinton: what kd_logit computed before the registry, bit for bit ---------------------


def test_hinton_is_the_default_with_the_old_defaults_and_the_old_cache_key(data, teacher_uri):
    cfg = parse_config({"method": "kd_logit"}).method
    assert (cfg.kd_approach, cfg.alpha, cfg.temperature, cfg.beta, cfg.gamma) == (
        "hinton", 0.5, 4.0, None, None
    )  # fmt: skip
    task = build(config(teacher_uri), data)
    assert task.cached is not None and task.projections is None
    # The logits cache under the key of before the registry (split, size, the teacher's
    # normalisation, no tag in fp32): existing caches stay valid.
    assert teacher_outputs.load_outputs(teacher_uri, "train-16px-norm0.5_0.5") is not None
    stored = Path(teacher_outputs.outputs_uri(teacher_uri, "x")).parent
    assert [p.name for p in stored.iterdir()] == ["train-16px-norm0.5_0.5.npz"]
    assert {n for n, _ in task.named_parameters() if not n.startswith(("model.", "teacher."))} == (
        set()
    )


@pytest.mark.parametrize("source", ["online", "cached"])
def test_hinton_loss_and_gradients_are_bit_identical_to_a_direct_hinton_kd_call(
    source, data, teacher_uri
):
    task = build(config(teacher_uri, alpha=0.3, temperature=3.0), data).train()
    reference = copy.deepcopy(task.model)  # the same weights, the pre-registry computation
    views, y, extras = first_batch(task, data)
    if source == "online":
        extras = {}
        with torch.no_grad():
            teacher = fp32_head(task.teacher, views["teacher"])
    else:
        teacher = extras["teacher_logits"]
    out = task(views, y, **extras)
    want = hinton_kd(
        squeeze_logit(fp32_head(reference, views["hr"])),
        squeeze_logit(teacher),
        y[:, 0],
        alpha=0.3,
        temperature=3.0,
    )
    for key in ("loss", "ce", "kd"):
        assert torch.equal(out[key], want[key]), key
    out["loss"].backward()
    want["loss"].backward()
    pairs = zip(task.model.named_parameters(), reference.parameters(), strict=True)
    for (name, p), q in pairs:
        assert torch.equal(p.grad, q.grad), name


# --- where the teacher's outputs come from ------------------------------------------------

SOURCES = [  # (approach, overrides, cached)
    ("hinton", {}, True),
    ("hinton", {"augment": True}, False),
    ("hinton", {"teacher_cache": "off"}, False),
    ("dkd", {}, True),
    ("fitnets", {}, False),  # features: the teacher runs online, its stages tapped
    ("fitnets", {"augment": True}, False),
]


@pytest.mark.parametrize(("approach", "overrides", "cached"), SOURCES)
def test_teacher_logits_are_cached_only_for_logits_without_augmentation(
    approach, overrides, cached, data, teacher_uri
):
    task = build(config(teacher_uri, approach, **overrides), data)
    assert ("teacher_logits" in task.side_arrays("train")) is cached
    assert task.side_arrays("val") == {}


def test_teacher_cache_on_is_refused_where_it_cannot_hold_what_the_loss_reads(data, teacher_uri):
    with pytest.raises(ConfigError, match=r"cannot cache fitnets's targets: a CNN feature map"):
        build(config(teacher_uri, "fitnets", teacher_cache="on"), data)
    with pytest.raises(ConfigError, match="teacher_cache=on needs augment=false"):
        build(config(teacher_uri, "dkd", teacher_cache="on", augment=True), data)


# --- FitNets on the CNN pair --------------------------------------------------------------


def test_fitnets_compares_the_middle_stages_through_a_trained_projection(data, teacher_uri):
    task = build(config(teacher_uri, "fitnets"), data).train()
    assert task.student_stages == task.teacher_stages == ("layer1", "layer2", "layer3", "layer4")
    (projection,) = task.projections
    assert tuple(projection.proj.weight.shape) == (48, 128, 1, 1)  # ResNet-18 -> test_resnet
    views, y, extras = first_batch(task, data)
    assert extras == {}
    out = task(views, y)
    with pytest.raises(ValueError, match="fitnets compares features: run the teacher online"):
        task(views, y, teacher_logits=torch.zeros(BATCH, 1))
    # The hint written out: layer2 of each model (tapped on its own), the student's projected.
    with torch.no_grad(), FeatureTaps(task.teacher, ["layer2"]) as taps:
        task.teacher(views["teacher"])
    (hint,) = taps.outputs()
    with FeatureTaps(task.model, ["layer2"]) as taps:
        logits = squeeze_logit(task.model(views["hr"]))
    (guided,) = taps.outputs()
    feat = ((projection.adapt_student(guided) - hint) ** 2).mean()
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[:, 0])
    torch.testing.assert_close(out["feat"], feat.detach())
    torch.testing.assert_close(out["loss"], ce + 0.5 * feat)
    out["loss"].backward()
    assert projection.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in task.teacher.parameters())
    optimised = {id(p) for g in make_optimizer(task, parse_config(STUDENT).train).param_groups
                 for p in g["params"]}  # fmt: skip
    assert id(projection.proj.weight) in optimised
    assert not {id(p) for p in task.teacher.parameters()} & optimised


def test_fitnets_refuses_a_model_without_named_stages(data, teacher_uri):
    flat = config(teacher_uri, "fitnets", model="cnn_baseline", pretrained=False)
    with pytest.raises(ConfigError, match=r"fitnets cannot compare these models: CnnBaseline "
                       r"names no stages"):  # fmt: skip
        build(flat, data)


# --- config --------------------------------------------------------------------------------

BAD = [
    ({"kd_approach": "mlcak"}, r"expected one of \['hinton'.*\('mlcak' is a KD loss of kd_vit\)"),
    ({"gamma": 0.5}, r"gamma=0.5 is not used by kd_approach='hinton'; leave it unset"),
    ({"alpha": 1.5}, r"bad value alpha=1.5: expected in \[0, 1\] for kd_approach='hinton'"),
    ({"kd_approach": "fitnets"}, r"kd_approach='fitnets' needs gamma \(it has no default\)"),
    ({"kd_approach": "fitnets", "gamma": 1.0, "alpha": 0.5}, r"alpha=0.5 is not used by kd_app"),
    ({"kd_approach": "dkd", "alpha": 1.0}, r"kd_approach='dkd' needs temperature"),
    ({"kd_approach": "dkd", "alpha": 1, "temperature": 2, "beta": 1}, r"beta=1.0 is not used"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD)
def test_config_refuses_unknown_approaches_unread_weights_and_missing_ones(overrides, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"method": "kd_logit", **overrides})


def test_config_takes_each_losss_own_weights():
    dkd = parse_config({"method": "kd_logit", "kd_approach": "dkd", "alpha": 1.5,
                        "temperature": 4}).method  # fmt: skip
    assert (dkd.alpha, dkd.temperature, dkd.beta, dkd.gamma) == (1.5, 4.0, None, None)
    fit = parse_config({"method": "kd_logit", "kd_approach": "fitnets", "gamma": 3}).method
    assert (fit.alpha, fit.temperature, fit.gamma) == (None, None, 3.0)
    assert (
        parse_config({"method": "kd_logit", "kd_approach": "fitnets", "gamma": 3}).to_flat()[
            "kd_approach"
        ]
        == "fitnets"
    )
