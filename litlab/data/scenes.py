"""Embedded procedural multi-task benchmark: images and their annotations.

The paper trains one decoder on classification, captioning, VQA and OCR data. Offline we
cannot download ImageNet/COCO/VQAv2/MJSynth, so four procedural *sources* stand in for them:

* ``objects``     one shape per image; its class is "<size> <color> <shape>" (classification);
* ``scenes``      1-4 non-overlapping shapes (captioning, VQA);
* ``words``       one rendered English word, MJSynth-style (OCR);
* ``text_scenes`` 1-3 shapes, each carrying a word (reading + grounding VQA).

Records carry their annotations: each object's shape, color, size, center, box and word, and
for every rendered letter its glyph box (``glyphs``: char, x0, y0, x1, y1 in output pixels, on
a words record and on each worded object), so reading can be supervised token by token.

A sample is a pure function of (source, split, index, seed): ``Source.get`` seeds an
independent ``numpy.random.Generator`` from those four numbers, so any sample can be
re-created alone, in any order, on any worker, without storing a dataset.

Compositional generalisation is measured as in CLEVR-CoGenT: ``HELD_OUT_PAIRS`` (color, shape)
never appear in train/val/test images, and every image of the ``compositional`` split contains
at least one of them; likewise the held-out words are only ever rendered in that split.

Rendering draws shapes and text at ``_supersample(resolution)`` times the output size and
box-downsamples (anti-aliasing); the textured background is synthesised directly at the output
resolution in numpy, and shapes are composited over it with premultiplied alpha.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import math
import operator
import threading
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from litlab import assets

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross", "heart")
# Saturated hues only: backgrounds are low-saturation, so no color can be mistaken for them.
COLORS = MappingProxyType({
    "red": (220, 38, 38),
    "orange": (245, 135, 20),
    "yellow": (245, 215, 30),
    "green": (30, 160, 60),
    "cyan": (30, 200, 215),
    "blue": (35, 75, 225),
    "purple": (135, 55, 200),
    "pink": (245, 120, 190),
})
SIZES = ("small", "large")
SPLITS = ("train", "val", "test", "compositional")
# Color i is held out with shape (3i + 1) mod 8: a permutation, so every color and every shape is
# still seen in training (with the other seven partners) and each is held out exactly once.
HELD_OUT_PAIRS = tuple((c, SHAPES[(3 * i + 1) % len(SHAPES)]) for i, c in enumerate(COLORS))
# Shapes with a wide, flat middle where a 3-5 letter word fits legibly at 64x64.
TEXT_SHAPES = ("circle", "square", "hexagon")

# Version of what a record holds besides its pixels (2: glyph boxes); caches of records key on it.
ANNOTATIONS = 2
HELD_OUT_WORD_FRACTION = 0.1
WORD_FONTS = ("DejaVuSans-Bold.ttf", "DejaVuSansCondensed-Bold.ttf", "DejaVuSerif-Bold.ttf",
              "DejaVuSansMono-Bold.ttf", "default")
TEXT_SHAPE_FONTS = ("DejaVuSansCondensed-Bold.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono-Bold.ttf")
# Below 32 px the small shapes blur together. Words need >= 64 px to be read by a person.
MIN_RESOLUTION = 32

# Object extents (max of width/height) as a fraction of the image side. The gap between the
# classes (0.22 vs 0.32) keeps "small"/"large" unambiguous to a person and to the model.
_EXTENT = {"small": (0.16, 0.22), "large": (0.32, 0.40)}
# A worded object is sized to fit its word at _TEXT_PX (so text size is uniform across objects),
# within [0.34, cap] of the side; the cap shrinks with the count so that three still fit, and a
# word too long for a capped object is set smaller.
_TEXT_PX = 0.17
_TEXT_EXTENT_CAP = {1: 0.52, 2: 0.46, 3: 0.44}  # 2 and 3 must fit a half / quadrant cell
_TEXT_WIDTH = {"circle": 0.84, "square": 0.86, "hexagon": 0.84}  # usable width of the middle band
_MARGIN = 0.03  # gap between the boxes of two objects, fraction of the side


def asset_path(*parts: str) -> Path:
    """Path of a shipped asset under ``data/`` (see ``litlab.assets.asset_path``); fails loudly."""
    return assets.asset_path(*parts)


# --------------------------------------------------------------------------------------------
# Words


@functools.cache
def _all_words() -> tuple[str, ...]:
    words = tuple(asset_path("words", "words.txt").read_text(encoding="ascii").split())
    if not words:
        raise ValueError(f"{asset_path('words', 'words.txt')} is empty")
    return words


@functools.cache
def held_out_words() -> tuple[str, ...]:
    """The ~10% of words reserved for the compositional split (smallest salted SHA-256).

    Chosen by hash rather than position so the split does not change if the list is re-sorted.
    """
    words = _all_words()
    ranked = sorted(words, key=lambda w: hashlib.sha256(f"litlab-held-out:{w}".encode()).digest())
    return tuple(sorted(ranked[:round(len(words) * HELD_OUT_WORD_FRACTION)]))


@functools.cache
def train_words() -> tuple[str, ...]:
    """Words rendered in train/val/test (disjoint from ``held_out_words``)."""
    held = set(held_out_words())
    return tuple(w for w in _all_words() if w not in held)


@functools.cache
def _split_words(compositional: bool, max_len: int) -> tuple[str, ...]:
    pool = held_out_words() if compositional else train_words()
    return tuple(w for w in pool if len(w) <= max_len)


# --------------------------------------------------------------------------------------------
# Geometry and fonts


def _unit_polygons() -> dict[str, np.ndarray]:
    """Shape outlines in [-1, 1]^2 (y down), each touching the box in its larger dimension."""
    def ring(n, radius, phase):
        a = phase + 2 * np.pi * np.arange(n) / n
        return np.stack([radius * np.cos(a), radius * np.sin(a)], 1)

    star = ring(10, np.tile([1.0, 0.45], 5), -np.pi / 2)
    star[:, 1] += (1 - star[:, 1].max()) / 2  # centre vertically: the top point is longer
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    heart = np.stack([16 * np.sin(t) ** 3,
                      -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))], 1)
    heart = (heart - (heart.max(0) + heart.min(0)) / 2) / (np.ptp(heart, 0).max() / 2)
    w = 0.34
    cross = np.array([(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1),
                      (-w, w), (-1, w), (-1, -w), (-w, -w)])
    h = math.sqrt(3) / 2
    polys = {
        "circle": ring(64, 1.0, 0.0),
        "square": np.array([(-0.9, -0.9), (0.9, -0.9), (0.9, 0.9), (-0.9, 0.9)]),
        "triangle": np.array([(0, -h), (1, h), (-1, h)]),
        "star": star,
        "diamond": np.array([(0, -1), (0.68, 0), (0, 1), (-0.68, 0)]),
        "hexagon": ring(6, 1.0, 0.0),
        "cross": cross,
        "heart": heart,
    }
    return {k: v.astype(np.float64) for k, v in polys.items()}


_POLYGONS = _unit_polygons()
_POLY_LO = {k: tuple(v.min(0).tolist()) for k, v in _POLYGONS.items()}  # python floats: placement is scalar code
_POLY_HI = {k: tuple(v.max(0).tolist()) for k, v in _POLYGONS.items()}


_FONTS = threading.local()


def _font(name: str, px: int) -> ImageFont.FreeTypeFont:
    """Cached per thread: a FreeType face must not render in two threads at once."""
    cache = _FONTS.__dict__.setdefault("cache", {})
    if (name, px) not in cache:
        if name == "default":  # Pillow's embedded Aileron Regular: needs no file at all
            cache[name, px] = ImageFont.load_default(size=px)
        else:  # BASIC layout: identical glyph placement whether or not libraqm is installed
            path = str(asset_path("fonts", name))
            cache[name, px] = ImageFont.truetype(path, px, layout_engine=ImageFont.Layout.BASIC)
    return cache[name, px]


def _supersample(resolution: int) -> int:
    """Drawing scale: a ~192 px canvas (3x at 64) anti-aliases well and keeps PIL drawing cheap."""
    return max(2, min(4, 192 // resolution))


@functools.cache
def _grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-0.5, 0.5], shaped to broadcast against [3, R, R]."""
    c = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution - 0.5
    return c.reshape(1, 1, -1), c.reshape(1, -1, 1)  # x, y


