"""One reconcile pass over the whole fleet, as a pure function: what to publish, and the
status every Deployment and ThingGroup should have. The operator is a thin shell around
:func:`plan_fleet`; tests call it with a fake clock.

Rollouts. Each device records, in ``CoreDevice.status.desiredGenerations``, the generation
of every deployment its published document was built from. A device is *reached* by a
deployment's rollout when that record equals the deployment's current generation. Devices
not reached keep the spec of the generation they are on (kept in the Deployment's
``status.history``), or go without the deployment if they never had it. Each pass reaches
as many more devices as :func:`hedgerow.core.rollout.plan_allowance` allows, in thing-name
order. When an abort criterion trips, the rollout stops; with ``failureHandling:
ROLLBACK`` every device on the failing generation is resolved with the generation before it
again (rollback is re-applying the previous document, nothing else).

Tenancy. A device belongs to one namespace (``Device.namespace``, from ``CoreDevice
spec.namespace``); only that namespace's groups and deployments reach it, and each
namespace's privilege level (``levels``) is checked when resolving. A device without a
namespace is reached by nothing and keeps whatever it has.

Failure isolation. When a device's combination has a problem (an unknown component, a
version conflict, a privilege violation, a document over ``limits.MAX_DESIRED_BYTES``),
the deployments at fault are taken back, on that device only, to their last good
generation (the newest one in ``status.history`` below the one tried) or left out if they
never had one, and the device is resolved again. When several are at fault, those on a
generation never published before go first: the newcomer is refused, not the deployment
that was already running. The problems are reported on the deployments taken back; every
other deployment and device goes on as if they were not there.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import sys
from collections.abc import Collection, Mapping, Sequence
from typing import Final

from hedgerow.core import (
    base,
    component,
    coredevice,
    deployment,
    documents,
    identity,
    impact,
    limits,
    privilege,
    readiness,
    resolve,
    rollout,
)
from hedgerow.core import thinggroup as thinggroup_

APPLIED: Final = "Applied"
# How a device's report says a component defers its update (edge-agent updateipc): the
# Applied condition's reason is then Deferred, its message who and why.
DEFERRED: Final = "deferred by "
READY: Final = readiness.READY
PROGRESSING: Final = readiness.PROGRESSING
STALLED: Final = readiness.STALLED
DOCUMENT_TOO_LARGE: Final = "DocumentTooLarge"

Key = resolve.Key


@dataclasses.dataclass(frozen=True)
class Device:
    thing: str
    labels: Mapping[str, str]
    status: coredevice.CoreDeviceStatus
    namespace: str | None = None  # None: in no namespace, nothing reaches it


@dataclasses.dataclass(frozen=True)
class Publish:
    thing: str
    revision: str
    payload: bytes
    generations: dict[str, int]


@dataclasses.dataclass(frozen=True)
class Event:
    deployment: Key
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class FleetPlan:
    publishes: list[Publish]
    deployments: dict[Key, deployment.DeploymentStatus]
    member_counts: dict[Key, int]
    events: list[Event]
    wake_at: datetime.datetime | None
    problems: dict[str, list[resolve.Problem]]  # by deployment id
    # The devices resolved this pass (all, or those asked for and the rollouts' own), and
    # the problems each had: a caller passing ``only`` keeps them for the next passes.
    faults: dict[str, list[resolve.Problem]] = dataclasses.field(default_factory=dict)
    visited: int = 0


def render_condition(
    conditions: Sequence[base.Condition], type_: str, status: base.ConditionStatus,
    reason: str, message: str, now: datetime.datetime, generation: int | None = None,
) -> list[base.Condition]:
    """Set one condition, keeping lastTransitionTime when the status did not change."""
    old = next((c for c in conditions if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == status else now
    new = base.Condition(type=type_, status=status, reason=reason, message=message[:4096],
                         last_transition_time=since, observed_generation=generation)
    return [*(c for c in conditions if c.type != type_), new]


def applied_state(
    status: coredevice.CoreDeviceStatus,
) -> tuple[base.ConditionStatus | None, datetime.datetime | None]:
    for c in status.conditions:  # a plain loop: called for every device on every pass
        if c.type == APPLIED:
            return c.status, c.last_transition_time
    return None, None


def render_notified(
    status: coredevice.CoreDeviceStatus, publish: Publish, now: datetime.datetime,
) -> coredevice.CoreDeviceStatus:
    """A device's status once a new document was published to it."""
    applied = base.Condition(type=APPLIED, status=base.ConditionStatus.UNKNOWN,
                             reason="Notified", message=f"revision {publish.revision} published",
                             last_transition_time=now)
    return status.model_copy(update={
        "desired_revision": publish.revision,
        "desired_generations": publish.generations,
        "conditions": [*(c for c in status.conditions if c.type != APPLIED), applied],
    })


