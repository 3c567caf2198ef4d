"""Device-side image transforms for one-channel batches ``(B, 1, H, W)`` of floats in [0, 1].

Everything here runs on whatever device the batch is on (no PIL, no per-sample Python), so a GPU
trial never waits for CPU augmentation. Random parameters are drawn on the CPU from a
``torch.Generator`` (B x 7 numbers per batch), which makes an augmentation reproducible from a
seed and identical on CPU and GPU.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxrkd.trainables.errors import CxrkdError

# ImageNet statistics (timm's IMAGENET_DEFAULT_MEAN/STD, RGB) averaged over the three channels.
# An ImageNet model converted to one input channel (timm ``in_chans=1`` sums the stem's RGB
# weights) sees a gray image as if it were (g, g, g), so one mean/std must serve all three
# channels. The channel average is off each channel's own value by at most 0.036 in the mean
# (0.16 std) and 1.3% in the std:
#   mean = (0.485 + 0.456 + 0.406) / 3 = 0.449,  std = (0.229 + 0.224 + 0.225) / 3 = 0.226.
# These are only the defaults of the functions below: a trial normalises with its model's own
# statistics, ``trainables.models.model_normalization(name)`` (ViT augreg weights: 0.5/0.5).
IMAGENET_GRAY_MEAN = 0.449
IMAGENET_GRAY_STD = 0.226


class PipelineError(CxrkdError, ValueError):
    """A bad pipeline option; the message names the value and the fix."""


def gray_stats(mean: float | tuple, std: float | tuple) -> tuple[float, float]:
    """Per-channel (RGB) normalisation statistics -> the single-channel pair (channel average)."""
    mean_v = float(np.mean(mean))
    std_v = float(np.mean(std))
    if not std_v > 0:
        raise PipelineError(f"normalisation std must be positive, got {std!r}")
    return mean_v, std_v


def normalize(
    x: Tensor, *, mean: float = IMAGENET_GRAY_MEAN, std: float = IMAGENET_GRAY_STD
) -> Tensor:
    """``(x - mean) / std`` for a one-channel batch (a new tensor; ``x`` is left untouched)."""
    if not std > 0:
        raise PipelineError(f"normalisation std must be positive, got {std!r}")
    return (x - mean) / std


def _check_batch(x: Tensor, what: str) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise PipelineError(
            f"{what} needs a float batch (B, C, H, W), got {x.dtype} {tuple(x.shape)}; "
            "convert uint8 images with BatchLoader (it yields float32 in [0, 1])"
        )


def resize(x: Tensor, size: int) -> Tensor:
    """Resize a batch to ``size x size``: area averaging when shrinking, bilinear when enlarging.

    Area averaging (not bilinear) when shrinking so that fine detail is averaged, not aliased.
    """
    _check_batch(x, "resize")
    if size < 1:
        raise PipelineError(f"resize size must be a positive number of pixels, got {size}")
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if h >= size and w >= size:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def low_resolution(x: Tensor, *, low: int, out: int) -> Tensor:
    """The MLCAK paper's low-resolution view: area-downsample to ``low``, upsample to ``out``.

    The student sees an image carrying only ``low x low`` pixels of information at the input size
    ``out`` its (ImageNet-pretrained, 224-px) model expects, e.g. 28 -> 224.
    """
    _check_batch(x, "low_resolution")
    side = min(x.shape[-2:])
    if not 1 <= low < out:
        raise PipelineError(
            f"low_resolution needs 1 <= low < out, got low={low}, out={out}; pick a low "
            f"resolution below the model input size {out} (or use resize(x, {low}) to only shrink)"
        )
    if low > side:
        raise PipelineError(
            f"low_resolution low={low} exceeds the input side {side} px; a low-resolution view "
            f"can only remove detail: pick low <= {side}"
        )
    small = F.interpolate(x, size=(low, low), mode="area")
    return F.interpolate(small, size=(out, out), mode="bilinear", align_corners=False)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, epoch)``: resuming at an epoch redraws its draws."""
    words = np.random.SeedSequence([seed, epoch, 0x617567]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(words[0]) << 31) ^ int(words[1]))


