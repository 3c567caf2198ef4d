"""Model construction: the CNN baseline, timm CNNs, freezing, and two-headed ViTs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cxrkd.trainables.models import MODELS, ModelRegistry, UnknownModel, create_model
from cxrkd.trainables.vit import FeatureAdapter, MultiTaskViT, create_vit


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- CNN baseline -------------------------------------------------------------------------


@pytest.mark.parametrize("side", [64, 224])
def test_cnn_baseline_gives_one_logit_at_any_input_size(side):
    model = create_model("cnn_baseline", num_outputs=1, pretrained=False)
    assert model(torch.randn(3, 1, side, side)).shape == (3, 1)


def test_cnn_baseline_parameter_count_matches_the_arithmetic():
    model = create_model(
        "cnn_baseline", num_outputs=1, pretrained=False, channels=(8, 16), hidden=32
    )
    conv1 = 8 * 1 * 3 * 3 + 8
    conv2 = 16 * 8 * 3 * 3 + 16
    fc1 = (16 * 8 * 8) * 32 + 32  # adaptive pool to 8 x 8 before the flatten
    fc2 = 32 * 1 + 1
    assert n_params(model) == conv1 + conv2 + fc1 + fc2
    # The default widths: the figure quoted in CnnBaseline's docstring.
    default = create_model("cnn_baseline", num_outputs=1, pretrained=False)
    assert n_params(default) == 543_361


def test_cnn_baseline_dropout_is_active_only_in_training():
    model = create_model("cnn_baseline", num_outputs=1, pretrained=False, dropout=0.5)
    x = torch.randn(4, 1, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    first = model(x)
    assert not torch.equal(first, model(x))


def test_cnn_baseline_refuses_pretrained_and_unknown_options():
    with pytest.raises(ValueError, match="pretrained=False"):
        create_model("cnn_baseline", num_outputs=1, pretrained=True)
    with pytest.raises(ValueError, match=r"does not take \['widht'\]"):
        create_model("cnn_baseline", num_outputs=1, pretrained=False, widht=3)


def test_registry_rejects_a_second_builder_under_one_name():
    registry = ModelRegistry()
    registry.register("toy")(lambda **_: nn.Identity())
    with pytest.raises(ValueError, match="already registered"):
        registry.register("toy")(lambda **_: nn.Identity())
    assert "cnn_baseline" in MODELS and "toy" not in MODELS


@pytest.mark.parametrize(
    ("typo", "expected"), [("resnet81", "resnet18"), ("cnn_baselin", "cnn_baseline")]
)
def test_unknown_name_lists_close_matches(typo, expected):
    with pytest.raises(UnknownModel, match=typo) as info:
        create_model(typo, num_outputs=1, pretrained=False)
    assert repr(expected) in str(info.value)


# --- timm CNNs and freezing -----------------------------------------------------------------


def test_resnet18_takes_one_channel_and_gives_num_outputs():
    model = create_model("resnet18", num_outputs=3, pretrained=False)
    assert model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 3)


def test_freeze_trains_only_the_head_and_keeps_batchnorm_statistics():
    torch.manual_seed(0)
    model = create_model("resnet18", num_outputs=1, pretrained=False, freeze=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    assert stats, "resnet18 must have BatchNorm running statistics"
    head_before = model.fc.weight.detach().clone()
    conv_before = model.layer1[0].conv1.weight.detach().clone()

    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x = torch.randn(4, 1, 64, 64) * 3 + 2  # far from the initial statistics (0, 1)
    loss = nn.functional.binary_cross_entropy_with_logits(model(x), torch.ones(4, 1))
    loss.backward()
    optimizer.step()

    after = model.state_dict()
    for key, value in stats.items():
        assert torch.equal(after[key], value), f"{key} changed in a train-mode step"
    assert torch.equal(model.layer1[0].conv1.weight, conv_before)
    assert not torch.equal(model.fc.weight, head_before)


def test_unfrozen_batchnorm_statistics_do_move():
    # The control for the test above: the same step without freeze changes the statistics.
    model = create_model("resnet18", num_outputs=1, pretrained=False)
    before = model.bn1.running_mean.clone()
    model.train()
    model(torch.randn(4, 1, 64, 64) * 3 + 2)
    assert not torch.equal(model.bn1.running_mean, before)


# --- ViTs -----------------------------------------------------------------------------------


def test_demo_vit_outputs_and_block_shapes():
    model = create_vit(
        "vit_tiny_patch16_224", num_findings=5, pretrained=False, img_size=64, patch_size=8, depth=4
    )
    assert (model.width, model.depth, model.grid, model.num_prefix_tokens) == (192, 4, 8, 1)
    out = model(torch.randn(2, 1, 64, 64), return_blocks=True)
    assert out["mlct"].shape == (2, 5)
    assert out["mcct"].shape == (2,)
    assert len(out["blocks"]) == 4
    assert all(b.shape == (2, 1 + 8 * 8, 192) for b in out["blocks"])
    assert "blocks" not in model(torch.randn(2, 1, 64, 64))
    # Hooks live for one call only.
    assert all(not block._forward_hooks for block in model.backbone.blocks)


@pytest.mark.parametrize(
    ("name", "width"),
    [("vit_tiny_patch16_224", 192), ("vit_small_patch16_224", 384), ("vit_base_patch16_224", 768)],
)
def test_paper_vit_sizes_have_their_widths_and_twelve_blocks(name, width):
    model = create_vit(name, num_findings=3, pretrained=False, img_size=32, patch_size=8)
    assert (model.width, model.depth, model.grid) == (width, 12, 4)
    with torch.no_grad():
        blocks = model(torch.randn(1, 1, 32, 32), return_blocks=True)["blocks"]
    assert [tuple(b.shape) for b in blocks] == [(1, 1 + 16, width)] * 12


def test_hooked_blocks_equal_timms_forward_intermediates():
    torch.manual_seed(0)
    model = create_vit(
        "vit_tiny_patch16_224", num_findings=2, pretrained=False, img_size=32, patch_size=8, depth=3
    ).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        out = model(x, return_blocks=True)
        final, inter = model.backbone.forward_intermediates(
            x, output_fmt="NLC", return_prefix_tokens=True
        )
        pooled = final[:, 0]  # class token after the final norm
    assert len(inter) == len(out["blocks"]) == 3
    for hooked, (patches, prefix) in zip(out["blocks"], inter, strict=True):
        assert torch.allclose(hooked, torch.cat([prefix, patches], dim=1))
    assert torch.allclose(out["mcct"], model.mcct_head(pooled).squeeze(-1), atol=1e-6)
    assert torch.allclose(out["mlct"], model.mlct_head(pooled), atol=1e-6)


def test_vit_refuses_pretrained_with_a_depth_override():
    with pytest.raises(ValueError, match="depth=4"):
        create_vit("vit_tiny_patch16_224", num_findings=2, pretrained=True, depth=4)


# --- FeatureAdapter -------------------------------------------------------------------------


def test_adapter_pools_the_larger_grid_and_projects_the_student_width():
    adapter = FeatureAdapter(192, 384, student_grid=4, teacher_grid=2)
    student = torch.randn(2, 1 + 16, 192)
    teacher = torch.randn(2, 1 + 4, 384)
    s, t = adapter(student, teacher)
    assert s.shape == t.shape == (2, 1 + 4, 384)
    assert torch.equal(t, teacher)  # already on the common grid
    # cls token: projected, never pooled; first pooled token: mean of the top-left 2 x 2 patches.
    proj = adapter.proj
    assert torch.allclose(s[:, 0], proj(student[:, 0]), atol=1e-6)
    grid = student[:, 1:].reshape(2, 4, 4, 192)
    top_left = grid[:, :2, :2].mean(dim=(1, 2))
    assert torch.allclose(s[:, 1], proj(top_left), atol=1e-5)
    assert n_params(adapter) == 192 * 384 + 384


def test_adapter_pools_the_teacher_when_the_student_grid_is_smaller():
    adapter = FeatureAdapter(192, 192, student_grid=2, teacher_grid=4)
    assert n_params(adapter) == 0
    student, teacher = torch.randn(1, 1 + 4, 192), torch.randn(1, 1 + 16, 192)
    s, t = adapter(student, teacher)
    assert torch.equal(s, student)
    assert t.shape == (1, 1 + 4, 192)
    assert torch.equal(t[:, 0], teacher[:, 0])
    with pytest.raises(ValueError, match=r"\(B, 1 \+ 2\*\*2, width\)"):
        adapter(torch.randn(1, 1 + 9, 192), teacher)


def test_adapter_is_not_part_of_the_student():
    student = create_vit(
        "vit_tiny_patch16_224", num_findings=2, pretrained=False, img_size=32, patch_size=8, depth=2
    )
    teacher = create_vit(
        "vit_small_patch16_224",
        num_findings=2,
        pretrained=False,
        img_size=64,
        patch_size=8,
        depth=2,
    )
    adapter = FeatureAdapter.between(student, teacher)
    assert (adapter.student_grid, adapter.teacher_grid, adapter.grid) == (4, 8, 4)
    before = n_params(student)
    task = nn.ModuleDict({"student": student, "adapter": adapter})
    assert n_params(task) == before + 192 * 384 + 384
    assert n_params(task["student"]) == before
    assert isinstance(task["student"], MultiTaskViT)
