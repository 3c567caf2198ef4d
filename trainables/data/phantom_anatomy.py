"""Drawing primitives of the synthetic chest-radiograph phantom (assembled into a film in
``phantom_film.py``; the parameters are sampled in ``phantom.py``).

Geometry is defined in normalised *patient* coordinates, so one parameter set renders at any
size: ``x`` runs to the image right (the patient's left, as on a PA film), ``y`` downwards, and
the thorax spans roughly ``[-1, 1]`` both ways before the pose (shift, rotation, zoom) is
applied. Per-lung quantities use ``s = side * x`` with ``side = -1`` for the patient's right
lung (image left) and ``+1`` for the left one, so one formula draws both lungs.

Everything returns a *density* map (0 = air, ~0.75 = soft tissue, bone a little more); the
renderer maps density to grey levels (bright = dense, the radiograph convention). All drawing is
whole-array numpy (no per-pixel Python): about 10 ms per 224-px image.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image


@functools.lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (read-only; cached because every image reuses it)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) * np.float32(2.0 / size) - 1.0
    gx, gy = np.meshgrid(c, c)
    gx.flags.writeable = gy.flags.writeable = False
    return gx, gy


def sig(z):
    """Logistic function via tanh (no overflow warnings, float32 in -> float32 out)."""
    return 0.5 + 0.5 * np.tanh(0.5 * z)


def smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """Unit-variance-ish noise with blobs of ``size / cells`` px (bicubic-upsampled grid)."""
    grid = rng.standard_normal((cells, cells), dtype=np.float32)
    out = Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(out, dtype=np.float32)


# --- lungs, diaphragm, heart --------------------------------------------------------------


def lung_box(anat: dict, side: int) -> tuple[float, float, float, float]:
    """``(sc, a, yc, b)``: centre and half-extents of one lung's superellipse in (s, y)."""
    base = anat["base"] - (anat["right_up"] if side < 0 else 0.0)
    sc = 0.5 * (anat["med"] + anat["lat"])
    a = 0.5 * (anat["lat"] - anat["med"])
    b = 0.5 * (base + 0.12 - anat["apex"])
    return sc, a, anat["apex"] + b, b


def lung_level(s, y, box: tuple[float, float, float, float]):
    """1 at the lung centre, 0 on its outline, negative outside.

    A superellipse of power 3 across; power 2 above the centre (a domed apex) and 4 below it
    (a squarer base that meets the diaphragm in sharp costophrenic angles).
    """
    sc, a, yc, b = box
    ds = np.abs((s - sc) * (1.0 / a))
    dy = (y - yc) * (1.0 / b)
    dy2 = dy * dy
    return 1.0 - ds * ds * ds - np.where(dy < 0, dy2, dy2 * dy2)


def lung_distance(s, y, box: tuple[float, float, float, float]):
    """Approximate signed distance to the lung outline (``lung_level / |gradient|``)."""
    sc, a, yc, b = box
    ds = (s - sc) * (1.0 / a)
    dy = (y - yc) * (1.0 / b)
    dy2 = dy * dy
    level = lung_level(s, y, box)
    gs = 3.0 * ds * ds * (1.0 / a)
    gy = np.where(dy < 0, 2.0, 4.0 * dy2) * np.abs(dy) * (1.0 / b)
    return level / np.sqrt(gs * gs + gy * gy + 1e-6)


def dome_y(s, anat: dict, side: int):
    """Height of the diaphragm dome under one lung; lowest at the costophrenic angle."""
    base = anat["base"] - (anat["right_up"] if side < 0 else 0.0)
    peak = 0.5 * (anat["med"] + anat["lat"]) + 0.03
    half = anat["lat"] - peak + 0.02
    return base - anat["dome"] * (1.0 - ((s - peak) / half) ** 2)


def inside_lung(x: float, y: float, anat: dict, margin: float) -> bool:
    """Planner helper: is the patient point (x, y) at least ``margin`` inside a lung field?"""
    side = 1 if x > 0 else -1
    s = side * x
    level = float(lung_level(s, y, lung_box(anat, side)))
    return level > margin * 4 and y < float(dome_y(s, anat, side)) - margin


def heart_geometry(anat: dict) -> tuple[float, float, float, float, float, float]:
    """``(hx, hy, ha, hb, cos, sin)`` of the heart ellipse from the cardiothoracic ratio.

    The heart's width is ``ctr`` times the inner thoracic width; two thirds of it lie left of
    the midline (image right) and its long axis tilts 25 degrees towards the apex.
    """
    width = anat["ctr"] * 2.0 * (anat["lat"] + 0.03)
    ha = 0.5 * width / 0.96  # horizontal half-extent of the tilted ellipse is ~0.96 * ha
    hb = 0.72 * ha
    hy = anat["base"] - 0.10 - 0.45 * hb
    return width / 6.0, hy, ha, hb, float(np.cos(0.44)), float(np.sin(0.44))


def heart_level(x, y, anat: dict):
    hx, hy, ha, hb, c, s = heart_geometry(anat)
    u = ((x - hx) * c + (y - hy) * s) / ha
    v = (-(x - hx) * s + (y - hy) * c) / hb
    return 1.0 - u * u - v * v


def vessels(x, y, s, anat: dict, rng: np.random.Generator):
    """Lung markings: meandering, tapering lines radiating from each hilum.

    The zero crossings of a random angular profile around the hilum (a few harmonics, each
    with its phase drifting along the radius): they run outwards, wander, and merge or split
    like branching vessels. Their width tracks the local gradient, so they taper peripherally.
    """
    dx = s - (anat["med"] + 0.07)
    dy = y - anat["hilum"]
    r = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dy, dx) + np.where(x < 0, np.float32(2.3), np.float32(0.0))
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(len(_HARMONICS), 2))
    prof = np.zeros_like(r)
    for (k, drift), (p0, p1) in zip(_HARMONICS, phase.tolist(), strict=True):
        prof += np.cos(k * theta + p0 + 0.8 * np.sin(drift * r + p1))
    width = 0.12 + 0.2 * r
    return np.clip(1.0 - np.abs(prof) / width, 0.0, 1.0) * np.exp(-1.0 * r)


