"""Procedural flat-lay garments: the synthetic catalogue behind the tests, the demo and the tiny model.

The project ships no photos, so this module draws its own: seven garment categories with continuous shape
variation, thirteen palette colours and four fabric patterns, each rendered as a catalogue flat-lay on pure
white with soft shading, fabric creases, seams and hems. `synthesize` writes them as a `folder` source
(images/ + metadata.jsonl, the Hugging Face imagefolder convention).

Two promises the rest of the project relies on:
- every item depends only on (seed, index): same seed, same bytes; a subset is the same items;
- category and colour survive a 64 px downscale: silhouettes differ at a glance and the main colour covers
  most of the garment, so the dominant colour of a rendering maps back to its palette name.

Drawing works in "garment units" (a top's body is about one unit wide, y points down); a garment is built
from parts (body, sleeves, legs, waistband), each with its own pattern frame so stripes run along a sleeve or
a leg and fan out on a flared skirt. Everything is rasterised at twice the output size and area-downscaled,
which is the anti-aliasing.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw

from fashionsd_x.files import atomic_path, write_text
from fashionsd_x.limits import MAX_IMAGE_SIDE, check_fits

__all__ = ["CATEGORIES", "FRAMINGS", "PALETTE", "PATTERNS", "GarmentSpec", "caption", "render_garment",
           "sample_framing", "sample_spec", "synthesize"]

# Named colours, well separated in RGB (closest pair about 80 apart) so the nearest palette name of a
# rendering's dominant colour is its own even after shading. White is off-white: a white garment must
# still differ from the pure white background.
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 30),
    "white": (238, 238, 234),
    "grey": (135, 135, 138),
    "red": (200, 30, 40),
    "orange": (240, 125, 30),
    "yellow": (245, 205, 45),
    "green": (45, 140, 65),
    "blue": (45, 110, 215),
    "navy": (22, 38, 112),
    "purple": (120, 50, 155),
    "pink": (235, 115, 175),
    "brown": (115, 70, 40),
    "beige": (215, 195, 155),
}
CATEGORIES: tuple[str, ...] = ("t-shirt", "long-sleeve top", "tank top", "dress", "skirt", "trousers", "shorts")
PATTERNS: tuple[str, ...] = ("solid", "stripes", "dots", "checks")
FRAMINGS: tuple[str, ...] = ("centred", "varied")  # every garment at the standard size and centred, or not
MIN_SCALE = 0.5  # the smallest GarmentSpec.scale (a garment half the standard size)

_TOPS = ("t-shirt", "long-sleeve top", "tank top")
_FLARED = ("dress", "skirt", "trousers", "shorts")
_SLEEVES = {"t-shirt": (0.15, 0.4), "long-sleeve top": (0.75, 1.0), "dress": (0.15, 1.0)}  # fraction of an arm
_PATTERN_WEIGHTS = {"solid": 2.0, "stripes": 1.0, "dots": 1.0, "checks": 1.0}  # solid twice as common
_MIN_CONTRAST = 150.0  # RGB distance between a pattern colour and the main colour
_SUPERSAMPLE = 2  # draw at twice the size, then area-downscale: the anti-aliasing
_FILL = 0.86  # the garment's larger side spans this fraction of the frame (at GarmentSpec.scale 1)
_VARIED_SCALE = (0.55, 1.0)  # scale range of "varied" framing
_MAX_GARMENT_VALUE = 250.0  # garment pixels stay below the pure white (255) background
_ARM = 1.25  # a full sleeve, in garment units (a top's body is about one unit wide)
# Peak memory of render_garment per output pixel: it draws at twice the side and keeps a dozen float32 layers
# (measured 234-290 B/px at 1024-2048 px).
RENDER_BYTES_PER_PIXEL = 320
ROW_BYTES = 4096  # a garment's metadata row, held until metadata.jsonl is written (measured about 3 kB)
MAX_GARMENTS = 1_000_000  # per call: at 256 px about 22 GB of PNGs and 12 hours of drawing on one CPU


@dataclass(frozen=True)
class GarmentSpec:
    """Everything needed to draw one garment. Shape fields are in [0, 1], 0 where they do not apply."""

    category: str  # one of CATEGORIES
    color: str  # main PALETTE colour; covers most of the garment
    pattern: str  # one of PATTERNS
    pattern_color: str  # PALETTE colour of stripes/dots/checks, contrasting with color; "" for solid
    width: float  # body width: 0 fitted .. 1 loose
    length: float  # 0 shortest .. 1 longest the category allows (mini .. maxi for dresses)
    flare: float  # hem flare of dresses, skirts, trousers and shorts; 0 for tops
    neckline: float  # neckline depth and width of tops and dresses; 0 for bottoms
    sleeve_length: float  # fraction of a full arm; 0 for tank tops, sleeveless dresses and bottoms
    pattern_scale: float = 0.5  # 0 fine .. 1 bold (period of stripes, dots and checks)
    pattern_vertical: bool = False  # stripes run along the garment (down a leg, along a sleeve), else across
    pose: float = 0.5  # how far sleeves and legs spread on the flat lay: 0 close .. 1 wide
    scale: float = 1.0  # the garment's larger side as a fraction of the standard fill (86% of the frame)
    position_x: float = 0.5  # where the garment sits in the free room left and right: 0 left .. 0.5 centre .. 1 right
    position_y: float = 0.5  # the same, top to bottom

    def __post_init__(self) -> None:
        _check_name(self.category, CATEGORIES, "category")
        _check_name(self.color, tuple(PALETTE), "color")
        _check_name(self.pattern, PATTERNS, "pattern")
        self._check_pattern_color()
        for name in ("width", "length", "flare", "neckline", "sleeve_length", "pattern_scale", "pose", "position_x",
                     "position_y"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"GarmentSpec.{name} must be in [0, 1], got {value}")
        if not MIN_SCALE <= self.scale <= 1.0:
            raise ValueError(f"GarmentSpec.scale must be in [{MIN_SCALE}, 1], got {self.scale}")
        self._check_applicable()

    def _check_pattern_color(self) -> None:
        if self.pattern == "solid":
            if self.pattern_color:
                raise ValueError(f"GarmentSpec.pattern_color must be '' for a solid pattern, "
                                 f"got {self.pattern_color!r}")
            return
        _check_name(self.pattern_color, tuple(PALETTE), "pattern_color")
        if _distance(self.color, self.pattern_color) < _MIN_CONTRAST:
            raise ValueError(f"GarmentSpec.pattern_color {self.pattern_color!r} is too close to color {self.color!r}; "
                             f"use one of {', '.join(_contrasting(self.color))}")

    def _check_applicable(self) -> None:
        if self.category not in _FLARED and self.flare:
            raise ValueError(f"GarmentSpec.flare must be 0 for a {self.category}, got {self.flare}")
        if self.category not in _TOPS + ("dress",) and self.neckline:
            raise ValueError(f"GarmentSpec.neckline must be 0 for {self.category}, got {self.neckline}")
        low, high = _SLEEVES.get(self.category, (0.0, 0.0))
        sleeveless_dress = self.category == "dress" and self.sleeve_length == 0
        if not (low <= self.sleeve_length <= high or sleeveless_dress):
            raise ValueError(f"GarmentSpec.sleeve_length of a {self.category} must be in [{low}, {high}]"
                             f"{' or 0' if self.category == 'dress' else ''}, got {self.sleeve_length}")


def _check_name(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")


def _distance(first: str, second: str) -> float:
    return float(np.linalg.norm(np.subtract(PALETTE[first], PALETTE[second])))


def _contrasting(color: str) -> tuple[str, ...]:
    return tuple(name for name in PALETTE if _distance(color, name) >= _MIN_CONTRAST)


# --- sampling ---------------------------------------------------------------------------------------------


def sample_spec(rng: np.random.Generator, categories: Sequence[str] | None = None,
                colors: Sequence[str] | None = None, patterns: Sequence[str] | None = None) -> GarmentSpec:
    """A random garment; CATEGORIES, COLORS and PATTERNS restrict the choice (None: all).

    The pattern colour is any palette colour that contrasts with the main one (COLORS filters the main colour
    only). Solid fabrics are twice as likely as each pattern so colour is learnt on plain garments first.
    The garment is centred at the standard size; sample_framing draws another size and place.
    """
    allowed = (_allowed(categories, CATEGORIES, "categories"), _allowed(colors, tuple(PALETTE), "colors"),
               _allowed(patterns, PATTERNS, "patterns"))
    draws = rng.random(9)  # drawn first and always nine, so the shape stream does not depend on the filters
    category, color = _choose(rng, allowed[0]), _choose(rng, allowed[1])
    weights = np.array([_PATTERN_WEIGHTS[name] for name in allowed[2]])
    pattern = allowed[2][int(rng.choice(len(weights), p=weights / weights.sum()))]
    pattern_color = "" if pattern == "solid" else _choose(rng, _contrasting(color))
    return GarmentSpec(
        category=category, color=color, pattern=pattern, pattern_color=pattern_color,
        width=_round(draws[0]), length=_round(draws[1]),
        flare=_round(draws[2]) if category in _FLARED else 0.0,
        neckline=_round(draws[3]) if category in _TOPS + ("dress",) else 0.0,
        sleeve_length=_sample_sleeve(category, draws[4], draws[5]),
        pattern_scale=_round(draws[6]), pattern_vertical=bool(pattern == "stripes" and draws[7] < 0.4),
        pose=_round(draws[8]),
    )


def sample_framing(rng: np.random.Generator, framing: str) -> dict[str, float]:
    """GarmentSpec fields for FRAMING: none for "centred"; size and place for "varied" (three draws).

    No caption mentions them: only a sketch tells them, so sketch adherence shows in the silhouette.
    """
    _check_name(framing, FRAMINGS, "framing")
    if framing == "centred":
        return {}
    low, high = _VARIED_SCALE
    scale, x, y = rng.random(3)
    return {"scale": _round(low + (high - low) * scale), "position_x": _round(x), "position_y": _round(y)}


def _allowed(names: Sequence[str] | None, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    if names is None:
        return known
    if isinstance(names, str):
        raise ValueError(f"{what} must be a list of names, not the string {names!r}; pass [{names!r}]")
    chosen = tuple(dict.fromkeys(names))
    if not chosen:
        raise ValueError(f"{what} is empty; pass None for all of: {', '.join(known)}")
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; allowed: {', '.join(known)}")
    return chosen


def _choose(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _round(value: float) -> float:
    # Four decimals keep metadata.jsonl readable; the spec holds the rounded value, so re-rendering a row
    # from the metadata gives the same pixels.
    return round(float(value), 4)


def _sample_sleeve(category: str, sleeveless_draw: float, length_draw: float) -> float:
    if category not in _SLEEVES or (category == "dress" and sleeveless_draw < 0.4):
        return 0.0
    low, high = _SLEEVES[category]
    return _round(low + (high - low) * length_draw)


# --- captions ---------------------------------------------------------------------------------------------

_NOUNS = {
    "t-shirt": ("t-shirt", "tee", "short-sleeve t-shirt", "short-sleeved tee"),
    "long-sleeve top": ("long-sleeve top", "long-sleeved top", "top with long sleeves"),
    "tank top": ("tank top", "sleeveless top", "tank"),
    "dress": ("dress",),
    "skirt": ("skirt",),
    "trousers": ("trousers", "pants"),
    "shorts": ("shorts",),
}
_PATTERN_ADJECTIVES = {"stripes": ("striped",), "dots": ("polka-dot", "dotted", "spotted"),
                       "checks": ("checked", "checkered", "check")}
_PATTERN_NOUNS = {"stripes": ("stripes",), "dots": ("polka dots", "dots", "small dots"),
                  "checks": ("checks", "a check pattern")}
# {a}: article, {adj}: pattern adjective, {phrase}: " with <pattern>"; a template uses one of the two.
_ADJECTIVE_TEMPLATES = ("{a} {color} {adj} {noun}", "{color} {adj} {noun}",
                        "flat-lay photo of {a} {color} {adj} {noun}", "{a} {adj} {noun} in {color}",
                        "product photo of {a} {color} {adj} {noun} on white")
_PHRASE_TEMPLATES = ("{noun} in {color}{phrase}", "{a} {color} {noun}{phrase}", "{color} {noun}{phrase}",
                     "{a} {noun} in {color}{phrase}, flat lay")


def caption(spec: GarmentSpec, rng: np.random.Generator) -> str:
    """A catalogue caption in one of several wordings, e.g. "short-sleeved tee in red with horizontal stripes".

    It always names the palette colour (so prompts can be scored by colour), the category or a synonym, and
    the pattern unless solid; shape words (midi, wide-leg, sleeveless...) are added at random.
    """
    noun = _noun_phrase(spec, rng)
    plural = spec.category in ("trousers", "shorts")
    article = _choose(rng, ("a pair of", "")) if plural else "a"
    adjective, phrase = _pattern_words(spec, rng)
    if rng.random() < 0.5:
        text = _choose(rng, _ADJECTIVE_TEMPLATES).format(a=article, color=spec.color, adj=adjective, noun=noun)
    else:
        text = _choose(rng, _PHRASE_TEMPLATES).format(a=article, color=spec.color, noun=noun, phrase=phrase)
    text = " ".join(text.split())
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)  # "a orange" -> "an orange"


def _noun_phrase(spec: GarmentSpec, rng: np.random.Generator) -> str:
    words = [word for word in _shape_words(spec) if rng.random() < 0.5]
    return " ".join(words + [_choose(rng, _NOUNS[spec.category])])


def _shape_words(spec: GarmentSpec) -> list[str]:
    """Adjectives that the shape parameters justify, in natural order (fit, neck, sleeves, length/cut)."""
    words: list[str] = []
    if spec.category in _TOPS:
        words += ["fitted"] if spec.width < 0.2 else ["loose"] if spec.width > 0.8 else []
        words += ["crew-neck"] if spec.neckline < 0.3 and spec.category != "tank top" else []
        words += ["scoop-neck"] if spec.neckline > 0.7 else []
    if spec.category == "dress":
        words.append("sleeveless" if spec.sleeve_length == 0 else "short-sleeved" if spec.sleeve_length < 0.55
                     else "long-sleeved")
        words.append(("mini", "knee-length", "midi", "maxi")[min(3, int(spec.length * 4))])
    if spec.category == "skirt":
        words.append(("mini", "knee-length", "midi")[min(2, int(spec.length * 3))])
        words.append("pencil" if spec.flare < 0.25 else "flared" if spec.flare > 0.7 else "A-line")
    if spec.category == "trousers":
        words.append("slim" if spec.flare < 0.3 else "wide-leg" if spec.flare > 0.7 else "straight-leg")
    return words


def _pattern_words(spec: GarmentSpec, rng: np.random.Generator) -> tuple[str, str]:
    """(adjective, ' with ...' phrase) for the pattern; a solid garment is sometimes called plain or solid."""
    if spec.pattern == "solid":
        return _choose(rng, ("", "", "plain", "solid")), ""
    adjective, noun = _choose(rng, _PATTERN_ADJECTIVES[spec.pattern]), _choose(rng, _PATTERN_NOUNS[spec.pattern])
    if spec.pattern == "stripes" and rng.random() < 0.5:
        direction = "vertical" if spec.pattern_vertical else "horizontal"
        adjective, noun = f"{direction}-striped", f"{direction} stripes"
    return adjective, f" with {noun}"


# --- garment geometry (garment units, y down) -------------------------------------------------------------


@dataclass(frozen=True)
class _Frame:
    """Pattern coordinates of a part: v runs along it (down a leg or a sleeve), u across it."""

    origin: tuple[float, float]  # where u = v = 0; the apex of the cone for a fan frame
    angle: float = 0.0  # radians from straight down (+y) towards +x: the direction of v
    fan: float = 0.0  # > 0: v is the distance from origin and u the angle times this radius (flared skirts)


@dataclass(frozen=True)
class _Part:
    """A filled piece of the silhouette; later parts are drawn over earlier ones."""

    polygon: np.ndarray  # (n, 2) outline
    frame: _Frame  # how the pattern runs on this part
    shade: float = 1.0  # brightness factor: the inside of the back neck is darker
    folds: int = 2  # at most this many creases


@dataclass(frozen=True)
class _Line:
    """A seam, hem, crease or edge drawn darker on top of the fabric."""

    points: np.ndarray  # (n, 2) polyline
    width: float  # garment units
    strength: float  # 0..1 darkening at the line's centre


@dataclass(frozen=True)
class _Layout:
    parts: tuple[_Part, ...]
    lines: tuple[_Line, ...]


def _bezier(start: Sequence[float], control: Sequence[float], end: Sequence[float], n: int = 16) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * np.asarray(start) + 2 * (1 - t) * t * np.asarray(control) + t**2 * np.asarray(end)


def _mirror(points: np.ndarray) -> np.ndarray:
    """The left-hand copy of a right-hand outline, reversed so right + mirror walks round one closed loop."""
    return points[::-1] * np.array([-1.0, 1.0])


def _line(points: Sequence[Sequence[float]], width: float = 0.012, strength: float = 0.3) -> _Line:
    return _Line(np.asarray(points, dtype=float), width, strength)


def _both_sides(line: _Line) -> tuple[_Line, _Line]:
    return line, _Line(line.points * np.array([-1.0, 1.0]), line.width, line.strength)


def _dashed(points: np.ndarray, width: float = 0.01, strength: float = 0.3, dash: float = 0.03) -> tuple[_Line, ...]:
    """Topstitching: the polyline cut into dashes of length DASH with equal gaps."""
    points = np.asarray(points, dtype=float)
    steps = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))]
    starts = np.arange(0.0, steps[-1] - dash, 2 * dash)
    return tuple(_line([_along(points, steps, s), _along(points, steps, s + dash)], width, strength) for s in starts)


def _along(points: np.ndarray, steps: np.ndarray, distance: float) -> np.ndarray:
    return np.array([np.interp(distance, steps, points[:, 0]), np.interp(distance, steps, points[:, 1])])


def _layout(spec: GarmentSpec) -> _Layout:
    if spec.category in _TOPS:
        return _layout_top(spec)
    if spec.category == "dress":
        return _layout_dress(spec)
    if spec.category == "skirt":
        return _layout_skirt(spec)
    return _layout_legs(spec, shorts=spec.category == "shorts")


@dataclass(frozen=True)
class _Bodice:
    """The upper body shared by tops and dresses: right-hand outline from the neck point to the armpit."""

    right: np.ndarray  # neck point, shoulder, armhole down to the armpit
    front_neck: np.ndarray  # deep front neckline, left to right
    back_neck: np.ndarray  # shallow back neckline, left to right (the silhouette's top edge)
    shoulder: np.ndarray  # top of the armhole (sleeve seam)
    armpit: np.ndarray  # bottom of the armhole


def _bodice(spec: GarmentSpec, sleeveless: bool) -> _Bodice:
    half = 0.44 + 0.14 * spec.width
    if sleeveless:
        neck, depth = 0.16 + 0.07 * spec.neckline, 0.2 + 0.2 * spec.neckline
        shoulder, armpit = np.array([neck + 0.07 + 0.04 * spec.width, 0.0]), np.array([half, 0.42])
        armhole = _bezier(shoulder, (shoulder[0] + 0.01, 0.36), armpit)  # straps, then a deep curve out
    else:
        neck, depth = 0.14 + 0.07 * spec.neckline, 0.07 + 0.17 * spec.neckline
        shoulder, armpit = np.array([half + 0.03, 0.07]), np.array([half, 0.36 + 0.04 * spec.width])
        armhole = _bezier(shoulder, (half - 0.01, 0.22), armpit, n=8)
    return _Bodice(right=np.vstack([[neck, 0.0], armhole]), shoulder=shoulder, armpit=armpit,
                   front_neck=_bezier((-neck, 0), (0, 2 * depth), (neck, 0)),
                   back_neck=_bezier((-neck, 0), (0, 0.07), (neck, 0)))


def _neck_parts_and_lines(bodice: _Bodice, sleeveless: bool) -> tuple[_Part, list[_Line]]:
    """The inside of the back (seen through the front neckline) and the neckband with its seam."""
    inside = _Part(np.vstack([bodice.front_neck, bodice.back_neck[::-1]]), _Frame((0.0, 0.0)), shade=0.72, folds=0)
    neck = bodice.front_neck
    band = 0.03 if sleeveless else 0.045
    control = 2 * neck[len(neck) // 2, 1]  # a quadratic Bezier's middle lies halfway to its control point
    seam = _bezier(neck[0] + (-0.02, 0.01), (0.0, control + 2 * band), neck[-1] + (0.02, 0.01))
    lines = [_Line(neck, 2 * band, 0.1), _line(seam, 0.012, 0.28)]
    if sleeveless:  # bound armholes
        lines += _both_sides(_Line(bodice.right[1:], 0.04, 0.1))
    else:  # shoulder and sleeve seams
        lines += _both_sides(_line([bodice.right[0], bodice.shoulder], 0.01, 0.22))
        lines += _both_sides(_Line(bodice.right[1:], 0.014, 0.32))
    return inside, lines


def _sleeves(bodice: _Bodice, sleeve_length: float, angle_degrees: float,
             cuff: float) -> tuple[list[_Part], list[_Line]]:
    """Both sleeves, leaving the shoulder ANGLE_DEGREES below horizontal; CUFF: cuff width (0: as wide as the top)."""
    theta = math.radians(angle_degrees)
    along, across = np.array([math.cos(theta), math.sin(theta)]), np.array([-math.sin(theta), math.cos(theta)])
    top, bottom = bodice.shoulder, bodice.armpit
    opening = float((bottom - top) @ across)
    end = top + _ARM * sleeve_length * along
    end_inner = end + (cuff or 0.92 * opening) * across
    inset = np.array([0.08, 0.0])  # reach under the body so no gap opens at the armhole
    polygon = np.array([top - inset, top, end, end_inner, bottom, bottom - inset])
    hem = 0.1 if sleeve_length > 0.6 else 0.05  # a rib cuff on long sleeves, a stitched hem on short ones
    right = _Part(polygon, _Frame(tuple(top), math.atan2(along[0], along[1])), folds=1 if sleeve_length < 0.5 else 2)
    left = _Part(_mirror(polygon), _Frame((-top[0], top[1]), -right.frame.angle), folds=right.folds)
    lines = [side for dash in _dashed([end - hem * along, end_inner - hem * along]) for side in _both_sides(dash)]
    return [right, left], lines


def _sleeve_angle(spec: GarmentSpec) -> float:
    # Short sleeves stick out, long ones hang lower so the flat lay stays compact.
    return 22 + 45 * (spec.sleeve_length - 0.15) / 0.85 + 12 * spec.pose


def _layout_top(spec: GarmentSpec) -> _Layout:
    sleeveless = spec.sleeve_length == 0
    bodice = _bodice(spec, sleeveless)
    length = 1.15 + 0.35 * spec.length
    right = np.vstack([bodice.right, [[bodice.armpit[0] + 0.01, length]]])
    body = _Part(np.vstack([right, _mirror(right), bodice.back_neck[1:-1]]), _Frame((0.0, 0.0)), folds=3)
    inside, lines = _neck_parts_and_lines(bodice, sleeveless)
    half = bodice.armpit[0]
    lines += _dashed([[-half + 0.02, length - 0.05], [half - 0.02, length - 0.05]])
    parts = [body, inside]
    if not sleeveless:
        cuff = 0.17 + 0.04 * spec.width if spec.sleeve_length > 0.6 else 0.0
        sleeves, sleeve_lines = _sleeves(bodice, spec.sleeve_length, _sleeve_angle(spec), cuff)
        parts, lines = sleeves + parts, sleeve_lines + lines
    return _Layout(tuple(parts), tuple(lines))


def _flared(waist_half: float, waist_y: float, length: float, hem_half: float) -> tuple[np.ndarray, _Frame, np.ndarray]:
    """A flared panel from the waist line down to LENGTH, HEM_HALF wide at the hem: a slice of a cone whose
    apex sits above the waist, so the hem is an arc and the pattern fans out (v: radius, u: angle times the
    waist radius)."""
    phi = math.atan2(hem_half - waist_half, length - waist_y)
    apex_y = waist_y - waist_half / math.tan(phi)
    radius = length - apex_y
    angles = np.linspace(phi, -phi, 24)
    hem = np.c_[radius * np.sin(angles), apex_y + radius * np.cos(angles)]
    polygon = np.vstack([[[-waist_half, waist_y], [waist_half, waist_y]], hem])
    stitch_angles = np.linspace(phi * 0.97, -phi * 0.97, 24)
    stitch = np.c_[(radius - 0.05) * np.sin(stitch_angles), apex_y + (radius - 0.05) * np.cos(stitch_angles)]
    return polygon, _Frame((0.0, apex_y), 0.0, fan=waist_half / math.sin(phi)), stitch


def _layout_dress(spec: GarmentSpec) -> _Layout:
    sleeveless = spec.sleeve_length == 0
    bodice = _bodice(spec, sleeveless)
    waist_y, waist = 0.64, 0.86 * bodice.armpit[0]
    length = 1.7 + 1.3 * spec.length
    right = np.vstack([bodice.right, [[waist, waist_y]]])
    top = _Part(np.vstack([right, _mirror(right), bodice.back_neck[1:-1]]), _Frame((0.0, 0.0)), folds=1)
    flare = (0.12 + 0.55 * spec.flare) * (0.75 + 0.5 * spec.length)  # a maxi dress flares less per unit length
    polygon, frame, stitch = _flared(waist, waist_y - 0.01, length, waist + flare)
    skirt = _Part(polygon, frame, folds=4)
    inside, lines = _neck_parts_and_lines(bodice, sleeveless)
    lines += [_line([[-waist, waist_y], [waist, waist_y]], 0.014, 0.3), *_dashed(stitch)]
    parts = [skirt, top, inside]
    if not sleeveless:
        cuff = 0.16 if spec.sleeve_length > 0.6 else 0.0
        sleeves, sleeve_lines = _sleeves(bodice, spec.sleeve_length, _sleeve_angle(spec), cuff)
        parts, lines = sleeves + parts, sleeve_lines + lines
    return _Layout(tuple(parts), tuple(lines))


def _waistband(half: float, height: float) -> tuple[_Part, list[_Line]]:
    outline = np.array([[-half, 0.0], [half, 0.0], [half, height], [-half, height]])
    band = _Part(outline, _Frame((0.0, 0.0)), shade=0.93, folds=0)
    return band, [_line([[-half, height], [half, height]], 0.014, 0.32)]


def _button(x: float, y: float, radius: float = 0.025) -> _Line:
    angles = np.linspace(0.0, 2 * math.pi, 13)
    return _Line(np.c_[x + radius * np.cos(angles), y + radius * np.sin(angles)], 0.012, 0.45)


def _layout_skirt(spec: GarmentSpec) -> _Layout:
    half, band_height = 0.4 + 0.14 * spec.width, 0.1
    length = 1.0 + 0.95 * spec.length
    flare = (0.08 + 0.55 * spec.flare) * (0.7 + 0.6 * spec.length)
    polygon, frame, stitch = _flared(half, band_height - 0.005, length, half + flare)
    band, lines = _waistband(half, band_height)
    lines += [*_dashed(stitch), _button(half - 0.07, band_height / 2)]
    return _Layout((_Part(polygon, frame, folds=4), band), tuple(lines))


@dataclass(frozen=True)
class _Legs:
    """Measurements of trousers or shorts (right half; the left mirrors it)."""

    half: float  # half the waist width
    band: float  # waistband height
    hip: tuple[float, float]  # (x, y) of the hip, where the side seam stops curving out
    crotch: float  # y of the crotch, where the legs part
    length: float  # y of the hems
    inner: float  # x of a hem's inner corner: half the gap between the legs
    outer: float  # x of a hem's outer corner


def _legs(spec: GarmentSpec, shorts: bool) -> _Legs:
    half = 0.4 + 0.12 * spec.width
    if shorts:
        inner = 0.11 + 0.06 * spec.pose + 0.03 * spec.flare
        return _Legs(half, 0.09, (half + 0.04, 0.34), 0.5, 0.82 + 0.3 * spec.length, inner,
                     inner + 0.36 + 0.12 * spec.flare + 0.1 * spec.width)
    inner = 0.09 + 0.1 * spec.pose + 0.08 * spec.flare
    return _Legs(half, 0.09, (half + 0.05, 0.42), 0.75, 2.2 + 0.6 * spec.length, inner,
                 inner + 0.28 + 0.3 * spec.flare + 0.1 * spec.width)


def _layout_legs(spec: GarmentSpec, shorts: bool) -> _Layout:
    """Trousers or shorts: two legs split at the crotch, cut down the centre seam into left and right parts."""
    legs = _legs(spec, shorts)
    (hip, hip_y), folds = legs.hip, 2 if shorts else 3
    hip_curve = _bezier((legs.half, 0.0), (hip, hip_y * 0.45), (hip, hip_y), n=8)
    right = np.vstack([[[0.0, 0.0]], hip_curve, [[legs.outer, legs.length], [legs.inner, legs.length],
                                                 [0.0, legs.crotch]]])
    axis = math.atan2((legs.outer + legs.inner) / 2 - hip / 2, legs.length - legs.crotch)  # stripes follow the leg
    parts = [_Part(right, _Frame((0.0, 0.0), axis), folds=folds),
             _Part(_mirror(right), _Frame((0.0, 0.0), -axis), folds=folds)]
    band, lines = _waistband(legs.half, legs.band)
    return _Layout((*parts, band), tuple(lines + _legs_details(legs, shorts)))


def _legs_details(legs: _Legs, shorts: bool) -> list[_Line]:
    """Centre seam, button, fly, belt loops, pockets, pressed creases (trousers) or turn-ups (shorts), hems."""
    (hip, hip_y), band, crotch = legs.hip, legs.band, legs.crotch
    lines = [_line([[0.0, band], [0.0, crotch]], 0.014, 0.38), _button(0.0, band / 2)]
    fly = _bezier((0.08, crotch * 0.6), (0.08, crotch * 0.8), (0.0, crotch * 0.82), n=6)
    lines += _dashed(np.vstack([[[0.08, band + 0.01]], fly]), dash=0.025)
    for x in (0.3 * legs.half, 0.8 * legs.half):
        lines += _both_sides(_line([[x, -0.005], [x, band + 0.03]], 0.03, 0.22))
    pocket = _bezier((0.5 * legs.half, band), (0.55 * legs.half, 0.8 * hip_y), (hip + 0.01, 0.85 * hip_y), n=10)
    lines += _both_sides(_Line(pocket, 0.014, 0.3))
    if shorts:
        turn_up = [[legs.inner - 0.01, legs.length - 0.11], [legs.outer + 0.01, legs.length - 0.11]]
        lines += _both_sides(_line(turn_up, 0.016, 0.35))
    else:
        crease = [[hip / 2, hip_y], [(legs.inner + legs.outer) / 2, legs.length - 0.08]]  # pressed down the front
        lines += _both_sides(_line(crease, 0.012, 0.12))
    for dash in _dashed([[legs.inner + 0.02, legs.length - 0.05], [legs.outer - 0.02, legs.length - 0.05]]):
        lines += _both_sides(dash)
    return lines


# --- rendering --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Canvas:
    """Garment units -> supersampled pixels, with the garment's larger side spanning _FILL of the frame."""

    side: int  # canvas side in pixels (already supersampled)
    scale: float  # pixels per garment unit
    offset: np.ndarray  # pixel position of the garment point (0, 0)

    def px(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points) * self.scale + self.offset