def render_published(
    status: coredevice.CoreDeviceStatus, publish: Publish,
    early: documents.StatusReport | None, now: datetime.datetime,
) -> tuple[coredevice.CoreDeviceStatus, bool]:
    """A device's status once the broker acknowledged ``publish``, and whether the fleet
    must be planned again. ``early``: the device's last report, which a fast device may
    have sent on this revision before its PUBACK reached us; it is folded again now that
    the revision is ours (and may change the counts, hence the re-plan)."""
    new = (render_notified(status, publish, now) if publish.revision != status.desired_revision
           else status.model_copy(update={"desired_generations": publish.generations}))
    if early is not None and early.deployment is not None and (
            early.deployment.revision == publish.revision):
        return render_report(new, early, now), True
    return new, False


def render_group_status(
    group: thinggroup_.ThingGroup, member_count: int,
) -> thinggroup_.ThingGroupStatus:
    """A ThingGroup's status: how many devices it selects, for the generation seen."""
    old = group.status or thinggroup_.ThingGroupStatus()
    return old.model_copy(update={"member_count": member_count,
                                  "observed_generation": group.metadata.generation})


def render_report(
    status: coredevice.CoreDeviceStatus, report: documents.StatusReport,
    now: datetime.datetime,
) -> coredevice.CoreDeviceStatus:
    """Fold one StatusReport into a device's status (small: name/version/state triples)."""
    conditions = list(status.conditions)
    outcome = report.deployment
    if status.desired_revision is not None:
        verdict: tuple[base.ConditionStatus, str] | None = None
        if outcome is not None and outcome.revision == status.desired_revision:
            verdict = {
                documents.Outcome.SUCCEEDED: (base.ConditionStatus.TRUE, "Succeeded"),
                documents.Outcome.IN_PROGRESS: (base.ConditionStatus.UNKNOWN, "Deferred"
                                                if outcome.reason.startswith(DEFERRED)
                                                else "InProgress"),
            }.get(outcome.outcome, (base.ConditionStatus.FALSE, outcome.outcome.value.title()
                                    .replace("_", "")))
        elif (report.applied_revision == status.desired_revision
              and report.health is documents.Health.HEALTHY):
            verdict = (base.ConditionStatus.TRUE, "Succeeded")
        if verdict is not None:
            message = outcome.reason if outcome is not None else ""
            conditions = render_condition(conditions, APPLIED, verdict[0], verdict[1],
                                          message, now)
    # CertificateValid from the certificateDaysLeft the connector stamps on each report
    # (Unknown/NotReported until a report carries it).
    expiry = identity.expiry_condition(report.certificate_days_left, now)
    conditions = render_condition(conditions, expiry.type, expiry.status, expiry.reason,
                                  expiry.message, now)
    return status.model_copy(update={
        "health": report.health,
        "last_seen": report.time,
        "platform": _shared_platform(report.platform),
        "agent_version": sys.intern(report.agent_version),
        "applied_revision": (None if report.applied_revision is None
                             else sys.intern(report.applied_revision)),
        "components": [_shared_component(c.name, c.version, c.state)
                       for c in report.components],
        "conditions": conditions,
    })


