"""Weight decay (issue 9.3): biases, norm weights and every name a module's
``no_weight_decay()`` lists (a ViT's pos_embed, cls_token, dist_token) are exempt, as in
timm's optimizer factory, also when the model sits inside a Task; frozen parameters are out."""

from __future__ import annotations

import pytest
import timm
import timm.optim
import torch
from helpers import multilabel_bundle

from cxrkd.trainables.config import TrainConfig
from cxrkd.trainables.methods.vit_mtl import MultiTaskTask
from cxrkd.trainables.optim import make_optimizer
from cxrkd.trainables.vit import create_vit

CFG = TrainConfig(method="vit_mtl", weight_decay=0.05)
SMALL = {"img_size": 32, "patch_size": 8, "depth": 1, "in_chans": 1, "num_classes": 1}


def decay_of(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {
        name: group["weight_decay"]
        for group in optimizer.param_groups
        for name in group["param_names"]
    }


@pytest.mark.parametrize(
    ("name", "tokens"),
    [
        ("vit_tiny_patch16_224", {"pos_embed", "cls_token"}),
        ("deit_tiny_distilled_patch16_224", {"pos_embed", "cls_token", "dist_token"}),
    ],
)
def test_vit_tokens_biases_and_norms_are_not_decayed_as_in_timm(name, tokens):
    model = timm.create_model(name, pretrained=False, **SMALL)
    decay = decay_of(make_optimizer(model, CFG))
    assert {n for n, wd in decay.items() if wd == 0} >= tokens
    assert decay["patch_embed.proj.weight"] == decay["blocks.0.attn.qkv.weight"] == 0.05
    assert decay["blocks.0.norm1.weight"] == decay["blocks.0.attn.qkv.bias"] == 0.0
    # The same split as timm's own factory (by parameter identity).
    timm_groups = timm.optim.param_groups_weight_decay(
        model, 0.05, no_weight_decay_list=model.no_weight_decay()
    )
    timm_exempt = {id(p) for g in timm_groups if g["weight_decay"] == 0 for p in g["params"]}
    ours = dict(model.named_parameters())
    assert {id(ours[n]) for n, wd in decay.items() if wd == 0} == timm_exempt


def test_no_weight_decay_names_of_a_submodule_match_inside_a_task():
    info = multilabel_bundle(n=8, size=32).info
    vit = create_vit("vit_tiny_patch16_224", num_findings=2, pretrained=False, img_size=32,
                     patch_size=8, depth=1)  # fmt: skip
    task = MultiTaskTask(vit, info, low_res=None, normalization=(0.5, 0.5))
    decay = decay_of(make_optimizer(task, CFG))
    # The Task wraps MultiTaskViT wraps the timm ViT: its names carry that prefix.
    assert decay["model.backbone.pos_embed"] == decay["model.backbone.cls_token"] == 0.0
    assert decay["model.mlct_head.weight"] == 0.05 and decay["model.mlct_head.bias"] == 0.0
    assert set(decay) == {n for n, _ in task.named_parameters()}


def test_frozen_parameters_are_left_out():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **SMALL)
    model.blocks.requires_grad_(False)
    model.pos_embed.requires_grad_(False)
    decay = decay_of(make_optimizer(model, CFG))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(decay) == trainable and not any(n.startswith("blocks.") for n in decay)
    assert "pos_embed" not in decay and decay["cls_token"] == 0.0


def test_a_bare_parameter_list_is_refused_with_the_fix():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **SMALL)
    with pytest.raises(TypeError, match="takes the module to train .* parameter names"):
        make_optimizer(list(model.parameters()), CFG)


def test_sgd_gets_the_same_groups():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **SMALL)
    sgd = make_optimizer(model, TrainConfig(method="vit_mtl", optimizer="sgd", weight_decay=0.05))
    assert isinstance(sgd, torch.optim.SGD)
    assert decay_of(sgd) == decay_of(make_optimizer(model, CFG))
