"""``trainables/features.py``: forward hooks on named modules of timm models (a ResNet and a
ViT: the outputs the models compute, hooks gone after), naming a model's stages and picking
the middle one, the shape probe, and the CNN projection against the formula written out."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from cxrkd.trainables.errors import CxrkdError
from cxrkd.trainables.features import (
    FeatureProjection,
    FeatureTaps,
    middle_index,
    middle_stage,
    probe_shapes,
    stage_names,
)
from cxrkd.trainables.models import create_model


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=1).eval()


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, in_chans=1, num_classes=1, img_size=32,
        patch_size=8, depth=3,
    ).eval()  # fmt: skip


def hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_resnet_stages_are_its_four_layers_with_the_maps_it_computes(resnet):
    assert stage_names(resnet) == ["layer1", "layer2", "layer3", "layer4"]  # not the stem's act1
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad(), FeatureTaps(resnet, stage_names(resnet)) as taps:
        logits = resnet(x)
    maps = taps.outputs()
    assert [tuple(m.shape) for m in maps] == [
        (2, 64, 8, 8), (2, 128, 4, 4), (2, 256, 2, 2), (2, 512, 1, 1)
    ]  # fmt: skip
    assert hooks(resnet) == 0  # removed on exit
    with torch.no_grad():  # the same forward, written out: the taps saw what the model computed
        h = resnet.maxpool(resnet.act1(resnet.bn1(resnet.conv1(x))))
        for name, tapped in zip(stage_names(resnet), maps, strict=True):
            h = getattr(resnet, name)(h)
            assert torch.equal(h, tapped), name
        assert torch.equal(resnet.forward_head(h), logits)


def test_vit_stages_are_its_blocks_with_the_tokens_they_emit(vit):
    assert stage_names(vit) == ["blocks.0", "blocks.1", "blocks.2"]
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad(), FeatureTaps(vit, ["blocks.2", "blocks.0"]) as taps:
        vit(x)
    last, first = taps.outputs()  # in the order asked for
    assert first.shape == last.shape == (2, 1 + 16, 192)  # class token + 4 x 4 patches
    with torch.no_grad():
        tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        assert torch.equal(vit.blocks[0](tokens), first)
        assert torch.equal(vit.norm(last), vit.forward_features(x))
    assert hooks(vit) == 0


def test_an_unknown_module_is_refused_with_close_names_and_hooks_go_on_error(resnet):
    with pytest.raises(CxrkdError, match=r"no module 'layr2'; close names: \['layer2'"):
        FeatureTaps(resnet, ["layr2"])
    with pytest.raises(RuntimeError, match="boom"), FeatureTaps(resnet, ["layer1"]):
        assert hooks(resnet) == 1
        raise RuntimeError("boom")
    assert hooks(resnet) == 0
    with FeatureTaps(resnet, ["layer3"]) as taps:
        pass  # no forward inside
    with pytest.raises(CxrkdError, match=r"modules \['layer3'\] of ResNet did not run"):
        taps.outputs()


def test_a_module_run_twice_in_one_forward_is_an_error():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    with pytest.raises(CxrkdError, match="module '0' ran twice"), FeatureTaps(model, ["0"]):
        model(torch.zeros(1, 3))


@pytest.mark.parametrize(("n", "index"), [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (12, 5)])
def test_the_middle_stage_is_stage_ceil_n_over_2(n, index):
    assert middle_index(n) == index


def test_middle_stage_of_models_and_a_model_without_stages(resnet, vit):
    assert middle_stage(resnet) == "layer2"
    assert middle_stage(vit) == "blocks.1"
    with pytest.raises(CxrkdError, match="CnnBaseline names no stages.*logits only"):
        stage_names(create_model("cnn_baseline", num_outputs=1, pretrained=False))


def test_probe_leaves_batch_norm_and_train_mode_as_they_were():
    model = timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=1).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shapes = probe_shapes(model, ["layer2", "layer4"], 64)
    assert [tuple(s) for s in shapes] == [(1, 128, 8, 8), (1, 512, 2, 2)]
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats untouched


def test_projection_maps_student_channels_to_the_teachers_and_pools_the_larger_map():
    torch.manual_seed(1)
    proj = FeatureProjection.between(torch.Size((2, 3, 8, 8)), torch.Size((2, 5, 4, 4)))
    s, t = torch.randn(2, 3, 8, 8, requires_grad=True), torch.randn(2, 5, 4, 4)
    s_out, t_out = proj(s, t)
    assert s_out.shape == t_out.shape == (2, 5, 4, 4)
    assert torch.equal(t_out, t)  # the smaller map is kept as it is
    # Written out: 2 x 2 block means, then the 1x1 conv as a matrix over channels.
    pooled = s.reshape(2, 3, 4, 2, 4, 2).mean(dim=(3, 5))
    weight = proj.proj.weight[:, :, 0, 0]  # (5, 3)
    torch.testing.assert_close(s_out, torch.einsum("oc,bchw->bohw", weight, pooled))
    s_out.sum().backward()
    assert proj.proj.weight.grad is not None and s.grad is not None  # trained with the student
    # A teacher map larger than the student's is pooled to the student's size.
    proj = FeatureProjection.between(torch.Size((1, 4, 2, 2)), torch.Size((1, 4, 6, 6)))
    assert isinstance(proj.proj, nn.Identity) and not list(proj.parameters())  # equal widths
    t = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(proj.pool_teacher(t), F.adaptive_avg_pool2d(t, 2))
    with pytest.raises(ValueError, match=r"student maps must be \(B, C, 2, 2\)"):
        proj.adapt_student(torch.zeros(1, 4, 3, 3))
    with pytest.raises(CxrkdError, match=r"takes \(B, C, H, W\) maps, got student \(1, 17, 192\)"):
        FeatureProjection.between(torch.Size((1, 17, 192)), torch.Size((1, 17, 192)))