# A fleet runs few distinct platforms and component versions: the statuses of 10,000
# devices share one instance of each (frozen models) instead of ~2 KB per device of
# copies (docs/scale.md). Bounded: the names come from the devices.
@functools.lru_cache(maxsize=4096)
def _shared_component(name: str, version: str,
                      state: documents.ComponentState) -> coredevice.DeviceComponent:
    return coredevice.DeviceComponent(name=sys.intern(name), version=sys.intern(version),
                                      state=state)


@functools.lru_cache(maxsize=256)
def _shared_platform(platform: documents.PlatformInfo) -> documents.PlatformInfo:
    return platform


@dataclasses.dataclass
class _Rollout:
    d: deployment.Deployment
    id: str
    generation: int
    state: deployment.RolloutStatus
    history: dict[int, deployment.Deployment]
    targeted: list[str] = dataclasses.field(default_factory=list)  # things
    promote: set[str] = dataclasses.field(default_factory=set)
    rolled_back: int = 0
    fresh: bool = False  # this pass started the rollout of this generation
    frozen: rollout.Counts | None = None  # counts when the rollout was aborted
    previous: deployment.DeploymentStatus = dataclasses.field(
        default_factory=deployment.DeploymentStatus)  # the status before this pass
    good: frozenset[int] = frozenset()  # generations in status.history

    @property
    def aborted(self) -> bool:
        return self.state.aborted_at is not None

    @property
    def rolls_back(self) -> bool:
        return (self.aborted and self.d.spec.policies.failure_handling
                is deployment.FailureHandling.ROLLBACK)

    def baseline(self, below: int) -> deployment.Deployment | None:
        older = [g for g in self.history if g < below]
        return self.history[max(older)] if older else None

    def is_good(self, d: deployment.Deployment) -> bool:
        """Whether this generation was published before (it is in status.history)."""
        return (d.metadata.generation or 0) in self.good

    def choose(self, thing: str, record: int | None) -> deployment.Deployment | None:
        """The generation of this deployment a device gets, given the one it is on."""
        if self.rolls_back:
            if record is not None and record != self.generation and record in self.history:
                return self.history[record]
            return self.baseline(self.generation)
        if record == self.generation or thing in self.promote:
            return self.d
        if record is None:
            return None
        if record in self.history:
            return self.history[record]
        return self.baseline(self.generation) or self.d


@dataclasses.dataclass
class _View:
    """Every device's status during one pass, and what its Applied condition says."""

    statuses: dict[str, coredevice.CoreDeviceStatus]
    applied: dict[str, tuple[base.ConditionStatus | None, datetime.datetime | None]]

    def set(self, thing: str, status: coredevice.CoreDeviceStatus) -> None:
        self.statuses[thing] = status
        self.applied[thing] = applied_state(status)

    def record(self, thing: str, deployment_id: str) -> int | None:
        return self.statuses[thing].desired_generations.get(deployment_id)


def _counts(r: _Rollout, view: _View, now: datetime.datetime,
            window: datetime.timedelta) -> rollout.Counts:
    notified = succeeded = failed = timed_out = 0
    for thing in r.targeted:
        if view.record(thing, r.id) != r.generation:
            continue
        notified += 1
        state, since = view.applied[thing]
        if state is base.ConditionStatus.TRUE:
            succeeded += 1
        elif state is base.ConditionStatus.FALSE:
            failed += 1
        elif since is not None and rollout.is_timed_out(r.d.spec.rollout, since, now, window):
            timed_out += 1
    return rollout.Counts(len(r.targeted), notified, succeeded, failed, timed_out)