def _fit(layout: _Layout, spec: GarmentSpec, side: int) -> _Canvas:
    """Scale so the larger side spans _FILL * spec.scale of the frame; place it in the room that leaves."""
    points = np.vstack([part.polygon for part in layout.parts])
    low, high = points.min(axis=0), points.max(axis=0)
    scale = _FILL * spec.scale * side / float((high - low).max())
    room = side - (high - low) * scale  # free pixels along x and y; the garment is never cropped
    position = np.array([spec.position_x, spec.position_y])
    return _Canvas(side, scale, side / 2 - (low + high) / 2 * scale + (position - 0.5) * room)


def render_garment(spec: GarmentSpec, size: int = 256, seed: int = 0) -> Image.Image:
    """Draw SPEC as a catalogue flat-lay: RGB, SIZE x SIZE, pure white background, garment centred and uncropped.

    SEED places the incidental details (crease positions, pattern phase); the same arguments give the same
    pixels. Soft shading, creases, seams and an edge darkening make the garment read as cloth and keep a
    white garment visible on the white background.
    """
    _check_size(size)
    rng = np.random.default_rng(_check_seed(seed))
    layout = _layout(spec)
    canvas = _fit(layout, spec, size * _SUPERSAMPLE)
    index = _rasterise(layout.parts, canvas)
    fabric = _fabric(spec, layout.parts, index, canvas, rng)
    darkness, highlight = _shading(layout, index, canvas, rng, _sheen(spec.color))
    rgb = fabric * darkness[..., None] + (255.0 - fabric) * highlight[..., None]
    rgb = np.where((index > 0)[..., None], np.clip(rgb, 0.0, _MAX_GARMENT_VALUE), 255.0).astype(np.float32)
    small = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    return Image.fromarray(np.rint(small).astype(np.uint8), "RGB")


