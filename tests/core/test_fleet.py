"""The controller's reconcile pass as a pure function, driven with a fake clock and
simulated devices: publishing, idempotence, rollout rate, abort and rollback, conditions."""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
from typing import Any

from hedgerow.core import (
    base,
    component,
    coredevice,
    deployment,
    documents,
    fleet,
    manifest,
    privilege,
    resolve,
    thinggroup,
)

ROOT = pathlib.Path(__file__).parents[2]
T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def at(minutes: float) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=minutes)


LAST = 0.95  # minutes into a rollout window: its last tick, the window's whole allowance


def load(*names: str, namespace: str = "default") -> list[Any]:
    """Objects from examples/, namespaced ones in ``namespace`` (as `kubectl apply -n`)."""
    out = []
    for n in names:
        for o in manifest.parse_documents((ROOT / "examples" / n).read_text()):
            if not isinstance(o, coredevice.CoreDevice) and not o.metadata.namespace:
                o = o.model_copy(update={"metadata": o.metadata.model_copy(
                    update={"namespace": namespace})})
            out.append(o)
    return out


class Sim:
    """A fleet in memory: what the operator shell does with a plan, without I/O."""

    def __init__(self, objs: list[Any]) -> None:
        self.components = [o for o in objs if isinstance(o, component.Component)]
        self.groups = [o for o in objs if isinstance(o, thinggroup.ThingGroup)]
        self.deployments = {resolve.key_of(o): o for o in objs
                            if isinstance(o, deployment.Deployment)}
        self.devices = {o.metadata.name: fleet.Device(o.metadata.name, o.metadata.labels,
                                                      coredevice.CoreDeviceStatus(),
                                                      o.spec.namespace)
                        for o in objs if isinstance(o, coredevice.CoreDevice)}
        self.retained: dict[str, bytes] = {}
        self.events: list[fleet.Event] = []

    def step(self, now: datetime.datetime) -> fleet.FleetPlan:
        plan = fleet.plan_fleet(list(self.devices.values()), self.groups,
                                list(self.deployments.values()), self.components, now)
        for p in plan.publishes:
            self.retained[p.thing] = p.payload
            dev = self.devices[p.thing]
            status = (fleet.render_notified(dev.status, p, now)
                      if p.revision != dev.status.desired_revision else
                      dev.status.model_copy(update={"desired_generations": p.generations}))
            self.devices[p.thing] = dataclasses.replace(dev, status=status)
        for key, dstatus in plan.deployments.items():
            self.deployments[key] = self.deployments[key].model_copy(update={"status": dstatus})
        self.events += plan.events
        return plan

    def report(self, thing: str, outcome: documents.Outcome, now: datetime.datetime) -> None:
        dev = self.devices[thing]
        revision = dev.status.desired_revision
        assert revision is not None
        report = documents.StatusReport(
            thing=thing, sequence=1, time=now, agent_version="0.1.0",
            platform=documents.PlatformInfo(os="linux", arch="amd64"),
            health=documents.Health.HEALTHY,
            applied_revision=revision if outcome is documents.Outcome.SUCCEEDED else None,
            deployment=documents.DeploymentOutcome(revision=revision, outcome=outcome))
        self.devices[thing] = dataclasses.replace(
            dev, status=fleet.render_report(dev.status, report, now))

    def update(self, name: str, **spec: Any) -> None:
        key = ("", name) if ("", name) in self.deployments else ("default", name)
        d = self.deployments[key]
        new_spec = d.spec.model_copy(update=spec)
        meta = d.metadata.model_copy(update={"generation": (d.metadata.generation or 0) + 1})
        self.deployments[key] = d.model_copy(update={"spec": new_spec, "metadata": meta})

    def condition(self, name: str, type_: str = "Ready") -> tuple[str, str]:
        d = next(d for k, d in self.deployments.items() if k[1] == name)
        assert d.status is not None
        c = next(c for c in d.status.conditions if c.type == type_)
        return c.status.value, c.reason

    def desired(self, thing: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.retained[thing])
        return doc


EXAMPLES = ("hello-world.yaml", "telemetry.yaml", "web-status.yaml", "thinggroup.yaml",
            "deployment.yaml", "coredevices.yaml")


