"""Finding the garment on a designer's page: what is not the garment's line never reaches the ControlNet.

A page holds more than the garment's outline. `clean_page` takes the page's ink (what `conditioning.ink_mask`
reads as line) and sets aside, in this order:
    off the sheet  a photo of a page shows the table around it; everything outside the sheet's bright
                   quadrilateral (and the sheet's own edge) is not drawing;
    printing       ruled lines and grids (families of three or more long, parallel, straight lines across the
                   sheet, at any angle a scan or a photo gives them) and dot grids (many small dots of one size
                   on a lattice);
    figure         strokes much fainter or thinner than the garment's own line that lie outside the garment
                   (a croquis drawn around it, construction lines);
    outside        everything else outside the garment's filled shape: notes and their leader lines, a head,
                   arms and legs drawn in the garment's own ink, stray marks.
The garment is the largest filled shape that the strong strokes close (gaps in a shaky line bridged first),
with any thin appendage (a leader line, an arm) opened away; a second shape at least a fifth of its area (two
garments side by side) is kept too. A page with nothing of the above gives back its ink unchanged, bit for
bit, so a clean drawing is conditioned exactly as without cleanup.

Everything is measured on a copy at most WORK_SIDE px and every size is a share of that copy's longer side,
so the same page at 800 or 4000 px is read the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

WORK_SIDE = 1024  # the page is analysed at most this size (lines of a 2048 px scan stay 1 px or more)
KINDS = ("off_sheet", "printing", "figure", "outside")  # what cleanup removes, in the order it is found


@dataclass
class PageCleanup:
    """The garment's ink and what was removed from the page, by kind (bool masks at the page's size)."""

    ink: np.ndarray  # bool H x W: the ink that is the garment's line
    removed: dict[str, np.ndarray] = field(default_factory=dict)  # kind -> bool H x W, only kinds found

    def summary(self) -> dict[str, float]:
        """Share of the page's original ink removed, per kind found (for reports and the studio)."""
        total = max(1, int(self.ink.sum()) + sum(int(mask.sum()) for mask in self.removed.values()))
        return {kind: round(int(mask.sum()) / total, 4) for kind, mask in self.removed.items()}


def clean_page(ink: np.ndarray, darkness: np.ndarray, gray: np.ndarray) -> PageCleanup:
    """The garment's ink on a page: INK (bool) with the sheet's surroundings, printing, a figure and notes removed.

    DARKNESS is how much darker than its paper each pixel is (0 to 1, float), GRAY the page's brightness (0 to 1);
    both are the arrays `ink_mask` thresholded. Nothing found: INK itself comes back (not a copy).
    """
    scale = min(1.0, WORK_SIDE / max(ink.shape))
    work = _Work(ink, darkness, gray, scale)
    # Each step gives the AREA whose ink it removes (at the analysis size), so that a line's faint edge pixels
    # on the full-size page go with the line.
    areas = {"off_sheet": work.off_sheet()}
    areas["printing"] = work.printing(~areas["off_sheet"])
    rest = work.ink & ~areas["off_sheet"] & ~areas["printing"]
    strong = work.strong_strokes(rest)
    garment = work.garment_area(strong) if strong is not None else None
    if garment is not None and work.on_outline(rest & ~strong, garment[0]):
        garment = None  # the fainter strokes are the garment's own outline (a pencil's pressure varies)
    if garment is None:
        strong = None
        garment = work.garment_area(rest)
    if garment is not None:
        shape, grown = garment
        if strong is not None:  # a figure: its fainter strokes go wherever they are, under the garment too
            areas["figure"] = _grown(rest & ~strong, 1) & ~_grown(strong, 2)
        areas["outside"] = ~grown
    removed: dict[str, np.ndarray] = {}
    kept = ink
    for kind, area in areas.items():
        if not (area & work.ink).any():
            continue
        mask = kept & _to_page(area, ink.shape)
        if mask.any():
            removed[kind] = mask
            kept = kept & ~mask
    if not removed or not kept.any():  # nothing found, or nothing left (a misreading): the page as drawn
        return PageCleanup(ink)
    return PageCleanup(kept, removed)


def _grown(mask: np.ndarray, pixels: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)) > 0


