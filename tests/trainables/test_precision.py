"""Evaluation numerics (issue 9.4): fp32 logits under bf16 autocast, and teacher caches
computed under the precision of the online teacher. CPU bf16 autocast stands in for the GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TEACHERS, TINY, TINY_VIT, binary_bundle, multilabel_bundle, train_teacher
from torch import nn

from cxrkd.trainables import precision
from cxrkd.trainables.config import parse_config
from cxrkd.trainables.context import TrialContext
from cxrkd.trainables.data.pipeline import DatasetInfo, SplitData
from cxrkd.trainables.evaluate import predict, split_metrics
from cxrkd.trainables.loop import run_trial
from cxrkd.trainables.methods import get_method, kd_logit
from cxrkd.trainables.methods.classify import ClassifierTask
from cxrkd.trainables.metrics import roc_auc
from cxrkd.trainables.precision import autocast, fp32_head
from cxrkd.trainables.trainable import LocalReporter

CPU = torch.device("cpu")


class Probe(nn.Module):
    """Logit = 8 + 0.032 * (mean brightness): every logit lies within one bf16 step of 8
    (bf16 steps are 1/16 between 8 and 16), so a bf16 head rounds them all to 8.0, while in
    fp32 images 10 grey levels apart are 0.00125 apart (fp32 resolves 1e-6 there). The features
    go through a bf16 convolution (error <= 0.4%, far below the 0.039 between grey levels)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, kernel_size=1)
        self.head = nn.Linear(4, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()
            self.head.weight.fill_(0.008)
            self.head.bias.fill_(8.0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


BRIGHTNESS = np.arange(24) * 10  # 0, 10, ..., 230: one grey level per image
LABELS = np.array([0, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1])


def probe_split() -> tuple[DatasetInfo, SplitData]:
    images = np.broadcast_to(BRIGHTNESS[:, None, None], (24, 16, 16)).astype(np.uint8)
    data = SplitData.from_arrays(images, LABELS[:, None].astype(np.float32))
    info = binary_bundle(n=8, size=16).info
    return info, data


def probe_task(info: DatasetInfo) -> ClassifierTask:
    return ClassifierTask(Probe(), info, normalization=(0.0, 1.0))


def test_bf16_autocast_and_fp32_evaluation_give_the_same_auroc():
    info, data = probe_split()
    task = probe_task(info)
    pipeline = task.make_pipeline(input_size=16)
    expected = roc_auc(LABELS, BRIGHTNESS)  # the logit is increasing in brightness
    assert 0.6 < expected < 1.0  # not trivially perfect: ties would move it
    aucs = {}
    for amp in (False, True):
        out, y = predict(task, pipeline, data, device=CPU, batch_size=8, amp=amp)
        assert out["logits"].dtype == np.float32
        assert len(np.unique(out["logits"])) == 24  # no ties, also under bf16 autocast
        aucs[amp] = split_metrics(info, out, y, threshold=0.5)["auc"]
    assert aucs[False] == aucs[True] == pytest.approx(expected, abs=1e-12)

    # The old path (the whole forward, head included, under bf16 autocast, then cast to fp32)
    # rounds every logit to 8.0: all images tie and AUROC collapses to 0.5.
    x = pipeline(torch.from_numpy(data.images).unsqueeze(1).float() / 255, train=False)["hr"]
    with torch.no_grad(), autocast(CPU, enabled=True):
        old = task.model(x).float().reshape(-1).numpy()
    assert set(old.tolist()) == {8.0}
    assert roc_auc(LABELS, old) == 0.5 != aucs[True]


def test_fp32_head_equals_the_models_forward_in_fp32():
    model = Probe()
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(fp32_head(model, x), model(x))
        with autocast(CPU, enabled=True):
            logits = fp32_head(model, x)
    assert logits.dtype == torch.float32


def test_predict_refuses_reduced_precision_logits():
    info, data = probe_split()

    class Bf16Task(ClassifierTask):
        def predict(self, views):
            return self.model(views["hr"]).reshape(-1)  # the head under autocast: bf16

    task = Bf16Task(Probe(), info, normalization=(0.0, 1.0))
    pipeline = task.make_pipeline(input_size=16)
    with pytest.raises(TypeError, match=r"'logits' in torch.bfloat16; .*fp32_head"):
        predict(task, pipeline, data, device=CPU, batch_size=8, amp=True)


def test_every_registered_models_predict_gives_fp32_logits_under_autocast():
    # The heads of the repo's own models (cnn_baseline, timm via fp32_head, MultiTaskViT).
    from cxrkd.trainables.models import create_model
    from cxrkd.trainables.vit import create_vit

    x = torch.rand(2, 1, 32, 32)
    vit = create_vit("vit_tiny_patch16_224", num_findings=2, pretrained=False, img_size=32,
                     patch_size=8, depth=1)  # fmt: skip
    with torch.no_grad(), autocast(CPU, enabled=True):
        for name in ("cnn_baseline", "test_resnet"):
            model = create_model(name, num_outputs=1, pretrained=False).eval()
            assert fp32_head(model, x).dtype == torch.float32, name
        out = vit.eval()(x)
    assert out["mlct"].dtype == out["mcct"].dtype == torch.float32


# --- teacher caches: the precision of the online teacher ----------------------------------

STUDENT = {**TINY, "method": "kd_logit", "model": "test_resnet", "alpha": 0.0, "temperature": 2.0}


@pytest.fixture(scope="module")
def data():
    return binary_bundle(n=48, size=16)


@pytest.fixture(scope="module")
def teacher_uri(tmp_path_factory, data) -> str:
    return train_teacher(tmp_path_factory.mktemp("run"), data, lr=1e-2, steps_per_epoch=4)


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Every forward that would run under autocast on a GPU runs under CPU bf16 autocast.

    With oneDNN off: on CPUs with AVX-512 its bf16 convolution returns a weight gradient with
    NaN/inf at random when the input is 1x1 and the kernel 3x3 (seen with torch 2.14.1, oneDNN
    3.12, on a Xeon with AMX: ``Conv2d(192, 96, 3, stride=2, padding=1)`` on a 1x1 input, 31 of
    200 backward passes; none on AVX2, none without oneDNN, none in fp32). ``test_resnet``'s
    last stage sees 1x1 maps at 16 px, so a bf16 trial here went NaN in one run of two. These
    tests check the precision policy (what runs under autocast, what the caches hold), not
    oneDNN; CPU autocast is off outside tests (``precision.AMP_DEVICES``)."""
    monkeypatch.setattr(precision, "AMP_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)


def test_cached_teacher_logits_equal_the_online_teachers_under_bf16(teacher_uri, data, cpu_bf16):
    task = kd_logit.build(
        kd_logit_config(teacher_uri), data.info, TrialContext(device=CPU, data=data)
    )
    assert task.cached is not None  # auto + no augmentation: cached, under bf16
    train = data.split("train")
    x = torch.from_numpy(train.images).unsqueeze(1).float() / 255
    views = task.make_pipeline(input_size=16)(x, train=False)
    with torch.no_grad(), autocast(CPU):  # the loop's autocast: bf16 here
        online = fp32_head(task.teacher, views["teacher"]).numpy()
    with torch.no_grad():
        fp32 = fp32_head(task.teacher, views["teacher"]).numpy()
    np.testing.assert_allclose(task.cached, online, rtol=1e-5, atol=1e-6)
    # The comparison can fail: the fp32 teacher (what the cache held before) differs.
    assert np.abs(fp32 - online).max() > 100 * np.abs(task.cached - online).max() + 1e-4


def kd_logit_config(teacher_uri: str, **overrides):
    return parse_config({**STUDENT, "teacher_path": teacher_uri, **overrides})


def first_step(teacher_uri, data, **overrides) -> dict:
    reporter = LocalReporter()
    flat = {**STUDENT, "teacher_path": teacher_uri, "steps_per_epoch": 1, **overrides}
    run_trial(flat, data, reporter=reporter)
    return reporter.rows[0]


def test_cached_and_online_teacher_give_the_same_loss_in_a_bf16_trial(
    teacher_uri, data, cpu_bf16, monkeypatch
):
    # A whole trial under CPU bf16 (loop, teacher online, cache): alpha=0, so the loss is the
    # KD term alone and depends on every image's teacher logit.
    cached = first_step(teacher_uri, data)
    online = first_step(teacher_uri, data, teacher_cache="off")
    assert cached["train_kd"] == pytest.approx(online["train_kd"], rel=1e-5)

    # The comparison can fail: a cache computed in fp32 (the old code) gives another loss.
    spec = kd_logit.teacher_outputs_spec
    monkeypatch.setattr(kd_logit, "teacher_outputs_spec", lambda d, amp=None: spec(d, amp=False))
    old = first_step(teacher_uri, data)
    assert old["train_kd"] != pytest.approx(online["train_kd"], rel=1e-4)


def test_cached_vit_targets_equal_the_online_teachers_under_bf16(tmp_path_factory, cpu_bf16):
    data = multilabel_bundle(n=32, size=32)
    uri = train_teacher(tmp_path_factory.mktemp("vit"), data, **TEACHERS["multilabel"])
    flat = {**TINY, **TINY_VIT, "method": "kd_vit", "low_res": 8, "kd_approach": "mlcak",
            "gamma": 0.5, "teacher_path": uri}  # fmt: skip
    torch.manual_seed(0)
    task = get_method("kd_vit").build(parse_config(flat), data.info, TrialContext(CPU, data))
    assert task.cache_spec(CPU).tag.endswith("-bf16")  # never read back as an fp32 cache
    train = data.split("train")
    x = torch.from_numpy(train.images).unsqueeze(1).float() / 255
    views = task.make_pipeline(input_size=32)(x, train=False)
    with torch.no_grad(), autocast(CPU):  # the loop's autocast: bf16 here
        online = task.targets(views["teacher"])
    fp32 = task.cache_spec(CPU, amp=False).extract(task.teacher, views["teacher"])
    for key in ("t_mlct", "t_mcct"):
        cached = torch.from_numpy(task.cached[key])
        torch.testing.assert_close(cached, online[key], rtol=1e-5, atol=1e-6)
        # The comparison can fail: the fp32 teacher (what the cache held before) differs.
        assert (fp32[key] - online[key]).abs().max() > 1e-3, key
    feat = torch.from_numpy(task.cached["t_feat"]).float()  # stored as float16
    torch.testing.assert_close(feat, online["t_feat"].float(), rtol=2e-3, atol=2e-3)
