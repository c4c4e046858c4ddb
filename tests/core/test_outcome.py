"""The deployment-outcome rules (hedgerow.core.outcome), table by table."""

from __future__ import annotations

import pytest

from hedgerow.core import deployment, limits, outcome
from hedgerow.core.documents import ComponentState as S
from hedgerow.core.documents import Outcome

NOW = 1000.0
SETTLE, TIMEOUT = 2.0, 600.0


def c(state: S, since: float = NOW - 10, install_failed: bool = False,
      name: str = "a", message: str = "") -> outcome.Observed:
    return outcome.Observed(name, state, since, install_failed, message)


@pytest.mark.parametrize(("components", "started", "verdict", "reason", "judge_at"), [
    # everything running long enough
    ([c(S.RUNNING), c(S.FINISHED, name="b")], NOW - 20, outcome.Verdict.SUCCEEDED, "", None),
    # running, but one only for 0.5 s of the 2 s settle period
    ([c(S.RUNNING), c(S.RUNNING, NOW - 0.5, name="b")], NOW - 20, outcome.Verdict.SETTLING,
     "", NOW + 1.5),
    # a crash right after starting: BROKEN fails the revision, whatever else runs
    ([c(S.RUNNING), c(S.BROKEN, name="b", message="exited with 1")], NOW - 20,
     outcome.Verdict.FAILED, "b BROKEN: exited with 1", None),
    # an install failure fails at once (no retries wait for it)
    ([c(S.ERRORED, install_failed=True, message="install timed out after 1s")], NOW - 5,
     outcome.Verdict.FAILED, "a ERRORED: install timed out after 1s", None),
    # ERRORED from a run step is retried: still converging
    ([c(S.ERRORED)], NOW - 5, outcome.Verdict.WAIT, "", None),
    # a component with no record yet
    ([None], NOW - 5, outcome.Verdict.WAIT, "", None),
    # … past the deployment timeout
    ([None], NOW - TIMEOUT - 1, outcome.Verdict.FAILED, "not RUNNING after 600s", None),
    ([c(S.INSTALLED)], NOW - TIMEOUT - 1, outcome.Verdict.FAILED, "not RUNNING after 600s",
     None),
    # an empty revision has nothing to wait for
    ([], NOW, outcome.Verdict.SUCCEEDED, "", None),
])
def test_judgement(components: list[outcome.Observed | None], started: float,
                   verdict: outcome.Verdict, reason: str, judge_at: float | None) -> None:
    got = outcome.resolve_judgement(outcome.Entry(started=started), components, NOW,
                                    SETTLE, TIMEOUT)
    assert (got.verdict, got.reason, got.judge_at) == (verdict, reason, judge_at)


RB, DN = deployment.FailureHandling.ROLLBACK, deployment.FailureHandling.DO_NOTHING


@pytest.mark.parametrize(("handling", "revision", "last_good", "target"), [
    (RB, "new", "old", "old"),
    (RB, "new", None, None),       # nothing ever worked here: stay
    (RB, "new", "new", None),      # the failed one is the last good one: nothing to go to
    (DN, "new", "old", None),
])
def test_rollback_target(handling: deployment.FailureHandling, revision: str,
                         last_good: str | None, target: str | None) -> None:
    assert outcome.resolve_rollback_target(handling, revision, last_good) == target


def started(*revisions: str) -> outcome.History:
    history = outcome.History()
    for i, revision in enumerate(revisions):
        history = outcome.resolve_started(history, revision, NOW + i)
    return history


def test_failure_rolls_back_or_fails_and_never_rewrites_a_finished_outcome() -> None:
    history = started("v2")
    rolled = outcome.resolve_failure(history, "v2", "b BROKEN", NOW, "v1")
    assert rolled.outcomes["v2"].outcome is Outcome.ROLLED_BACK
    assert rolled.outcomes["v2"].rolled_back_to == "v1"
    failed = outcome.resolve_failure(history, "v2", "x" * 5000, NOW, None)
    assert failed.outcomes["v2"].outcome is Outcome.FAILED
    assert len(failed.outcomes["v2"].reason) == limits.MAX_REPORT_REASON
    assert outcome.resolve_failure(rolled, "v2", "again", NOW, None) == rolled
    assert history.outcomes["v2"].outcome is Outcome.IN_PROGRESS  # values, not mutation