def test_examples_publish_once_and_are_idempotent() -> None:
    sim = Sim(load(*EXAMPLES))
    plan = sim.step(at(0))
    assert sorted(p.thing for p in plan.publishes) == ["gateway-1", "gateway-2", "gateway-3"]
    assert [c["name"] for c in sim.desired("gateway-1")["components"]] == [
        "com.example.HelloWorld", "com.example.Telemetry"]
    assert [c["name"] for c in sim.desired("gateway-3")["components"]] == [
        "com.example.WebStatus"]
    # Each published document is a valid DesiredState (revision checked on parse).
    documents.DesiredState.model_validate_json(sim.retained["gateway-2"])
    assert sim.step(at(0.1)).publishes == []
    assert plan.member_counts == {("default", "factory-1"): 2, ("default", "docker-hosts"): 1}
    assert sim.condition("factory-1-apps") == ("False", "RollingOut")
    for thing in ("gateway-1", "gateway-2"):
        sim.report(thing, documents.Outcome.SUCCEEDED, at(0.2))
    sim.step(at(0.3))
    assert sim.condition("factory-1-apps") == ("True", "Succeeded")
    assert {e.reason for e in sim.events} >= {"RolloutStarted", "RolloutFinished"}


def test_relabel_changes_state() -> None:
    sim = Sim(load(*EXAMPLES))
    sim.step(at(0))
    before = sim.desired("gateway-3")["revision"]
    dev = sim.devices["gateway-3"]
    sim.devices["gateway-3"] = dataclasses.replace(dev, labels={"site": "factory-1"})
    plan = sim.step(at(1))
    assert [p.thing for p in plan.publishes] == ["gateway-3"]
    assert sim.desired("gateway-3")["revision"] != before
    assert [c["name"] for c in sim.desired("gateway-3")["components"]] == [
        "com.example.HelloWorld", "com.example.Telemetry"]


def test_conflict_sets_conditions_and_publishes_nothing() -> None:
    objs = load(*EXAMPLES)
    other = deployment.Deployment.model_validate({
        "metadata": {"name": "pin-old", "namespace": "default", "generation": 1},
        "spec": {"target": {"thing": "gateway-1"},
                 "components": [{"name": "com.example.HelloWorld", "version": "2.0.0"}]}})
    sim = Sim([*objs, other])
    plan = sim.step(at(0))
    assert "gateway-1" not in sim.retained
    assert sorted(p.thing for p in plan.publishes) == ["gateway-2", "gateway-3"]
    assert sim.condition("pin-old") == ("False", "VersionConflict")
    assert sim.condition("factory-1-apps") == ("False", "VersionConflict")
    assert sim.condition("pin-old", "Stalled") == ("True", "VersionConflict")
    # factory-1-apps was published to gateway-2: a known good generation now. The next
    # pass takes only the newcomer out of gateway-1's combination.
    plan = sim.step(at(1))
    assert [p.thing for p in plan.publishes] == ["gateway-1"]
    assert [c["name"] for c in sim.desired("gateway-1")["components"]] == [
        "com.example.HelloWorld", "com.example.Telemetry"]
    assert sim.condition("pin-old") == ("False", "VersionConflict")
    assert sim.condition("factory-1-apps") == ("False", "RollingOut")


def _rollout_sim(n: int, rate: int) -> Sim:
    comps = [component.Component.model_validate({
        "metadata": {"name": f"app-{v}", "namespace": "default"},
        "spec": {"name": "App", "version": v,
                 "manifests": [{"lifecycle": {"run": {"script": f"app {v}"}}}]}})
        for v in ("1.0.0", "2.0.0")]
    group = thinggroup.ThingGroup.model_validate(
        {"metadata": {"name": "all", "namespace": "default"},
         "spec": {"selector": {"matchLabels": {"fleet": "x"}}}})
    d = deployment.Deployment.model_validate({
        "metadata": {"name": "app", "namespace": "default", "generation": 1},
        "spec": {"target": {"thingGroup": "all"},
                 "components": [{"name": "App", "version": "1.0.0"}],
                 "rollout": {"maximumPerMinute": rate, "timeoutMinutes": 5,
                             "abortCriteria": [{"failureType": "FAILED",
                                                "thresholdPercentage": 20,
                                                "minNumberOfExecutedThings": 10}]}}})
    devices = [coredevice.CoreDevice.model_validate(
        {"metadata": {"name": f"dev-{i:03}", "labels": {"fleet": "x"}},
         "spec": {"namespace": "default"}}) for i in range(n)]
    return Sim([*comps, group, d, *devices])


