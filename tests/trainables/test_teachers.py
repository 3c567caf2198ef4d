"""The teacher registry and teachers inside a trial: records, fingerprints, the cached
teacher outputs, and KD with cached outputs against KD with the teacher run online."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY, binary_bundle, train_teacher

from cxrkd.trainables import teacher_files, teacher_outputs
from cxrkd.trainables.config import ConfigError, parse_config
from cxrkd.trainables.context import DataBundle, TrialContext
from cxrkd.trainables.data.augment import Pipeline
from cxrkd.trainables.loop import run_trial
from cxrkd.trainables.methods import get_method
from cxrkd.trainables.teachers import TeacherError, TeacherKey, TeacherRegistry, read_record
from cxrkd.trainables.trainable import LocalReporter

CPU = torch.device("cpu")
# A teacher trained enough that its logits separate the classes (positives ~ +0.7,
# negatives ~ -0.2 here): cached outputs for the wrong images would change a KD loss a lot.
TEACHER = {"lr": 1e-2, "steps_per_epoch": 4}
STUDENT = {**TINY, "method": "kd_logit", "model": "test_resnet", "alpha": 0.0, "temperature": 2.0}


@pytest.fixture(scope="module")
def data() -> DataBundle:
    return binary_bundle(n=48, size=16)


@pytest.fixture(scope="module")
def teacher_uri(tmp_path_factory, data) -> str:
    return train_teacher(tmp_path_factory.mktemp("run"), data, **TEACHER)


def fresh_registry_copy(teacher_uri: str, storage) -> str:
    """The same trained teacher in a new registry: no cached outputs there yet."""
    record = teacher_files.read_json_record(teacher_uri)
    key = TeacherKey(**record["key"])
    return TeacherRegistry(str(storage)).register(
        key, teacher_files.fetch_model_dir(teacher_uri), {}
    )


# --- records and fingerprints -------------------------------------------------------------


def test_missing_teacher_is_refused_with_the_fix(tmp_path):
    uri = TeacherRegistry(str(tmp_path)).uri("0" * 20)
    with pytest.raises(TeacherError, match=r"no teacher at .*0{20} \(no record.json\); run the"):
        read_record(uri, dataset_fingerprint="fp0")


def test_teacher_of_another_dataset_is_refused_naming_both_fingerprints(tmp_path):
    key = TeacherKey.from_config({"model": "resnet50", "img_size": 32, "seed": 0}, "fp-teacher")
    (tmp_path / "model").mkdir()
    uri = TeacherRegistry(str(tmp_path)).register(key, tmp_path / "model", {"val_auc": 0.9})
    assert read_record(uri, dataset_fingerprint="fp-teacher")["metrics"] == {"val_auc": 0.9}
    with pytest.raises(TeacherError) as err:
        read_record(uri, dataset_fingerprint="fp-student")
    message = str(err.value)
    assert "fingerprint fp-teacher" in message and "fingerprint fp-student" in message
    assert "train a teacher on this dataset" in message


def test_kd_trial_on_another_dataset_refuses_the_teacher(teacher_uri):
    other = binary_bundle(n=48, size=16, seed=1, fingerprint="fp-other")
    flat = {**STUDENT, "teacher_path": teacher_uri}
    with pytest.raises(TeacherError, match="fingerprint fp0, but .* fingerprint fp-other"):
        run_trial(flat, other, reporter=LocalReporter())


TEACHER_FLAT = {"method": "transfer", "model": "resnet50", "img_size": 48, "seed": 0,
                "lr": 1e-3, "epochs": 3, "freeze": False}  # fmt: skip


def test_fingerprint_is_stable_for_the_same_teacher():
    key = TeacherKey.from_config(TEACHER_FLAT, "fp0")
    reordered = dict(reversed(list(TEACHER_FLAT.items())))
    assert TeacherKey.from_config(reordered, "fp0").fingerprint == key.fingerprint
    # Pinned: a changed hashing scheme would orphan every teacher already registered.
    assert key.fingerprint == "7fa86c18db8b9cd9614a"


@pytest.mark.parametrize(
    ("change", "dataset"),
    [
        ({"model": "resnet101"}, "fp0"),
        ({}, "fp1"),
        ({"seed": 1}, "fp0"),
        ({"img_size": 64}, "fp0"),
        ({"lr": 2e-3}, "fp0"),  # the recipe: every other config value
        ({"epochs": 4}, "fp0"),
        ({"freeze": True}, "fp0"),
    ],
)
def test_fingerprint_changes_with_what_makes_another_teacher(change, dataset):
    base = TeacherKey.from_config(TEACHER_FLAT, "fp0").fingerprint
    assert TeacherKey.from_config({**TEACHER_FLAT, **change}, dataset).fingerprint != base


def test_registry_lookup_finds_only_registered_teachers(tmp_path):
    registry = TeacherRegistry(str(tmp_path))
    key = TeacherKey.from_config(TEACHER_FLAT, "fp0")
    assert registry.lookup(key) is None
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    uri = registry.register(key, tmp_path / "model", {})
    assert registry.lookup(key) == uri == str(tmp_path.resolve() / "teachers" / key.fingerprint)
    assert (teacher_files.fetch_model_dir(uri) / "config.json").read_text() == "{}"
    assert registry.lookup(TeacherKey.from_config({**TEACHER_FLAT, "seed": 1}, "fp0")) is None


# --- the teacher inside a trial -----------------------------------------------------------


def test_loaded_teacher_is_the_registered_one_and_frozen(teacher_uri, data):
    ctx = TrialContext(device=CPU, data=data)
    teacher = ctx.load_teacher(teacher_uri)
    saved = torch.load(teacher_files.fetch_model_dir(teacher_uri) / "model.pt", weights_only=True)
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert ctx.load_teacher(teacher_uri) is teacher  # loaded once per trial

    flat = {**STUDENT, "teacher_path": teacher_uri}
    task = get_method("kd_logit").build(parse_config(flat), data.info, ctx)
    task.train()
    assert task.model.training and not task.teacher.training  # BN statistics stay put


def count_calls(model: torch.nn.Module) -> list:
    calls: list = []
    model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    return calls


def test_teacher_outputs_are_computed_once_then_read_from_the_registry(teacher_uri, data, tmp_path):
    uri = fresh_registry_copy(teacher_uri, tmp_path)
    view = Pipeline(input_size=16)
    first = TrialContext(device=CPU, data=data)
    calls = count_calls(first.load_teacher(uri))
    outputs = first.teacher_outputs(uri, split="train", pipeline=view)
    assert sum(calls) == len(data.split("train"))  # every training image, once
    assert outputs.dtype == np.float32 and outputs.shape == (len(data.split("train")), 1)
    assert teacher_outputs.load_outputs(uri, "train-16px") is not None  # stored in the registry

    # In order: row i is the teacher's output on training image i (un-augmented view).
    x = torch.from_numpy(data.split("train").images).unsqueeze(1).float() / 255
    with torch.inference_mode():
        expected = first.load_teacher(uri)(view(x, train=False)["hr"])
    torch.testing.assert_close(torch.from_numpy(outputs), expected, rtol=1e-5, atol=1e-5)

    # Another trial (another context, as on another node) reads them: no teacher forward.
    second = TrialContext(device=CPU, data=data)
    calls = count_calls(second.load_teacher(uri))
    again = second.teacher_outputs(uri, split="train", pipeline=view)
    assert calls == [] and np.array_equal(again, outputs)

    # Another input size is another view: computed (and stored) separately.
    bigger = second.teacher_outputs(uri, split="train", pipeline=Pipeline(input_size=24))
    assert sum(calls) == len(data.split("train")) and not np.allclose(bigger, outputs)


def kd_task(teacher_uri, data, **overrides):
    flat = {**STUDENT, "teacher_path": teacher_uri, **overrides}
    return get_method("kd_logit").build(parse_config(flat), data.info, TrialContext(CPU, data))


@pytest.mark.parametrize(
    ("overrides", "cached"),
    [
        ({}, True),  # auto, no augmentation: cached
        ({"teacher_cache": "on"}, True),
        ({"teacher_cache": "off"}, False),
        ({"augment": True}, False),  # auto + augmentation: online, on the augmented view
        ({"augment": True, "teacher_cache": "off"}, False),
    ],
)
def test_teacher_cache_setting_decides_where_teacher_logits_come_from(
    overrides, cached, teacher_uri, data
):
    arrays = kd_task(teacher_uri, data, **overrides).side_arrays("train")
    if cached:
        assert arrays["teacher_logits"].shape == (len(data.split("train")), 1)
    else:
        assert arrays == {}


def test_teacher_cache_on_with_augmentation_is_refused(teacher_uri, data):
    with pytest.raises(ConfigError, match="teacher_cache=on needs augment=false.*teacher_cache"):
        kd_task(teacher_uri, data, augment=True, teacher_cache="on")


def test_kd_without_a_teacher_is_refused(data):
    with pytest.raises(ConfigError, match="kd_logit needs teacher_path"):
        run_trial({**STUDENT, "teacher_path": None}, data, reporter=LocalReporter())


def first_step(teacher_uri, data, **overrides) -> dict:
    """The metrics of one optimiser step: ``train_loss`` is the first batch's loss."""
    reporter = LocalReporter()
    flat = {**STUDENT, "teacher_path": teacher_uri, "steps_per_epoch": 1, **overrides}
    run_trial(flat, data, reporter=reporter)
    return reporter.rows[0]


