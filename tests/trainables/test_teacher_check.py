"""One teacher check for every KD method (issue 9, item 6): ``kd_logit`` refuses a teacher of
another kind, input size or dataset, as ``kd_vit`` does (its cases: test_vit_methods.py)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import TEACHERS, binary_bundle, example_config, train_teacher

from cxrkd.trainables import teacher_files
from cxrkd.trainables.config import ConfigError, parse_config
from cxrkd.trainables.context import TrialContext
from cxrkd.trainables.methods import get_method
from cxrkd.trainables.teachers import TeacherError, TeacherKey, TeacherRegistry


@pytest.fixture(scope="module")
def data():
    return binary_bundle(n=48, size=16)


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("teachers")


@pytest.fixture(scope="module")
def teacher_uri(storage, data) -> str:
    return train_teacher(storage, data, **TEACHERS["binary"])  # 16 px, like the student


def _build(flat: dict, data):
    torch.manual_seed(0)
    cfg = parse_config(flat)
    ctx = TrialContext(device=torch.device("cpu"), data=data)
    return get_method(cfg.train.method).build(cfg, data.info, ctx)


def _register_as(storage, uri: str, data, **changes) -> str:
    """The teacher's files registered again with ``changes`` in its resolved config."""
    folder = storage / f"edited-{'-'.join(map(str, changes.values()))}"
    shutil.copytree(teacher_files.fetch_model_dir(uri), folder)
    flat = {**json.loads((folder / "config.json").read_text()), **changes}
    (folder / "config.json").write_text(json.dumps(flat))
    key = TeacherKey.from_config(flat, data.info.fingerprint)
    return TeacherRegistry(str(storage)).register(key, folder, {})


def test_kd_logit_takes_a_teacher_of_its_task_and_input_size(data, teacher_uri):
    task = _build(example_config("kd_logit", teacher_uri), data)
    assert task.teacher is not None


def test_kd_logit_refuses_a_teacher_trained_at_another_input_size(data, teacher_uri):
    flat = {**example_config("kd_logit", teacher_uri), "img_size": 24}
    with pytest.raises(ConfigError, match=r"trained on 16 px .* at img_size=24; use a teacher"):
        _build(flat, data)


def test_kd_logit_refuses_a_low_resolution_teacher(storage, data, teacher_uri):
    uri = _register_as(storage, teacher_uri, data, low_res=8)
    with pytest.raises(ConfigError, match=r"with low_res=8, .* trained with low_res=0"):
        _build(example_config("kd_logit", uri), data)


def test_kd_logit_refuses_a_teacher_of_another_method(storage, data, teacher_uri):
    uri = _register_as(storage, teacher_uri, data, method="vit_mtl")
    with pytest.raises(
        ConfigError,
        match=r"trained with method 'vit_mtl'; kd_logit distils a one-logit binary classifier "
        r"\(methods \[.*'transfer'.*\]\)",
    ):
        _build(example_config("kd_logit", uri), data)


def test_kd_logit_refuses_a_teacher_of_another_dataset(data, teacher_uri):
    other = binary_bundle(n=48, size=16, seed=1, fingerprint="fp-other")
    with pytest.raises(TeacherError, match=r"fingerprint fp0, but .* fingerprint fp-other"):
        _build(example_config("kd_logit", teacher_uri), other)
