"""The KD-loss registry (``trainables/kd``): discovery by file, head layouts, what every
registered loss must do on each layout it supports (parametrized over the registry, so a new
file is tested the moment it exists), the paper's four approaches pinned to the values of the
code before the registry, search fragments that one Optuna study can mix, and the one rule
choosing where a KD trial's teacher targets come from."""

from __future__ import annotations

import pickle
import pkgutil

import numpy as np
import optuna
import pytest
import torch

import cxrkd.trainables.kd as kd_package
from cxrkd.trainables.config import ConfigError
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.kd import (
    LAYOUTS,
    WEIGHTS,
    Variant,
    check_approach,
    check_weights,
    get_kd,
    kd_losses,
    kd_names,
    layout_of,
    paper_approaches,
    use_teacher_cache,
)
from cxrkd.trainables.losses import LossError
from cxrkd.trainables.registry import Registry

NAMES = list(kd_names())
MTL = list(kd_names("mtl"))
BINARY = list(kd_names("binary"))


def tt(a, grad: bool = False) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float32, requires_grad=grad)


# --- discovery ----------------------------------------------------------------------------


def test_every_module_of_the_package_is_one_registered_loss_named_after_its_file():
    files = {m.name for m in pkgutil.iter_modules(kd_package.__path__) if m.name[0] != "_"}
    assert set(NAMES) == files
    assert {"vanilla", "last_block", "one_to_one", "mlcak", "fitnets", "dkd", "hinton"} <= files
    assert paper_approaches() == ("vanilla", "last_block", "one_to_one", "mlcak")
    assert NAMES[:4] == list(paper_approaches())  # choices and grids keep the paper's order
    labels = [loss.label for loss in kd_losses().values()]
    assert all(labels) and len(set(labels)) == len(labels)  # one table row label each
    for loss in kd_losses().values():
        assert loss.layouts and set(loss.layouts) <= set(LAYOUTS), loss.name
        for layout in loss.layouts:
            variant = loss.on(layout)
            assert (variant.name, variant.layout, variant.label) == (loss.name, layout, loss.label)
            assert variant.blocks is loss.blocks
            assert set(variant.params) <= set(WEIGHTS), loss.name
        assert pickle.loads(pickle.dumps(loss)) == loss  # no lambdas: a Task holding it pickles


def test_each_layout_lists_its_own_losses_with_its_methods_default_first():
    assert MTL == ["vanilla", "last_block", "one_to_one", "mlcak", "dkd", "fitnets"]
    assert BINARY[0] == "hinton" == LAYOUTS["binary"].default  # kd_logit's default
    assert {"dkd", "fitnets"} <= set(BINARY) and set(MTL) | set(BINARY) == set(NAMES)
    assert LAYOUTS["mtl"].default in MTL  # kd_vit's default
    assert {n: layout_of(lay.method) for n, lay in LAYOUTS.items()} == {"mtl": "mtl",
                                                                    "binary": "binary"}  # fmt: skip
    assert layout_of("transfer") is None
    with pytest.raises(CxrkdError, match=r"unknown head layout 'mlct'; known: \['mtl', 'binary'"):
        kd_names("mlct")


def test_a_loss_is_refused_by_the_method_of_a_layout_it_lacks():
    with pytest.raises(CxrkdError, match=r"'hinton' has no mtl form, so kd_vit cannot use it"):
        get_kd("hinton").on("mtl")
    with pytest.raises(ConfigError, match=r"kd_approach='mlcak': expected one of \['hinton'.*"
                       r"\('mlcak' is a KD loss of kd_vit\)"):  # fmt: skip
        check_approach("binary", "mlcak")
    with pytest.raises(ConfigError, match=r"kd_approach='hinton'.*a KD loss of kd_logit"):
        check_approach("mtl", "hinton")
    with pytest.raises(ConfigError, match=r"kd_approach='dkdd': expected one of") as err:
        check_approach("binary", "dkdd")
    assert "is a KD loss of" not in str(err.value)


