"""Trial-side data pipeline: dataset facts, batches, device-side transforms."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cxrkd.trainables.data.import_plan import ImportPlan
from cxrkd.trainables.data.pipeline import (
    IMAGENET_GRAY_MEAN,
    IMAGENET_GRAY_STD,
    Augment,
    BatchLoader,
    DatasetInfo,
    Pipeline,
    PipelineError,
    SplitData,
    affine_theta,
    epoch_generator,
    gray_stats,
    low_resolution,
    normalize,
    resize,
)
from cxrkd.trainables.data.store import DatasetStore
from cxrkd.trainables.data.writer import write_store


def decode_constant(row: dict, size: int) -> tuple[np.ndarray, int, int]:
    """Test decoder (top level: picklable): a flat image of gray level ``row['value']``."""
    return np.full((20, 24), row["value"], dtype=np.uint8), 24, 20


def indexed_arrays(n: int = 23, side: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Image i is flat with gray level i; label column 0 holds i, so x and y can be matched."""
    images = np.repeat(np.arange(n, dtype=np.uint8), side * side).reshape(n, side, side)
    labels = np.stack([np.arange(n), np.arange(n) % 2], axis=1).astype(np.float32)
    return images, labels


def epoch_indices(loader: BatchLoader) -> np.ndarray:
    return np.concatenate([y[:, 0].numpy() for _, y in loader]).astype(int)


# ---------------------------------------------------------------- BatchLoader


def test_epoch_covers_every_index_once_and_pairs_images_with_labels():
    images, labels = indexed_arrays()
    loader = BatchLoader(images, labels, batch_size=5, shuffle=True, seed=3, device="cpu")
    assert len(loader) == 5
    batches = list(loader)
    assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
    seen = np.concatenate([y[:, 0].numpy() for _, y in batches]).astype(int)
    assert sorted(seen) == list(range(23))
    assert not np.array_equal(seen, np.arange(23))  # shuffled
    for x, y in batches:
        assert torch.equal(x[:, 0, 0, 0] * 255, y[:, 0])  # image i has gray level i


def test_order_is_reproducible_per_seed_and_epoch():
    images, labels = indexed_arrays()
    a = BatchLoader(images, labels, batch_size=4, shuffle=True, seed=1, device="cpu")
    epoch0, epoch1 = epoch_indices(a), epoch_indices(a)  # iterating again advances the epoch
    assert a.epoch == 2
    assert not np.array_equal(epoch0, epoch1)
    resumed = BatchLoader(images, labels, batch_size=4, shuffle=True, seed=1, device="cpu")
    resumed.set_epoch(1)
    assert np.array_equal(epoch_indices(resumed), epoch1)
    resumed.set_epoch(0)
    assert np.array_equal(epoch_indices(resumed), epoch0)
    assert np.array_equal(a.epoch_order(1), epoch1)
    other = BatchLoader(images, labels, batch_size=4, shuffle=True, seed=2, device="cpu")
    assert not np.array_equal(epoch_indices(other), epoch0)


def test_order_is_fixed_when_iteration_starts():
    images, labels = indexed_arrays()
    loader = BatchLoader(images, labels, batch_size=4, shuffle=True, seed=0, device="cpu")
    it = iter(loader)
    loader.set_epoch(7)  # must not change the epoch already started
    first = np.concatenate([y[:, 0].numpy() for _, y in it]).astype(int)
    assert np.array_equal(first, loader.epoch_order(0))


def test_no_shuffle_and_drop_last():
    images, labels = indexed_arrays()
    plain = BatchLoader(images, labels, batch_size=5, shuffle=False, device="cpu")
    assert np.array_equal(epoch_indices(plain), np.arange(23))
    assert np.array_equal(epoch_indices(plain), np.arange(23))
    dropped = BatchLoader(
        images, labels, batch_size=5, shuffle=True, seed=0, device="cpu", drop_last=True
    )
    assert len(dropped) == 4
    batches = list(dropped)
    assert [len(y) for _, y in batches] == [5, 5, 5, 5]
    assert len(set(np.concatenate([y[:, 0].numpy() for _, y in batches]))) == 20


def test_batch_values_dtype_and_shape():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 8, 8), dtype=np.uint8)
    images[0] = 255
    images[1] = 0
    labels = rng.integers(0, 2, size=(10, 3)).astype(np.float32)
    loader = BatchLoader(images, labels, batch_size=4, shuffle=False, device="cpu")
    x, y = next(iter(loader))
    assert x.shape == (4, 1, 8, 8) and y.shape == (4, 3)
    assert x.dtype == torch.float32 and y.dtype == torch.float32
    assert x.device.type == "cpu" and x.is_contiguous()
    assert x[0].min() == 1.0 and x[1].max() == 0.0
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_allclose(x[:, 0].numpy(), images[:4] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y.numpy(), labels[:4])


