"""The statistics of the report: mean and standard deviation, paired differences, the half-width of a Student-t 95%
interval, the word for a gap (ahead / within noise / behind), and the verdict rule against one rival method."""

from __future__ import annotations

import collections
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import scipy.stats

T = TypeVar("T")

NOISE_NOTE = (
    "± is half the width of the 95% confidence interval of the mean paired difference, Student's t over the seeds; "
    "within noise: the interval holds 0"
)


def mean_std(values: list[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (NaN for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def differences(pairs: Iterable[tuple[T, T]], value: Callable[[T], float]) -> list[float]:
    """``value(a) - value(b)`` for every pair (a, b): the paired differences, e.g. of two methods' runs at a seed."""
    return [value(a) - value(b) for a, b in pairs]


def half_width(diffs: list[float]) -> float:
    """Half the width of the 95% confidence interval of the mean of ``diffs`` (at least 2 of them): Student's t
    with ``n - 1`` degrees of freedom, as wide as the few seeds make it (4.3 standard errors at 3 seeds)."""
    return float(scipy.stats.t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))


def gap_word(diffs: list[float]) -> str:
    """A paired difference's verdict: ahead or behind (its 95% interval excludes 0), within noise, or one seed only."""
    if len(diffs) < 2:
        return "one seed only"
    mean = statistics.fmean(diffs)
    return "within noise" if abs(mean) <= half_width(diffs) else ("ahead" if mean > 0 else "behind")


def gap_text(diffs: list[float]) -> str:
    """A paired difference with its noise: the mean ± the half-width of its 95% interval, and the verdict word."""
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return f"{mean:+.1f} (1 seed: no noise estimate)"
    return f"{mean:+.1f} ± {half_width(diffs):.1f} ({gap_word(diffs)}, {len(diffs)} seeds)"


@dataclass(frozen=True)
class Tally:
    """The task comparisons against one rival method: how many gaps are ahead / within noise / behind (``gap_word``)
    and in how many the mean difference is below 0."""

    comparisons: int
    ahead: int
    within: int
    behind: int
    below: int

    @property
    def outcome(self) -> str:
        """The verdict rule: "beats" when more than half the comparisons are ahead and none behind; "behind" when
        more than half are behind; "trails" when every mean is below 0 (the gaps mostly within noise); else
        "level"."""
        if self.ahead > self.comparisons / 2 and not self.behind:
            return "beats"
        if self.behind > self.comparisons / 2:
            return "behind"
        if self.below == self.comparisons:
            return "trails"
        return "level"

    def says(self, rival: str) -> str:
        """The outcome in words, against ``rival``: "beats LoRA", "is level with LoRA within noise", ..."""
        return _OUTCOME[self.outcome].format(name=rival)


_OUTCOME = {
    "beats": "beats {name}",
    "behind": "is behind {name}",
    "trails": "trails {name} (every mean below, most gaps within noise)",
    "level": "is level with {name} within noise",
}


def tally(diffs: list[list[float]]) -> Tally:
    """The Tally of task comparisons, each a list of per-seed paired differences."""
    words = collections.Counter(gap_word(d) for d in diffs)
    below = sum(statistics.fmean(d) < 0 for d in diffs)
    return Tally(len(diffs), words["ahead"], words["within noise"], words["behind"], below)