def test_cached_teacher_outputs_give_the_online_teacher_loss(teacher_uri, data, monkeypatch):
    # alpha=0: the loss is the KD term alone, so it depends on every image's teacher logit.
    cached = first_step(teacher_uri, data)
    online = first_step(teacher_uri, data, teacher_cache="off")
    assert cached["train_loss"] == pytest.approx(online["train_loss"], rel=1e-5)
    assert cached["train_kd"] == pytest.approx(online["train_kd"], rel=1e-5)

    # The comparison can fail: outputs cached in another order (one image off) differ a lot.
    arrays = TrialContext.teacher_arrays
    monkeypatch.setattr(
        TrialContext,
        "teacher_arrays",
        lambda self, *a, **k: {n: np.roll(v, 1, axis=0) for n, v in arrays(self, *a, **k).items()},
    )
    shifted = first_step(teacher_uri, data)
    assert shifted["train_loss"] != pytest.approx(online["train_loss"], rel=0.05)


def test_cached_outputs_of_another_split_size_are_refused(teacher_uri, data, tmp_path):
    uri = fresh_registry_copy(teacher_uri, tmp_path)
    view = Pipeline(input_size=16)
    TrialContext(device=CPU, data=data).teacher_outputs(uri, split="train", pipeline=view)
    fewer = binary_bundle(n=24, size=16)  # same fingerprint, other images: a stale cache
    with pytest.raises(TeacherError, match=r"have \{'logits': 48\} rows, but split 'train' has 24"):
        TrialContext(device=CPU, data=fewer).teacher_outputs(uri, split="train", pipeline=view)