def test_read_only_inputs_work_without_warnings_and_stay_untouched(tmp_path):
    images, labels = indexed_arrays()
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    frozen = images.copy()
    frozen.flags.writeable = False
    labels.flags.writeable = False
    for source in (frozen, mapped):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch warns when it wraps a non-writable array
            loader = BatchLoader(source, labels, batch_size=8, shuffle=True, device="cpu")
            for x, _ in loader:
                x.mul_(0)  # writing into a batch must not reach the source
        np.testing.assert_array_equal(np.asarray(source), images)


def test_loader_rejects_bad_inputs():
    images, labels = indexed_arrays()
    with pytest.raises(PipelineError, match="pin_memory"):
        BatchLoader(images, labels, batch_size=4, shuffle=False, device="cpu", pin_memory=True)
    with pytest.raises(PipelineError, match="uint8"):
        BatchLoader(images.astype(np.float32), labels, batch_size=4, shuffle=False, device="cpu")
    with pytest.raises(PipelineError, match="labels must be"):
        BatchLoader(images, labels[:5], batch_size=4, shuffle=False, device="cpu")
    with pytest.raises(PipelineError, match="no batch"):
        BatchLoader(images[:0], labels[:0], batch_size=4, shuffle=False, device="cpu")
    with pytest.raises(PipelineError, match="batch_size"):
        BatchLoader(images, labels, batch_size=0, shuffle=False, device="cpu")


# ---------------------------------------------------------------- Augment


def noisy_batch(n: int = 16, side: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, side, side, generator=g) * 0.6 + 0.2


def test_zero_magnitudes_are_the_identity_and_draw_nothing():
    x = noisy_batch()
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    assert Augment()(x, g) is x
    assert torch.equal(g.get_state(), state)


def test_augment_changes_images_keeps_mean_and_is_reproducible():
    x = noisy_batch()
    aug = Augment(degrees=10, translate=0.05, scale=0.1, brightness=0.1, contrast=0.1)
    a = aug(x, epoch_generator(0, 0))
    assert a.shape == x.shape and a.dtype == x.dtype and a.is_contiguous()
    assert (a - x).abs().mean() > 0.02
    assert a.min() >= 0.0 and a.max() <= 1.0
    # Per-image mean moves by at most the brightness factor (+ border effects); batch mean ~kept.
    assert (a.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))).abs().max() < 0.1
    assert abs(a.mean() - x.mean()) < 0.03
    assert torch.equal(aug(x, epoch_generator(0, 0)), a)
    assert not torch.equal(aug(x, epoch_generator(0, 1)), a)
    assert not torch.equal(aug(x, epoch_generator(1, 0)), a)


def test_no_horizontal_flip_by_default():
    x = torch.full((64, 1, 32, 32), 0.1)
    x[..., :16] = 0.9  # bright left half
    geometric = dict(degrees=10, translate=0.05, scale=0.1)

    def left_brighter(out: torch.Tensor) -> torch.Tensor:
        return out[..., :16].mean(dim=(1, 2, 3)) > out[..., 16:].mean(dim=(1, 2, 3))

    assert left_brighter(Augment(**geometric)(x, epoch_generator(0, 0))).all()
    # The same check catches a flip: with hflip on, about half the films turn around.
    flipped = ~left_brighter(Augment(**geometric, hflip=True)(x, epoch_generator(0, 0)))
    assert 10 < flipped.sum() < 54