def test_rollout_honours_the_rate_and_aborts_with_rollback() -> None:
    sim = _rollout_sim(200, rate=20)
    # Generation 1 rolls out at 20 a minute and every device succeeds.
    minute = 0
    while any(d.status.desired_revision is None for d in sim.devices.values()):
        publishes = [*sim.step(at(minute)).publishes, *sim.step(at(minute + LAST)).publishes]
        assert len(publishes) <= 20
        for p in publishes:
            sim.report(p.thing, documents.Outcome.SUCCEEDED, at(minute + LAST))
        minute += 1
    assert minute == 10
    sim.step(at(minute))
    assert sim.condition("app") == ("True", "Succeeded")
    good = {t: d.status.desired_revision for t, d in sim.devices.items()}

    # Generation 2 breaks every device it reaches.
    sim.update("app", components=[deployment.DeploymentComponent(name="App", version="2.0.0")])
    start = minute + 1
    first = sim.step(at(start)).publishes
    assert len(first) == 2  # the window's first tick: ceil(20 / 12)
    publishes = [*first, *sim.step(at(start + LAST)).publishes]
    assert len(publishes) == 20
    assert sim.condition("app") == ("False", "RollingOut")
    assert sim.condition("app", "Progressing") == ("True", "RollingOut")
    for p in publishes:
        assert json.loads(p.payload)["components"][0]["version"] == "2.0.0"
    # The window's allowance is spent: nothing more is notified before the next one.
    assert sim.step(at(start + 0.99)).publishes == []
    # The first 20 fail: 100% ≥ 20% of ≥ 10 executed, so the next pass aborts and rolls back.
    reached = [p.thing for p in publishes]
    for thing in reached:
        sim.report(thing, documents.Outcome.FAILED, at(start + 0.99))
    plan = sim.step(at(start + 1))
    assert sorted(p.thing for p in plan.publishes) == sorted(reached)
    for p in plan.publishes:
        assert p.revision == good[p.thing]  # the previous document, byte for byte
    assert sim.condition("app") == ("False", "RolloutAborted")
    assert sim.condition("app", "Stalled") == ("True", "RolloutAborted")
    status = sim.deployments[("default", "app")].status
    assert status is not None and status.rolled_back == 20
    assert (status.notified, status.failed) == (20, 20)  # as it stood when it stopped
    assert any(e.reason == "RolloutAborted" and e.type == "Warning" for e in sim.events)
    # Aborted: later windows reach nobody; every device runs generation 1.
    assert sim.step(at(start + 5)).publishes == []
    assert {d.status.desired_revision for d in sim.devices.values()} == set(good.values())


def test_timeouts_count_and_suspend_pauses() -> None:
    sim = _rollout_sim(30, rate=10)
    sim.update("app", rollout=deployment.Rollout(maximum_per_minute=10, timeout_minutes=2,
                                                 suspend=True))
    assert sim.step(at(0)).publishes == []
    assert sim.condition("app") == ("False", "Suspended")
    sim.update("app", rollout=deployment.Rollout(maximum_per_minute=10, timeout_minutes=2))
    plan = sim.step(at(1))
    assert len(plan.publishes) == 1  # the first tick: ceil(10 / 12)
    assert plan.wake_at == at(1) + datetime.timedelta(seconds=5)  # the next tick
    plan = sim.step(at(1 + LAST))
    assert len(plan.publishes) == 9
    assert plan.wake_at == at(2)  # the last tick: the next window
    # Three windows in: 30 allowed. Nobody answered: the first 10 (2 minutes ago or more)
    # timed out, the 20 notified now have not.
    sim.step(at(3 + LAST))
    status = sim.deployments[("default", "app")].status
    assert status is not None
    assert (status.notified, status.timed_out) == (30, 10)


def test_condition_transition_time_is_kept_while_status_holds() -> None:
    conds = fleet.render_condition([], "Ready", base.ConditionStatus.FALSE, "A", "", at(0))
    conds = fleet.render_condition(conds, "Ready", base.ConditionStatus.FALSE, "B", "", at(1))
    assert conds[0].last_transition_time == at(0) and conds[0].reason == "B"
    conds = fleet.render_condition(conds, "Ready", base.ConditionStatus.TRUE, "C", "", at(2))
    assert conds[0].last_transition_time == at(2)