@pytest.mark.parametrize(("before", "components", "after", "is_last_good"), [
    # running, not yet settled: what the device ran — the new rollback target
    (Outcome.IN_PROGRESS, [c(S.RUNNING, NOW - 0.5)], Outcome.SUPERSEDED, True),
    # never ran healthy: superseded, the last good revision stays the target
    (Outcome.IN_PROGRESS, [c(S.RUNNING), c(S.ERRORED, name="b")], Outcome.SUPERSEDED, False),
    (Outcome.IN_PROGRESS, [c(S.RUNNING), None], Outcome.SUPERSEDED, False),
    # finished outcomes are history, not rewritten
    (Outcome.SUCCEEDED, [c(S.RUNNING)], Outcome.SUCCEEDED, False),
    (Outcome.FAILED, [c(S.RUNNING)], Outcome.FAILED, False),
    (Outcome.ROLLED_BACK, [c(S.RUNNING)], Outcome.ROLLED_BACK, False),
])
def test_superseded(before: Outcome, components: list[outcome.Observed | None],
                    after: Outcome, is_last_good: bool) -> None:
    history = started("v1")
    history = history.model_copy(update={"outcomes": {
        "v1": history.outcomes["v1"].model_copy(update={"outcome": before})}})
    got = outcome.resolve_superseded(history, "v1", "v2" * 8, components, NOW)
    assert got.history.outcomes["v1"].outcome is after
    assert got.is_last_good is is_last_good
    if after is Outcome.SUPERSEDED:
        assert "v2v2v2v2v2v2" in got.history.outcomes["v1"].reason


def test_superseded_revision_wanted_again_starts_afresh() -> None:
    history = outcome.resolve_superseded(started("v1"), "v1", "v2", [None], NOW).history
    again = outcome.resolve_started(history, "v1", NOW + 50)
    assert again.outcomes["v1"] == outcome.Entry(started=NOW + 50)
    failed = outcome.resolve_failure(again, "v1", "x", NOW, None)
    assert outcome.resolve_started(failed, "v1", NOW + 60) == failed  # kept: same revision


def test_history_keeps_the_newest_entries() -> None:
    n = limits.MAX_HISTORY_ENTRIES
    # revisions whose sorted order is not their age: eviction goes by age
    revisions = [f"{(7 * i) % (n + 5):02d}" for i in range(n + 5)]
    history = started(*revisions)
    assert list(history.outcomes) == revisions[-n:]


def test_history_reads_what_earlier_agents_wrote() -> None:
    old = ('{"local": [{"id": "local-1", "created": 5, "components": ["a"], '
           '"revision": "r1", "source": "local"}], "outcomes": {"r1": {"outcome": '
           '"ROLLED_BACK", "started": 1, "reason": "x", "rolled_back_to": "r0", '
           '"finished": 2}}}')
    history = outcome.History.model_validate_json(old)
    assert history.outcomes["r1"].rolled_back_to == "r0"
    assert history.local[0].revision == "r1"
    assert outcome.History.model_validate(history.to_dict()) == history


def test_a_merge_is_published_under_the_cloud_revision_it_was_made_from() -> None:
    cl = outcome.Source.CLOUD_AND_LOCAL
    h = outcome.resolve_started(outcome.History(), "merged1", NOW, cl, "cloud1")
    h = outcome.resolve_started(h, "cloudonly", NOW, outcome.Source.CLOUD)
    assert [outcome.resolve_published(h, r) for r in ("merged1", "cloudonly", "unknown", None)
            ] == ["cloud1", "cloudonly", "unknown", None]
    # The same merge made from another cloud revision (the local deployment hides what
    # changed): its outcome stays, under the new cloud revision.
    h = outcome.resolve_succeeded(h, "merged1", NOW + 5)
    again = outcome.resolve_started(h, "merged1", NOW + 9, cl, "cloud2")
    entry = again.outcomes["merged1"]
    assert (entry.outcome, entry.cloud_revision) == (Outcome.SUCCEEDED, "cloud2")
    assert outcome.resolve_started(again, "merged1", NOW + 9, cl, "cloud2") is again
