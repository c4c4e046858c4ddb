"""plan() for 10,000 components: the pure decision must stay cheap (target <= 50 ms)."""

from __future__ import annotations

from collections.abc import Iterator

from bench import harness
from hedgerow.core import plan as plan_
from hedgerow.core.documents import ComponentState


def _inputs(n: int) -> tuple[plan_.Desired, dict[str, plan_.Observed]]:
    wants = []
    observed = {}
    for i in range(n):
        deps = (f"c{i - 1:05d}",) if i % 10 else ()  # chains of ten
        wants.append(plan_.Want(f"c{i:05d}", f"h{i}" if i % 100 else "changed", deps))
        observed[f"c{i:05d}"] = plan_.Observed(f"c{i:05d}", f"h{i}", ComponentState.RUNNING,
                                               deps)
    return plan_.Desired("rev", tuple(wants)), observed


def run() -> Iterator[harness.Figure]:
    desired, observed = _inputs(10_000)
    converged = {w.name: plan_.Observed(w.name, w.spec_hash, ComponentState.RUNNING, w.hard)
                 for w in desired.wants}
    value = harness.best_of(lambda: plan_.plan(desired, observed)) * 1000
    baseline = harness.best_of(lambda: plan_.plan(desired, converged)) * 1000
    # Baseline: the same 10k components already converged (the common, empty plan).
    yield harness.Figure("plan_10k_ms", value, "ms", baseline, "<= 50 ms")
