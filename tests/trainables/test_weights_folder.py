"""Offline weights folders for every model a paper profile uses, loaded the way its trials load.

Each model's folder is written from a random init (``make_weights_dir``, marked as such), then
the paper study's own cell is turned into a trial config with ``--weights-dir`` and built by its
method, i.e. through ``create_model``/``create_vit`` -> ``create_timm_model`` ->
``resolve_pretrained``; the built backbone must hold exactly the saved tensors.
"""

from __future__ import annotations

import shutil
import socket

import huggingface_hub.constants
import optuna
import pytest
import safetensors.torch
import torch
from helpers import binary_bundle, multilabel_bundle
from weights_fixture import ALLOW_RANDOM_ENV, make_weights_dir

from cxrkd.search.cli import main
from cxrkd.spaces.cell_space import CellSpace
from cxrkd.spaces.studies import SearchCell, get_study
from cxrkd.trainables import weights
from cxrkd.trainables.config import parse_config
from cxrkd.trainables.context import TrialContext
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.methods import get_method
from cxrkd.trainables.models import create_model
from cxrkd.trainables.weights import (
    INDEX_FILE,
    ORIGIN_RANDOM,
    RandomWeightsRefused,
    WeightsDamaged,
    WeightsUnavailable,
    check_weights_available,
    read_index,
)
from cxrkd.trainables.weights_folder import sha256_of

# resnet18/resnet50: pneumonia-kd's paper profile; the three ViTs: lowres-kd's paper profile;
# convnext_atto stands for "any timm name" (built through pneumonia-kd's transfer cell).
PAPER_MODELS = {
    "resnet18": "pneumonia-kd",
    "resnet50": "pneumonia-kd",
    "vit_tiny_patch16_224": "lowres-kd",
    "vit_small_patch16_224": "lowres-kd",
    "vit_base_patch16_224": "lowres-kd",
    "convnext_atto": "pneumonia-kd",
}


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    """No real HF/torch cache, no CXRKD_WEIGHTS, and no network at all."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(weights.WEIGHTS_ENV, raising=False)
    monkeypatch.delenv(ALLOW_RANDOM_ENV, raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(weights, "_probe", refuse)


@pytest.fixture(scope="module")
def paper_weights(tmp_path_factory):
    """One folder with all six models (ViT-Base is 86 M parameters: written once)."""
    root = tmp_path_factory.mktemp("paper-weights")
    yield make_weights_dir(root, PAPER_MODELS)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def allow_random(monkeypatch):
    monkeypatch.setenv(ALLOW_RANDOM_ENV, "1")


@pytest.fixture
def small_weights(tmp_path):
    return make_weights_dir(tmp_path / "weights", ["resnet18"])


def paper_trial_config(model: str, folder) -> dict:
    """The flat config of a trial of the paper profile that trains ``model`` from pretrained
    weights, as its study's cell makes it, with ``--weights-dir folder`` pinned."""
    study = get_study(PAPER_MODELS[model], "paper")
    wanted = model if model in ("resnet18", "resnet50") or "vit" in model else "resnet18"
    for stage in study.stages:
        if stage.role == "final":
            continue
        for cell in stage.cells:
            f = cell.fixed if isinstance(cell, SearchCell) else {}
            if f.get("model") == wanted and f.get("pretrained") and "teacher_path" not in f:
                flat = CellSpace(cell)(optuna.create_study().ask())
                return {**flat, "model": model, "weights_dir": str(folder)}
    raise AssertionError(f"no pretrained cell trains {wanted} in {study.name}'s paper profile")


def build_paper_backbone(model: str, folder) -> torch.nn.Module:
    """The trial's task, built by its method exactly as the trial builds it; its timm model."""
    cfg = parse_config(paper_trial_config(model, folder))
    data = binary_bundle(n=8) if "binary" in get_method(cfg.train.method).tasks else None
    data = data or multilabel_bundle(n=8)
    task = get_method(cfg.train.method).build(
        cfg, data.info, TrialContext(torch.device("cpu"), data)
    )
    return next(m for m in task.modules() if hasattr(m, "pretrained_cfg"))  # timm's model


@pytest.mark.parametrize("model", PAPER_MODELS)
def test_paper_trial_loads_every_saved_tensor(model, paper_weights, allow_random):
    entry = read_index(paper_weights)[model]
    assert entry["origin"] == ORIGIN_RANDOM and entry["random_init"] is True
    saved = safetensors.torch.load_file(str(paper_weights / entry["file"]))
    backbone = build_paper_backbone(model, paper_weights)
    loaded = backbone.state_dict()
    cfg = backbone.pretrained_cfg
    first = cfg["first_conv"] if isinstance(cfg["first_conv"], str) else cfg["first_conv"][0]
    heads = (cfg["classifier"],) if isinstance(cfg["classifier"], str) else cfg["classifier"]
    compared = 0
    for key, tensor in saved.items():
        if key.rsplit(".", 1)[0] in heads:  # the 1000-class head is dropped for ours
            assert key not in loaded or loaded[key].shape != tensor.shape, key
        elif key == f"{first}.weight":  # one input channel: timm sums the RGB kernels
            assert torch.allclose(loaded[key], tensor.sum(1, keepdim=True), atol=1e-6), key
            compared += 1
        elif key.endswith("num_batches_tracked") and key not in loaded:
            continue  # a frozen extractor's FrozenBatchNorm2d keeps no counter
        else:
            assert torch.equal(loaded[key], tensor), key
            compared += 1
    assert compared >= len(saved) - 4, (compared, len(saved))