def render_history_object(
    fleet: resolve.Fleet, d: deployment.Deployment, h: deployment.GenerationSpec,
) -> deployment.Deployment:
    """The deployment as it was at an older generation; one object per generation for
    the fleet's lifetime, so resolutions that use it are cached like any other."""
    key = ("history", id(d), h.generation)
    if key not in fleet.memo:
        meta = d.metadata.model_copy(update={"generation": h.generation})
        fleet.memo[key] = (d.model_copy(update={"metadata": meta, "spec": h.spec}), d)
    old: deployment.Deployment = fleet.memo[key][0]
    return old


def plan_fleet(
    devices: Sequence[Device],
    groups: Sequence[thinggroup_.ThingGroup],
    deployments: Sequence[deployment.Deployment],
    components: Sequence[component.Component],
    now: datetime.datetime,
    window: datetime.timedelta = rollout.MINUTE,
    *,
    fleet: resolve.Fleet | None = None,
    statuses: Mapping[Key, deployment.DeploymentStatus] | None = None,
    levels: Mapping[str, privilege.Level] | None = None,
    max_bytes: int = limits.MAX_DESIRED_BYTES,
    only: Collection[str] | None = None,
    faults: Mapping[str, Sequence[resolve.Problem]] | None = None,
    index: impact.Index | None = None,
) -> FleetPlan:
    """One pass. ``fleet`` (built from the same groups, deployments, components and
    ``levels``) may be kept between passes: its caches then carry over, and devices whose
    combination did not change cost a lookup. ``statuses`` override the Deployments' own
    status (the controller's latest writes, which the watch may not have delivered yet).
    ``levels``: the privilege level of each namespace (absent: the default, restricted).

    ``only``: resolve only these devices (the ones a change can affect:
    ``hedgerow.core.impact``), plus those a rollout reaches or rolls back this pass;
    every other device keeps its document, and its problems are taken from ``faults``
    (what ``FleetPlan.faults`` said when it was last resolved). Counting and statuses
    still see every device. ``index``, built from ``fleet`` and exactly these devices
    (their labels and namespaces), saves looking up each device's groups and
    deployments again."""
    if fleet is None:
        fleet = resolve.Fleet(groups, deployments, components, levels or {})
    events: list[Event] = []
    rollouts: list[_Rollout] = []
    for d, did in zip(fleet.deployments, fleet.ids, strict=True):
        generation = d.metadata.generation or 0
        previous = ((statuses or {}).get(resolve.key_of(d)) or d.status
                    or deployment.DeploymentStatus())
        state = previous.rollout
        fresh = state is None or state.generation != generation
        if state is None or fresh:
            state = deployment.RolloutStatus(generation=generation, started_at=now)
        history = {h.generation: render_history_object(fleet, d, h) for h in previous.history
                   if h.generation < generation}
        rollouts.append(_Rollout(d, did, generation, state, history,
                                 rolled_back=0 if fresh else previous.rolled_back, fresh=fresh,
                                 previous=previous,
                                 good=frozenset(h.generation for h in previous.history)))
    position = {id(d): i for i, d in enumerate(fleet.deployments)}

    view = _View({}, {})
    targeting: dict[str, tuple[int, ...]] = {}
    members: dict[Key, int] = dict.fromkeys(fleet.groups, 0)
    for device in devices:
        view.set(device.thing, device.status)
        if device.namespace is None:
            targeting[device.thing] = ()
            continue
        if index is not None:
            targeting[device.thing] = index.targeting[device.thing]
        else:
            targeting[device.thing] = fleet.indices(device.thing, device.labels,
                                                    device.namespace)
            for g in fleet.groups_of(device.thing, device.labels, device.namespace):
                members[g] += 1
        for i in targeting[device.thing]:
            rollouts[i].targeted.append(device.thing)
    if index is not None:
        members.update((g, len(things)) for g, things in index.by_group.items()
                       if g in members)

    wake: list[datetime.datetime] = []
    for r in rollouts:
        spec = r.d.spec.rollout
        counts = _counts(r, view, now, window)
        if not r.aborted:
            criterion = rollout.resolve_abort(spec.abort_criteria, counts)
            if criterion is not None:
                r.state = r.state.model_copy(update={"aborted_at": now})
                r.rolled_back = counts.notified if r.rolls_back else 0
                r.frozen = counts
                executed = counts.succeeded + counts.failed + counts.timed_out
                events.append(Event(
                    resolve.key_of(r.d), "Warning", "RolloutAborted",
                    f"generation {r.generation}: {counts.failed} failed and {counts.timed_out} "
                    f"timed out of {executed} executed devices, reaching the "
                    f"{criterion.threshold_percentage}% {criterion.failure_type.value} "
                    "threshold; " + (f"rolling back {r.rolled_back} devices" if r.rolls_back
                                     else "leaving devices as they are")))
        if r.aborted or spec.suspend:
            continue
        if counts.notified < counts.targeted:
            allowance = rollout.plan_allowance(spec, r.state.started_at, now, counts, window)
            budget = max(0, allowance - counts.notified)
            unreached = sorted(t for t in r.targeted if view.record(t, r.id) != r.generation)
            r.promote = set(unreached[:budget])
            if len(unreached) > budget:
                wake.append(rollout.plan_next_window(spec, r.state.started_at, now, window))
        if spec.timeout_minutes is not None:
            for thing in r.targeted:
                applied, since = view.applied[thing]
                if (applied is base.ConditionStatus.UNKNOWN and since is not None
                        and view.record(thing, r.id) == r.generation):
                    timeout_at = rollout.plan_timeout_at(spec, since, window)
                    if timeout_at is not None and timeout_at > now:
                        wake.append(timeout_at)

    visit = None if only is None else set(only)
    if visit is not None:
        for r in rollouts:
            visit |= r.promote  # reached by a rollout window
            if r.frozen is not None and r.rolls_back:
                visit.update(r.targeted)  # aborted this pass: back to the baseline
    publishes: list[Publish] = []
    problems: dict[str, list[resolve.Problem]] = {}
    device_faults: dict[str, list[resolve.Problem]] = {}

    def found(p: resolve.Problem) -> None:
        seen = problems.setdefault(p.deployment, [])
        # One line per kind of problem is enough for a condition (not one per device).
        if p not in seen and not (p.reason == DOCUMENT_TOO_LARGE
                                  and any(x.reason == p.reason for x in seen)):
            seen.append(p)

    for device in devices:
        status = device.status
        if device.namespace is None:
            continue  # in no namespace: nothing reaches it, it keeps what it has
        if visit is not None and device.thing not in visit:
            for p in (faults or {}).get(device.thing, ()):
                found(p)
            continue
        chosen = {i: rollouts[i].choose(device.thing, status.desired_generations.get(
            rollouts[i].id)) for i in targeting[device.thing]}
        result, device_faults[device.thing] = _isolate(fleet, device, chosen, rollouts,
                                                       position, max_bytes)
        for p in device_faults[device.thing]:
            found(p)
        if result is None:
            continue  # nothing settles: the device keeps its last document
        revision = result.revision
        assert revision is not None
        if status.desired_revision is None and not result.combination.deployments:
            continue  # nothing was ever published and nothing is asked of it yet
        generations = {rollouts[i].id: v.metadata.generation or 0
                       for i, v in chosen.items() if v is not None}
        if revision != status.desired_revision or generations != status.desired_generations:
            payload = result.payload()
            assert payload is not None
            publish = Publish(device.thing, revision, payload, generations)
            publishes.append(publish)
            view.set(device.thing, render_notified(status, publish, now)
                     if revision != status.desired_revision else
                     status.model_copy(update={"desired_generations": generations}))

    # Every device targeted by a deployment was counted above: no second look needed.
    reached = {i for i, r in enumerate(rollouts) if r.targeted}
    for p in fleet.empty_targets((), reached=reached):
        problems.setdefault(p.deployment, []).append(p)

    written = {resolve.key_of(r.d): _render_status(r, view, problems.get(r.id, []), now,
                                                   window, events) for r in rollouts}
    return FleetPlan(publishes, written, members, events, min(wake) if wake else None, problems,
                     device_faults, len(device_faults))