@functools.cache
def _upsample_matrix(resolution: int, k: int) -> np.ndarray:
    """Bilinear interpolation weights [R, k] from a k-point coarse grid (for smooth blotches)."""
    pos = np.clip((np.arange(resolution) + 0.5) / resolution * k - 0.5, 0, k - 1)
    lo = np.minimum(np.floor(pos).astype(int), k - 2)
    frac = pos - lo
    m = np.zeros((resolution, k), np.float32)
    m[np.arange(resolution), lo] = 1 - frac
    m[np.arange(resolution), lo + 1] = frac
    return m


def _luma(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _glyph_boxes(font, word: str, center: tuple[float, float], scale: int, *, stroke: int = 0,
                 angle: float = 0.0) -> tuple[tuple[str, float, float, float, float], ...]:
    """Each letter's ink box (char, x0, y0, x1, y1) in output pixels, for text drawn at
    ``center`` (drawing-scale px) with anchor "mm" and then rotated by ``angle`` degrees about it.

    Geometry only, no random draws, so annotating never changes a pixel. Letter i sits at the
    advance of ``word[:i]`` (Pillow's BASIC layout); a rotated box is the axis-aligned bound of
    its rotated corners, as PIL's ``rotate`` turns the ink (counter-clockwise on screen).
    """
    mm = font.getbbox(word, anchor="mm", stroke_width=stroke)
    ls = font.getbbox(word, anchor="ls", stroke_width=stroke)
    ox, oy = center[0] + mm[0] - ls[0], center[1] + mm[1] - ls[1]  # the baseline origin on the canvas
    c, sn = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    out = []
    for i, ch in enumerate(word):
        x0, y0, x1, y1 = font.getbbox(ch, anchor="ls", stroke_width=stroke)
        adv = font.getlength(word[:i])
        xs, ys = [], []
        for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1)):
            dx, dy = ox + adv + x - center[0], oy + y - center[1]
            xs.append(center[0] + dx * c + dy * sn)
            ys.append(center[1] - dx * sn + dy * c)
        out.append((ch, *(round(v / scale, 2) for v in (min(xs), min(ys), max(xs), max(ys)))))
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Backgrounds


