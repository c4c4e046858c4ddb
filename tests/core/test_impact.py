"""The index from Deployments, ThingGroups, Components, labels and namespaces to the
devices each can affect (hedgerow.core.impact), and passes that resolve only those."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import pytest

from hedgerow.core import coredevice, fleet, impact, resolve
from tests.core.test_resolve import comp, dep, grp

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)

# Two teams (namespaces a and b) whose objects share names and labels.
DEVICES: list[impact.DeviceRow] = [
    ("d1", {"site": "y"}, "a"), ("d2", {"site": "y"}, "a"),
    ("d3", {"site": "x"}, "a"), ("d4", {"site": "x"}, "a"), ("d5", {}, "a"),
    ("e1", {"site": "x"}, "b"), ("e2", {"site": "x"}, "b"),
    ("d9", {"site": "x"}, None),  # in no namespace: reached by nothing
]


def objects(g2: dict[str, str] | None = None) -> dict[str, list[Any]]:
    return {
        "groups": [grp("g1", things=["d1", "d2", "e1"], namespace="a"),
                   grp("g2", match=g2 or {"site": "x"}, namespace="a"),
                   grp("g1", match={"site": "x"}, namespace="b")],
        "deployments": [dep("dep1", {"A": "^1.0.0"}, group="g1", namespace="a"),
                        dep("dep2", {"B": "^1.0.0"}, group="g2", namespace="a"),
                        dep("dep3", {"D": "^1.0.0"}, thing="d5", namespace="a"),
                        dep("dep4", {"A": "^1.0.0"}, thing="d1", namespace="b"),
                        dep("dep1", {"A": "^1.0.0"}, group="g1", namespace="b")],
        "components": [comp("A", namespace="a"), comp("B", deps={"C": "^1.0.0"}, namespace="a"),
                       comp("C", namespace="a"), comp("D", namespace="a"),
                       comp("A", namespace="b"), comp("C", namespace="b")],
    }


def index(**kw: Any) -> impact.Index:
    o = objects(**kw)
    return impact.Index(resolve.Fleet(o["groups"], o["deployments"], o["components"]), DEVICES)


@pytest.mark.parametrize(("ref", "expected"), [
    (("Deployment", "a", "dep1"), {"d1", "d2"}),  # e1 is named by a's group, but is b's
    (("Deployment", "b", "dep1"), {"e1", "e2"}),  # same name, other team
    (("Deployment", "a", "dep3"), {"d5"}),  # a thing target
    (("Deployment", "b", "dep4"), set()),  # names a device of another namespace
    (("Deployment", "a", "nope"), set()),
    (("ThingGroup", "a", "g2"), {"d3", "d4"}),  # not e1/e2 (b), not d9 (no namespace)
    (("ThingGroup", "b", "g1"), {"e1", "e2"}),
    (("Component", "a", "A"), {"d1", "d2"}),
    (("Component", "a", "C"), {"d3", "d4"}),  # a dependency of B
    (("Component", "b", "A"), {"e1", "e2"}),
    (("Component", "b", "C"), set()),  # b's C is nobody's dependency
    (("Component", "a", "Z"), set()),
    (("Namespace", "", "b"), {"e1", "e2"}),
    (("CoreDevice", "", "d3"), {"d3"}),
    (("CoreDevice", "", "d9"), {"d9"}),
])
def test_index(ref: impact.Ref, expected: set[str]) -> None:
    assert index().devices_of(ref) == expected


def test_labels_are_indexed_per_namespace() -> None:
    i = index()
    assert i.devices_labelled("a", "site", "x") == {"d3", "d4"}
    assert i.devices_labelled("b", "site", "x") == {"e1", "e2"}
    assert i.devices_labelled("c", "site", "x") == set()


@pytest.mark.parametrize(("changes", "expected"), [
    # a selector that moved: the devices it left and those it reaches now
    ([("ThingGroup", "a", "g2")], {"d1", "d2", "d3", "d4"}),
    ([("Deployment", "a", "dep3"), ("CoreDevice", "", "e1")], {"d5", "e1"}),
    ([], set()),
])
def test_affected_before_and_after(changes: list[impact.Ref], expected: set[str]) -> None:
    assert impact.resolve_affected(index(), index(g2={"site": "y"}), changes) == expected


def test_an_unknown_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="Secret"):
        index().devices_of(("Secret", "a", "x"))


def _devices() -> list[fleet.Device]:
    return [fleet.Device(t, labels, coredevice.CoreDeviceStatus(), ns)
            for t, labels, ns in DEVICES]


def _published(devices: list[fleet.Device], plan: fleet.FleetPlan) -> list[fleet.Device]:
    """The devices once the plan's documents were published (as the operator records)."""
    sent = {p.thing: p for p in plan.publishes}
    return [dataclasses.replace(d, status=fleet.render_notified(d.status, sent[d.thing], T0))
            if d.thing in sent else d for d in devices]


