"""Paper for the studio's canvas: plain, grid, dot grid, ruled, or a fashion figure (croquis) to draw the garment on.

The paper is the canvas's background and only guides the hand: the drawing the model gets is the designer's
strokes (`actions.canvas_sketch` composites the editor's layers on white and leaves the background out), so no
paper, however it is printed, ever reaches the ControlNet, with cleanup on or off and whatever the ControlNet's
ink threshold. It is printed light (light blue or grey, thin) so that the black brush line stands out on it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

PAPERS = {"plain": "Plain", "grid": "Grid", "dots": "Dot grid", "ruled": "Ruled", "figure": "Figure (croquis)"}
PRINT = (178, 208, 240)  # the printing of grid, dot grid and ruled paper: a light blue
MARGIN = (240, 184, 196)  # the ruled paper's margin line: a light pink
FIGURE = (190, 190, 190)  # the croquis: a light grey
FIGURE_HEIGHT = 0.85  # of the canvas's height, head to feet
SUPERSAMPLE = 4  # papers are drawn this much larger and shrunk: smooth lines without a dependency


def paper(name: str, side: int) -> Image.Image:
    """A `side` px square sheet of paper NAME (a key of PAPERS) as an opaque RGBA image."""
    if name not in PAPERS:
        raise ValueError(f"unknown paper {name!r}: choose one of {', '.join(PAPERS)}")
    big = Image.new("RGB", (side * SUPERSAMPLE, side * SUPERSAMPLE), "white")
    DRAWERS[name](ImageDraw.Draw(big), side * SUPERSAMPLE)
    return big.resize((side, side), Image.Resampling.LANCZOS).convert("RGBA")


def _plain(pen: ImageDraw.ImageDraw, side: int) -> None:
    pass


def _grid(pen: ImageDraw.ImageDraw, side: int) -> None:
    """Squares of a sixteenth of the side, lines about 1 px wide at the canvas's size."""
    for k in range(1, 16):
        at = round(k * side / 16)
        pen.line((at, 0, at, side), fill=PRINT, width=SUPERSAMPLE)
        pen.line((0, at, side, at), fill=PRINT, width=SUPERSAMPLE)


def _dots(pen: ImageDraw.ImageDraw, side: int) -> None:
    """A dot every sixteenth of the side, 3 px across on the 512 px canvas."""
    radius = 0.003 * side
    for row in range(1, 16):
        for column in range(1, 16):
            x, y = column * side / 16, row * side / 16
            pen.ellipse((x - radius, y - radius, x + radius, y + radius), fill=PRINT)


def _ruled(pen: ImageDraw.ImageDraw, side: int) -> None:
    """A notebook page: rules every 1/18 of the side below a wider top band, a margin line on the left."""
    for k in range(3, 18):
        at = round(k * side / 18)
        pen.line((0, at, side, at), fill=PRINT, width=SUPERSAMPLE)
    margin = round(0.12 * side)
    pen.line((margin, 0, margin, side), fill=MARGIN, width=SUPERSAMPLE)


# The croquis, front view, in units of its head's height (8.5 heads tall), x from its centre line, y from the top
# of its head. Each line is drawn on both sides (x mirrored).
HEADS = 8.5
NECK = [(0.16, 0.95), (0.17, 1.35), (0.95, 1.5)]  # side of the neck into the shoulder line
ARM_OUTER = [(0.95, 1.5), (1.1, 1.9), (1.12, 2.6), (1.17, 3.1), (1.22, 3.7), (1.26, 4.2)]
ARM_INNER = [(0.8, 2.05), (0.88, 2.6), (0.98, 3.1), (1.05, 3.7), (1.1, 4.2)]
TORSO = [(0.8, 2.05), (0.74, 2.6), (0.58, 3.1), (0.66, 3.5), (0.86, 3.95), (0.88, 4.3), (0.78, 5.0),
         (0.62, 6.0), (0.56, 6.8), (0.46, 7.6), (0.32, 8.15)]  # armpit, waist, hip, thigh, knee, calf, ankle
LEG_INNER = [(0.0, 4.35), (0.12, 4.6), (0.2, 5.3), (0.22, 6.0), (0.18, 6.8), (0.16, 7.6), (0.14, 8.15)]
FOOT = [(0.32, 8.15), (0.3, 8.4), (0.14, 8.5), (0.1, 8.35), (0.14, 8.15)]
HAND = (1.18, 4.55, 0.16, 0.36)  # centre x, centre y, half width, half height


def _figure(pen: ImageDraw.ImageDraw, side: int) -> None:
    """A croquis centred on the sheet, FIGURE_HEIGHT of it tall: head, neck, shoulders, arms, torso, legs."""
    head = FIGURE_HEIGHT * side / HEADS
    top = (1 - FIGURE_HEIGHT) / 2 * side
    width = round(0.004 * side)  # 2 px at 512

    def at(x: float, y: float) -> tuple[float, float]:
        return side / 2 + x * head, top + y * head

    pen.ellipse((*at(-0.36, 0.0), *at(0.36, 1.0)), outline=FIGURE, width=width)
    for mirror in (1, -1):
        for line in (NECK, ARM_OUTER, ARM_INNER, TORSO, LEG_INNER, FOOT):
            pen.line([at(mirror * x, y) for x, y in _smooth(line)], fill=FIGURE, width=width, joint="curve")
        x, y, half_width, half_height = HAND
        pen.ellipse((*at(mirror * x - half_width, y - half_height), *at(mirror * x + half_width, y + half_height)),
                    outline=FIGURE, width=width)


def _smooth(points: list[tuple[float, float]], steps: int = 8) -> list[tuple[float, float]]:
    """The polyline through POINTS as a Catmull-Rom curve (a hand-drawn line, not corners)."""
    if len(points) < 3:
        return points
    p = np.array([points[0], *points, points[-1]], dtype=float)
    curve = []
    for k in range(1, len(p) - 2):
        for t in np.linspace(0, 1, steps, endpoint=False):
            curve.append(0.5 * ((2 * p[k]) + (-p[k - 1] + p[k + 1]) * t
                                + (2 * p[k - 1] - 5 * p[k] + 4 * p[k + 1] - p[k + 2]) * t ** 2
                                + (-p[k - 1] + 3 * p[k] - 3 * p[k + 1] + p[k + 2]) * t ** 3))
    curve.append(p[-2])
    return [(float(x), float(y)) for x, y in curve]


DRAWERS: dict[str, Callable[[ImageDraw.ImageDraw, int], None]] = {
    "plain": _plain, "grid": _grid, "dots": _dots, "ruled": _ruled, "figure": _figure}
