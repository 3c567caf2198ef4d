"""The demo's backbones: pretrained on the SYNTHETIC findings phantom, cached, loaded by the
demo profile's ResNet-18 cells through the ordinary weights-folder path.

The recipe is shrunk here (60 images, 3 steps): what is tested is the mechanism (build once,
key by recipe, index, load exactly, refuse to build inside a trial), not the features. The real
recipe's effect is measured by the demo itself (README: the frozen row above chance).
"""

from __future__ import annotations

import optuna
import pytest
import safetensors.torch
import torch
from helpers import binary_bundle

from cxrkd.search.cli import main
from cxrkd.spaces.cell_space import CellSpace
from cxrkd.spaces.studies import SearchCell, get_study
from cxrkd.trainables import phantom_backbones as pb
from cxrkd.trainables.config import parse_config
from cxrkd.trainables.context import TrialContext
from cxrkd.trainables.methods import get_method
from cxrkd.trainables.models import create_model
from cxrkd.trainables.weights import (
    ALLOW_RANDOM_ENV,
    ORIGIN_PHANTOM,
    WeightsUnavailable,
    check_weights_available,
    read_index,
)

SOURCE = f"cxrkd:{pb.SOURCE}"


@pytest.fixture(autouse=True)
def small_recipe(monkeypatch):
    monkeypatch.delenv(ALLOW_RANDOM_ENV, raising=False)  # these are not random inits
    recipe = {
        **pb.RECIPE,
        "images": 60,
        "store_px": 16,
        "img_size": 16,
        "steps": 3,
        "batch_size": 8,
    }
    monkeypatch.setattr(pb, "RECIPE", recipe)
    monkeypatch.setattr(pb, "STORE_NAME", "phantom-findings-test")
    return recipe


def demo_cells() -> dict[str, dict]:
    study = get_study("pneumonia-kd", "demo")
    return {
        cell.key: cell.fixed
        for stage in study.stages[:2]
        for cell in stage.cells
        if isinstance(cell, SearchCell)
    }


def test_demo_profile_starts_the_resnet18_rows_from_phantom_backbones():
    cells = demo_cells()
    for key in ("resnet18_finetuned", "resnet18_frozen", "resnet18_kd"):
        assert cells[key]["pretrained"] is True and cells[key]["weights_dir"] == SOURCE, key
    assert cells["resnet50_teacher"]["pretrained"] is False  # from scratch, said in the caption
    assert cells["baseline_cnn"]["pretrained"] is False
    banner = get_study("pneumonia-kd", "demo").profile.banner
    assert "backbones pretrained on the SYNTHETIC findings phantom, not ImageNet" in banner
    assert "teachers from scratch" in banner
    assert "ImageNet-pretrained" in get_study("pneumonia-kd", "paper").profile.banner


def test_preflight_builds_once_and_the_frozen_cell_loads_it_exactly(small_recipe, monkeypatch):
    check_weights_available(["resnet18"], weights_dir=SOURCE)  # the driver's pre-flight
    folder = pb.builtin_weights_dir(pb.SOURCE)
    assert folder.name == f"phantom-findings-{pb.recipe_key(small_recipe)}"
    entry = read_index(folder)["resnet18"]
    assert entry["origin"] == ORIGIN_PHANTOM and entry["random_init"] is False
    assert entry["recipe"] == small_recipe and 0.0 <= entry["val_auroc_mean"] <= 1.0
    assert entry["in_chans"] == 1 and entry["source_dataset"]["name"] == "phantom-findings-test"

    # Cached: a second pre-flight (a resume, the next demo) trains nothing.
    monkeypatch.setattr(pb, "_train", lambda *a: pytest.fail("retrained a cached backbone"))
    check_weights_available(["resnet18"], weights_dir=SOURCE)

    # The demo's frozen cell, built by its method as its trial builds it.
    flat = CellSpace(SearchCell("f", "transfer", demo_cells()["resnet18_frozen"], 1))(
        optuna.create_study().ask()
    )
    data = binary_bundle(n=8)
    task = get_method("transfer").build(
        parse_config(flat), data.info, TrialContext(torch.device("cpu"), data)
    )
    saved = safetensors.torch.load_file(str(folder / entry["file"]))
    loaded = task.model.state_dict()
    assert torch.equal(loaded["conv1.weight"], saved["conv1.weight"])  # saved at 1 channel
    assert torch.equal(loaded["layer4.1.conv2.weight"], saved["layer4.1.conv2.weight"])
    assert torch.equal(loaded["layer1.0.bn1.running_mean"], saved["layer1.0.bn1.running_mean"])
    assert loaded["fc.weight"].shape == (1, 512)  # the findings head is not the pneumonia head


def test_a_recipe_change_builds_a_new_folder(small_recipe, monkeypatch):
    first = pb.builtin_weights_dir(pb.SOURCE)
    monkeypatch.setattr(pb, "RECIPE", {**small_recipe, "lr": 1e-3})
    assert pb.builtin_weights_dir(pb.SOURCE) != first


def test_a_trial_never_builds_the_backbone_itself(monkeypatch):
    monkeypatch.setattr(pb, "_train", lambda *a: pytest.fail("a trial trained a backbone"))
    with pytest.raises(WeightsUnavailable, match=r"cxrkd weights pretrain-phantom resnet18"):
        create_model("resnet18", num_outputs=1, pretrained=True, weights_dir=SOURCE)


def test_cli_pretrain_phantom_writes_a_folder_a_run_accepts(tmp_path, capsys):
    out = tmp_path / "phantom-weights"
    assert main(["weights", "pretrain-phantom", "resnet10t", "--out", str(out)]) == 0
    assert f"--weights-dir {out}" in capsys.readouterr().out
    check_weights_available(["resnet10t"], weights_dir=out)  # no opt-in needed: not random
    assert main(["weights", "check", str(out)]) == 0
    assert "resnet10t: ok (resnet10t.safetensors, phantom-pretrained (SYNTHETIC))" in (
        capsys.readouterr().out
    )
