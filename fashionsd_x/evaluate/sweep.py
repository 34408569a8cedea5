"""The evaluation sweep: how much the sketch (and the prompt, and the LoRA) decides, one grid of settings in one run.

`fsdx evaluate --sweep controlnet_scale=0.5,1 --sweep control_end=0.6,1` evaluates every combination of the
values given. Pure parts live here: reading the --sweep text, the combinations, which variant each setting
changes, the folder a combination's images go to, the two axes of the trade-off and its Pareto front. The
protocol generates and scores; the report draws.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Sequence

from fashionsd_x.generate import GenerationError, check_settings

# setting -> the variants whose images it changes. The sweep studies the sketch model (fashionsd-x); the LoRA's
# strength changes the lora variant too. Guidance also changes vanilla and lora, but they are the baselines the
# sweep is compared with, so they keep the evaluation's own settings.
AFFECTS: dict[str, tuple[str, ...]] = {
    "controlnet_scale": ("fashionsd-x",),
    "control_start": ("fashionsd-x",),
    "control_end": ("fashionsd-x",),
    "guidance_scale": ("fashionsd-x",),
    "lora_scale": ("fashionsd-x", "lora"),
}
# The trade-off's axes, in order of preference: the first metric an evaluation has is used.
SKETCH_AXIS = ("silhouette_iou", "edge_f1")  # how closely the garment follows the sketch
TEXT_AXIS = ("clip_score", "attribute_accuracy")  # how closely it follows the prompt
ATTRIBUTES = ("color_accuracy", "pattern_accuracy")  # attribute_accuracy: their mean (synthetic datasets)
MAX_COMBINATIONS = 64  # each is a full evaluation of the fashionsd-x variant: more is a mistake, not a plan


class SweepError(ValueError):
    """Bad --sweep text (unknown setting, not a number, out of range, repeated); one line."""


@dataclass(frozen=True)
class Sweep:
    """The settings swept and their values, in the order given."""

    values: dict[str, tuple[float, ...]]  # setting -> its values

    def combinations(self) -> list[dict[str, float]]:
        """Every combination of the values, the first setting varying slowest."""
        return [dict(zip(self.values, chosen)) for chosen in itertools.product(*self.values.values())]


def parse_sweep(texts: Sequence[str], base: dict[str, float]) -> Sweep:
    """`NAME=V1,V2,...` texts as a Sweep, every value and every combination checked against generation's ranges
    (`check_settings`), with BASE (the evaluation's own settings) for the ones not swept."""
    values: dict[str, tuple[float, ...]] = {}
    for text in texts:
        name, numbers = _parse_one(text)
        if name in values:
            raise SweepError(f"--sweep {name} is given twice: put all its values in one --sweep {name}=V1,V2,...")
        values[name] = numbers
    sweep = Sweep(values)
    combinations = sweep.combinations()
    if len(combinations) > MAX_COMBINATIONS:
        raise SweepError(f"--sweep makes {len(combinations)} combinations, more than {MAX_COMBINATIONS}: "
                         "sweep fewer settings or values")
    for combination in combinations:
        try:
            check_settings(**{**{name: base[name] for name in ("control_start", "control_end")}, **combination})
        except GenerationError as error:
            raise SweepError(f"--sweep combination {label(combination)} cannot run: {error}") from None
    return sweep


def _parse_one(text: str) -> tuple[str, tuple[float, ...]]:
    name, equals, listed = str(text).partition("=")
    name = name.strip().replace("-", "_")
    if not equals or not listed.strip():
        raise SweepError(f"--sweep {text!r}: expected NAME=V1,V2,... (e.g. --sweep controlnet_scale=0.5,1)")
    if name not in AFFECTS:
        raise SweepError(f"--sweep {text!r}: unknown setting {name!r}; choose from {', '.join(AFFECTS)}")
    numbers: list[float] = []
    for item in listed.split(","):
        try:
            value = float(item)
        except ValueError:
            raise SweepError(f"--sweep {name}: {item.strip()!r} is not a number") from None
        try:
            value = float(check_settings(**{name: value})[name])
        except GenerationError as error:
            raise SweepError(f"--sweep {name}: {error}") from None
        if value in numbers:
            raise SweepError(f"--sweep {name}: the value {value:g} is given twice")
        numbers.append(value)
    return name, tuple(numbers)


def applied(combination: dict[str, float], variant: str) -> dict[str, float]:
    """The part of a combination that changes VARIANT's images."""
    return {name: value for name, value in combination.items() if variant in AFFECTS[name]}


def swept_variants(sweep: Sweep, chosen: Sequence[str]) -> list[str]:
    """The chosen variants some swept setting changes, or a SweepError when there are none."""
    variants = [variant for variant in chosen if any(variant in AFFECTS[name] for name in sweep.values)]
    if not variants:
        raise SweepError(f"--sweep {', '.join(sweep.values)} changes only the "
                         f"{' and '.join(sorted({v for n in sweep.values for v in AFFECTS[n]}))} variant(s), which "
                         f"--variants leaves out")
    return variants


def label(settings: dict[str, float]) -> str:
    """`controlnet_scale=0.5, control_end=0.6`: a combination as a person reads it."""
    return ", ".join(f"{name}={value:g}" for name, value in settings.items())


def slug(settings: dict[str, float]) -> str:
    """`controlnet_scale-0.5__control_end-0.6`: a combination as a folder name (no shell-special characters)."""
    return "__".join(f"{name}-{value:g}" for name, value in settings.items())


def axis_values(scores: dict[str, float], axes: Sequence[str]) -> tuple[str, float] | None:
    """(metric, value) of the first of AXES these scores have; attribute_accuracy is the mean of the colour and
    pattern accuracies present."""
    for metric in axes:
        if metric == "attribute_accuracy":
            present = [scores[name] for name in ATTRIBUTES if scores.get(name) is not None]
            if present:
                return metric, sum(present) / len(present)
        elif scores.get(metric) is not None and math.isfinite(scores[metric]):
            return metric, float(scores[metric])
    return None


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (at least as high on both axes, higher on one), both axes
    higher-is-better; sorted by the first axis. Equal points are all on the front."""
    def dominated(i: int) -> bool:
        x, y = points[i]
        return any(ox >= x and oy >= y and (ox > x or oy > y) for ox, oy in points)

    return sorted((i for i in range(len(points)) if not dominated(i)), key=lambda i: (points[i][0], points[i][1]))


def trade_off(entries: list[dict[str, Any]], variant: str = "fashionsd-x") -> dict[str, Any] | None:
    """The sketch-vs-text trade-off of VARIANT over the sweep's ENTRIES (each with `settings`, `metrics` and
    `default`): the two axes chosen, each entry's label and point, the default's index and the Pareto front's
    indices; None when the entries have no common metric for an axis (no CLIP and no attributes, say)."""
    scored = [entry["metrics"].get(variant, {}) for entry in entries]
    xs = [axis_values(scores, SKETCH_AXIS) for scores in scored]
    ys = [axis_values(scores, TEXT_AXIS) for scores in scored]
    if not entries or None in xs or None in ys or len({m for m, _ in xs}) > 1 or len({m for m, _ in ys}) > 1:
        return None
    points = [(x, y) for (_, x), (_, y) in zip(xs, ys)]
    default = next((index for index, entry in enumerate(entries) if entry.get("default")), None)
    return {"variant": variant, "x": xs[0][0], "y": ys[0][0], "labels": [label(e["settings"]) for e in entries],
            "points": [list(point) for point in points], "default": default, "front": pareto_front(points)}
