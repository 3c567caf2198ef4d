"""Drawing primitives of the synthetic chest-radiograph phantom (assembled in ``phantom.py``).

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
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter


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


# --- the whole film ------------------------------------------------------------------------


@dataclass(frozen=True)
class Film:
    """Patient coordinates of every pixel for one pose, and windows onto patient regions.

    Small structures are drawn only inside their window (a few percent of the pixels), which
    is what keeps a 224-px film near 10 ms.
    """

    size: int
    x: np.ndarray
    y: np.ndarray
    px: float  # one pixel in patient units; sharp edges are about one pixel wide
    pose: tuple[float, float, float, float]

    @classmethod
    def make(cls, pose: list[float], size: int) -> Film:
        gx, gy = pixel_grid(size)
        dx, dy, rot, scale = pose
        c, s = np.float32(np.cos(rot) / scale), np.float32(np.sin(rot) / scale)
        x = (gx - dx) * c + (gy - dy) * s
        y = (gy - dy) * c - (gx - dx) * s
        return cls(size, x, y, 2.0 / (size * scale), tuple(pose))

    def window(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
        """Pixel slices covering the patient rectangle ``[x0, x1] x [y0, y1]`` (+2 px)."""
        dx, dy, rot, scale = self.pose
        c, s = np.cos(rot) * scale, np.sin(rot) * scale
        xs, ys = np.array([x0, x1, x0, x1]), np.array([y0, y0, y1, y1])
        cols = (dx + c * xs - s * ys + 1.0) * (0.5 * self.size)
        rows = (dy + s * xs + c * ys + 1.0) * (0.5 * self.size)

        def span(v: np.ndarray) -> slice:
            lo = min(max(int(np.floor(v.min())) - 2, 0), self.size)
            return slice(lo, min(max(int(np.ceil(v.max())) + 2, lo), self.size))

        return span(rows), span(cols)

    def around(self, cx: float, cy: float, r: float) -> tuple[slice, slice]:
        return self.window(cx - r, cx + r, cy - r, cy + r)


def _lung_fields(film: Film, anat: dict, find: dict, mottle: np.ndarray):
    """Both lungs with their pleural findings: ``(air, marked, extra)`` full-size maps.

    ``air`` is the aerated fraction (what makes lung dark): effusion fluid and consolidation
    displace it, which can never make a region denser than soft tissue. ``marked`` is where
    lung markings show (not in pleural air, fluid or dense consolidation); ``extra`` holds the
    pneumothorax's own densities (the thin visceral pleural line, slightly darker pleural air).
    """
    ew = 0.5 * film.px
    air, marked, extra = (np.zeros_like(film.x) for _ in range(3))
    for side in (-1, 1):
        lo, hi = sorted((side * (anat["med"] - 0.08), side * (anat["lat"] + 0.06)))
        win = film.window(lo, hi, anat["apex"] - 0.06, anat["base"] + 0.14)
        x, y, tex = film.x[win], film.y[win], mottle[win]
        s = side * x
        box = lung_box(anat, side)
        level = lung_level(s, y, box)
        lung = sig(level * (box[1] / (3.0 * ew))) * sig((dome_y(s, anat, side) - y) / ew)
        lung *= 0.8 + 0.2 * np.clip(2.0 * level, 0.0, 1.0)  # thicker, darker centrally
        keep = lung.copy()
        for e_side, height in find.get("effusion", []):
            if e_side == side:  # fluid with a meniscus, highest laterally, hiding the angle
                frac = np.clip((s - anat["med"]) / (anat["lat"] - anat["med"]), 0.0, 1.0)
                top = box[2] + box[3] - 0.12 - height * (0.55 + 0.45 * frac * frac)
                fluid = sig((y - top) / 0.015)
                lung *= 1.0 - 0.97 * fluid
                keep *= 1.0 - fluid
        for lobe, opacity in find.get("lobar", []):
            if LOBE_SIDE[lobe] == side:
                zone = lobe_zone(s, y, lobe, anat, film.px) * (opacity / 0.40) * (0.9 + 0.1 * tex)
                lung *= 1.0 - np.clip(zone, 0.0, 0.97)
                keep *= 1.0 - np.clip(zone * 1.5, 0.0, 0.9)
        for t_side, width in find.get("ptx", []):
            if t_side == side:  # pleural air: no markings, and a thin bright visceral line
                dist = lung_distance(s, y, collapsed_box(box, width))
                gap = sig(-dist / ew)  # outside the collapsed lung
                # apical and lateral only: the medial lung stays against the mediastinum
                where = (
                    lung * sig((box[2] + 0.25 - y) / 0.06) * sig((s - box[0] + 0.2 * box[1]) / 0.04)
                )
                keep *= 1.0 - gap * where
                line = np.clip(1.0 - np.abs(dist) / (3.0 * ew), 0.0, 1.0)  # 1.5 px wide
                extra[win] += where * (0.25 * line - 0.01 * gap)
        air[win] += lung
        marked[win] += keep
    return air, marked, extra


def _mediastinum(film: Film, anat: dict) -> np.ndarray:
    """Heart and aortic knob silhouettes (1 inside), which hide the lung behind them."""
    out = np.zeros_like(film.x)
    hx, hy, ha, _, _, _ = heart_geometry(anat)
    win = film.around(hx, hy, ha + 0.04)
    out[win] = sig(heart_level(film.x[win], film.y[win], anat) * (ha / (2.0 * film.px)))
    win = film.around(0.10, anat["knob_y"], 0.09)
    kx, ky = film.x[win] - 0.10, film.y[win] - anat["knob_y"]
    knob = sig((0.07 - np.sqrt(kx * kx + ky * ky)) / (0.5 * film.px))
    out[win] = np.maximum(out[win], knob)
    return out


def _add_local(dens: np.ndarray, film: Film, find: dict, anat: dict) -> None:
    """Small structures, each drawn inside its own window: lesions, hila, trachea, bubble."""
    x, y, px = film.x, film.y, film.px
    for cx, cy, r, contrast in find.get("nodules", []):
        win = film.around(cx, cy, r + 0.02)
        dens[win] += contrast * disc(x[win], y[win], cx, cy, r, px)
    for cx, cy, r, contrast, phase in find.get("masses", []):
        win = film.around(cx, cy, 1.2 * r + 0.02)
        dens[win] += contrast * lobulated(x[win], y[win], cx, cy, r, phase, px)
    for side in (-1, 1):  # hilar shadows: pulmonary arteries and bronchi at the lung roots
        hx, hy = side * (anat["med"] + 0.06), anat["hilum"] + 0.02
        win = film.around(hx, hy, 0.16)
        dens[win] += 0.10 * blob(x[win], y[win], hx, hy, 0.05)
    win = film.window(-0.1, 0.1, -1.2, anat["hilum"] - 0.15)
    trachea = sig((0.034 - np.abs(x[win])) / (0.5 * px))
    dens[win] -= 0.14 * trachea * sig((anat["hilum"] - 0.22 - y[win]) / 0.03)
    bx, by = 0.36, float(dome_y(0.36, anat, 1)) + 0.07
    win = film.window(bx - 0.12, bx + 0.12, by - 0.08, by + 0.08)
    u, v = (x[win] - bx) * (1.0 / 0.09), (y[win] - by) * (1.0 / 0.045)
    dens[win] -= 0.10 * sig((1.0 - u * u - v * v) * 4.0)  # gastric air bubble
    win = film.window(-0.9, 0.9, -1.0, -0.35)
    dens[win] += 0.10 * clavicles(np.abs(x[win]), y[win], anat, px)
    win = film.window(-0.12, 0.12, -1.2, 1.2)
    dens[win] += 0.06 * spine(x[win], y[win], px)


def render_params(p: dict, size: int) -> np.ndarray:
    """Render one phantom film from its stored parameters: uint8 ``(size, size)``."""
    film = Film.make(p["pose"], size)
    x, y, px = film.x, film.y, film.px
    anat, find = p["anat"], p["find"]
    rng = np.random.default_rng(p["tex"])
    mottle = 0.6 * smooth_noise(rng, 20, size) + 0.4 * smooth_noise(rng, 44, size)

    # trunk with sloping shoulders and the neck at the top edge; thicker (brighter) centrally
    ax = np.abs(x)
    neck = anat["body"] - (anat["body"] - 0.38) * sig((-0.86 - y) / 0.05) * (1 + 0.3 * ax)
    rel = x * (1.0 / (anat["body"] + 0.05))
    dens = sig((neck - ax) / max(px, 0.004))
    dens *= 0.30 + 0.45 * np.sqrt(np.clip(1.0 - rel * rel, 0.0, 1.0))
    mediastinal = _mediastinum(film, anat)
    air, marked, extra = _lung_fields(film, anat, find, mottle)
    patchy = find.get("patchy")
    if patchy:  # patchy airspace opacities displace air; a reticular net lies over them
        cloud = np.zeros_like(x)
        for cx, cy, r, a in patchy["blobs"]:
            win = film.around(cx, cy, 3.5 * r)
            cloud[win] += a * blob(x[win], y[win], cx, cy, r)
        if patchy["retic"] > 0:
            # its own stream, so adding or removing it leaves every other texture unchanged
            fine = smooth_noise(np.random.default_rng((p["tex"], 1)), 56, size)
            net = np.clip(1.0 - np.abs(fine) / 0.3, 0.0, None)
            cloud += patchy["retic"] * net * sig((y - anat["hilum"] + 0.1) / 0.15)
        cloud = np.clip(cloud * (1.0 / 0.40), 0.0, 0.95)
        air *= 1.0 - cloud
        marked *= 1.0 - cloud
    air *= 1.0 - 0.95 * mediastinal
    dens -= 0.40 * air
    dens += extra
    lat = anat["lat"]
    win = film.window(-lat - 0.06, lat + 0.06, anat["apex"] - 0.06, anat["base"] + 0.14)
    markings = vessels(x[win], y[win], ax[win], anat, rng)
    # Markings (vessels and a fine, ~3 px parenchymal grain) vanish in pleural air and under
    # fluid; the coarse mottle (overlying soft tissue) follows the aerated lung only. The grain
    # averages away below ~56 px, so missing markings are a high-resolution sign only.
    grain = smooth_noise(rng, 72, size)[win]
    dens[win] += marked[win] * (1.0 - mediastinal[win]) * (0.10 * markings + 0.02 * grain)
    dens[win] += np.minimum(air[win], 1.0) * (0.02 * mottle[win])
    _add_local(dens, film, find, anat)
    # bones show best against aerated lung; over the abdomen and heart they are faint
    win = film.window(-lat - 0.22, lat + 0.22, anat["apex"] - 0.2, 0.95)
    dens[win] += ribs(ax[win], y[win], anat, px) * (0.02 + 0.06 * np.minimum(air[win], 1.0))
    return _expose(dens, p["expo"], film.size, rng)


def _expose(dens: np.ndarray, ex: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """Density -> grey levels: window, gamma, heel effect, detector blur and noise."""
    dens *= 1.0 + ex["heel"] * pixel_grid(size)[1]  # anode heel: brighter towards one end
    scale = 1.0 / (ex["hi"] - ex["lo"])
    grey = np.clip((dens - ex["lo"]) * scale, 0.0, 1.0) ** ex["gamma"]
    image = Image.fromarray((grey * 255.0 + 0.5).astype(np.uint8))
    sigma = ex["blur"] * size / 224.0  # blur and noise are set for 224 px and scale with it
    if sigma >= 0.2:
        image = image.filter(ImageFilter.GaussianBlur(sigma))
    # White noise at a fixed dose: per-pixel sigma scales with pixel size, so area-downsampling
    # a 224-px render gives the same noise as rendering at the smaller size directly.
    noise = rng.standard_normal((size, size), dtype=np.float32)
    noise *= np.float32(ex["noise"] * size / 224.0 * 255.0 * scale)
    noise += np.asarray(image, dtype=np.float32)
    return np.clip(noise + 0.5, 0.0, 255.0).astype(np.uint8)