def test_a_pass_resolves_only_what_it_is_asked_and_keeps_the_rest() -> None:
    o = objects()
    devices = _devices()
    full = fleet.plan_fleet(devices, o["groups"], o["deployments"], o["components"], T0)
    assert full.visited == 7  # every device in a namespace
    assert {p.thing for p in full.publishes} == {"d1", "d2", "d3", "d4", "d5", "e1", "e2"}
    devices = _published(devices, full)
    # A changed group: only its devices are resolved; the counts still see everyone.
    o2 = objects(g2={"site": "y"})
    part = fleet.plan_fleet(devices, o2["groups"], o2["deployments"], o2["components"], T0,
                            only={"d1", "d2", "d3", "d4"}, faults=full.faults)
    assert part.visited == 4
    assert {p.thing for p in part.publishes} <= {"d1", "d2", "d3", "d4"}
    assert part.member_counts[("a", "g2")] == 2 and part.member_counts[("b", "g1")] == 2


def test_problems_of_devices_not_resolved_again_are_kept() -> None:
    o = objects()
    # dep2 asks for a component nobody has: a problem on d3 and d4.
    o["deployments"][1] = dep("dep2", {"Nope": "^1.0.0"}, group="g2", namespace="a")
    devices = _devices()
    full = fleet.plan_fleet(devices, o["groups"], o["deployments"], o["components"], T0)
    assert [p.reason for p in full.problems["a/dep2"]] == [resolve.UNKNOWN_COMPONENT]
    devices = _published(devices, full)
    again = fleet.plan_fleet(devices, o["groups"], o["deployments"], o["components"], T0)
    part = fleet.plan_fleet(devices, o["groups"], o["deployments"], o["components"], T0,
                            only={"d1"}, faults=full.faults)
    # d1, and d3 and d4, which the rollout of dep2 keeps trying (never reached).
    assert part.visited == 3
    assert part.problems == again.problems
    # A device not resolved this pass keeps the problems it had when it last was.
    kept = resolve.Problem("a/dep3", resolve.PRIVILEGE_VIOLATION, "d5 would run as root")
    part = fleet.plan_fleet(devices, o["groups"], o["deployments"], o["components"], T0,
                            only={"d1"}, faults={**full.faults, "d5": [kept]})
    assert part.problems["a/dep3"] == [kept]


def test_a_pass_reading_the_index_plans_the_same() -> None:
    o = objects()
    f = resolve.Fleet(o["groups"], o["deployments"], o["components"])
    devices = _devices()
    first = fleet.plan_fleet(devices, o["groups"], o["deployments"], o["components"], T0,
                             fleet=f)
    devices = _published(devices, first)
    i = impact.Index(f, ((d.thing, d.labels, d.namespace) for d in devices))
    plain = fleet.plan_fleet(devices, o["groups"], o["deployments"], o["components"], T0,
                             fleet=f, only={"d1", "e2"}, faults=first.faults)
    indexed = fleet.plan_fleet(devices, o["groups"], o["deployments"], o["components"], T0,
                               fleet=f, only={"d1", "e2"}, faults=first.faults, index=i)
    assert indexed == plain
    assert indexed.member_counts == {("a", "g1"): 2, ("a", "g2"): 2, ("b", "g1"): 2}
    assert [p.reason for p in indexed.problems["b/dep4"]] == [resolve.EMPTY_TARGET]
