"""Input normalisation per model (issue 9.2): one source of truth, ``model_normalization``,
used by trials, evaluation, teacher forwards, teacher caches and the teacher fingerprint."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import TINY, binary_bundle, train_teacher

from cxrkd.trainables import teacher_files
from cxrkd.trainables.config import parse_config
from cxrkd.trainables.context import TrialContext
from cxrkd.trainables.data.augment import normalize, resize
from cxrkd.trainables.loop import run_trial
from cxrkd.trainables.methods import get_method
from cxrkd.trainables.methods.classify import ClassifierTask
from cxrkd.trainables.models import DEFAULT_NORMALIZATION, UnknownModel, model_normalization
from cxrkd.trainables.precision import fp32_head
from cxrkd.trainables.task import Task
from cxrkd.trainables.teachers import (
    LEGACY_NORMALIZATION,
    TeacherError,
    TeacherKey,
    TeacherRegistry,
)
from cxrkd.trainables.trainable import LocalReporter

CPU = torch.device("cpu")
IMAGENET = (0.449, 0.226)  # (0.485 + 0.456 + 0.406) / 3, (0.229 + 0.224 + 0.225) / 3


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("vit_tiny_patch16_224", (0.5, 0.5)),  # augreg weights
        ("vit_tiny_patch16_224.augreg_in21k", (0.5, 0.5)),
        ("vit_small_patch16_224", (0.5, 0.5)),
        ("resnet18", IMAGENET),
        ("resnet50", IMAGENET),
        ("deit_tiny_patch16_224", IMAGENET),  # a ViT with ImageNet statistics
        ("cnn_baseline", DEFAULT_NORMALIZATION),
    ],
)
def test_each_model_gets_the_statistics_of_its_own_weights(name, expected):
    assert model_normalization(name) == pytest.approx(expected, abs=1e-9)


def test_custom_models_keep_the_documented_default_and_unknown_names_fail():
    assert DEFAULT_NORMALIZATION == IMAGENET
    with pytest.raises(UnknownModel, match="unknown model 'resnet19'"):
        model_normalization("resnet19")


def spy_pipelines(monkeypatch) -> list:
    """Every pipeline a task builds, as (mean, std, teacher_norm)."""
    made, make = [], Task.make_pipeline

    def spy(self, **kwargs):
        pipeline = make(self, **kwargs)
        made.append((pipeline.mean, pipeline.std, pipeline.teacher_norm))
        return pipeline

    monkeypatch.setattr(Task, "make_pipeline", spy)
    return made


@pytest.mark.parametrize(
    ("model", "method", "expected"),
    [("test_resnet", "transfer", (0.5, 0.5)), ("cnn_baseline", "cnn_baseline", IMAGENET)],
)
def test_a_trial_trains_and_evaluates_with_its_models_statistics(model, method, expected,
                                                                 monkeypatch):  # fmt: skip
    made = spy_pipelines(monkeypatch)
    views, forward = [], ClassifierTask.forward

    def record(self, v, y):
        views.append(v["hr"].detach().clone())
        return forward(self, v, y)

    monkeypatch.setattr(ClassifierTask, "forward", record)
    flat = {**TINY, "method": method, "model": model, "steps_per_epoch": 1}
    run_trial(flat, binary_bundle(n=24, size=16), reporter=LocalReporter())
    # One pipeline for training and validation, in the model's statistics, no teacher view.
    ((mean, std, teacher_norm),) = made
    assert (mean, std) == pytest.approx(expected) and teacher_norm is None
    # What the model saw: a view in [-mean/std, (1-mean)/std], here for 0.5/0.5 [-1, 1].
    low, high = -expected[0] / expected[1], (1 - expected[0]) / expected[1]
    assert low - 1e-6 <= float(views[0].min()) and float(views[0].max()) <= high + 1e-6


# --- a teacher and a student with different statistics ------------------------------------


@pytest.fixture(scope="module")
def data():
    return binary_bundle(n=48, size=16)


@pytest.fixture(scope="module")
def teacher_uri(tmp_path_factory, data) -> str:
    """A test_resnet teacher: 0.5/0.5 (its pretrained_cfg), unlike a resnet18 student."""
    return train_teacher(tmp_path_factory.mktemp("run"), data, lr=1e-2, steps_per_epoch=4)


def kd_task(teacher_uri, data, **overrides):
    flat = {**TINY, "method": "kd_logit", "model": "resnet18", "teacher_path": teacher_uri,
            "alpha": 0.5, "temperature": 2.0, **overrides}  # fmt: skip
    torch.manual_seed(0)
    return get_method("kd_logit").build(parse_config(flat), data.info, TrialContext(CPU, data))


def test_kd_teacher_and_student_each_see_their_own_normalisation(teacher_uri, data):
    task = kd_task(teacher_uri, data, teacher_cache="off")
    assert task.normalization == pytest.approx(IMAGENET)  # resnet18 student
    assert task.teacher_normalization == pytest.approx((0.5, 0.5))  # test_resnet teacher
    train = data.split("train")
    x = torch.from_numpy(train.images[:8]).unsqueeze(1).float() / 255
    seen = {}
    hooks = [
        module.register_forward_pre_hook(lambda m, a, who=who: seen.setdefault(who, a[0]))
        for who, module in (("student", task.model.conv1), ("teacher", task.teacher.conv1))
    ]
    views = task.make_pipeline(input_size=16)(x, train=True)
    task.train()(views, torch.from_numpy(train.labels[:8]))
    for h in hooks:
        h.remove()
    plain = resize(x, 16)
    torch.testing.assert_close(seen["student"], normalize(plain, mean=0.449, std=0.226))
    torch.testing.assert_close(seen["teacher"], normalize(plain, mean=0.5, std=0.5))


def test_cached_teacher_logits_use_the_teachers_normalisation(teacher_uri, data):
    task = kd_task(teacher_uri, data)  # auto, no augmentation: cached
    train = data.split("train")
    x = resize(torch.from_numpy(train.images).unsqueeze(1).float() / 255, 16)
    with torch.no_grad():
        own = fp32_head(task.teacher, normalize(x, mean=0.5, std=0.5)).reshape(-1).numpy()
        student_stats = fp32_head(task.teacher, normalize(x, mean=0.449, std=0.226))
    np.testing.assert_allclose(task.cached.reshape(-1), own, rtol=1e-5, atol=1e-6)
    assert np.abs(student_stats.reshape(-1).numpy() - own).max() > 1e-3  # the check can fail


def test_teacher_fingerprint_includes_the_normalisation():
    flat = {"method": "vit_mtl", "model": "vit_tiny_patch16_224", "img_size": 32, "seed": 0}
    key = TeacherKey.from_config(flat, "fp0")
    assert key.normalization == (0.5, 0.5)
    legacy = dataclasses.replace(key, normalization=LEGACY_NORMALIZATION)
    assert key.fingerprint != legacy.fingerprint  # a ViT teacher of the old code is not reused
    # A record's JSON list reads back as the same key.
    assert TeacherKey(**{**dataclasses.asdict(key), "normalization": [0.5, 0.5]}) == key


def test_a_teacher_trained_with_other_statistics_is_refused(teacher_uri, data, tmp_path):
    record = teacher_files.read_json_record(teacher_uri)
    key = TeacherKey(**record["key"])
    assert key.normalization == (0.5, 0.5)
    stale = dataclasses.replace(key, normalization=LEGACY_NORMALIZATION)
    uri = TeacherRegistry(str(tmp_path)).register(
        stale, teacher_files.fetch_model_dir(teacher_uri), {}
    )
    with pytest.raises(TeacherError, match=r"normalised with mean/std \(0.449, 0.226\).*again"):
        kd_task(uri, data)