_HARMONICS = ((5.0, 5.0), (8.0, 7.0), (12.0, 6.0), (17.0, 9.0))  # (angular k, radial drift)


# --- bones ---------------------------------------------------------------------------------


def ribs(s, y, anat: dict, px: float):
    """Posterior rib arcs (rising briefly beside the spine, then curving down laterally;
    spacing grows caudally) plus fainter anterior ribs running down and in from the side."""
    lat = s - 0.08
    arc = y + 0.25 * lat - 0.9 * lat * lat
    depth = np.clip(arc - anat["apex"] + 0.12, 0.0, None)
    g = depth * ((1.0 - 0.12 * depth) / anat["rib_period"]) + anat["rib_phase"]
    band = np.sqrt(np.clip((np.cos(2.0 * np.pi * g) - 0.25) * (1.0 / 0.75), 0.0, None))
    window = sig((anat["lat"] + 0.10 - s) / 0.03) * sig((s - 0.06) / 0.03)
    window *= sig((0.7 - y) / 0.06) * sig((arc - anat["apex"] + 0.10) / max(px, 0.004))
    front = y + 0.42 * (s - anat["lat"]) - anat["apex"] + 0.02
    g = front * (1.0 / anat["rib_period"]) / 1.15 + anat["rib_phase"] * 0.7
    fband = np.clip((np.cos(2.0 * np.pi * g) - 0.5) * 2.0, 0.0, None)
    fwin = sig((s - 0.3) / 0.05) * sig((anat["lat"] + 0.05 - s) / 0.03) * sig(front / 0.03)
    return band * window + 0.5 * fband * fwin * sig((0.45 - y) / 0.06)


def clavicles(s, y, anat: dict, px: float):
    """Both clavicles: an S-curved band from the sternal notch up and out to the shoulder."""
    t = s - 0.06
    centre = anat["clav_y"] - 0.14 * t + 0.25 * (t - 0.35) * (t - 0.35)
    body = sig((0.034 - np.abs(y - centre)) / max(0.6 * px, 0.003))
    return body * sig((0.85 - s) / 0.03) * sig(t / 0.02)


def spine(x, y, px: float):
    column = sig((0.075 - np.abs(x)) / max(2.0 * px, 0.008))
    return column * (0.75 + 0.25 * np.cos(2.0 * np.pi * y / 0.16) ** 2)


# --- findings ------------------------------------------------------------------------------


def disc(x, y, cx: float, cy: float, r: float, px: float):
    """A sharp-edged ball: spherical thickness profile, edge about one pixel wide."""
    dx = x - cx
    dy = y - cy
    d2 = (dx * dx + dy * dy) / (r * r)
    ball = np.sqrt(np.clip(1.0 - d2, 0.0, None))
    return np.maximum(ball, sig((1.0 - np.sqrt(d2)) * r / (0.5 * px)) * 0.35)


def lobulated(x, y, cx: float, cy: float, r: float, phase: float, px: float):
    """A mass: a round opacity with a lobulated (three-bump) outline and a soft core."""
    dx = x - cx
    dy = y - cy
    radius = r * (1.0 + 0.12 * np.cos(3.0 * np.arctan2(dy, dx) + phase))
    d = np.sqrt(dx * dx + dy * dy)
    return sig((radius - d) / (0.7 * px)) * (0.75 + 0.25 * np.clip(1.0 - d / radius, 0.0, 1.0))


def blob(x, y, cx: float, cy: float, r: float):
    dx = x - cx
    dy = y - cy
    return np.exp(-(dx * dx + dy * dy) * (0.5 / (r * r)))


def lobe_zone(s, y, lobe: str, anat: dict, px: float):
    """Where a lobar consolidation sits in one lung's (s, y) frame.

    Fissures make sharp borders (the right minor fissure bounds the upper and middle lobes);
    the other borders fade over a few percent of the image, as on real films.
    """
    sharp = max(0.6 * px, 0.003)
    fissure = anat["hilum"] - 0.04 + 0.06 * (s - anat["med"])  # minor fissure, dips laterally
    if lobe == "upper_right":
        return sig((fissure - y) / sharp)
    if lobe == "middle":
        return (
            sig((y - fissure) / sharp)
            * sig((fissure + 0.32 - y) / 0.06)
            * sig((anat["med"] + 0.42 - s) / 0.08)
        )
    if lobe in ("lower_right", "lower_left"):
        return sig((y - anat["hilum"] - 0.05) / 0.07)
    if lobe == "upper_left":
        return sig((anat["hilum"] + 0.12 - y) / 0.07)
    raise ValueError(f"unknown lobe {lobe!r}")


LOBE_SIDE = {"upper_right": -1, "middle": -1, "lower_right": -1, "upper_left": 1, "lower_left": 1}


def collapsed_box(box, width: float) -> tuple[float, float, float, float]:
    """The lung outline after a pneumothorax of ``width`` pulled it off the apex/lateral wall."""
    sc, a, yc, b = box
    med = sc - a
    lat = sc + a - width
    apex = yc - b + 1.4 * width
    bottom = yc + b
    return 0.5 * (med + lat), 0.5 * (lat - med), 0.5 * (apex + bottom), 0.5 * (bottom - apex)
