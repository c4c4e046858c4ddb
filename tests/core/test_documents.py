"""DesiredState is deterministic (same inputs, same bytes) and tamper-evident."""

from __future__ import annotations

import json

import pydantic
import pytest

from hedgerow.core import component, documents


def _component(
    name: str, version: str = "1.0.0", message: str = "hi",
) -> documents.ResolvedComponent:
    return documents.ResolvedComponent(
        name=name, version=version,
        lifecycle=component.Lifecycle(run=component.Step(script="echo {configuration:/m}")),
        configuration={"m": message},
    )


def test_same_inputs_give_the_same_bytes_in_any_order() -> None:
    refs = [documents.DeploymentRef(name="b"), documents.DeploymentRef(name="a")]
    comps = [_component("z"), _component("a")]
    one = documents.render_desired_state("gw-1", refs, comps)
    two = documents.render_desired_state("gw-1", list(reversed(refs)), list(reversed(comps)))
    assert documents.render_bytes(one) == documents.render_bytes(two)
    assert [c.name for c in one.components] == ["a", "z"]


def test_any_change_changes_the_revision() -> None:
    base = documents.render_desired_state("gw-1", [], [_component("a")])
    assert base.revision != documents.render_desired_state("gw-2", [], [_component("a")]).revision
    assert base.revision != documents.render_desired_state(
        "gw-1", [], [_component("a", message="other")]).revision
    assert base.revision != documents.render_desired_state(
        "gw-1", [], [_component("a", version="1.0.1")]).revision


def test_a_tampered_document_is_rejected() -> None:
    desired = documents.render_desired_state("gw-1", [], [_component("a")])
    data = json.loads(documents.render_bytes(desired))
    data["components"][0]["configuration"]["m"] = "injected"
    with pytest.raises(pydantic.ValidationError, match="does not match the content"):
        documents.DesiredState.model_validate(data)
    # Untouched, it parses back to the same value.
    assert documents.DesiredState.model_validate_json(documents.render_bytes(desired)) == desired


def test_spec_hash_tracks_what_needs_a_restart() -> None:
    assert _component("a").spec_hash == _component("a").spec_hash
    assert _component("a").spec_hash != _component("a", message="x").spec_hash


def test_rollback_is_the_safe_default() -> None:
    assert documents.render_desired_state("gw-1", [], []).failure_handling.value == "ROLLBACK"


def test_status_reports_are_bounded() -> None:
    from hedgerow.core import limits

    base_report = {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "StatusReport",
                   "thing": "gw-1", "sequence": 1, "time": "2026-01-01T00:00:00Z",
                   "agentVersion": "1.0.0", "platform": {"os": "linux", "arch": "amd64"},
                   "health": "HEALTHY"}
    documents.StatusReport.model_validate(base_report)
    component = {"name": "c", "version": "1.0.0", "state": "RUNNING"}
    too_long = "x" * (limits.MAX_REPORT_TEXT + 1)
    for field, value in [
        ("components", [component] * (limits.MAX_REPORT_COMPONENTS + 1)),
        ("agentVersion", too_long),
        ("platform", {"os": too_long, "arch": "amd64"}),
        ("components", [{**component, "name": too_long}]),
        ("deployment", {"revision": "r", "outcome": "FAILED",
                        "reason": "x" * (limits.MAX_REPORT_REASON + 1)}),
    ]:
        with pytest.raises(pydantic.ValidationError) as info:
            documents.StatusReport.model_validate({**base_report, field: value})
        assert info.value.errors()[0]["loc"][0] in (field, "platform"), field