def test_every_paper_model_passes_the_preflight_check(paper_weights, allow_random):
    check_weights_available(list(PAPER_MODELS), weights_dir=paper_weights)


def test_index_lists_file_sha256_and_origin(paper_weights):
    index = read_index(paper_weights)
    assert set(index) == set(PAPER_MODELS)
    for name, entry in index.items():
        assert entry["file"] == f"{name}.safetensors"
        assert entry["sha256"] == sha256_of(paper_weights / entry["file"])
        assert entry["in_chans"] == 3 and entry["num_classes"] == 1000  # timm's pretrained layout


def test_random_init_is_refused_without_the_opt_in(small_weights, capsys):
    with pytest.raises(RandomWeightsRefused) as info:
        check_weights_available(["resnet18"], weights_dir=small_weights)
    message = str(info.value)
    assert str(small_weights / "resnet18.safetensors") in message
    assert ORIGIN_RANDOM in message and "--set pretrained=false" in message
    assert "cxrkd weights download resnet18" in message and ALLOW_RANDOM_ENV in message
    # The trial path refuses it too, whatever the driver did.
    with pytest.raises(RandomWeightsRefused):
        create_model("resnet18", num_outputs=1, pretrained=True, weights_dir=small_weights)
    assert main(["weights", "check", str(small_weights)]) == 2
    assert "random initialisation written for tests" in capsys.readouterr().err


def test_a_changed_file_is_refused_with_the_fix(small_weights, allow_random, capsys):
    path = small_weights / "resnet18.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit pattern in the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsDamaged) as info:
        check_weights_available(["resnet18"], weights_dir=small_weights)
    message = str(info.value)
    assert f"{path} does not match its sha256 in {small_weights / INDEX_FILE}" in message
    assert f"cxrkd weights download resnet18 --out {small_weights}" in message
    assert isinstance(info.value, CxrkdError)
    with pytest.raises(WeightsDamaged):  # a trial checks again before it loads
        create_model("resnet18", num_outputs=1, pretrained=True, weights_dir=small_weights)
    assert main(["weights", "check", str(small_weights)]) == 2
    assert "does not match its sha256" in capsys.readouterr().err


def test_paper_run_with_a_damaged_folder_exits_2_before_any_trial(
    small_weights, allow_random, tmp_path, capsys
):
    from cxrkd.trainables.data.importers import import_dataset

    import_dataset("phantom", "pneumonia", name="tiny", n=40, size=16, progress=False, workers=1)
    make_weights_dir(small_weights, ["resnet50"])
    path = small_weights / "resnet50.safetensors"
    path.write_bytes(path.read_bytes()[:-8])  # an interrupted copy
    argv = ["search", "run", "pneumonia-kd", "--profile", "paper", "--dataset", "tiny",
            "--storage", str(tmp_path / "runs"), "--name", "R",
            "--weights-dir", str(small_weights)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{path} does not match its sha256" in err and "cxrkd weights download resnet50" in err
    assert not (tmp_path / "runs" / "R").exists()


def test_missing_models_are_listed_with_the_fixes(small_weights, allow_random):
    with pytest.raises(WeightsUnavailable) as info:
        check_weights_available(
            ["resnet18", "resnet50", "vit_base_patch16_224"], weights_dir=small_weights
        )
    message = str(info.value)
    assert "for 2 model(s)" in message and "  - resnet18" not in message
    assert f"  - resnet50: not in {small_weights}" in message
    assert "cxrkd weights download resnet50 vit_base_patch16_224 --out DIR" in message
    assert "--weights-dir DIR" in message and "--set pretrained=false" in message


def test_a_file_the_index_does_not_list_is_not_loaded(small_weights, allow_random):
    shutil.copy(small_weights / "resnet18.safetensors", small_weights / "resnet50.safetensors")
    with pytest.raises(WeightsUnavailable, match=r"resnet50.safetensors is not listed in .*index"):
        check_weights_available(["resnet50"], weights_dir=small_weights)


def test_a_listed_file_that_is_gone_or_a_damaged_index_is_named(small_weights, allow_random):
    (small_weights / "resnet18.safetensors").unlink()
    with pytest.raises(WeightsDamaged, match=r"lists resnet18 as 'resnet18.safetensors', but"):
        check_weights_available(["resnet18"], weights_dir=small_weights)
    (small_weights / INDEX_FILE).write_text("{not json")
    with pytest.raises(WeightsDamaged, match=rf"{INDEX_FILE} is damaged"):
        check_weights_available(["resnet18"], weights_dir=small_weights)


def test_an_index_written_before_origins_existed_still_reads(small_weights, allow_random):
    from cxrkd.trainables.weights_folder import origin_of

    assert origin_of({"file": "x", "random_init": False}) == weights.ORIGIN_HUB
    assert origin_of({"file": "x", "random_init": True}) == ORIGIN_RANDOM
