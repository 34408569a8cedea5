"""The study's design: which comparisons each rater gets, in which order, and which variant goes left.

A rotation design, so that any number of raters covers the comparisons evenly:
1. The comparisons are put once in a seeded order, the *cycle*, repeated without end.
2. Rater r (0, 1, 2, ... in order of first visit) takes the slots r * per_rater ... (r + 1) * per_rater - 1 of that
   endless sequence. After any number of raters, every comparison has been given to floor or ceil of
   raters * per_rater / comparisons of them; with per_rater = all, every rater sees every comparison once.
3. Slot s shows comparison cycle[s % n] for the (s // n)-th time. Its first variant goes left on even visits if
   the comparison's flip bit is 0, on odd visits if it is 1: successive raters of a comparison see it mirrored
   (left/right counts of every comparison differ by at most one), and the flip bits, half of them set,
   balance left and right within each rater.
4. Each rater's comparisons are shuffled with a seed of their own, so order effects are not shared.

Everything follows from (number of comparisons, per_rater, seed, rater number): a rater code, once given a
number, maps to the same queue whenever it is computed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    """One comparison in a rater's queue."""

    comparison: int  # index of the comparison, 0 .. num_comparisons - 1
    first_left: bool  # the comparison's first variant (variant_a) is shown on the left


@dataclass(frozen=True)
class Design:
    """The rotation design of a study (see the module docstring)."""

    num_comparisons: int  # comparisons in the study (items x variant pairs)
    per_rater: int  # comparisons each rater answers
    seed: int = 0  # fixes the cycle, the flip bits and every rater's order

    def __post_init__(self) -> None:
        if self.num_comparisons < 1:
            raise ValueError("a study needs at least one comparison")
        if not 1 <= self.per_rater <= self.num_comparisons:
            raise ValueError(f"per_rater must be between 1 and the number of comparisons ({self.num_comparisons}), "
                             f"got {self.per_rater}")

    def cycle(self) -> list[int]:
        """The comparisons in the seeded order that raters take turns through."""
        order = list(range(self.num_comparisons))
        random.Random(f"fsdx-study:{self.seed}:cycle").shuffle(order)
        return order

    def flips(self) -> list[bool]:
        """Per comparison: does its first variant start on the right? Half of them do (one more if odd)."""
        bits = [index % 2 == 1 for index in range(self.num_comparisons)]
        random.Random(f"fsdx-study:{self.seed}:flips").shuffle(bits)
        return bits

    def queue(self, rater: int) -> list[Slot]:
        """Rater number `rater`'s comparisons, in the order they are shown."""
        if rater < 0:
            raise ValueError(f"rater numbers start at 0, got {rater}")
        cycle, flips, n = self.cycle(), self.flips(), self.num_comparisons
        slots = []
        for slot in range(rater * self.per_rater, (rater + 1) * self.per_rater):
            comparison, visit = cycle[slot % n], slot // n
            slots.append(Slot(comparison, (visit + flips[comparison]) % 2 == 0))
        random.Random(f"fsdx-study:{self.seed}:rater:{rater}").shuffle(slots)
        return slots
