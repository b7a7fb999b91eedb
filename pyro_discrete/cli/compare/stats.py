r"""Statistics of ``pyro-discrete compare``: intervals over seeds, paired tests, timing spread.

With :math:`n` seeds giving values :math:`v_1, \ldots, v_n`, the 95% interval of their mean
is the Student-t interval

.. math::

    \bar v \pm t_{0.975,\, n-1} \, \frac{s}{\sqrt n}, \qquad
    s^2 = \frac{1}{n-1} \sum_i (v_i - \bar v)^2 .

Two estimators trained from the same seeds (the same initialisation and minibatches for
seed :math:`i`) are compared by the paired differences :math:`d_i = a_i - b_i`: the
difference is *resolved* when the interval of :math:`\bar d` excludes 0 (a paired t-test at
the 5% level), and *within noise* otherwise. With one seed there is no interval at all.

**References**

W. S. Gosset ("Student", 1908), "The probable error of a mean".
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Interval",
    "LoadMonitor",
    "interval",
    "paired_difference",
    "quantile",
    "t_quantile_975",
]

# t_{0.975, df} for df = 1..30 (Student's table); beyond 30 the values approach 1.960
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (two-sided 95%)."""
    if df < 1:
        raise ValueError(f"a t interval needs at least one degree of freedom, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    # Cornish-Fisher expansion around the normal quantile; error < 1e-3 for df > 30
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Interval:
    """A mean over seeds and its 95% t-interval (``half_width`` is NaN for one seed)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def overlaps(self, other: Interval) -> bool:
        if math.isnan(self.half_width) or math.isnan(other.half_width):
            return True
        return self.low <= other.high and other.low <= self.high

    def format(self, digits: int = 2) -> str:
        if math.isnan(self.mean):
            return "n/a"
        if self.n < 2:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def interval(values: Sequence[float]) -> Interval:
    """Mean and 95% t-interval of ``values`` (NaN entries, from a missing figure, dropped)."""
    vals = [v for v in values if not math.isnan(v)]
    n = len(vals)
    if n == 0:
        return Interval(math.nan, math.nan, 0)
    mean = sum(vals) / n
    if n == 1:
        return Interval(mean, math.nan, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    return Interval(mean, t_quantile_975(n - 1) * sd / math.sqrt(n), n)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Interval:
    """The interval of the mean of ``a[i] - b[i]`` over seeds (a paired t-test)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    return interval([x - y for x, y in zip(a, b, strict=True)])


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` with linear interpolation (NumPy's default)."""
    vals = sorted(values)
    if not vals:
        return math.nan
    pos = q * (len(vals) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), not all cores of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class LoadMonitor:
    """Samples the 1-minute load average (``os.getloadavg``) along a run.

    A load above the number of usable cores means processes queue for a core, so step times
    include waiting and vary with what else runs.
    """

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.cores = usable_cores()
        self.sample()

    def sample(self) -> None:
        try:
            self.samples.append(os.getloadavg()[0])
        except (AttributeError, OSError):  # Windows has no load average
            pass

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else math.nan

    def overloaded(self) -> bool:
        return self.mean > self.cores