def _isolate(
    fleet: resolve.Fleet, device: Device, chosen: dict[int, deployment.Deployment | None],
    rollouts: Sequence[_Rollout], position: Mapping[int, int], max_bytes: int,
) -> tuple[resolve.DeviceResult | None, list[resolve.Problem]]:
    """Resolve the device; while its combination has a problem, take the deployments at
    fault back to their last good generation (or out), never-published generations first.
    ``chosen`` is updated in place. Returns the result (None if nothing settles) and the
    problems of the deployments taken back."""
    faults: list[resolve.Problem] = []

    def substitute(d: deployment.Deployment) -> deployment.Deployment | None:
        return chosen[position[id(d)]]

    # Each round moves at least one deployment to an older generation or out.
    for _ in range(1 + sum(len(rollouts[i].history) + 1 for i in chosen)):
        result = fleet.resolve(device.thing, device.labels, device.status.platform,
                               substitute, device.namespace)
        found = list(result.problems)
        if not found:
            size = result.combination.size_for(device.thing)
            if size <= max_bytes:
                return result, faults
            message = (f"the desired document of {device.thing} would be {size} bytes, over "
                       f"the limit of {max_bytes} (MAX_DESIRED_BYTES); it is not published "
                       "and the device keeps its previous document")
            found = [resolve.Problem(rollouts[_largest(result, chosen, rollouts)].id,
                                     DOCUMENT_TOO_LARGE, message)]
        present = {i: v for i, v in chosen.items() if v is not None}
        blamed = {name for p in found for name in p.deployment.split(",")}
        # A problem nobody in particular is named for: all of them.
        at_fault = [i for i in present if rollouts[i].id in blamed] or list(present)
        if not at_fault:
            return None, faults
        new = [i for i in at_fault if not rollouts[i].is_good(present[i])]
        for i in new or at_fault:
            r = rollouts[i]
            faults.extend(p for p in found if r.id in p.deployment.split(","))
            chosen[i] = r.baseline(present[i].metadata.generation or 0)
    return None, faults


