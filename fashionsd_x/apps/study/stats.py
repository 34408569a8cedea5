"""The study's statistics: win rates with Wilson intervals, exact binomial tests, Holm's correction,
Krippendorff's alpha, a paired bootstrap of means and Kendall's tau-b. Pure functions on counts, labels and
values."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import permutations
from typing import Hashable, Sequence


@dataclass(frozen=True)
class WinRate:
    """How often variant a beat variant b; can't-tell answers are counted but left out of the rate and the test."""

    wins_a: int
    wins_b: int
    ties: int
    rate: float | None  # wins_a / (wins_a + wins_b); None without decisive answers
    ci_low: float | None  # Wilson score interval of the rate
    ci_high: float | None
    p_value: float | None  # two-sided exact binomial test of rate = 0.5

    @property
    def decisive(self) -> int:
        return self.wins_a + self.wins_b


def win_rate(wins_a: int, wins_b: int, ties: int = 0, confidence: float = 0.95) -> WinRate:
    """Win rate of a over b, its Wilson score interval (Wilson 1927) and the exact binomial test against 0.5."""
    from scipy.stats import binomtest

    decisive = wins_a + wins_b
    if decisive == 0:
        return WinRate(wins_a, wins_b, ties, None, None, None, None)
    test = binomtest(wins_a, decisive, 0.5, alternative="two-sided")
    interval = test.proportion_ci(confidence_level=confidence, method="wilson")
    return WinRate(wins_a, wins_b, ties, wins_a / decisive, float(interval.low), float(interval.high),
                   float(test.pvalue))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (1979) of a family of p-values; None (no test) stays None."""
    tested = sorted((p, index) for index, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))  # adjusted values never decrease
        adjusted[index] = running
    return adjusted


def krippendorff_alpha(units: Sequence[Sequence[Hashable]]) -> float | None:
    """Krippendorff's alpha for nominal labels (Krippendorff 2011, "Computing Krippendorff's alpha-reliability").

    `units` holds, per rated unit, the labels its raters gave (any number of raters per unit; a unit with fewer
    than two labels cannot be paired and is ignored). alpha = 1 - D_o / D_e from the coincidence matrix:
    1 is perfect agreement, 0 agreement at chance level. None when it is undefined (no pairable unit, or a
    single label used throughout, so no disagreement could be expected).
    """
    coincidences = _coincidences(units)
    totals: Counter[Hashable] = Counter()
    for (first, _), weight in coincidences.items():
        totals[first] += weight
    n = sum(totals.values())
    expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k)
    if n <= 1 or expected == 0:
        return None
    observed = sum(weight for (c, k), weight in coincidences.items() if c != k)
    return 1 - (n - 1) * observed / expected


def observed_agreement(units: Sequence[Sequence[Hashable]]) -> float | None:
    """Share of pairable labels matched by the other raters of their unit (alpha's 1 - D_o); None if none."""
    coincidences = _coincidences(units)
    n = sum(coincidences.values())
    return None if n == 0 else sum(weight for (c, k), weight in coincidences.items() if c == k) / n


def _coincidences(units: Sequence[Sequence[Hashable]]) -> Counter[tuple[Hashable, Hashable]]:
    """Krippendorff's coincidence matrix: each ordered pair of one unit's labels weighs 1 / (labels - 1)."""
    coincidences: Counter[tuple[Hashable, Hashable]] = Counter()
    for labels in units:
        if len(labels) < 2:
            continue
        for first, second in permutations(labels, 2):  # ordered pairs of different raters' labels
            coincidences[(first, second)] += 1 / (len(labels) - 1)
    return coincidences


def bootstrap_means(values: Sequence[Sequence[float]], draws: int = 2000, seed: int = 0) -> list[list[float]]:
    """Means of each column of VALUES (rows: resampled units, e.g. pairs; columns: e.g. metrics) over DRAWS
    resamples of the rows with replacement (Efron and Tibshirani 1993): a list of DRAWS rows of column means.

    Every column is resampled with the same rows (a paired bootstrap), so differences between columns can be
    read off the same draws. Seeded with SEED alone: the same input gives the same draws on every run.
    """
    import numpy as np

    table = np.asarray(values, dtype=np.float64)
    if table.ndim != 2 or len(table) == 0:
        raise ValueError(f"bootstrap_means needs a non-empty (rows, columns) table, got shape {table.shape}")
    rows = len(table)
    # A multinomial count per row is resampling with replacement, without a (draws, rows, columns) array.
    counts = np.random.default_rng(seed).multinomial(rows, np.full(rows, 1 / rows), size=draws)
    return (counts @ table / rows).tolist()


def percentile_interval(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """The central CONFIDENCE interval of bootstrap SAMPLES (the percentile method)."""
    import numpy as np

    tail = (1 - confidence) / 2
    low, high = np.quantile(np.asarray(samples, dtype=np.float64), [tail, 1 - tail])
    return float(low), float(high)


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None]:
    """Kendall's tau-b of X and Y (ties in either corrected for, Kendall 1945) and its two-sided p-value;
    (None, None) when undefined: fewer than two pairs, or X or Y constant."""
    from scipy.stats import kendalltau

    if len(x) != len(y):
        raise ValueError(f"kendall_tau_b needs paired values, got {len(x)} and {len(y)}")
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return None, None
    result = kendalltau(x, y, variant="b")
    return float(result.statistic), float(result.pvalue)
