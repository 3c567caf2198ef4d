"""Offline-safe pretrained weights: local folder, caches, one clear error, no network."""

from __future__ import annotations

import json
import socket
import time

import huggingface_hub.constants
import pytest
import safetensors.torch
import torch

from cxrkd.trainables import weights
from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.models import create_model
from cxrkd.trainables.vit import create_vit
from cxrkd.trainables.weights import (
    UnknownModel,
    WeightsUnavailable,
    check_weights_available,
    resolve_pretrained,
    weights_download,
)
from cxrkd.trainables.weights_folder import sha256_of


@pytest.fixture(autouse=True)
def _empty_caches(tmp_path, monkeypatch):
    """No real HF/torch cache and no CXRKD_WEIGHTS leak in from the machine running the tests."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(weights.WEIGHTS_ENV, raising=False)
    monkeypatch.delenv(weights.ALLOW_RANDOM_ENV, raising=False)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(weights, "_probe", refuse)


@pytest.fixture
def allow_random(monkeypatch):
    """Load the random inits below as if pretrained (a run refuses them without this)."""
    monkeypatch.setenv(weights.ALLOW_RANDOM_ENV, "1")


@pytest.fixture
def fake_resnet18(tmp_path):
    """Random-init resnet18 weights written the way `cxrkd weights download` writes them."""
    folder = tmp_path / "weights"
    (path,) = weights_download(["resnet18"], folder, _random_init=True)
    return folder, path


def test_offline_check_lists_every_missing_model_at_once_without_network(no_network, tmp_path):
    names = ["resnet18", "vit_tiny_patch16_224", "resnet18", "cnn_baseline"]
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as info:
        check_weights_available(names, weights_dir=tmp_path / "empty")
    assert time.perf_counter() - start < 2.0
    message = str(info.value)
    assert "for 3 model(s)" in message
    for name in ("resnet18", "vit_tiny_patch16_224", "cnn_baseline"):
        assert f"  - {name}: " in message
    assert "HF_HUB_OFFLINE is set" in message
    assert "cxrkd weights download resnet18 vit_tiny_patch16_224 --out DIR" in message
    assert "--weights-dir DIR" in message and "CXRKD_WEIGHTS" in message
    assert "--set pretrained=false" in message
    assert isinstance(info.value, CxrkdError)  # the CLI prints it without a traceback


def test_create_model_pretrained_without_weights_fails_fast(no_network):
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailable, match="resnet18"):
        create_model("resnet18", num_outputs=1, pretrained=True)
    assert time.perf_counter() - start < 2.0


def test_download_writes_file_and_index(fake_resnet18):
    folder, path = fake_resnet18
    assert path == folder / "resnet18.safetensors"
    index = json.loads((folder / weights.INDEX_FILE).read_text())
    assert index["resnet18"]["file"] == "resnet18.safetensors"
    assert index["resnet18"]["sha256"] == sha256_of(path)
    assert index["resnet18"]["random_init"] is True
    assert index["resnet18"]["origin"] == weights.ORIGIN_RANDOM
    # A second download merges into the index instead of replacing it.
    weights_download(["resnet10t"], folder, _random_init=True)
    index = json.loads((folder / weights.INDEX_FILE).read_text())
    assert set(index) == {"resnet18", "resnet10t"}


def test_local_file_passes_the_check_and_is_loaded_exactly(fake_resnet18, no_network, allow_random):
    folder, path = fake_resnet18
    check_weights_available(["resnet18"], weights_dir=folder)  # no raise
    assert resolve_pretrained("resnet18", folder) == {
        "pretrained": True,
        "pretrained_cfg_overlay": {"file": str(path)},
    }
    saved = safetensors.torch.load_file(str(path))
    model = create_model("resnet18", num_outputs=1, pretrained=True, weights_dir=folder)
    assert torch.equal(model.layer1[0].conv1.weight, saved["layer1.0.conv1.weight"])
    assert torch.equal(model.bn1.running_var, saved["bn1.running_var"])
    # One input channel: timm sums the RGB kernels of the first conv.
    assert torch.allclose(model.conv1.weight, saved["conv1.weight"].sum(1, keepdim=True))
    assert model.fc.weight.shape == (1, 512)  # 1000-class head dropped, new head


def test_weights_dir_comes_from_the_environment(
    fake_resnet18, monkeypatch, no_network, allow_random
):
    folder, path = fake_resnet18
    monkeypatch.setenv(weights.WEIGHTS_ENV, str(folder))
    check_weights_available(["resnet18"])
    assert resolve_pretrained("resnet18")["pretrained_cfg_overlay"] == {"file": str(path)}


def test_without_a_local_file_timm_resolves_the_weights_itself(tmp_path):
    assert resolve_pretrained("resnet18", tmp_path) == {"pretrained": True}


def test_weights_in_the_hugging_face_cache_count_as_available(tmp_path, no_network):
    # The layout huggingface_hub writes: refs/main -> commit, snapshots/<commit>/<file>.
    repo = tmp_path / "hf" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model.safetensors").write_bytes(b"x")
    check_weights_available(["resnet18"], weights_dir=tmp_path / "empty")
    with pytest.raises(WeightsUnavailable, match="resnet50"):
        check_weights_available(["resnet18", "resnet50"], weights_dir=tmp_path / "empty")


def test_online_check_probes_once_and_stops_when_nothing_answers(tmp_path, monkeypatch):
    calls = []

    def unreachable(cfg, *, timeout_s):
        calls.append(cfg.hf_hub_id)
        return "the download source did not answer (ConnectError)", False

    monkeypatch.setattr(weights, "hub_offline", lambda: False)
    monkeypatch.setattr(weights, "_probe", unreachable)
    with pytest.raises(WeightsUnavailable) as info:
        check_weights_available(["resnet18", "resnet50"], weights_dir=tmp_path)
    assert calls == ["timm/resnet18.a1_in1k"]  # one timeout at most, not one per model
    assert "did not answer" in str(info.value)
    assert "resnet50: " in str(info.value)

    monkeypatch.setattr(weights, "_probe", lambda cfg, *, timeout_s: (None, True))
    check_weights_available(["resnet18", "resnet50"], weights_dir=tmp_path)  # downloadable


def test_vit_loads_local_weights_at_a_new_image_size(tmp_path, no_network, allow_random):
    folder = tmp_path / "weights"
    (path,) = weights_download(["vit_tiny_patch16_224"], folder, _random_init=True)
    saved = safetensors.torch.load_file(str(path))
    model = create_vit(
        "vit_tiny_patch16_224", num_findings=3, pretrained=True, weights_dir=folder, img_size=32
    )
    vit = model.backbone
    assert torch.equal(vit.blocks[0].attn.qkv.weight, saved["blocks.0.attn.qkv.weight"])
    assert torch.equal(vit.cls_token, saved["cls_token"])
    assert torch.allclose(
        vit.patch_embed.proj.weight, saved["patch_embed.proj.weight"].sum(1, keepdim=True)
    )
    assert vit.pos_embed.shape == (1, 1 + 2 * 2, 192)  # resampled from 14 x 14 to 2 x 2
    assert model(torch.randn(1, 1, 32, 32))["mlct"].shape == (1, 3)


def test_download_rejects_an_unknown_name_before_downloading_anything(tmp_path):
    with pytest.raises(UnknownModel, match="resnet81") as info:
        weights_download(["resnet18", "resnet81"], tmp_path / "out", _random_init=True)
    assert "'resnet18'" in str(info.value)  # a close match
    assert not (tmp_path / "out" / "resnet18.safetensors").exists()