def _largest(result: resolve.DeviceResult, chosen: Mapping[int, deployment.Deployment | None],
             rollouts: Sequence[_Rollout]) -> int:
    """The deployment to take back when a document is too large: of those on a generation
    never published before (or of all), the one whose components take the most bytes."""
    sizes: dict[str, int] = {}
    for rc in result.combination.components:  # only on this rare path: no cache needed
        sizes[rc.deployment] = sizes.get(rc.deployment, 0) + len(
            documents.canonical_json(rc.to_dict()))
    present = {i: v for i, v in chosen.items() if v is not None}
    new = [i for i, v in present.items() if not rollouts[i].is_good(v)]
    return max(new or list(present), key=lambda i: sizes.get(rollouts[i].id, 0))


def _render_status(
    r: _Rollout, view: _View, problems: list[resolve.Problem], now: datetime.datetime,
    window: datetime.timedelta, events: list[Event],
) -> deployment.DeploymentStatus:
    old = r.previous
    counts = _counts(r, view, now, window)
    if r.aborted:
        # Rolled-back devices no longer run this generation; report the rollout as it
        # stood when it stopped.
        counts = r.frozen or rollout.Counts(counts.targeted, old.notified, old.succeeded,
                                            old.failed, old.timed_out)
    spec = r.d.spec.rollout
    key = resolve.key_of(r.d)
    executed = counts.succeeded + counts.failed + counts.timed_out
    progress = (f"{counts.notified}/{counts.targeted} notified, {counts.succeeded} succeeded, "
                f"{counts.failed} failed, {counts.timed_out} timed out")
    situation = readiness.resolve_situation(readiness.Facts(
        has_problem=bool(problems), aborted=r.aborted, suspended=spec.suspend,
        targeted=counts.targeted, notified=counts.notified, executed=executed,
        unsuccessful=counts.failed + counts.timed_out))
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        verdicts = readiness.render_conditions(
            situation, progress=progress, detail=first.message + more, cause=first.message,
            cause_reason=first.reason)
    else:
        verdicts = readiness.render_conditions(
            situation, progress=progress,
            detail=f"rollout of generation {r.generation} aborted; {r.rolled_back} devices "
                   f"rolled back; {progress}")
    conditions = list(old.conditions)
    for v in verdicts:
        conditions = render_condition(conditions, v.type, v.status, v.reason, v.message, now,
                                      r.generation)
    ready = verdicts[0]
    t = base.ConditionStatus.TRUE
    was = {c.type: c for c in old.conditions}
    if r.fresh and not problems:
        events.append(Event(key, "Normal", "RolloutStarted",
                            f"rolling out generation {r.generation} to {counts.targeted} devices"))
    if ready.status is t and (was.get(READY) is None or was[READY].status is not t
                              or was[READY].observed_generation != r.generation):
        events.append(Event(key, "Normal", "RolloutFinished", progress))

    # Keep the specs devices still run, and the current one (the next rollout's baseline).
    in_use = {view.record(thing, r.id) for thing in r.targeted}
    older = [h.generation for h in old.history if h.generation < r.generation]
    history = [h for h in old.history if h.generation < r.generation
               and (h.generation in in_use or h.generation == max(older))]
    # Published, to some devices at least (the others had problems): a good generation,
    # whose rollout is under way.
    published = not problems or r.generation in in_use
    if published:
        history.append(deployment.GenerationSpec(generation=r.generation, spec=r.d.spec))
    history = history[-8:]
    return deployment.DeploymentStatus(
        observed_generation=r.generation, targeted=counts.targeted, notified=counts.notified,
        succeeded=counts.succeeded, failed=counts.failed, timed_out=counts.timed_out,
        # Admitting devices starts the rollout's clock even if all of them were refused:
        # otherwise every pass starts it again and its first tick's allowance (one device
        # at a low rate) goes to the same refused devices for ever.
        rolled_back=r.rolled_back,
        rollout=r.state if published or r.promote else old.rollout,
        history=history, conditions=conditions)