class Augment(nn.Module):
    """Random affine + brightness/contrast jitter, one draw per sample, on the batch's device.

    - ``degrees``: rotation uniform in [-degrees, degrees];
    - ``translate``: shift uniform in [-translate, translate] of the side, per axis;
    - ``scale``: zoom uniform in [1 - scale, 1 + scale] (> 1 enlarges the content);
    - ``brightness``: multiply by a factor uniform in [1 - brightness, 1 + brightness];
    - ``contrast``: blend with the image's own mean by a factor in [1 - contrast, 1 + contrast]
      (torchvision's ColorJitter semantics); results are clamped to [0, 1];
    - ``hflip``: mirror half the samples. Off by default: laterality matters on chest films
      (the heart is on the left), so a flipped film is not a plausible film.

    Geometry is one ``affine_grid`` + bilinear ``grid_sample`` with border padding (no black
    corners). Expects floats in [0, 1], i.e. apply it before :func:`normalize`. With every
    magnitude 0 and no flip, ``forward`` returns its input unchanged and draws nothing.
    """

    def __init__(
        self,
        *,
        degrees: float = 0.0,
        translate: float = 0.0,
        scale: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        hflip: bool = False,
    ) -> None:
        super().__init__()
        limits = {
            "degrees": (degrees, 180.0),
            "translate": (translate, 0.5),
            "scale": (scale, 0.9),
            "brightness": (brightness, 1.0),
            "contrast": (contrast, 1.0),
        }
        for name, (value, top) in limits.items():
            if not 0.0 <= value <= top:
                raise PipelineError(f"Augment {name} must be in [0, {top}], got {value!r}")
        self.degrees, self.translate, self.scale = float(degrees), float(translate), float(scale)
        self.brightness, self.contrast, self.hflip = float(brightness), float(contrast), hflip

    @property
    def geometric(self) -> bool:
        return bool(self.degrees or self.translate or self.scale or self.hflip)

    @property
    def photometric(self) -> bool:
        return bool(self.brightness or self.contrast)

    @property
    def is_identity(self) -> bool:
        return not (self.geometric or self.photometric)

    def extra_repr(self) -> str:
        return (
            f"degrees={self.degrees}, translate={self.translate}, scale={self.scale}, "
            f"brightness={self.brightness}, contrast={self.contrast}, hflip={self.hflip}"
        )

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment a batch with draws from ``generator`` (a CPU ``torch.Generator``).

        Pass :func:`epoch_generator` ``(seed, epoch)`` for draws reproducible from the trial's
        seed; ``generator=None`` draws from torch's global RNG (not reproducible).
        """
        _check_batch(x, "Augment")
        if self.is_identity:
            return x
        if generator is not None and generator.device.type != "cpu":
            raise PipelineError(
                f"Augment draws its parameters on the CPU; pass a CPU generator, got one on "
                f"{generator.device} (use epoch_generator(seed, epoch))"
            )
        # Always the same block of draws, so that changing one magnitude leaves the others' draws.
        u = torch.rand(x.shape[0], 7, generator=generator, dtype=torch.float64) * 2 - 1
        if self.geometric:
            theta = self._theta(u, x.shape[-1] / x.shape[-2]).to(x.device, x.dtype)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.photometric:
            magnitudes = torch.tensor([self.brightness, self.contrast], dtype=u.dtype)
            factors = 1 + u[:, 4:6] * magnitudes
            factors = factors.to(x.device, x.dtype).view(-1, 2, 1, 1, 1)
            x = x * factors[:, 0]
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * factors[:, 1] + mean).clamp_(0.0, 1.0)
        return x.contiguous()

    def _theta(self, u: Tensor, aspect: float) -> Tensor:
        flip = u[:, 6] < 0 if self.hflip else None
        return affine_theta(
            degrees=u[:, 0] * self.degrees,
            zoom=1 + u[:, 1] * self.scale,
            shift=u[:, 2:4] * self.translate,
            flip=flip,
            aspect=aspect,
        )


def affine_theta(
    *,
    degrees: Tensor,
    zoom: Tensor,
    shift: Tensor,
    flip: Tensor | None = None,
    aspect: float = 1.0,
) -> Tensor:
    """``(B, 2, 3)`` float32 matrices for ``F.affine_grid(..., align_corners=False)``.

    Per sample (shapes ``(B,)``, ``(B,)``, ``(B, 2)``, bool ``(B,)``): rotate the content by
    ``degrees`` counter-clockwise as displayed, scale it by ``zoom``, mirror it left-right where
    ``flip``, then shift it by ``shift`` = (right, down) in fractions of the side.
    ``aspect`` = W / H keeps rotations rigid on non-square images. ``affine_grid`` wants the
    sampling map (output -> input coordinates), i.e. the inverse of that forward transform.
    """
    angle = torch.deg2rad(degrees.double())
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Inverse rotation (angle -> -angle; y points down, so this is counter-clockwise on screen)
    # in pixel units, expressed in normalised coordinates.
    inv = torch.stack(
        [torch.stack([cos, -sin / aspect], -1), torch.stack([sin * aspect, cos], -1)], -2
    ) / zoom.double().view(-1, 1, 1)
    if flip is not None:
        inv[:, :, 0] *= torch.where(flip, -1.0, 1.0).to(inv).view(-1, 1)
    offset = -(inv @ (2 * shift.double()).unsqueeze(-1))  # normalised coordinates span 2 per side
    return torch.cat([inv, offset], dim=-1).float()


class Pipeline:
    """Batch from :class:`BatchLoader` -> the views a Task trains on, all on the batch's device.

    ``pipeline(x, train=..., generator=...)`` returns a dict of normalised, contiguous
    ``(B, 1, input_size, input_size)`` float tensors:

    - ``"hr"``: ``x`` resized to ``input_size``, augmented when ``train`` (and an ``augment`` is
      set), normalised with ``(mean, std)``: the deployed model's statistics;
    - ``"lr"`` (only when ``low`` is set): the low-resolution view of the SAME augmented image,
      ``low_resolution(hr, low=low, out=input_size)``, normalised with ``(mean, std)``;
    - ``"teacher"`` (only when ``teacher_norm`` is set): the SAME augmented high-resolution
      image normalised with the teacher's own ``teacher_norm = (mean, std)``: a teacher and
      its student may have been pretrained with different statistics.

    A single-model Task reads ``views[pipeline.main_view]`` ("lr" when ``low`` is set, else "hr");
    a KD Task feeds "teacher" to the teacher and "lr" or "hr" to the student. Build it with
    ``task.make_pipeline(...)``, which passes the task's statistics. Evaluation
    (``train=False``) skips augmentation only, so validation sees the same resolution as training.
    """

    def __init__(
        self,
        *,
        input_size: int,
        augment: Augment | None = None,
        low: int | None = None,
        mean: float = IMAGENET_GRAY_MEAN,
        std: float = IMAGENET_GRAY_STD,
        teacher_norm: tuple[float, float] | None = None,
    ) -> None:
        if input_size < 8:
            raise PipelineError(f"input_size must be at least 8 px, got {input_size}")
        if low is not None and not 1 <= low < input_size:
            raise PipelineError(
                f"low-resolution side must be in [1, input_size), got low={low}, "
                f"input_size={input_size}; pick low < {input_size} or low=None for no LR view"
            )
        gray_stats(mean, std)  # validates std
        if teacher_norm is not None:
            teacher_norm = gray_stats(*teacher_norm)
        self.input_size, self.augment, self.low = input_size, augment, low
        self.mean, self.std = float(mean), float(std)
        self.teacher_norm = teacher_norm

    @property
    def views(self) -> tuple[str, ...]:
        views = ("hr",) if self.low is None else ("hr", "lr")
        return views if self.teacher_norm is None else (*views, "teacher")

    @property
    def main_view(self) -> str:
        return "hr" if self.low is None else "lr"

    def __repr__(self) -> str:
        return (
            f"Pipeline(input_size={self.input_size}, augment={self.augment!r}, low={self.low}, "
            f"mean={self.mean}, std={self.std}, teacher_norm={self.teacher_norm})"
        )

    def __call__(
        self, x: Tensor, *, train: bool, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        hr = resize(x, self.input_size)
        if train and self.augment is not None:
            hr = self.augment(hr, generator)
        views = {"hr": hr}
        if self.low is not None:
            views["lr"] = low_resolution(hr, low=self.low, out=self.input_size)
        # Dense outputs whatever the ops above did: the trainer may move them to channels_last.
        out = {k: normalize(v, mean=self.mean, std=self.std) for k, v in views.items()}
        if self.teacher_norm is not None:
            mean, std = self.teacher_norm
            out["teacher"] = normalize(hr, mean=mean, std=std)
        return {k: v.contiguous() for k, v in out.items()}
