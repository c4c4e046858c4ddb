"""What a device reports: revisions as the controller published them, and the bounds."""

from __future__ import annotations

import dataclasses
import datetime

import pytest

from hedgerow.core import devicereport, documents, limits, outcome

State = documents.ComponentState
Outcome = documents.Outcome
T0 = datetime.datetime(2026, 12, 4, tzinfo=datetime.UTC)
PLATFORM = documents.PlatformInfo(os="linux", arch="amd64")
CLOUD, MERGED = "c" * 64, "m" * 64

# A cloud document with local additions merged over it, applied and succeeded.
MERGE = outcome.resolve_succeeded(outcome.resolve_started(
    outcome.History(), MERGED, 1.0, outcome.Source.CLOUD_AND_LOCAL, CLOUD), MERGED, 2.0)
FAILED = outcome.resolve_failure(outcome.resolve_started(
    outcome.History(), CLOUD, 1.0), CLOUD, "Run exited 3", 5.0, None)


def facts(**changes: object) -> devicereport.Facts:
    base = devicereport.Facts(thing="gw-1", time=T0, agent_version="1.0",
                              platform=PLATFORM, history=outcome.History(), components=())
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(("given", "desired", "applied", "local", "verdict"), [
    # Nothing known yet: nothing claimed.
    (facts(), None, None, None, None),
    # A merge is reported under the cloud revision the controller waits for.
    (facts(history=MERGE, desired_revision=MERGED, applied_revision=MERGED),
     CLOUD, CLOUD, MERGED, (CLOUD, Outcome.SUCCEEDED, "")),
    # A plain cloud revision is its own.
    (facts(history=FAILED, desired_revision=CLOUD),
     CLOUD, None, None, (CLOUD, Outcome.FAILED, "Run exited 3")),
    # A document refused as a whole: REJECTED under the cloud revision, every problem.
    (facts(desired_revision=MERGED, cloud_revision=CLOUD, problems=["a: bad", "b: worse"],
           applied_revision=CLOUD),
     CLOUD, CLOUD, None, (CLOUD, Outcome.REJECTED, "a: bad; b: worse")),
])
def test_revisions_are_reported_as_the_controller_published_them(
        given: devicereport.Facts, desired: str | None, applied: str | None,
        local: str | None, verdict: tuple[str, Outcome, str] | None) -> None:
    report, data = devicereport.render_report(given)
    assert (report.desired_revision, report.applied_revision, report.local_revision) == (
        desired, applied, local)
    shown = report.deployment
    assert (None if shown is None else (shown.revision, shown.outcome, shown.reason)
            ) == verdict
    assert documents.StatusReport.model_validate_json(data) == report


@pytest.mark.parametrize(("states", "down", "health"), [
    ([State.RUNNING, State.FINISHED], False, documents.Health.HEALTHY),
    ([State.RUNNING, State.ERRORED], False, documents.Health.UNHEALTHY),
    ([State.BROKEN], False, documents.Health.UNHEALTHY),
    ([State.RUNNING], True, documents.Health.UNHEALTHY),
])
def test_health(states: list[State], down: bool, health: documents.Health) -> None:
    comps = [devicereport.Seen(f"c{i}", "1.0.0", s) for i, s in enumerate(states)]
    report, _ = devicereport.render_report(facts(components=comps, runtime_down=down))
    assert report.health is health


def test_errors_are_kept_when_there_are_too_many_components_to_show() -> None:
    many = [devicereport.Seen(f"ok-{i:04d}", "1.0.0", State.RUNNING)
            for i in range(limits.MAX_REPORT_COMPONENTS + 5)]
    broken = devicereport.Seen("zz-broken", "1.0.0", State.BROKEN, "exit 1")
    report, _ = devicereport.render_report(facts(components=[*many, broken]))
    names = [c.name for c in report.components]
    assert len(names) == limits.MAX_REPORT_COMPONENTS
    assert "zz-broken" in names
    assert names == sorted(names)


def test_long_messages_are_shortened_to_fit_the_report_bound() -> None:
    comps = [devicereport.Seen(f"c{i:03d}", "1.0.0", State.ERRORED, "x" * 100_000)
             for i in range(limits.MAX_REPORT_COMPONENTS)]
    report, data = devicereport.render_report(facts(
        components=comps, problems=["p" * 100_000], agent_version="v" * 10_000))
    assert len(data) <= limits.MAX_REPORT_BYTES
    assert len(report.components) == limits.MAX_REPORT_COMPONENTS
    assert report.deployment is not None
    assert len(report.deployment.reason) == limits.MAX_REPORT_REASON
    assert len(report.agent_version) == limits.MAX_REPORT_TEXT


def test_a_held_back_revision_says_why_and_own_configuration_is_listed() -> None:
    held = outcome.resolve_started(outcome.History(), CLOUD, 1.0)
    keys = tuple(f"/k{i}" for i in range(limits.MAX_REPORT_OWN_KEYS + 3))
    report, _ = devicereport.render_report(facts(
        history=held, desired_revision=CLOUD, waiting=(CLOUD, "deferred by c0: batch"),
        components=[devicereport.Seen("c0", "1.0.0", State.RUNNING,
                                      own_configuration=keys),
                    devicereport.Seen("c1", "1.0.0", State.RUNNING)]))
    assert report.deployment is not None
    assert report.deployment.reason == "deferred by c0: batch"
    assert report.components[0].own_configuration == list(
        keys[:limits.MAX_REPORT_OWN_KEYS])
    assert report.components[1].own_configuration is None
    other, _ = devicereport.render_report(facts(
        history=held, desired_revision=CLOUD, waiting=("x" * 64, "not this one")))
    assert other.deployment is not None and other.deployment.reason == ""
