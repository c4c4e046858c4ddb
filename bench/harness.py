"""The figure format every benchmark prints, and timing helpers shared by them."""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Figure:
    metric: str
    value: float
    unit: str
    baseline: float | None
    target: str
    # How the ratio is formed: value / baseline unless the benchmark says otherwise.
    ratio: float | None = None

    def to_json(self) -> str:
        ratio = self.ratio
        if ratio is None and self.baseline:
            ratio = self.value / self.baseline
        return json.dumps({
            "metric": self.metric,
            "value": round(self.value, 4),
            "unit": self.unit,
            "baseline": None if self.baseline is None else round(self.baseline, 4),
            "ratio": None if ratio is None else round(ratio, 4),
            "target": self.target,
        })


def percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile; fine for the sample sizes benchmarks use."""
    ordered = sorted(samples)
    index = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    """Fastest wall time of `repeat` calls, in seconds (least disturbed by noise)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def pss_mb(pid: int) -> float:
    """Process `pid`'s proportional set size in MB: its private memory plus its share of
    what it maps with others (the interpreter's pages are split among all who map them)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")