def _to_page(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0


class _Work:
    """The page at the analysis size and the measurements every step shares."""

    def __init__(self, ink: np.ndarray, darkness: np.ndarray, gray: np.ndarray, scale: float) -> None:
        height, width = ink.shape
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if scale < 1.0:
            coverage = cv2.resize(ink.astype(np.float32), size, interpolation=cv2.INTER_AREA)
            self.ink = coverage > 0.5 * scale  # a 1 px line of the page is still a line here
            self.darkness = cv2.resize(np.where(ink, darkness, 0).astype(np.float32), size,
                                       interpolation=cv2.INTER_AREA)
            self.gray = cv2.resize(gray.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        else:
            self.ink, self.darkness, self.gray = ink.copy(), np.where(ink, darkness, 0).astype(np.float32), gray
        self.side = max(self.ink.shape)

    def px(self, share: float) -> int:
        """A length given as a share of the longer side, in pixels of the analysis copy (at least 1)."""
        return max(1, round(share * self.side))

    # --- off the sheet ---------------------------------------------------------------------------------------

    def off_sheet(self) -> np.ndarray:
        """Bool: the table around a photographed sheet, and a band along the sheet's edge.

        The sheet is the convex hull of the largest bright region (Otsu on a blurred copy). Found
        only where the rest is a real surround: at least 2% of the picture, touching its border, and clearly
        darker than the sheet (a white page scanned edge to edge has none)."""
        blurred = cv2.GaussianBlur((self.gray * 255).astype(np.uint8), (0, 0), self.px(0.006))
        level, bright = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=4)
        none = np.zeros_like(self.ink)
        if count < 2:
            return none
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        # A sheet is convex: its hull also takes in a shadow or a drawn line that cuts into the bright region.
        sheet = np.zeros(self.ink.shape, np.uint8)
        cv2.fillPoly(sheet, [cv2.convexHull(cv2.findNonZero((labels == largest).astype(np.uint8)))], 1)
        sheet = sheet > 0
        outside = ~sheet
        if outside.mean() < 0.02 or not (outside[0].any() or outside[-1].any() or outside[:, 0].any()
                                         or outside[:, -1].any()):
            return none
        if float(np.median(blurred[sheet])) - float(np.median(blurred[outside])) < 40:
            return none
        edge = cv2.dilate(outside.astype(np.uint8), _disc(self.px(0.012))) > 0
        return edge

    # --- the paper's printing ----------------------------------------------------------------------------------

    def printing(self, sheet: np.ndarray) -> np.ndarray:
        """Bool: ruled lines, grids and dot grids printed on the paper."""
        ink = self.ink & sheet
        return self._rulings(ink, sheet) | self._dot_grid(ink)

    def _rulings(self, ink: np.ndarray, sheet: np.ndarray) -> np.ndarray:
        """Families of five or more parallel straight lines, each inked along 85% of its chord across the sheet.

        A garment's straight edges never qualify: none runs nearly from one side of the sheet to the other, and
        a garment has not five of them parallel."""
        height, width = ink.shape
        votes = max(8, round(0.5 * min(height, width)))
        lines = cv2.HoughLines(ink.astype(np.uint8), 1, math.pi / 360, votes)
        found = np.zeros_like(ink)
        if lines is None:
            return found
        near = cv2.dilate(ink.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        checked = [(rho, theta) for rho, theta in _distinct(lines[:, 0, :])
                   if _covered(near, sheet, rho, theta) >= 0.85]
        bands = []
        for family in _families(checked):
            if len(family) < 5:
                continue
            band = np.zeros(ink.shape, np.uint8)
            thickness = self._thickness(ink, family)
            for rho, theta in family:
                _draw_line(band, rho, theta, thickness)
            bands.append((band > 0, family[0][1], thickness))
        if not bands:
            return found
        printed = np.logical_or.reduce([band for band, _, _ in bands])
        over = self._drawn_over_printing(ink, ink & printed)
        drawn = ink & ~printed | over
        for band, theta, thickness in bands:
            found |= _unbridged(band, drawn, theta, thickness)
        return found & ~over

    def _drawn_over_printing(self, ink: np.ndarray, printed: np.ndarray) -> np.ndarray:
        """Bool: ink on the printed lines that is a drawn line: clearly darker than the printing (a pen along a
        ruling), or clearly wider (a marker or a soft pencil over a fine grid), the whole width of it."""
        values = self.darkness[printed]
        if values.size == 0:
            return printed
        darker = printed & (self.darkness > min(0.95, float(np.median(values)) + 0.3))
        distance = cv2.distanceTransform(ink.astype(np.uint8), cv2.DIST_L2, 3)
        half = float(np.percentile(distance[printed], 90))  # the printed lines' half-width, crossings included
        wider = cv2.dilate((printed & (distance >= 2 * half + 1)).astype(np.uint8), _disc(math.ceil(2 * half) + 1)) > 0
        return darker | (wider & ink)

    def _thickness(self, ink: np.ndarray, family: list[tuple[float, float]]) -> int:
        """Band width that covers a printed line of FAMILY: twice its widest half-width along it, plus a margin."""
        distance = cv2.distanceTransform(ink.astype(np.uint8), cv2.DIST_L2, 3)
        half = [float(np.median(distance[p[:, 1], p[:, 0]][ink[p[:, 1], p[:, 0]]]))
                for p in (_line_points(ink.shape, rho, theta) for rho, theta in family) if ink[p[:, 1], p[:, 0]].any()]
        return max(3, 2 * math.ceil(max(half, default=1.0)) + 3)

    def _dot_grid(self, ink: np.ndarray) -> np.ndarray:
        """Small dots of one size at regular spacing, at least 25 of them (a dotted notebook page)."""
        count, labels, stats, centres = cv2.connectedComponentsWithStats(ink.astype(np.uint8), connectivity=8)
        small = self.px(0.012)
        dots = [i for i in range(1, count) if stats[i, cv2.CC_STAT_WIDTH] <= small
                and stats[i, cv2.CC_STAT_HEIGHT] <= small]
        if len(dots) < 25:
            return np.zeros_like(ink)
        areas = stats[dots, cv2.CC_STAT_AREA].astype(np.float32)
        typical = float(np.median(areas))
        dots = [i for i, area in zip(dots, areas) if typical / 3 <= area <= typical * 3]
        if len(dots) < 25 or not _regular(centres[dots]):
            return np.zeros_like(ink)
        keep = np.zeros(count, bool)
        keep[dots] = True
        return keep[labels]

    # --- the garment and what is around it ---------------------------------------------------------------------

    def strong_strokes(self, ink: np.ndarray) -> np.ndarray | None:
        """Bool: the strokes in the garment's own weight, when the page also has clearly fainter or thinner ones
        (a figure, construction lines); None when every stroke is of one weight.

        A stroke's darkness is the darkest pixel near it (its core, not its anti-aliased edge) and its width
        twice its largest distance to paper nearby; both are compared with the page's darkest and widest tenth of
        ink (fainter: under 70% of that darkness; thinner: under 45% of that width)."""
        if ink.sum() < 50:
            return None
        near = _disc(self.px(0.004))
        core = cv2.dilate(np.where(ink, self.darkness, 0).astype(np.float32), near)
        width = cv2.dilate(cv2.distanceTransform(ink.astype(np.uint8), cv2.DIST_L2, 3), near)
        values, widths = core[ink], width[ink]
        dark, wide = float(np.percentile(values, 90)), float(np.percentile(widths, 90))
        weak = ink & ((core < 0.7 * dark) | ((width < 0.45 * wide) if wide >= 2.5 else False))
        share = weak.sum() / ink.sum()
        if not 0.03 <= share <= 0.7:
            return None
        return ink & ~weak

    def on_outline(self, faint: np.ndarray, shape: np.ndarray) -> bool:
        """True when most FAINT strokes run along the edge of the garment's SHAPE (they are its outline, drawn
        lighter in places), not across it or away from it (a figure, construction lines)."""
        band = self.px(0.03)
        edge = (cv2.dilate(shape.astype(np.uint8), _disc(band)) > 0) & ~(cv2.erode(shape.astype(np.uint8),
                                                                                 _disc(band)) > 0)
        return (faint & edge).sum() >= 0.6 * faint.sum()

    def garment_area(self, strokes: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Bool: the garment's filled shape, and that grown by a tolerance; None when no shape can be read.

        Strokes are closed over gaps (1.5% of the side, then 3% for a line with wider breaks) and every outer
        contour filled; thin parts (a leader line, an arm) are opened away; shapes of at least a fifth of the
        largest's area are kept. A reading is taken only when the shape is garment-sized (at least 1.5% of the
        page) and holds at least a third of the strokes: otherwise the page is left as drawn."""
        for gap in (0.015, 0.03):
            shape = self._shape(strokes, gap)
            if shape is None:
                continue
            grown = cv2.dilate(shape.astype(np.uint8), _disc(self.px(0.03))) > 0
            if (grown & strokes).sum() >= strokes.sum() / 3:
                return shape, grown
        return None

    def _shape(self, strokes: np.ndarray, gap: float) -> np.ndarray | None:
        closed = cv2.morphologyEx(strokes.astype(np.uint8), cv2.MORPH_CLOSE, _disc(self.px(gap)))
        filled = _filled(closed > 0)
        opened = cv2.morphologyEx(filled.astype(np.uint8), cv2.MORPH_OPEN, _disc(self.px(0.02)))
        count, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
        if count < 2:
            return None
        areas = stats[1:, cv2.CC_STAT_AREA]
        if areas.max() < 0.015 * opened.size:
            return None
        keep = np.zeros(count, bool)
        keep[1:] = areas >= 0.2 * areas.max()
        return keep[labels]


def _unbridged(band: np.ndarray, drawn: np.ndarray, theta: float, thickness: int) -> np.ndarray:
    """BAND without where a drawn line crosses it: DRAWN ink (not printing) on both sides of a printed line,
    joined across it by a closing along the line's normal, is the garment's line and is kept whole."""
    length = thickness + 4
    kernel = np.zeros((length, length), np.uint8)
    centre, normal = (length - 1) / 2, np.array([math.cos(theta), math.sin(theta)])
    start, end = np.rint(centre - normal * centre), np.rint(centre + normal * centre)
    cv2.line(kernel, (int(start[0]), int(start[1])), (int(end[0]), int(end[1])), 1, 1)
    outside = (drawn & ~band).astype(np.uint8)
    crossing = band & (cv2.morphologyEx(outside, cv2.MORPH_CLOSE, kernel) > 0)
    return band & ~_grown(crossing, 1)


def _filled(mask: np.ndarray) -> np.ndarray:
    """Bool: MASK with every hole filled (each outer contour drawn solid)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    solid = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(solid, contours, -1, 1, thickness=cv2.FILLED)
    return solid > 0


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _covered(near: np.ndarray, sheet: np.ndarray, rho: float, theta: float) -> float:
    """Share of the line's chord across SHEET that has ink (NEAR: the ink grown by a pixel) along it."""
    points = _line_points(near.shape, rho, theta)
    points = points[sheet[points[:, 1], points[:, 0]]]
    if len(points) < 8:
        return 0.0
    return float(near[points[:, 1], points[:, 0]].mean())


def _distinct(lines: np.ndarray) -> list[tuple[float, float]]:
    """Hough lines with the near-duplicates of a thick line (neighbouring rho at the same angle) merged."""
    kept: list[tuple[float, float]] = []
    for rho, theta in lines:  # strongest first, as OpenCV returns them
        if all(abs(rho - r) > 4 or _angle_gap(theta, t) > math.radians(2) for r, t in kept):
            kept.append((float(rho), float(theta)))
    return kept


def _angle_gap(a: float, b: float) -> float:
    gap = abs(a - b) % math.pi
    return min(gap, math.pi - gap)


def _families(lines: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """LINES grouped by direction (within 1.5 degrees)."""
    families: list[list[tuple[float, float]]] = []
    for line in lines:
        for family in families:
            if _angle_gap(family[0][1], line[1]) <= math.radians(1.5):
                family.append(line)
                break
        else:
            families.append([line])
    return families


def _line_points(shape: tuple[int, int], rho: float, theta: float) -> np.ndarray:
    """Integer (x, y) pixels of the line (rho, theta) inside an image of SHAPE, one per pixel of length."""
    height, width = shape
    direction = np.array([-math.sin(theta), math.cos(theta)])
    origin = np.array([math.cos(theta), math.sin(theta)]) * rho
    reach = math.hypot(height, width)
    t = np.arange(-reach, reach)
    points = np.rint(origin + t[:, None] * direction).astype(np.int64)
    inside = (points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height)
    return points[inside]


def _draw_line(canvas: np.ndarray, rho: float, theta: float, thickness: int) -> None:
    direction = np.array([-math.sin(theta), math.cos(theta)])
    origin = np.array([math.cos(theta), math.sin(theta)]) * rho
    reach = 2 * max(canvas.shape)
    start, end = np.rint(origin - reach * direction), np.rint(origin + reach * direction)
    cv2.line(canvas, (int(start[0]), int(start[1])), (int(end[0]), int(end[1])), 1, thickness)


def _regular(points: np.ndarray) -> bool:
    """True when most of POINTS have their nearest neighbour at about the same distance (a lattice).

    Measured for at most 500 of them (against all), so a page of thousands of dots stays a small table."""
    queries = points[:: max(1, len(points) // 500)]
    difference = queries[:, None, :] - points[None, :, :]
    distance = np.hypot(difference[..., 0], difference[..., 1])
    distance[distance == 0] = np.inf  # each query's distance to itself
    nearest = distance.min(axis=1)
    typical = float(np.median(nearest))
    return typical > 0 and float(np.mean(np.abs(nearest - typical) <= 0.2 * typical)) >= 0.6