def _background(rng: np.random.Generator, resolution: int, *, max_saturation: float,
                value: tuple[float, float], texture: float) -> np.ndarray:
    """Float [3, R, R] around [0, 1]: tinted gradient + smooth blotches + faint stripes.

    Low contrast and low saturation by construction: texture never forms a compact, saturated,
    sharp-edged region, so it cannot be confused with an object or a letter (pixel noise comes
    later, in ``_finish``). Channels-first: numpy broadcasting over a trailing axis of 3 is
    several times slower.
    """
    r = resolution
    x, y = _grid(r)
    u = rng.random(11)  # one call: scalar draws cost more than the arithmetic at this size
    base = colorsys.hsv_to_rgb(u[0], u[1] * max_saturation, value[0] + u[2] * (value[1] - value[0]))
    tint = colorsys.hsv_to_rgb(u[3], u[4] * max_saturation, 1.0)
    base = np.array(base, np.float32).reshape(3, 1, 1)
    tint = (np.array(tint, np.float32).reshape(3, 1, 1) - 0.5) * np.float32(0.3 * texture)
    theta, phi = 2 * np.pi * u[5], 2 * np.pi * u[6]
    ramp = x * np.float32(math.cos(theta)) + y * np.float32(math.sin(theta))
    freq = 3 + 7 * u[7]
    stripes = np.sin(x * np.float32(2 * np.pi * freq * math.cos(phi)) + y * np.float32(2 * np.pi * freq * math.sin(phi))
                     + np.float32(2 * np.pi * u[8]))
    k = 4
    up = _upsample_matrix(r, k)
    blotches = up @ (rng.random((k, k), dtype=np.float32) - np.float32(0.5)) @ up.T
    luma = (ramp * np.float32((0.1 + 0.2 * u[9]) * texture) + blotches * np.float32(0.2 * texture)
            + stripes * np.float32((0.005 + 0.03 * u[10]) * texture))
    return base + luma + ramp * tint