def test_registry_discovers_a_package_skipping_private_modules(tmp_path, monkeypatch):
    pkg = tmp_path / "kd_plugins_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from trainables.registry import Registry\nREG = None\n")
    (pkg / "b_loss.py").write_text("import kd_plugins_probe as p\np.REG.add('b', 2)\n")
    (pkg / "a_loss.py").write_text("import kd_plugins_probe as p\np.REG.add('a', 1)\n")
    (pkg / "_helpers.py").write_text("raise RuntimeError('a private module is not imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import kd_plugins_probe

    kd_plugins_probe.REG = registry = Registry("probe", package="kd_plugins_probe")
    assert registry.all() == {"a": 1, "b": 2}  # files in name order
    with pytest.raises(CxrkdError, match=r"unknown probe 'c'; known probes: \['a', 'b'\]"):
        registry.get("c")
    with pytest.raises(CxrkdError, match="probe 'a' registered twice"):
        registry.add("a", 3)


def test_unknown_loss_and_undeclared_weight_are_refused():
    with pytest.raises(CxrkdError, match=r"unknown KD loss 'mlcka' \(did you mean mlcak"):
        get_kd("mlcka")

    def probe(**variants):
        return kd_package.register_kd("probe", label="Probe", **variants)

    with pytest.raises(CxrkdError, match=r"declares params \['tau'\].*add the field"):
        probe(mtl=Variant(dict, params=("alpha", "tau"), space=dict))
    with pytest.raises(CxrkdError, match=r"registered for layouts \['cnn'\]"):
        probe(cnn=Variant(dict, params=("alpha",), space=dict))
    with pytest.raises(CxrkdError, match=r"registered for layouts none"):
        probe()
    with pytest.raises(CxrkdError, match=r"defaults or limits of \['gamma'\].*does not read"):
        probe(binary=Variant(dict, params=("alpha",), space=dict, defaults={"gamma": 1.0}))
    assert "probe" not in kd_names()  # nothing half-registered


# --- what every loss of the mtl layout does (kd_vit's two heads) --------------------------


def example(name: str, rng: np.random.Generator):
    """(args, kwargs, student leaves, teacher leaves, student blocks) as kd_vit's Task calls
    the loss: three blocks per model, the loss's Blocks picking what it compares."""
    loss = get_kd(name).on("mtl")
    student = [tt(rng.normal(size=(3, 4)), True), tt(rng.normal(size=3), True)]
    teacher = [tt(rng.normal(size=(3, 4)), True), tt(rng.normal(size=3), True)]
    kwargs = {"alpha": 0.5, "beta": 1.5}
    kwargs.update({k: v for k, v in (("gamma", 0.7), ("temperature", 2.0)) if k in loss.params})
    blocks_s = blocks_t = []
    if loss.blocks is not None:
        blocks_s = [tt(rng.normal(size=(3, 4, 5)), True) for _ in range(3)]
        blocks_t = [tt(rng.normal(size=(3, 4, 5)), True) for _ in range(3)]
        kwargs["hs_student"] = loss.blocks.pick(blocks_s)
        kwargs["hs_teacher"] = loss.blocks.pick(blocks_t)
    args = (student[0], student[1], teacher[0], teacher[1])
    return args, kwargs, student, teacher + blocks_t, blocks_s


@pytest.mark.parametrize("name", MTL)
def test_every_kd_loss_is_a_differentiable_criterion_of_the_student_only(name):
    args, kwargs, student, teacher, blocks = example(name, np.random.default_rng(10))
    out = get_kd(name).on("mtl").compute(*args, **kwargs)
    assert "loss" in out and len(out) >= 3
    for key, value in out.items():
        assert value.ndim == 0 and torch.isfinite(value) and float(value.detach()) >= 0, key
    out["loss"].backward()
    for tensor in student:
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0
    for tensor in teacher:
        assert tensor.grad is None  # a constant target, even without no_grad
    if blocks:  # the student blocks the loss picks are trained
        assert any(b.grad is not None and b.grad.abs().sum() > 0 for b in blocks)


@pytest.mark.parametrize("name", MTL)
def test_every_kd_loss_is_zero_when_student_equals_teacher(name):
    args, kwargs, *_ = example(name, np.random.default_rng(11))
    s_mlct, s_mcct = args[0].detach(), args[1].detach()
    if "hs_student" in kwargs:
        kwargs["hs_teacher"] = [h.detach().clone() for h in kwargs["hs_student"]]
    out = get_kd(name).on("mtl").compute(s_mlct, s_mcct, s_mlct.clone(), s_mcct.clone(), **kwargs)
    assert float(out["loss"].detach()) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", MTL)
def test_every_kd_loss_refuses_what_it_does_not_use_and_bad_weights(name):
    loss = get_kd(name).on("mtl")
    args, kwargs, *_ = example(name, np.random.default_rng(12))
    misuse = {"gamma": 0.5, "temperature": 2.0}
    for key, value in misuse.items():
        if key not in loss.params:
            with pytest.raises(LossError, match=key):
                loss.compute(*args, **{**kwargs, key: value})
    if loss.blocks is None:
        with pytest.raises(LossError, match="hs_student must be None"):
            loss.compute(*args, **kwargs, hs_student=[torch.zeros(3, 4, 5)])
    else:
        with pytest.raises(LossError, match="hs_student must be a non-empty list"):
            loss.compute(*args, **{**kwargs, "hs_student": None})
    with pytest.raises(LossError, match="alpha must be >= 0, got -1"):
        loss.compute(*args, **{**kwargs, "alpha": -1})
    with pytest.raises(LossError, match=r"s_mcct must be one logit per image.*\(3, 2\)"):
        loss.compute(args[0], torch.zeros(3, 2), *args[2:], **kwargs)
    with pytest.raises(TypeError):
        loss.compute(*args, 1.0, 1.0)  # weights are keyword-only


# --- the paper's four, pinned -------------------------------------------------------------

# Computed with the code before the registry (commit 7d44645, trainables/losses.py's
# KD_APPROACHES) on the tensors of `pinned_inputs`, alpha=0.7, beta=1.3, T=3 / gamma=0.4.
PINNED = {
    "vanilla": {"loss": 1.295411467552185, "kd_mlct": 1.3940180540084839,
                "kd_mcct": 0.24584528803825378},
    "last_block": {"loss": 14.10137939453125, "feat": 8.06775188446045},
    "one_to_one": {"loss": 14.021821975708008, "feat": 7.868860721588135},
    "mlcak": {"loss": 11.7186279296875, "feat": 2.110874652862549},
}  # fmt: skip
MSE_LOGITS = {"kd_mlct": 11.677971839904785, "kd_mcct": 2.076690435409546}


def pinned_inputs():
    rng = np.random.default_rng(2024)
    draw = [rng.normal(0, 2, s) for s in [(4, 3), (4,), (4, 3), (4,)]]
    hs = [rng.normal(0, 2, (4, 5, 6)) for _ in range(6)]
    return draw, hs[:3], hs[3:]


def np_reference(name: str, heads, hs_s, hs_t) -> dict:
    """The formulas in float64 numpy: Bernoulli KL written out, MSEs, block means."""
    s_mlct, s_mcct, t_mlct, t_mcct = (np.asarray(h, np.float32).astype(np.float64) for h in heads)
    hs_s = [np.asarray(h, np.float32).astype(np.float64) for h in hs_s]
    hs_t = [np.asarray(h, np.float32).astype(np.float64) for h in hs_t]
    if name == "vanilla":
        temp = 3.0

        def kl(s, t):
            pt, ps = 1 / (1 + np.exp(-t / temp)), 1 / (1 + np.exp(-s / temp))
            return np.mean(pt * np.log(pt / ps) + (1 - pt) * np.log((1 - pt) / (1 - ps)))

        kd_mlct, kd_mcct = temp**2 * kl(s_mlct, t_mlct), temp**2 * kl(s_mcct, t_mcct)
        return {"loss": 0.7 * kd_mlct + 1.3 * kd_mcct, "kd_mlct": kd_mlct, "kd_mcct": kd_mcct}

    def mse(a, b):
        return float(np.mean((a - b) ** 2))

    feat = {
        "last_block": lambda: mse(hs_s[-1], hs_t[-1]),
        "one_to_one": lambda: np.mean([mse(a, b) for a, b in zip(hs_s, hs_t, strict=True)]),
        "mlcak": lambda: mse(np.mean(hs_s, axis=0), np.mean(hs_t, axis=0)),
    }[name]()
    kd_mlct, kd_mcct = mse(s_mlct, t_mlct), mse(s_mcct, t_mcct)
    loss = 0.7 * kd_mlct + 1.3 * kd_mcct + 0.4 * feat
    return {"loss": loss, "kd_mlct": kd_mlct, "kd_mcct": kd_mcct, "feat": feat}


@pytest.mark.parametrize("name", list(PINNED))
def test_papers_approaches_keep_their_values(name):
    heads, hs_s, hs_t = pinned_inputs()
    loss = get_kd(name).on("mtl")
    kwargs = {"alpha": 0.7, "beta": 1.3}
    if loss.blocks is None:
        kwargs["temperature"] = 3.0
    else:
        kwargs.update(gamma=0.4, hs_student=[tt(h) for h in hs_s], hs_teacher=[tt(h) for h in hs_t])
    out = {k: float(v) for k, v in loss.compute(*(tt(h) for h in heads), **kwargs).items()}
    pinned = {**(MSE_LOGITS if loss.blocks else {}), **PINNED[name]}
    assert out == pytest.approx(pinned, rel=1e-6)  # as before the move, to float32 rounding
    assert out == pytest.approx(np_reference(name, heads, hs_s, hs_t), rel=1e-5)


# --- search fragments ---------------------------------------------------------------------


def test_fragments_suggest_what_each_loss_reads_and_mix_in_one_study():
    # lowres-kd-open draws every approach in one Optuna study, whose storage refuses a name
    # with another distribution kind or log flag than before: this would raise.
    optional = {"gamma", "temperature"}  # no default in the kd_vit config
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(3 * len(MTL)):
        loss = get_kd(MTL[i % len(MTL)]).on("mtl")
        trial = study.ask()
        out = loss.space(trial)
        assert list(out) == list(trial.params), loss.name  # names are the config fields
        assert set(out) <= set(loss.params), loss.name
        assert optional & set(loss.params) <= set(out), loss.name  # build would refuse
        study.tell(trial, 0.0)


def test_papers_approaches_suggest_in_the_order_seeded_searches_depend_on():
    seen = {}
    for name in paper_approaches():
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        trial = study.ask()
        get_kd(name).on("mtl").space(trial)
        seen[name] = list(trial.params)
    assert seen == {
        "vanilla": ["alpha", "beta", "temperature"],
        "last_block": ["alpha", "beta", "gamma"],
        "one_to_one": ["alpha", "beta", "gamma"],
        "mlcak": ["alpha", "beta", "gamma"],
    }


def test_binary_fragments_suggest_what_each_loss_reads_without_a_default_and_mix():
    # Both layouts' fragments in one Optuna study: a kd_logit cell searching kd_approach as a
    # choice draws them all in one study, and a name keeps its kind and log flag everywhere.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    variants = [get_kd(n).on("binary") for n in BINARY] + [get_kd(n).on("mtl") for n in MTL]
    for i in range(3 * len(variants)):
        loss = variants[i % len(variants)]
        trial = study.ask()
        out = loss.space(trial)
        assert list(out) == list(trial.params) and set(out) <= set(loss.params), loss.name
        if loss.layout == "binary":  # kd_logit leaves every weight unset but the defaults
            assert set(loss.params) - set(loss.defaults) <= set(out), loss.name
            check_weights(loss, out)  # what the space draws, the config accepts
        study.tell(trial, 0.0)


# --- what every loss of the binary layout does (kd_logit's one logit) ----------------------


def binary_example(name: str, rng: np.random.Generator):
    """(args, kwargs, student leaves, teacher leaves) as kd_logit's Task calls the loss: four
    stages per model as (B, C, H, W) maps, the loss's Blocks picking what it compares."""
    loss = get_kd(name).on("binary")
    student, teacher = tt(rng.normal(size=6), True), tt(rng.normal(size=6), True)
    target = tt(rng.integers(0, 2, 6))
    kwargs = {k: v for k, v in {"alpha": 0.4, "gamma": 0.7, "temperature": 2.0}.items()
              if k in loss.params}  # fmt: skip
    stages_s = stages_t = []
    if loss.blocks is not None:
        stages_s = [tt(rng.normal(size=(6, 3, 2, 2)), True) for _ in range(4)]
        stages_t = [tt(rng.normal(size=(6, 3, 2, 2)), True) for _ in range(4)]
        kwargs["hs_student"] = loss.blocks.pick(stages_s)
        kwargs["hs_teacher"] = loss.blocks.pick(stages_t)
    return (student, teacher, target), kwargs, [student, *stages_s], [teacher, *stages_t]


@pytest.mark.parametrize("name", BINARY)
def test_every_binary_loss_trains_the_student_only_with_the_hard_label_term(name):
    args, kwargs, student, teacher = binary_example(name, np.random.default_rng(20))
    out = get_kd(name).on("binary").compute(*args, **kwargs)
    assert "loss" in out and "ce" in out and len(out) >= 3  # the whole loss, CE included
    for key, value in out.items():
        assert value.ndim == 0 and torch.isfinite(value) and float(value.detach()) >= 0, key
    out["loss"].backward()
    assert student[0].grad is not None and student[0].grad.abs().sum() > 0
    if len(student) > 1:  # the picked student stage is trained, the others are not read
        assert sum(s.grad is not None and s.grad.abs().sum() > 0 for s in student[1:]) == 1
    assert all(t.grad is None for t in teacher)  # a constant target, even without no_grad


@pytest.mark.parametrize("name", BINARY)
def test_every_binary_loss_has_only_its_hard_label_term_when_student_equals_teacher(name):
    args, kwargs, *_ = binary_example(name, np.random.default_rng(21))
    student = args[0].detach()
    if "hs_student" in kwargs:
        kwargs["hs_teacher"] = [h.detach().clone() for h in kwargs["hs_student"]]
    out = get_kd(name).on("binary").compute(student, student.clone(), args[2], **kwargs)
    for key, value in out.items():
        if key not in ("loss", "ce"):
            assert float(value.detach()) == pytest.approx(0.0, abs=1e-6), key
    ce = torch.nn.functional.binary_cross_entropy_with_logits(student, args[2])
    assert float(out["ce"]) == pytest.approx(float(ce), rel=1e-6)


@pytest.mark.parametrize("name", BINARY)
def test_every_binary_loss_refuses_what_it_does_not_use_and_bad_values(name):
    loss = get_kd(name).on("binary")
    args, kwargs, *_ = binary_example(name, np.random.default_rng(22))
    for key in WEIGHTS:
        if key not in loss.params:
            with pytest.raises(LossError, match=f"{key} must be None"):
                loss.compute(*args, **{**kwargs, key: 0.5})
        else:
            with pytest.raises(LossError, match=f"needs .*{key}"):
                loss.compute(*args, **{k: v for k, v in kwargs.items() if k != key})
    if loss.blocks is None:
        with pytest.raises(LossError, match="hs_student must be None"):
            loss.compute(*args, **kwargs, hs_student=[torch.zeros(6, 3, 2, 2)])
    else:
        with pytest.raises(LossError, match="hs_student must be a non-empty list"):
            loss.compute(*args, **{**kwargs, "hs_student": None})
    weight = next(k for k in ("alpha", "gamma") if k in loss.params)
    with pytest.raises(LossError, match=f"{weight} must be .*got -1"):
        loss.compute(*args, **{**kwargs, weight: -1})
    with pytest.raises(LossError, match=r"\(6, 2\)"):  # not one logit per image
        loss.compute(torch.zeros(6, 2), *args[1:], **kwargs)
    with pytest.raises(TypeError):
        loss.compute(*args, 1.0, 1.0)  # weights are keyword-only


def test_config_checks_of_a_variants_weights():
    hinton, dkd = get_kd("hinton").on("binary"), get_kd("dkd").on("binary")
    check_weights(hinton, {"alpha": 1.0, "temperature": 1e-3, "beta": None, "gamma": None})
    check_weights(dkd, {"alpha": 1.5, "temperature": 4.0})  # DKD's alpha is not bounded by 1
    bad = [
        (hinton, {"alpha": 1.5}, r"bad value alpha=1.5: expected in \[0, 1\] for kd_approach="),
        (hinton, {"temperature": 0.0}, r"bad value temperature=0.0: expected > 0"),
        (dkd, {"alpha": -0.1}, r"bad value alpha=-0.1: expected a weight >= 0"),
        (dkd, {"beta": 1.0}, r"beta=1.0 is not used by kd_approach='dkd'; leave it unset"),
        (hinton, {"gamma": 0.1}, r"gamma=0.1 is not used by kd_approach='hinton'"),
    ]
    for variant, values, message in bad:
        with pytest.raises(ConfigError, match=message):
            check_weights(variant, values)


# --- where the teacher's targets come from -----------------------------------------------

# (layout, loss, teacher_cache, augment) -> cached; None: refused. Logits are cached unless
# augmenting; a picked ViT block is cached, every block is not, a CNN stage never.
SOURCES = [
    ("binary", "hinton", "auto", False, True),
    ("binary", "hinton", "auto", True, False),
    ("binary", "hinton", "off", False, False),
    ("binary", "hinton", "on", False, True),
    ("binary", "hinton", "on", True, None),
    ("binary", "dkd", "auto", False, True),
    ("binary", "fitnets", "auto", False, False),
    ("binary", "fitnets", "on", False, None),
    ("mtl", "fitnets", "auto", False, True),
    ("mtl", "mlcak", "auto", True, False),
    ("mtl", "one_to_one", "auto", False, False),
    ("mtl", "one_to_one", "on", False, None),
]


@pytest.mark.parametrize(("layout", "name", "setting", "augment", "cached"), SOURCES)
def test_teacher_targets_are_cached_only_for_what_a_cache_can_hold(
    layout, name, setting, augment, cached
):
    variant = get_kd(name).on(layout)
    if cached is None:
        with pytest.raises(ConfigError, match="teacher_cache=on (needs augment|cannot cache)"):
            use_teacher_cache(variant, teacher_cache=setting, augment=augment)
    else:
        assert use_teacher_cache(variant, teacher_cache=setting, augment=augment) is cached
    assert variant.cacheable is (
        variant.blocks is None or (layout == "mtl" and name != "one_to_one")
    )