def test_affine_theta_geometry_is_exact_on_pixel_grid():
    x = torch.arange(64.0).view(1, 1, 8, 8)

    def warp(**kw) -> torch.Tensor:
        defaults = dict(degrees=torch.zeros(1), zoom=torch.ones(1), shift=torch.zeros(1, 2))
        theta = affine_theta(**{**defaults, **kw})
        grid = F.affine_grid(theta, [1, 1, 8, 8], align_corners=False)
        return F.grid_sample(x, grid, padding_mode="border", align_corners=False)

    # counter-clockwise as displayed: the top row becomes the left column
    assert torch.allclose(warp(degrees=torch.tensor([90.0])), torch.rot90(x, 1, (-2, -1)))
    assert torch.allclose(warp(flip=torch.tensor([True])), torch.flip(x, (-1,)), atol=1e-5)
    right = warp(shift=torch.tensor([[1 / 8, 0.0]]))  # one pixel right, border repeated
    assert torch.allclose(right[..., 1:], x[..., :-1], atol=1e-5)
    assert torch.allclose(right[..., 0], x[..., 0], atol=1e-5)
    down = warp(shift=torch.tensor([[0.0, 2 / 8]]))
    assert torch.allclose(down[..., 2:, :], x[..., :-2, :], atol=1e-4)
    # 2x zoom: the centre half fills the frame; x is a linear ramp (value 8 * row + col), so
    # output pixel 0 samples input position 3.5 - 3.5 / 2 = 1.75 on both axes.
    zoomed = warp(zoom=torch.tensor([2.0]))
    assert zoomed[0, 0, 0, 0].item() == pytest.approx(9 * 1.75, abs=1e-4)
    assert zoomed[0, 0, -1, -1].item() == pytest.approx(9 * 5.25, abs=1e-4)
    assert zoomed.mean().item() == pytest.approx(x.mean().item(), abs=1e-4)


def test_augment_rejects_bad_magnitudes():
    with pytest.raises(PipelineError, match="scale"):
        Augment(scale=1.5)
    with pytest.raises(PipelineError, match="degrees"):
        Augment(degrees=-1)
    with pytest.raises(PipelineError, match="float batch"):
        Augment(degrees=5)(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


# ---------------------------------------------------------------- resolution and normalisation


def test_low_resolution_is_block_average_upsampled():
    x = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    blocks = x.view(3, 1, 8, 8, 8, 8).mean(dim=(3, 5))  # mean of each 8x8 block
    expected = F.interpolate(blocks, size=(64, 64), mode="bilinear", align_corners=False)
    out = low_resolution(x, low=8, out=64)
    assert out.shape == (3, 1, 64, 64)
    assert torch.allclose(out, expected, atol=1e-6)
    # Output size may differ from the input's: 64 -> 8 -> 32.
    assert low_resolution(x, low=8, out=32).shape == (3, 1, 32, 32)


def test_low_resolution_turns_a_fine_checkerboard_gray():
    idx = torch.arange(64)
    board = ((idx.view(-1, 1) + idx.view(1, -1)) % 2).float().expand(2, 1, 64, 64)
    out = low_resolution(board, low=8, out=64)
    assert torch.allclose(out, torch.full_like(out, 0.5), atol=1e-6)
    assert board.std() > 0.4  # the input really was a checkerboard


@pytest.mark.parametrize(("low", "out"), [(64, 64), (65, 64), (0, 64)])
def test_low_resolution_rejects_low_not_below_out(low, out):
    with pytest.raises(PipelineError, match=f"low={low}, out={out}"):
        low_resolution(torch.zeros(1, 1, 64, 64), low=low, out=out)


def test_low_resolution_rejects_low_above_input():
    with pytest.raises(PipelineError, match="exceeds the input side 16"):
        low_resolution(torch.zeros(1, 1, 16, 16), low=32, out=64)


def test_resize_area_when_shrinking_bilinear_when_enlarging():
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    assert resize(x, 64) is x
    small = resize(x, 16)
    assert torch.allclose(small, x.view(2, 1, 16, 4, 16, 4).mean(dim=(3, 5)), atol=1e-6)
    big = resize(small, 32)
    expected = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.equal(big, expected)


def test_normalize_and_gray_stats():
    imagenet = gray_stats((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert imagenet == pytest.approx((IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD), abs=5e-4)
    x = torch.tensor([IMAGENET_GRAY_MEAN, IMAGENET_GRAY_MEAN + IMAGENET_GRAY_STD]).view(1, 1, 1, 2)
    assert torch.allclose(normalize(x), torch.tensor([0.0, 1.0]).view(1, 1, 1, 2), atol=1e-6)
    assert torch.allclose(normalize(x, mean=0.5, std=0.5), x * 2 - 1)
    with pytest.raises(PipelineError, match="std"):
        normalize(x, std=0.0)


# ---------------------------------------------------------------- Pipeline


def test_pipeline_views_share_one_augmentation():
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    aug = Augment(degrees=15, translate=0.1, brightness=0.2)
    pipe = Pipeline(input_size=16, augment=aug, low=4, mean=0.5, std=0.25)
    assert pipe.views == ("hr", "lr") and pipe.main_view == "lr"
    views = pipe(x, train=True, generator=epoch_generator(0, 0))
    augmented = aug(resize(x, 16), epoch_generator(0, 0))
    hr = normalize(augmented, mean=0.5, std=0.25)
    lr = normalize(low_resolution(augmented, low=4, out=16), mean=0.5, std=0.25)
    assert torch.allclose(views["hr"], hr) and torch.allclose(views["lr"], lr)
    assert all(v.shape == (4, 1, 16, 16) and v.is_contiguous() for v in views.values())


def test_pipeline_eval_skips_augmentation_only():
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    pipe = Pipeline(input_size=32, augment=Augment(degrees=30), low=8)
    views = pipe(x, train=False)
    assert torch.equal(views["hr"], normalize(x))
    assert torch.equal(views["lr"], normalize(low_resolution(x, low=8, out=32)))
    hr_only = Pipeline(input_size=32)
    assert hr_only.views == ("hr",) and hr_only.main_view == "hr"
    assert set(hr_only(x, train=True)) == {"hr"}


def test_pipeline_rejects_bad_low():
    with pytest.raises(PipelineError, match="low=32, input_size=32"):
        Pipeline(input_size=32, low=32)


# ---------------------------------------------------------------- DatasetInfo / SplitData


def tiny_plan(name: str, *, multilabel: bool) -> ImportPlan:
    splits = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    rows = pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(12)],
            "patient_id": [f"p{i}" for i in range(12)],
            "split": splits,
            "source_path": [f"/src/img{i}.png" for i in range(12)],
            "value": [10 * i for i in range(12)],
            "abnormal": [1, 1, 0, 1, 0, 0, 1, 0, 0, 1, 1, 1],
            "nodule": [1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1],
            "effusion": [0, 1, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0],
        }
    )
    labels = ["abnormal", "nodule", "effusion"] if multilabel else ["abnormal"]
    return ImportPlan(
        name=name,
        kind="test",
        task="multilabel" if multilabel else "binary",
        labels=labels,
        finding_labels=labels[1:],
        global_label="abnormal",
        rows=rows[[*rows.columns[:5], *labels]],
        decode=decode_constant,
        synthetic=True,
        source="test",
    )