def _check_size(size: int, option: str = "size") -> None:
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"{option} must be an integer >= 32 pixels, got {size!r}")
    check_fits(option, size, MAX_IMAGE_SIDE, "the largest image side the data stages make",
               need=lambda side: side * side * RENDER_BYTES_PER_PIXEL, work=lambda side: f"drawing a {side} px garment")


def _check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _rasterise(parts: tuple[_Part, ...], canvas: _Canvas) -> np.ndarray:
    """(side, side) uint8 map: 0 background, k the k-th part (1-based) on top at that pixel."""
    image = Image.new("L", (canvas.side, canvas.side), 0)
    draw = ImageDraw.Draw(image)
    for number, part in enumerate(parts, 1):
        draw.polygon([tuple(point) for point in canvas.px(part.polygon)], fill=number)
    return np.asarray(image)


def _fabric(spec: GarmentSpec, parts: tuple[_Part, ...], index: np.ndarray, canvas: _Canvas,
            rng: np.random.Generator) -> np.ndarray:
    """(side, side, 3) float colour of the cloth before shading: main colour with the pattern printed on."""
    main = np.array(PALETTE[spec.color], dtype=np.float32)
    fabric = np.broadcast_to(main, index.shape + (3,))
    phase = rng.uniform(0.0, 1.0, 2)  # drawn even for solid fabrics so the crease stream does not depend on it
    if spec.pattern == "solid":
        return fabric
    u, v = _pattern_coordinates(parts, index, canvas, isotropic=spec.pattern == "dots")
    alpha = _pattern_alpha(spec, u, v, canvas.side, phase)
    return fabric + alpha[..., None] * (np.array(PALETTE[spec.pattern_color], dtype=np.float32) - main)