def test_unreached_devices_keep_their_generation_but_get_other_changes() -> None:
    sim = _rollout_sim(30, rate=10)
    extra = component.Component.model_validate({
        "metadata": {"name": "tool-1", "namespace": "default"},
        "spec": {"name": "Tool", "version": "1.0.0",
                 "manifests": [{"lifecycle": {"run": {"script": "tool"}}}]}})
    sim.components.append(extra)
    minute = 0
    while any(d.status.desired_revision is None for d in sim.devices.values()):
        for p in [*sim.step(at(minute)).publishes, *sim.step(at(minute + LAST)).publishes]:
            sim.report(p.thing, documents.Outcome.SUCCEEDED, at(minute + LAST))
        minute += 1
    sim.update("app", components=[deployment.DeploymentComponent(name="App", version="2.0.0")])
    sim.step(at(10))  # generation 2's first window opens
    sim.step(at(10 + LAST))  # 10 devices reached by generation 2
    # Meanwhile another deployment adds Tool to every device, at once (no rollout limits).
    tool = deployment.Deployment.model_validate({
        "metadata": {"name": "tool", "namespace": "default", "generation": 1},
        "spec": {"target": {"thingGroup": "all"},
                 "components": [{"name": "Tool", "version": "1.0.0"}]}})
    sim.deployments[("default", "tool")] = tool
    plan = sim.step(at(10.99))
    assert len(plan.publishes) == 30
    versions = {t: {c["name"]: c["version"] for c in sim.desired(t)["components"]}
                for t in sim.devices}
    on_v2 = {t for t, v in versions.items() if v["App"] == "2.0.0"}
    assert on_v2 == {f"dev-{i:03}" for i in range(10)}
    assert all(v["Tool"] == "1.0.0" for v in versions.values())
    gens = {t: d.status.desired_generations for t, d in sim.devices.items()}
    assert gens["dev-000"] == {"default/app": 2, "default/tool": 1}
    assert gens["dev-029"] == {"default/app": 1, "default/tool": 1}


# --- tenancy, privilege and failure isolation ------------------------------------------

def _tool(version: str) -> component.Component:
    return component.Component.model_validate({
        "metadata": {"name": f"tool-{version}", "namespace": "default"},
        "spec": {"name": "Tool", "version": version,
                 "manifests": [{"lifecycle": {"run": {"script": f"tool {version}"}}}]}})


def _deployment(name: str, components: list[dict[str, Any]], priority: int = 0,
                namespace: str = "default") -> deployment.Deployment:
    return deployment.Deployment.model_validate({
        "metadata": {"name": name, "namespace": namespace, "generation": 1},
        "spec": {"target": {"thingGroup": "factory-1"}, "components": components,
                 "priority": priority}})


def test_a_bad_generation_keeps_contributing_the_last_good_one() -> None:
    sim = Sim([*load(*EXAMPLES), _tool("1.0.0"),
               _deployment("tool", [{"name": "Tool", "version": "1.0.0"}])])
    sim.step(at(0))
    assert {c["name"] for c in sim.desired("gateway-1")["components"]} >= {"Tool"}
    sim.step(at(0.1))  # the status now has generation 1 in its history
    # Generation 2 names a version that does not exist.
    sim.update("tool", components=[deployment.DeploymentComponent(name="Tool",
                                                                  version="9.0.0")])
    before = sim.retained["gateway-1"]
    plan = sim.step(at(1))
    assert sim.condition("tool") == ("False", "UnknownComponent")
    assert plan.publishes == [] and sim.retained["gateway-1"] == before
    # Another deployment's change still goes out, with Tool 1.0.0 still in it.
    sim.update("factory-1-apps", priority=1)
    plan = sim.step(at(2))
    assert sorted(p.thing for p in plan.publishes) == ["gateway-1", "gateway-2"]
    tool = [c for c in sim.desired("gateway-1")["components"] if c["name"] == "Tool"]
    assert [c["version"] for c in tool] == ["1.0.0"]
    assert sim.devices["gateway-1"].status.desired_generations["default/tool"] == 1
    assert sim.condition("factory-1-apps", "Stalled")[0] == "False"


def test_a_problem_deployment_never_blocks_another() -> None:
    bad = _deployment("bad", [{"name": "com.example.Nope", "version": "1.0.0"}],
                      priority=1000)
    sim = Sim([*load(*EXAMPLES), bad])
    plan = sim.step(at(0))
    # The examples publish everywhere as if `bad` were not there; `bad` says why.
    assert sorted(p.thing for p in plan.publishes) == ["gateway-1", "gateway-2", "gateway-3"]
    assert sim.condition("bad") == ("False", "UnknownComponent")
    assert plan.problems.keys() == {"default/bad"}
    assert "default/bad" not in sim.devices["gateway-1"].status.desired_generations


def test_privilege_is_checked_with_the_namespace_level() -> None:
    root = _deployment("root", [{"name": "com.example.HelloWorld", "version": "1.0.0",
                                 "runWith": {"posixUser": "root"}}], priority=5)
    objs = [*load(*EXAMPLES), root]
    sim = Sim(objs)
    sim.step(at(0))
    assert sim.condition("root") == ("False", "PrivilegeViolation")
    assert "runWith" not in sim.desired("gateway-1")["components"][0]
    # Granted: the same objects resolve (levels come from the namespaces' labels).
    plan = fleet.plan_fleet(list(sim.devices.values()), sim.groups,
                            list(sim.deployments.values()), sim.components, at(1),
                            levels={"default": privilege.Level.PRIVILEGED})
    assert "default/root" not in plan.problems
    assert sorted(p.thing for p in plan.publishes) == ["gateway-1", "gateway-2"]