@dataclasses.dataclass(frozen=True)
class Change:
    """One line of a dry run: a component added (+), changed (~) or removed (-)."""

    op: str
    name: str
    before: str | None
    after: str | None
    what: str = ""

    def __str__(self) -> str:
        if self.op == "+":
            return f"+ {self.name} {self.after}"
        if self.op == "-":
            return f"- {self.name} {self.before}"
        detail = f" ({self.what})" if self.what else ""
        version = self.after if self.before == self.after else f"{self.before} -> {self.after}"
        return f"~ {self.name} {version}{detail}"


def plan_changes(
    before: Sequence[documents.ResolvedComponent], after: Sequence[documents.ResolvedComponent],
) -> list[Change]:
    old = {c.name: c for c in before}
    new = {c.name: c for c in after}
    changes = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        if a is None and b is not None:
            changes.append(Change("+", name, None, b.version))
        elif b is None and a is not None:
            changes.append(Change("-", name, a.version, None))
        elif a is not None and b is not None and a.spec_hash != b.spec_hash:
            what = [f for f in ("configuration", "lifecycle", "container", "artifacts",
                                "run_with", "dependencies")
                    if getattr(a, f) != getattr(b, f)]
            changes.append(Change("~", name, a.version, b.version, ", ".join(what)))
    return changes