def _pattern_coordinates(parts: tuple[_Part, ...], index: np.ndarray, canvas: _Canvas,
                         isotropic: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel (u, v) in pixels, each pixel in the frame of the part drawn on top there."""
    u, v = np.zeros(index.shape, np.float32), np.zeros(index.shape, np.float32)
    for number, part in enumerate(parts, 1):
        (x0, y0), (x1, y1) = _pixel_box(canvas.px(part.polygon), canvas.side)
        mine = index[y0:y1, x0:x1] == number
        x = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
        y = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
        part_u, part_v = _frame_coordinates(part.frame, canvas, x, y, isotropic)
        u[y0:y1, x0:x1][mine] = part_u[mine]
        v[y0:y1, x0:x1][mine] = part_v[mine]
    return u, v


def _pixel_box(points: np.ndarray, side: int) -> tuple[tuple[int, int], tuple[int, int]]:
    low = np.clip(np.floor(points.min(axis=0)).astype(int) - 1, 0, side)
    high = np.clip(np.ceil(points.max(axis=0)).astype(int) + 2, 0, side)
    return (int(low[0]), int(low[1])), (int(high[0]), int(high[1]))


def _frame_coordinates(frame: _Frame, canvas: _Canvas, x: np.ndarray, y: np.ndarray,
                       isotropic: bool) -> tuple[np.ndarray, np.ndarray]:
    ox, oy = canvas.px(np.array(frame.origin))
    dx, dy = x - np.float32(ox), y - np.float32(oy)
    if frame.fan:
        # Stripes fan out with the cloth (u: angle times the waist radius); dots must stay round, so for
        # them u is the true arc length (angle times this pixel's radius).
        radius = np.sqrt(dx**2 + dy**2)
        return np.arctan2(dx, dy) * (radius if isotropic else np.float32(frame.fan * canvas.scale)), radius
    sin, cos = np.float32(math.sin(frame.angle)), np.float32(math.cos(frame.angle))
    return np.broadcast_to(dx * cos - dy * sin, np.broadcast_shapes(dx.shape, dy.shape)), dx * sin + dy * cos


def _pattern_alpha(spec: GarmentSpec, u: np.ndarray, v: np.ndarray, side: int, phase: np.ndarray) -> np.ndarray:
    """Coverage of the pattern colour in [0, 1], anti-aliased over one pixel.

    Periods are a fraction of the frame (not of the garment) so that a pattern stays resolvable at 64 px,
    and the printed area stays well under half (stripes 25%, dots 15%, checks about 30% at half strength),
    so the main colour dominates.
    """
    if spec.pattern == "checks":
        period = side * (0.12 + 0.06 * spec.pattern_scale)
    else:
        period = side * (0.09 + 0.05 * spec.pattern_scale)
    u, v = u + np.float32(phase[0] * period), v + np.float32(phase[1] * period)
    if spec.pattern == "stripes":
        return _band(u if spec.pattern_vertical else v, period, 0.25)
    if spec.pattern == "dots":
        row = np.floor(v / period)
        shifted = u + (row % 2) * np.float32(period / 2)  # staggered rows, as printed polka dots are
        du, dv = (shifted / period % 1 - 0.5) * period, (v / period % 1 - 0.5) * period
        return np.clip(0.22 * period - np.sqrt(du**2 + dv**2) + 0.5, 0.0, 1.0)
    across, along = _band(u, period, 0.16), _band(v, period, 0.16)
    return 0.55 * np.maximum(across, along) + 0.45 * across * along  # gingham: crossings at full strength


def _band(coordinate: np.ndarray, period: float, fraction: float) -> np.ndarray:
    distance = np.abs(coordinate / np.float32(period) % 1 - 0.5) * np.float32(period)
    return np.clip(np.float32(fraction * period / 2) - distance + 0.5, 0.0, 1.0)


def _sheen(color: str) -> float:
    """0 for mid and light colours, up to 1 for black: how much seams and creases catch the light instead."""
    red, green, blue = PALETTE[color]
    return float(np.clip((100.0 - (0.299 * red + 0.587 * green + 0.114 * blue)) / 70.0, 0.0, 1.0))


def _shading(layout: _Layout, index: np.ndarray, canvas: _Canvas, rng: np.random.Generator,
             sheen: float) -> tuple[np.ndarray, np.ndarray]:
    """(darkness factor, highlight fraction towards white), both (side, side) float32.

    Light from the top left, a low-frequency unevenness of the cloth, padding-like darkening towards the
    edges, a darker outline (what keeps white garments visible), seams and creases with a lit side. Darkening
    cannot show on black cloth, so with SHEEN seams and crease ridges also lighten, as stitching does in photos.
    """
    side = canvas.side
    inside = (index > 0).astype(np.uint8)
    edge_distance = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
    ramp = np.linspace(0.5, -0.5, side, dtype=np.float32)
    darkness = 1.0 + 0.06 * ramp[:, None] + 0.03 * ramp[None, :]
    darkness = darkness * (1.0 + 0.035 * cv2.resize(rng.standard_normal((5, 5)).astype(np.float32), (side, side),
                                                    interpolation=cv2.INTER_CUBIC))
    darkness = darkness * (1.0 - 0.14 * np.exp(-edge_distance / np.float32(0.02 * side)))
    outline = np.clip(max(1.5, 0.005 * side) - edge_distance + 0.5, 0.0, 1.0)
    darkness = darkness * (1.0 - 0.3 * outline)
    darkness = darkness * np.array([1.0] + [part.shade for part in layout.parts], np.float32)[index]
    seams = cv2.GaussianBlur(_draw(layout.lines, canvas), (0, 0), 0.35 * _SUPERSAMPLE)
    creases, lit = _creases(layout.parts, canvas, rng)
    darkness = darkness * (1.0 - seams) * (1.0 - 0.25 * creases)
    # Exposure: the typical garment pixel shows exactly its palette colour. Without this a small or thin
    # garment (mostly edge) renders darker overall and a white one drifts towards grey or beige.
    typical = np.median(darkness[::3, ::3][inside[::3, ::3] > 0])
    highlight = (0.1 + 0.15 * sheen) * lit + 0.3 * sheen * seams
    return darkness / np.float32(typical), highlight


def _draw(lines: Sequence[_Line], canvas: _Canvas) -> np.ndarray:
    """Lines rasterised as darkening amounts in [0, 1]."""
    image = Image.new("L", (canvas.side, canvas.side), 0)
    draw = ImageDraw.Draw(image)
    for line in lines:
        width = max(1, round(line.width * canvas.scale))
        draw.line([tuple(point) for point in canvas.px(line.points)], fill=round(255 * line.strength), width=width,
                  joint="curve")
    return np.asarray(image, dtype=np.float32) / 255.0


def _creases(parts: tuple[_Part, ...], canvas: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Soft fabric folds: a blurred dark crease with a lit ridge beside it, running roughly along each part."""
    dark, lit = [], []
    for part in parts:
        for _ in range(int(rng.integers(0, part.folds + 1))):
            crease = _random_crease(part, rng)
            if crease is None:
                continue
            dark.append(crease)
            ridge = crease.points + crease.width * 1.3 * _normal(crease.points)
            lit.append(_Line(ridge, crease.width, crease.strength))
    sigma = 0.012 * canvas.side
    return (cv2.GaussianBlur(_draw(dark, canvas), (0, 0), sigma),
            cv2.GaussianBlur(_draw(lit, canvas), (0, 0), 1.4 * sigma))


def _random_crease(part: _Part, rng: np.random.Generator) -> _Line | None:
    low, high = part.polygon.min(axis=0), part.polygon.max(axis=0)
    contour = part.polygon.astype(np.float32)
    for _ in range(12):  # rejection-sample a centre inside the part
        centre = low + rng.random(2) * (high - low)
        if cv2.pointPolygonTest(contour, (float(centre[0]), float(centre[1])), True) > 0.05:
            break
    else:
        return None
    if part.frame.fan:
        direction = centre - np.array(part.frame.origin)
        base = math.atan2(direction[0], direction[1])
    else:
        base = part.frame.angle
    angle = base + rng.normal(0.0, 0.2)
    along = np.array([math.sin(angle), math.cos(angle)])
    half_length = 0.5 * rng.uniform(0.3, 0.6) * float((high - low).max())
    bend = np.array([along[1], -along[0]]) * half_length * rng.uniform(-0.15, 0.15)
    points = _bezier(centre - half_length * along, centre + bend, centre + half_length * along, n=10)
    return _Line(points, rng.uniform(0.03, 0.05), rng.uniform(0.5, 1.0))


def _normal(points: np.ndarray) -> np.ndarray:
    direction = points[-1] - points[0]
    return np.array([direction[1], -direction[0]]) / (np.linalg.norm(direction) + 1e-9)


# --- the catalogue on disk --------------------------------------------------------------------------------


def synthesize(out: Path, num: int, seed: int = 0, size: int = 256, categories: Sequence[str] | None = None,
               colors: Sequence[str] | None = None, patterns: Sequence[str] | None = None, start: int = 0,
               framing: str = "centred") -> Path:
    """Write NUM synthetic garments to OUT as a folder source: images/synth_<index>.png and metadata.jsonl.

    Item index runs from START to START + NUM - 1 and depends only on (SEED, index): the same seed gives the
    same bytes, and calls with disjoint index ranges give disjoint, consistent sets (e.g. train from 0, test
    from 100000). CATEGORIES, COLORS, PATTERNS restrict the garments (None: all).

    metadata.jsonl lists exactly this call's items; it is removed first and written last through a temporary
    file, so a crash never leaves a folder that looks complete. synth_*.png files from an earlier call that are
    not in this one are removed, so folder and metadata agree.

    Args:
        out: folder to write (images/ and metadata.jsonl); build it with `fsdx data build --source folder`.
        num: number of garments, at most 1000000 a call.
        seed: seed; the same seed gives the same garments byte for byte.
        size: side in pixels of the square images, 32 to 4096.
        categories: only these categories (t-shirt, long-sleeve top, tank top, dress, skirt, trousers, shorts).
        colors: only these palette colours (black, white, grey, red, orange, yellow, green, blue, navy, ...).
        patterns: only these patterns (solid, stripes, dots, checks).
        start: index of the first garment (disjoint ranges give disjoint sets, e.g. a held-out test set).
        framing: centred (every garment the same size, centred) or varied (size 0.55 to 1 of the standard and
            place drawn per garment, never cropped; no caption mentions them, so only a sketch can tell them).
    """
    filters = _check_synthesize_arguments(num, seed, size, start, categories, colors, patterns)
    _check_name(framing, FRAMINGS, "framing")
    out = Path(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    (out / "metadata.jsonl").unlink(missing_ok=True)  # an interrupted rewrite must not look like a finished one
    rows = [_write_item(images, seed, index, size, filters, framing) for index in range(start, start + num)]
    _remove_stale(images, {Path(row["file_name"]).name for row in rows})
    write_text(out / "metadata.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    return out


def _check_synthesize_arguments(num: int, seed: int, size: int, start: int, categories: Sequence[str] | None,
                                colors: Sequence[str] | None,
                                patterns: Sequence[str] | None) -> tuple[tuple[str, ...], ...]:
    if not isinstance(num, (int, np.integer)) or num < 1:
        raise ValueError(f"num must be an integer >= 1, got {num!r}")
    check_fits("--num", num, MAX_GARMENTS,
               "a million garments at 256 px are ~22 GB and ~12 hours of drawing; make more in calls with --start",
               need=lambda count: count * ROW_BYTES, work=lambda count: f"the metadata of {count} garments")
    if not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"start must be a non-negative integer, got {start!r}")
    _check_seed(seed)
    _check_size(size, "--size")
    return (_allowed(categories, CATEGORIES, "categories"), _allowed(colors, tuple(PALETTE), "colors"),
            _allowed(patterns, PATTERNS, "patterns"))


def _write_item(images: Path, seed: int, index: int, size: int, filters: tuple[tuple[str, ...], ...],
                framing: str) -> dict:
    rng = np.random.default_rng([seed, index])  # one stream per item: independent of num and of other items
    spec = sample_spec(rng, *filters)
    text = caption(spec, rng)
    render_seed = int(rng.integers(2**31))
    spec = replace(spec, **sample_framing(rng, framing))  # drawn last: a varied garment is a centred one moved
    item_id = f"synth_{index:06d}"
    _save_png(render_garment(spec, size, render_seed), images / f"{item_id}.png")
    row = {"file_name": f"images/{item_id}.png", "id": item_id, "text": text, "color_rgb": list(PALETTE[spec.color])}
    row.update({field.name: getattr(spec, field.name) for field in fields(GarmentSpec)})
    row["render_seed"] = render_seed  # render_garment(GarmentSpec(**spec fields), size, render_seed) redraws it
    return row


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as temporary:  # whole or absent, even on a full disk
        image.save(temporary, format="PNG")


def _remove_stale(images: Path, keep: set[str]) -> None:
    for path in images.glob("synth_*.png"):
        if re.fullmatch(r"synth_\d+\.png", path.name) and path.name not in keep:
            path.unlink()