def test_a_document_over_the_bound_is_not_published() -> None:
    sim = Sim(load(*EXAMPLES))
    sim.step(at(0))
    before = dict(sim.retained)
    big = _deployment("big", [{"name": "com.example.HelloWorld", "version": "1.0.0",
                               "configurationUpdate": {"merge": {"message": "x" * 4000}}}],
                      priority=5)
    sim.deployments[resolve.key_of(big)] = big
    limit = max(len(p) for p in before.values()) + 1000
    plan = fleet.plan_fleet(list(sim.devices.values()), sim.groups,
                            list(sim.deployments.values()), sim.components, at(1),
                            max_bytes=limit)
    assert plan.publishes == []
    [problem] = plan.problems["default/big"]
    assert problem.reason == "DocumentTooLarge" and f"over the limit of {limit}" in (
        problem.message)
    assert "default/factory-1-apps" not in plan.problems


def test_a_device_in_no_namespace_is_reached_by_nothing() -> None:
    sim = Sim(load(*EXAMPLES))
    dev = sim.devices["gateway-1"]
    sim.devices["gateway-1"] = dataclasses.replace(dev, namespace=None)
    plan = sim.step(at(0))
    assert sorted(p.thing for p in plan.publishes) == ["gateway-2", "gateway-3"]
    assert plan.member_counts[("default", "factory-1")] == 1
    # Another namespace's objects do not reach default's devices either.
    other = Sim(load(*EXAMPLES[:5], namespace="zzz") + load("coredevices.yaml"))
    assert other.step(at(0)).publishes == []


def test_a_problem_on_some_devices_does_not_reset_the_rollout_of_the_others() -> None:
    sim = _rollout_sim(30, rate=10)
    arm = documents.PlatformInfo(os="linux", arch="aarch64")
    amd64_only = component.Component.model_validate({
        "metadata": {"name": "app-3", "namespace": "default"},
        "spec": {"name": "App", "version": "3.0.0", "manifests": [
            {"platform": {"os": "linux", "arch": "amd64"},
             "lifecycle": {"run": {"script": "app 3"}}}]}})
    sim.components.append(amd64_only)
    for thing in ("dev-000", "dev-001"):  # these two are arm devices
        dev = sim.devices[thing]
        sim.devices[thing] = dataclasses.replace(
            dev, status=dev.status.model_copy(update={"platform": arm}))
    sim.update("app", components=[deployment.DeploymentComponent(name="App",
                                                                 version="3.0.0")])
    reached: set[str] = set()
    for step in range(12):  # a pass at every tick of the first rollout window
        reached |= {p.thing for p in sim.step(at(step / 12)).publishes}
    # The window's 10 slots went to the first 10 in name order; the two arm devices took
    # theirs and were refused.
    assert len(reached) == 8 and not reached & {"dev-000", "dev-001"}
    assert sim.condition("app") == ("False", "NoManifestForPlatform")
    reached |= {p.thing for p in sim.step(at(1 + LAST)).publishes}  # the next window: 10 more
    assert len(reached) == 18


def test_reports_of_many_devices_share_their_components_and_platform() -> None:
    """10,000 statuses naming the same components keep one instance of each (memory:
    docs/scale.md), and equal what they were folded from."""
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)

    def folded(thing: str) -> coredevice.CoreDeviceStatus:
        report = documents.StatusReport.model_validate_json(documents.render_bytes(
            documents.StatusReport(
                thing=thing, time=now, agent_version="1.0", health=documents.Health.HEALTHY,
                platform=documents.PlatformInfo(os="linux", arch="amd64"),
                components=[documents.ComponentReport(
                    name="com.example.App", version="1.0.0",
                    state=documents.ComponentState.RUNNING)])))
        return fleet.render_report(coredevice.CoreDeviceStatus(), report, now)

    a, b = folded("dev-a"), folded("dev-b")
    assert a.components[0] is b.components[0]
    assert a.platform is b.platform
    assert a.components == [coredevice.DeviceComponent(
        name="com.example.App", version="1.0.0", state=documents.ComponentState.RUNNING)]
    assert a.platform == documents.PlatformInfo(os="linux", arch="amd64")
