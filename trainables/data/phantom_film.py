"""One film of the synthetic chest-radiograph phantom, rendered from its stored parameters.

:func:`render_params` lays a pose's patient coordinates over the pixels (:class:`Film`), draws
the trunk, both lungs with their pleural findings, the mediastinum and the small structures from
the primitives of :mod:`trainables.data.phantom_anatomy`, and exposes the density map as a
radiograph (window, gamma, heel effect, detector blur, noise). Small structures are drawn only
inside their own window of the film, which keeps a 224-px film near 10 ms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from cxrkd.trainables.data.phantom_anatomy import (
    LOBE_SIDE,
    blob,
    clavicles,
    collapsed_box,
    disc,
    dome_y,
    heart_geometry,
    heart_level,
    lobe_zone,
    lobulated,
    lung_box,
    lung_distance,
    lung_level,
    pixel_grid,
    ribs,
    sig,
    smooth_noise,
    spine,
    vessels,
)


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