def test_dataset_info_and_split_data_from_store(tmp_path):
    plan = tiny_plan("tiny", multilabel=True)
    write_store(plan, size=16, home=tmp_path, workers=1, progress=False, log=lambda _: None)
    store = DatasetStore.open("tiny", home=tmp_path)
    info = DatasetInfo.from_store(store)
    assert (info.name, info.task, info.resolution) == ("tiny", "multilabel", 16)
    assert info.synthetic and info.kind == "test"
    assert info.labels == ("abnormal", "nodule", "effusion")
    assert info.finding_labels == ("nodule", "effusion") and info.global_label == "abnormal"
    assert info.n == {"train": 6, "val": 3, "test": 3}
    assert info.positive_rate["train"] == pytest.approx(
        {"abnormal": 3 / 6, "nodule": 2 / 6, "effusion": 2 / 6}
    )
    assert info.positive_rate["test"]["nodule"] == pytest.approx(2 / 3)
    assert info.fingerprint == store.manifest.fingerprint and len(info.fingerprint) == 32
    assert info.label_columns() == ((1, 2), 0)
    assert pickle.loads(pickle.dumps(info)) == info  # it travels to Ray workers

    val = SplitData.from_store(store, "val")
    assert len(val) == 3 and val.resolution == 16
    assert val.images.flags.c_contiguous and val.labels.dtype == np.float32
    np.testing.assert_array_equal(val.images[:, 0, 0], [60, 70, 80])  # decoder gray levels
    np.testing.assert_array_equal(val.labels[:, 1], [0, 0, 0])
    np.testing.assert_array_equal(val.labels[:, 2], [1, 0, 0])

    # The loader also works straight on the store's read-only memory map.
    images, labels = store.images, store.label_matrix()
    loader = BatchLoader(images, labels, batch_size=5, shuffle=True, device="cpu")
    x, y = next(iter(loader))
    assert x.shape == (5, 1, 16, 16) and y.shape == (5, 3)


def test_dataset_info_binary_has_no_findings(tmp_path):
    write_store(
        tiny_plan("bin", multilabel=False),
        size=8,
        home=tmp_path,
        workers=1,
        progress=False,
        log=lambda _: None,
    )
    info = DatasetInfo.from_store(DatasetStore.open("bin", home=tmp_path))
    assert info.task == "binary" and info.num_labels == 1
    assert info.label_columns() == ((), 0)
    assert info.positive_rate["val"] == pytest.approx({"abnormal": 1 / 3})