def _finish(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add sensor noise over everything (objects included); quantise to uint8 [R, R, 3]."""
    r = img.shape[-1]
    amp = np.float32(0.03 + 0.09 * rng.random())  # uniform noise, std 0.01-0.035
    noise = (rng.random((r, r), dtype=np.float32) - np.float32(0.5)) * amp
    out = np.clip((img + noise) * np.float32(255) + np.float32(0.5), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(1, 2, 0))


# --------------------------------------------------------------------------------------------
# Objects


def _sample_pair(rng: np.random.Generator, pairs: tuple) -> tuple[str, str]:
    return pairs[rng.integers(len(pairs))]


@functools.cache
def _pairs(shapes: tuple[str, ...], held_out: bool) -> tuple[tuple[str, str], ...]:
    all_pairs = [(c, s) for c in COLORS for s in shapes]
    return tuple(p for p in all_pairs if (p in HELD_OUT_PAIRS) == held_out)


def _place(rng: np.random.Generator, specs: list[dict], resolution: int) -> tuple[list[dict], list[dict]] | None:
    """Put each object at a uniformly drawn *free* position (margin-padded boxes disjoint).

    ``specs`` hold color, shape, size, extent (fraction of the side), optionally word, font and
    font_px (at the drawing scale), and optionally a region (x0, y0, x1, y1 in px) the box must
    stay in. A few cheap random
    tries come first; if they all collide, every position on a 1 px lattice (shifted by a random
    sub-pixel offset) is tested at once, so a crowded scene fails only when the earlier objects
    really leave no room. Returns (objects, draw info: half extent in px, font), or None.
    """
    r = resolution
    margin = _MARGIN * r
    placed: list[dict] = []
    info: list[dict] = []
    boxes: list[tuple[int, int, int, int]] = []

    def free(b):
        return all(b[0] - margin >= o[2] or o[0] - margin >= b[2] or b[1] - margin >= o[3] or o[1] - margin >= b[3]
                   for o in boxes)

    for spec in specs:
        shape = spec["shape"]
        half = spec["extent"] * r / 2
        lo = (_POLY_LO[shape][0] * half, _POLY_LO[shape][1] * half)
        hi = (_POLY_HI[shape][0] * half, _POLY_HI[shape][1] * half)
        rx0, ry0, rx1, ry1 = spec.get("region", (1, 1, r - 1, r - 1))
        ax, ay, bx, by = rx0 - lo[0], ry0 - lo[1], rx1 - hi[0], ry1 - hi[1]  # range of the center
        if bx < ax or by < ay:
            return None  # larger than its region
        u = rng.random(16).tolist()
        for k in range(8):
            x, y = ax + (bx - ax) * u[2 * k], ay + (by - ay) * u[2 * k + 1]
            box = (math.floor(x + lo[0]), math.floor(y + lo[1]), math.ceil(x + hi[0]), math.ceil(y + hi[1]))
            if free(box):
                break
        else:
            fx, fy = rng.random(2)
            cx = np.arange(math.ceil(ax), math.floor(bx)) + fx
            cy = np.arange(math.ceil(ay), math.floor(by)) + fy
            b = np.array(boxes, np.float64).reshape(-1, 4)
            x0, x1 = np.floor(cx + lo[0])[:, None], np.ceil(cx + hi[0])[:, None]  # [nx, 1] vs [k]
            y0, y1 = np.floor(cy + lo[1])[:, None], np.ceil(cy + hi[1])[:, None]
            free_x = (x0 - margin >= b[:, 2]) | (b[:, 0] - margin >= x1)  # [nx, k]
            free_y = (y0 - margin >= b[:, 3]) | (b[:, 1] - margin >= y1)  # [ny, k]
            iy, ix = np.nonzero((free_y[:, None, :] | free_x[None, :, :]).all(-1))
            if not len(iy):
                return None
            pick = rng.integers(len(iy))
            x, y = float(cx[ix[pick]]), float(cy[iy[pick]])
            box = (math.floor(x + lo[0]), math.floor(y + lo[1]), math.ceil(x + hi[0]), math.ceil(y + hi[1]))
        boxes.append(box)
        placed.append({"shape": shape, "color": spec["color"], "size": spec["size"],
                       "center": (x / r, y / r), "bbox": box, "word": spec.get("word")})
        info.append({"half": half, "font": spec.get("font"), "font_px": spec.get("font_px")})
    return placed, info


def _scatter(rng, resolution, specs_fn: Callable[[], list[dict]]) -> tuple[list[dict], list[dict]]:
    """Place a freshly drawn scene until it fits (the caller fixes the object count up front, so
    crowded scenes are not silently replaced by sparser ones)."""
    for _ in range(1000):
        placed = _place(rng, specs_fn(), resolution)
        if placed is not None:
            return placed
    raise RuntimeError("could not place objects without overlap; extents are too large for the count")


def _draw(objects: list[dict], info: list[dict], resolution: int, bg: np.ndarray,
          rng: np.random.Generator) -> np.ndarray:
    """Composite objects (and their words) over the background; returns uint8 [R, R, 3]."""
    s = _supersample(resolution)
    canvas = Image.new("RGB", (resolution * s, resolution * s))
    mask = Image.new("L", canvas.size)
    draw, draw_mask = ImageDraw.Draw(canvas), ImageDraw.Draw(mask)
    for obj, inf in zip(objects, info):
        cx, cy = obj["center"][0] * resolution * s, obj["center"][1] * resolution * s
        half = inf["half"] * s
        if obj["shape"] == "circle":  # PIL's ellipse is rounder than a 64-gon
            box = (cx - half, cy - half, cx + half, cy + half)
            draw.ellipse(box, fill=COLORS[obj["color"]])
            draw_mask.ellipse(box, fill=255)
        else:
            flat = (_POLYGONS[obj["shape"]] * half + (cx, cy)).ravel().tolist()
            draw.polygon(flat, fill=COLORS[obj["color"]])
            draw_mask.polygon(flat, fill=255)
        if obj["word"] is not None:  # black or white, whichever reads better on the color
            ink = (0, 0, 0) if _luma(COLORS[obj["color"]]) > 140 else (255, 255, 255)
            draw.text((cx, cy), obj["word"], font=_font(inf["font"], inf["font_px"]), fill=ink, anchor="mm")
    fg = np.asarray(canvas.reduce(s)).transpose(2, 0, 1).astype(np.float32, order="C")
    alpha = np.asarray(mask.reduce(s), np.float32)[None] * np.float32(1 / 255)
    return _finish(bg * (1 - alpha) + fg * np.float32(1 / 255), rng)  # fg drawn over black: premultiplied


def _scene_background(rng, resolution):
    return _background(rng, resolution, max_saturation=0.2, value=(0.4, 0.75), texture=1.0)


def _render_objects(rng: np.random.Generator, resolution: int, split: str) -> dict:
    pairs = _pairs(SHAPES, held_out=split == "compositional")
    bg = _scene_background(rng, resolution)

    def specs():
        color, shape = _sample_pair(rng, pairs)
        size = SIZES[rng.integers(2)]
        return [{"color": color, "shape": shape, "size": size, "extent": rng.uniform(*_EXTENT[size])}]

    objects, info = _scatter(rng, resolution, specs)
    return {"image": _draw(objects, info, resolution, bg, rng), "objects": objects}


def _render_scenes(rng: np.random.Generator, resolution: int, split: str) -> dict:
    seen = _pairs(SHAPES, held_out=False)
    bg = _scene_background(rng, resolution)
    n = int(rng.integers(1, 5))
    held_slot = int(rng.integers(n)) if split == "compositional" else -1

    def specs():
        out = []
        for i in range(n):
            # Compositional: one object (at a random slot) is held out, the rest may be anything.
            pool = HELD_OUT_PAIRS if i == held_slot else (seen + HELD_OUT_PAIRS if held_slot >= 0 else seen)
            color, shape = _sample_pair(rng, pool)
            size = SIZES[rng.integers(2)]
            out.append({"color": color, "shape": shape, "size": size, "extent": rng.uniform(*_EXTENT[size])})
        return out

    objects, info = _scatter(rng, resolution, specs)
    return {"image": _draw(objects, info, resolution, bg, rng), "objects": objects}


def _cells(rng: np.random.Generator, n: int, resolution: int) -> list[tuple[float, float, float, float]]:
    """n disjoint cells (x0, y0, x1, y1) in random order: the whole image, its two halves (split
    either way) or three of its quadrants. Neighbouring cells are one object margin apart."""
    r, lo, hi = resolution, resolution / 2 - _MARGIN * resolution / 2, resolution / 2 + _MARGIN * resolution / 2
    if n == 1:
        return [(1, 1, r - 1, r - 1)]
    if n == 2:
        cells = [(1, 1, lo, r - 1), (hi, 1, r - 1, r - 1)]
        if rng.random() < 0.5:
            cells = [(y0, x0, y1, x1) for x0, y0, x1, y1 in cells]  # top / bottom instead
        return [cells[i] for i in rng.permutation(2)]
    quadrants = [(x0, y0, x1, y1) for y0, y1 in ((1, lo), (hi, r - 1)) for x0, x1 in ((1, lo), (hi, r - 1))]
    return [quadrants[i] for i in rng.permutation(4)[:n]]


def _render_text_scenes(rng: np.random.Generator, resolution: int, split: str) -> dict:
    compositional = split == "compositional"
    seen = _pairs(TEXT_SHAPES, held_out=False)
    held = _pairs(TEXT_SHAPES, held_out=True)
    words = _split_words(compositional, 5)
    bg = _scene_background(rng, resolution)
    n = int(rng.integers(1, 4))
    held_slot = int(rng.integers(n)) if compositional else -1
    s = _supersample(resolution)
    px = round(_TEXT_PX * resolution * s)

    def specs():
        out = []
        # Two or three such objects rarely fit at random: each gets its own cell.
        cells = _cells(rng, n, resolution)
        for i, (w, cell) in enumerate(zip(rng.choice(len(words), size=n, replace=False), cells)):  # distinct words
            pool = held if i == held_slot else (seen + held if compositional else seen)
            color, shape = _sample_pair(rng, pool)
            font = TEXT_SHAPE_FONTS[rng.integers(len(TEXT_SHAPE_FONTS))]
            text_width = _font(font, px).getlength(words[w])  # at the target size
            box_width = (_POLY_HI[shape][0] - _POLY_LO[shape][0]) / 2  # object width / extent
            fit = text_width / (_TEXT_WIDTH[shape] * box_width * resolution * s)  # extent the word needs
            cap = min(_TEXT_EXTENT_CAP[n], (cell[2] - cell[0]) / resolution, (cell[3] - cell[1]) / resolution)
            extent = min(cap, max(0.34, fit * rng.uniform(1.02, 1.12)))
            out.append({"color": color, "shape": shape, "size": "large", "region": cell, "extent": extent,
                        "word": words[w], "font": font, "font_px": min(px, int(px * extent / fit))})
        return out

    objects, info = _scatter(rng, resolution, specs)
    for obj, inf in zip(objects, info):  # where _draw puts each letter
        obj["glyphs"] = _glyph_boxes(_font(inf["font"], inf["font_px"]), obj["word"],
                                     (obj["center"][0] * resolution * s, obj["center"][1] * resolution * s), s)
    return {"image": _draw(objects, info, resolution, bg, rng), "objects": objects}


# --------------------------------------------------------------------------------------------
# Words (MJSynth-style)


def _contrasting_ink(rng: np.random.Generator, background_luma: float) -> np.ndarray:
    """A random color pushed towards black or white until its luma is >= 0.45 off the background's."""
    c = rng.random(3).astype(np.float32)
    lc = _luma(c)
    if background_luma > 0.5:
        target = rng.uniform(0.0, background_luma - 0.45)
        return c * np.float32(target / lc) if lc > target else c
    target = rng.uniform(background_luma + 0.45, 1.0)
    return 1 - (1 - c) * np.float32((1 - target) / (1 - lc)) if lc < target else c


def _render_words(rng: np.random.Generator, resolution: int, split: str) -> dict:
    r = resolution
    s = _supersample(r)
    words = _split_words(split == "compositional", 8)
    word = words[rng.integers(len(words))]
    bg = _background(rng, r, max_saturation=0.5, value=(0.1, 0.95), texture=1.5)
    bg_luma = float(_luma(bg.mean((1, 2))))
    ink = _contrasting_ink(rng, bg_luma).reshape(3, 1, 1)

    font_name = WORD_FONTS[rng.integers(len(WORD_FONTS))]
    angle = rng.uniform(-8, 8)
    effect = rng.random()  # < 0.2: drop shadow, < 0.4: outline, else plain
    # Pillow's embedded face is thin: thicken it slightly so it survives the downsampling.
    stroke = max(1, s // 2) if font_name == "default" else 0

    def outline_width(px):
        return max(1, round(0.08 * px)) if 0.2 <= effect < 0.4 else 0

    def half_extent(px):
        """Half width and height of the rotated ink (outline included) around the text's center."""
        x0, y0, x1, y1 = _font(font_name, px).getbbox(word, anchor="mm", stroke_width=stroke + outline_width(px))
        w, h = max(-x0, x1), max(-y0, y1)
        c, sn = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
        return w * c + h * sn, h * c + w * sn

    limit = 0.47 * r * s  # the whole word stays inside, 3% of the side from each edge
    px = round(rng.uniform(0.22, 0.4) * r * s)
    hx, hy = half_extent(px)
    if max(hx, hy) > limit:
        px = int(px * limit / max(hx, hy))
        hx, hy = half_extent(px)
    jx, jy = max(0.0, min(0.04 * r * s, limit - hx)), max(0.0, min(0.08 * r * s, limit - hy))
    center = (r * s / 2 + rng.uniform(-jx, jx), r * s / 2 + rng.uniform(-jy, jy))
    font = _font(font_name, px)

    def text_mask(extra_stroke=0):
        m = Image.new("L", (r * s, r * s))
        ImageDraw.Draw(m).text(center, word, font=font, fill=255, anchor="mm", stroke_width=stroke + extra_stroke)
        m = m.rotate(angle, resample=Image.Resampling.NEAREST, center=center)  # the reduce anti-aliases
        return np.asarray(m.reduce(s), np.float32)[None] * np.float32(1 / 255)

    img = bg
    a = text_mask()
    if effect < 0.2:  # drop shadow: the glyph mask shifted down-right (no second render)
        d = max(1, round(0.06 * px / s))
        shadow = np.zeros_like(a)
        shadow[:, d:, d:] = a[:, :-d, :-d]
        img = img * (1 - shadow * np.float32(0.7))
    elif effect < 0.4:  # outline in the tone opposite to the ink, so the letters stay crisp
        outline = text_mask(extra_stroke=outline_width(px))
        edge = np.float32(0.0 if _luma(ink.ravel()) > 0.5 else 1.0)
        img = img * (1 - outline) + edge * outline
    img = img * (1 - a) + ink * a
    return {"image": _finish(img, rng), "word": word,
            "glyphs": _glyph_boxes(font, word, center, s, stroke=stroke, angle=angle)}


# --------------------------------------------------------------------------------------------
# Sources


class Source:
    """A fixed-size procedural dataset: ``get(split, index)`` renders one record on demand."""

    def __init__(self, name: str, split_sizes: Mapping[str, int],
                 render: Callable[[np.random.Generator, int, str], dict], description: str):
        self.name = name
        self.split_sizes = MappingProxyType(dict(split_sizes))
        self.description = description
        self._render = render
        self._code = zlib.crc32(name.encode())  # stable across runs, unlike hash()

    def __repr__(self) -> str:
        return f"Source({self.name!r}, {dict(self.split_sizes)})"

    def get(self, split: str, index: int, *, seed: int = 0, resolution: int = 64) -> dict:
        """Render record ``index`` of ``split``; identical bytes on every call for the same args."""
        if split not in self.split_sizes:
            raise ValueError(f"unknown split {split!r} for source {self.name!r}; valid splits: {SPLITS}")
        size = self.split_sizes[split]
        index = operator.index(index)
        if not 0 <= index < size:
            raise IndexError(f"index {index} out of range for {self.name!r} split {split!r} of size {size}")
        if resolution < MIN_RESOLUTION:
            raise ValueError(f"resolution {resolution} is below the minimum {MIN_RESOLUTION}")
        rng = np.random.default_rng([operator.index(seed), SPLITS.index(split), index, self._code])
        return self._render(rng, resolution, split)


_SIZES = {"train": 20000, "val": 1000, "test": 2000, "compositional": 2000}
SOURCES: Mapping[str, Source] = MappingProxyType({
    "objects": Source("objects", {"train": 10000, "val": 1000, "test": 2000, "compositional": 1000},
                      _render_objects, "one shape; class '<size> <color> <shape>'"),
    "scenes": Source("scenes", _SIZES, _render_scenes, "1-4 non-overlapping shapes"),
    "words": Source("words", _SIZES, _render_words, "one English word, MJSynth-style"),
    "text_scenes": Source("text_scenes", _SIZES, _render_text_scenes, "1-3 shapes each carrying a word"),
})
