"""The kopf operator: a thin shell around :func:`hedgerow.core.fleet.plan_fleet`.

- kopf *indexes* hold every Component, ThingGroup, Deployment and Namespace, parsed; an
  informer of our own (``hedgerow.controller.informer``: a list, then a watch) holds every
  CoreDevice, because kopf's initial indexing is quadratic in the number of objects
  (docs/scale.md). The first pass waits for both to be filled from their initial listings,
  so it never decides on a partial view (which, after a restart, would republish).
- Every watch event only marks the fleet dirty (level-triggered); one loop re-plans the
  whole fleet from the indexes, at most every ``min_interval`` seconds, and at the latest
  after ``resync`` seconds or when a rollout window opens or a device times out.
- The last published revision per device lives in CoreDevice.status.desiredRevision and
  in memory; a restart re-plans, finds every revision equal, and publishes nothing.
- Status reports arrive on the paho thread, are folded into an in-memory copy of each
  device's status, and written by one writer: at most one status write per device per
  ``status_interval``, carrying everything that changed meanwhile. A device's reports are
  input from a party the controller does not trust: rate-limited per device (a token
  bucket, ``limits.REPORT_BURST`` / ``REPORT_INTERVAL_SECONDS``), refused over
  ``limits.MAX_REPORT_BYTES`` or the StatusReport model's bounds; refusals are counted,
  logged once per change of reason and shown as the CoreDevice condition
  ``ReportsAccepted``.
- Namespaces are indexed too: their ``hedgerow.dev/enforce`` label is the privilege level
  their Deployments are resolved with.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import datetime
import functools
import json
import logging
import pathlib
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import kopf
import pydantic

from hedgerow import files
from hedgerow.controller import broker as broker_
from hedgerow.controller import informer as informer_
from hedgerow.controller import kube, pki, statuswriter
from hedgerow.controller import leader as leader_
from hedgerow.controller import metrics as metrics_
from hedgerow.core import (
    backoff,
    base,
    component,
    coredevice,
    deployment,
    documents,
    fleet,
    impact,
    limits,
    liveness,
    privilege,
    ratelimit,
    resolve,
    thinggroup,
)
from hedgerow.core import informer as core_informer

logger = logging.getLogger(__name__)
T = TypeVar("T")

_MODELS: Final[dict[str, type[base.Model]]] = {
    "components": component.Component, "thinggroups": thinggroup.ThingGroup,
    "deployments": deployment.Deployment, "coredevices": coredevice.CoreDevice,
}


# The annotations of a CoreDevice the controller reads (the rest are not kept).
_COREDEVICE_ANNOTATIONS: Final = frozenset({pki.APPROVAL_ANNOTATION})
_LAST_SEEN_SECONDS: Final = liveness.DEFAULT_GRANULARITY.total_seconds()


@dataclasses.dataclass(frozen=True)
class Settings:
    broker: broker_.BrokerSettings
    kubeconfig: str | None = None
    resync: float = 60.0
    min_interval: float = 0.2
    status_interval: float = 1.0
    rollout_window: float = 60.0  # seconds in a rollout "minute" (shortened by tests)
    verbose: bool = False
    liveness: str | None = None
    ca_dir: str | None = None  # the fleet CA: sign spec.csr into status.certificate
    metrics: str | None = None  # HOST:PORT of /metrics (off when None)
    leader_election: leader_.Settings | None = None  # replicas: one active (a Lease)
    # Where to write the counters after every pass (JSON, atomically): what tests wait on
    # instead of sleeping (tests/support/passes.py); None: not written.
    stats_file: str | None = None
    # lastSeen alone is written this often (hedgerow.core.liveness); every other change
    # of a device's status is written as it happens (at most once per status_interval).
    last_seen_interval: float = _LAST_SEEN_SECONDS
    # CoreDevice status writes in flight at once (docs/scale.md: measured).
    status_workers: int = 8
    # CoreDevice status writes per second at most (the API server is shared); 0: no budget.
    status_qps: float = 100.0


def parse_body(plural: str, body: Mapping[str, Any]) -> base.Model | None:
    try:
        return _MODELS[plural].model_validate(dict(body))
    except pydantic.ValidationError as exc:
        # The API server validated the schema; this is a model/CRD drift, not user input.
        logger.error("cannot read %s %s: %s", plural, body.get("metadata", {}).get("name"), exc)
        return None


REPORTS_ACCEPTED: Final = "ReportsAccepted"
RATE_LIMITED: Final = "RateLimited"
REPORT_TOO_LARGE: Final = "TooLarge"
REPORT_INVALID: Final = "Invalid"
# A device refused for a while is shown as accepted again once it has kept within the
# rate this long (a full bucket's worth): no flapping while it floods.
_QUIET_SECONDS: Final = limits.REPORT_BURST * limits.REPORT_INTERVAL_SECONDS


_KINDS: Final = {"components": "Component", "thinggroups": "ThingGroup",
                 "deployments": "Deployment", "coredevices": "CoreDevice"}
_RETRY_BASE_S: Final = 0.5
_RETRY_CAP_S: Final = 30.0


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _retry_delay(failures: int) -> float:
    """The shared jittered, capped backoff (hedgerow.core.backoff)."""
    return backoff.resolve_delay(failures - 1, _RETRY_BASE_S, _RETRY_CAP_S, random.random)


def _api_reason(exc: BaseException) -> str:
    """An API error without its response body (which may echo what we sent)."""
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    return f"{status} {reason}" if status is not None else f"{type(exc).__name__}: {exc}"


@dataclasses.dataclass(frozen=True)
class _Observed:
    """What the observe phase of a pass read from kopf's indexes and the informer."""

    coredevices: list[coredevice.CoreDevice]
    gone: list[str]  # things whose CoreDevice was deleted since the last pass
    groups: list[thinggroup.ThingGroup]
    deployments: list[deployment.Deployment]
    components: list[component.Component]
    statuses: dict[resolve.Key, deployment.DeploymentStatus]
    levels: dict[str, privilege.Level]


class Controller:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.window = datetime.timedelta(seconds=settings.rollout_window)
        self.indexes: dict[str, Any] = {}
        self.devices: dict[str, coredevice.CoreDeviceStatus] = {}  # our copy of each status
        self.sequences: dict[str, int] = {}
        # The last report per device that carries an outcome: (its revision, the payload).
        # Read only for a revision about to be (or being) published (the early-report fold
        # of _receive and _publish_all); kept as received, parsed again in that rare case,
        # as its parsed form cost ~2.9 KB per device (docs/scale.md). A report without an
        # outcome is never folded again: none is kept.
        self.reports: dict[str, tuple[str, bytes]] = {}
        # (kind, namespace, name) -> what we last wrote of its status, as a fingerprint
        # (hedgerow.core.liveness: a body per device cost ~1.9 KB, docs/scale.md).
        self.written: dict[tuple[str, str, str], liveness.Written] = {}
        self.deployment_status: dict[resolve.Key, deployment.DeploymentStatus] = {}
        self.fingerprints: dict[tuple[str, str, str], Any] = {}
        self.uids: dict[tuple[str, ...], str | None] = {}  # whose status our caches describe
        # (identities of the inputs, the Fleet built from them, the inputs kept alive)
        self.fleet: tuple[tuple[Any, ...], resolve.Fleet, Any] | None = None
        self.work_pool = concurrent.futures.ThreadPoolExecutor(1, "hedgerow-plan")
        self.api_pool = concurrent.futures.ThreadPoolExecutor(settings.status_workers,
                                                              "hedgerow-status")
        self.writer = statuswriter.StatusWriter(self._write_device, settings.status_interval,
                                                settings.status_workers, settings.status_qps)
        self.last_seen = datetime.timedelta(seconds=settings.last_seen_interval)
        self.heartbeats_skipped = 0  # reports that changed nothing worth a write
        self.reports_accepted = 0
        self.api_writes: dict[str, int] = {}  # status writes sent to the API, by kind
        # Deployment and ThingGroup status (what Argo CD / Flux read) must not queue behind
        # a burst of 1,000 device writes in the FIFO pool above: they get their own thread.
        self.fleet_pool = concurrent.futures.ThreadPoolExecutor(1, "hedgerow-fleet-status")
        self.wake = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.broker: broker_.Broker | None = None
        self.kube: kube.Kube | None = None
        self.passes = 0  # completed passes (tests wait on it: see stats())
        self.skipped_passes = 0  # passes with nothing changed: the last plan stood
        self.last_pass_seconds = 0.0
        self.last_full_pass_seconds = 0.0
        self.last_pass_resolved = 0  # devices resolved by the last pass
        self.resolved_total = 0
        self.planned = False
        self.wake_at: datetime.datetime | None = None  # the last plan's
        # What changed since the last pass (watch events) and which devices' reports
        # changed their Applied state or platform: what an incremental pass resolves.
        self.changes: set[impact.Ref] = set()
        self.dirty_devices: set[str] = set()
        self.must_plan = False  # the next pass plans even if nothing above changed
        self.index: impact.Index | None = None
        self.faults: dict[str, list[resolve.Problem]] = {}  # per device, from its last plan
        self.published = 0
        self.ca: pki.FleetCA | None = None
        self.signed: dict[str, tuple[Any, ...]] = {}  # thing -> what was last checked
        self.buckets: dict[str, ratelimit.Bucket] = {}  # reports accepted per device
        self.refused: dict[str, dict[str, int]] = {}  # thing -> reason -> count
        self.refusing: dict[str, tuple[str, float]] = {}  # thing -> (reason, last refusal)
        self.homeless: set[str] = set()  # CoreDevices without a namespace, already logged
        self.signed_certificates: dict[str, coredevice.CertificateStatus] = {}  # unwritten
        # Status writes the API server refused for good (4xx): (kind, ns, name, field
        # manager) -> the status refused; not tried again until the object or it changes.
        self.refused_writes: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.write_failures: dict[tuple[str, str, str, str], int] = {}  # transient, in a row
        self.refusals_logged: set[tuple[str, str, str, str]] = set()  # until a write succeeds
        self.metrics = metrics_.Metrics()
        self.metrics.controller = self
        # Active: connected to the broker, planning and publishing. A standby (leader
        # election) keeps kopf's indexes filled and waits for the Lease.
        self.leading = False
        self.elector: leader_.Elector | None = None
        self.lead_task: asyncio.Task[None] | None = None
        self.indexed = asyncio.Event()  # kopf's indexes are complete (the first event)
        # CoreDevices: (namespace, name) -> CoreDevice, listed and watched by the
        # informer (started with the controller, active or standby: a standby that takes
        # over has every device already).
        self.informer = informer_.Informer(
            "coredevices", self._parse_coredevice,
            functools.partial(self.poke, {}, "coredevices"))
        self.handler_context: contextvars.Context | None = None  # kopf's, for events
        self.checked: set[str] = set()  # things whose retained document was read (_held)
        self.unacked: dict[str, list[Callable[[], None]]] = {}  # reports not yet written
        self.publishing: set[str] = set()  # things whose documents are being published
        self.early_acks: dict[str, list[Callable[[], None]]] = {}  # see _receive
        self.metrics_runner: Any = None  # the /metrics server (aiohttp), when asked for

    # --- wiring ---------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        # SIGUSR1: look again now (tests waiting for a pass need not wait for a resync).
        with contextlib.suppress(ValueError, RuntimeError):  # not the main thread
            self.loop.add_signal_handler(signal.SIGUSR1, self.wake.set)
        kube.load_config(self.settings.kubeconfig)
        self.kube = kube.Kube()
        self.tasks.append(asyncio.create_task(self.informer.run()))
        if self.settings.ca_dir:
            self.ca = pki.FleetCA.load(pathlib.Path(self.settings.ca_dir))
        self.broker = broker_.Broker(self.settings.broker, self._report_from_thread)
        if self.settings.leader_election is not None:
            self.elector = leader_.Elector(self.settings.leader_election)
        self.lead_task = asyncio.create_task(self._lead())

    async def _lead(self) -> None:
        """Become the active replica: hold the Lease (with leader election), then read
        every device's status, then connect to the broker, then start the loops. The
        broker comes after the devices are known: the session hands over the reports
        queued while no controller was connected at once, and a report for a device not
        yet known would be dropped."""
        if self.elector is not None:
            await self.elector.acquire()
            self.metrics.leadership_changes.inc()
            self.tasks.append(asyncio.create_task(self.elector.hold()))
        await self.indexed.wait()
        await self.informer.listed.wait()
        self._observe()
        assert self.broker is not None
        failures = 0
        while True:
            try:
                await asyncio.to_thread(self.broker.connect)
                break
            except ConnectionError as exc:
                failures += 1
                logger.error("%s; trying again", exc)
                await asyncio.sleep(_retry_delay(failures))
        self.leading = True
        # Created in a handler's context so they can post kopf events.
        context = self.handler_context
        self.tasks.append(asyncio.create_task(self._reconcile_loop(), context=context))
        self.writer.start()
        self.wake.set()

    async def stop(self) -> None:
        for task in [*self.tasks, *([self.lead_task] if self.lead_task else [])]:
            task.cancel()
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
        await self.writer.stop()
        if self.broker is not None:
            await asyncio.to_thread(self.broker.close)
        if self.elector is not None:  # after the broker: the session is free for the next
            await asyncio.to_thread(self.elector.release)
        self.work_pool.shutdown(wait=False, cancel_futures=True)
        self.api_pool.shutdown(wait=False, cancel_futures=True)
        self.fleet_pool.shutdown(wait=False, cancel_futures=True)

    def poke(self, indexes: Mapping[str, Any], plural: str, event_type: str | None,
             body: Mapping[str, Any]) -> None:
        """Called by every kopf watch event once kopf's indexes are complete, and by the
        informer for every CoreDevice listed or changed (with no indexes: it has its own).
        """
        self.indexes.update(indexes)
        if self.handler_context is None and plural != "coredevices":
            self.handler_context = contextvars.copy_context()
            self.indexed.set()
        # Statuses are ours: a watch event that changed neither the spec (generation) nor
        # the labels is most likely our own status write and cannot change any decision.
        meta = body.get("metadata", {})
        if plural == "coredevices" and event_type != "DELETED":
            self._observe_certificate(meta.get("name", ""), body)
        key = (plural, meta.get("namespace") or "", meta.get("name", ""))
        # A write of ours refused for good is tried again once the object changed.
        for manager in (kube.CONTROLLER, kube.SIGNER):
            self.refused_writes.pop((_KINDS.get(plural, ""), key[1], key[2], manager), None)
        fingerprint: tuple[Any, ...] = (
            meta.get("generation"), tuple(sorted((meta.get("labels") or {}).items())))
        if plural == "coredevices":
            # `hedgerow device approve` only annotates: the CSR is signed on this pass,
            # not at the next resync.
            fingerprint += ((meta.get("annotations") or {}).get(pki.APPROVAL_ANNOTATION),)
        if event_type == "DELETED":
            self.fingerprints.pop(key, None)
        elif self.fingerprints.get(key) == fingerprint:
            return
        else:
            self.fingerprints[key] = fingerprint
        ref = _change_of(plural, key[1], key[2], body)
        if ref is not None:
            self.changes.add(ref)
        self.wake.set()

    def _parse_coredevice(self, body: Mapping[str, Any]) -> base.Model | None:
        """A CoreDevice as the informer keeps it. Its status is read once per object (uid),
        when ``_observe`` starts our copy from it; after that the status in the API server
        is our own writes echoed back, and keeping 10,000 parsed copies of it beside ours
        cost ~45 MB (docs/scale.md). So once our copy of this uid exists, the status is
        left out (status.certificate, which others write, is read from the event's body
        by ``_observe_certificate``). Runs on the informer's decoding thread too: a uid
        read while ``_observe`` adds it only keeps a status it did not need."""
        meta = body.get("metadata") or {}
        known = self.uids.get(("", str(meta.get("name") or "")))
        keep_status = known is None or known != meta.get("uid")
        # Of the metadata only what the controller reads (of the annotations, the
        # approval): managedFields alone were ~8 KB per device after a rollout's status
        # writes (docs/scale.md).
        return parse_body("coredevices", core_informer.trim(
            body, status=keep_status, annotations=_COREDEVICE_ANNOTATIONS))

    def _observe_certificate(self, thing: str, body: Mapping[str, Any]) -> None:
        """`hedgerow device register` writes status.certificate itself (its own field
        manager: our writes leave it alone). Keep the newest certificate seen in our copy,
        which the CSR signer decides from; it is never written back from here."""
        raw = (body.get("status") or {}).get("certificate")
        status = self.devices.get(thing)
        if not raw or status is None:
            return
        try:
            cert = coredevice.CertificateStatus.model_validate(raw)
        except pydantic.ValidationError:
            return
        ours = status.certificate
        if cert == ours or not cert.pem:
            return
        if ours is not None and ours.not_after and cert.not_after and (
                cert.not_after < ours.not_after):
            return  # an echo of an older write of ours (renewals only move forward)
        self.devices[thing] = status.model_copy(update={"certificate": cert})

    def _sign(self, coredevices: list[coredevice.CoreDevice], now: datetime.datetime,
              only: set[str] | None = None) -> None:
        """``only``: the devices that changed (a full pass looks at every device: the
        daily renewal check rides on it)."""
        if self.ca is not None:
            for cd in coredevices:
                if only is None or cd.metadata.name in only:
                    self._sign_one(cd, now)

    def _sign_one(self, cd: coredevice.CoreDevice, now: datetime.datetime) -> None:
        """GitOps: sign spec.csr into status.certificate (checked again when the spec or
        the certificate changes, and once a day for renewal)."""
        thing = cd.metadata.name
        status = self.devices[thing]
        # The approval annotation changes no generation: it is part of what was checked.
        checked = (cd.metadata.generation, status.certificate, now.date(),
                   cd.metadata.annotations.get(pki.APPROVAL_ANNOTATION))
        if self.ca is None or not cd.spec.csr or self.signed.get(thing) == checked:
            return
        self.signed[thing] = checked
        try:
            cert = pki.certificate_for(cd.model_copy(update={"status": status}), self.ca,
                                       now=now)
        except pki.CertificateRequestError as exc:
            logger.warning("not signing the CSR of %s: %s", thing, exc)
            return
        if cert is not None:
            self.devices[thing] = status.model_copy(update={"certificate": cert})
            self.signed_certificates[thing] = cert  # written by the signer's field manager
            self._mark(thing)
            logger.info("signed the CSR of %s (valid until %s)", thing, cert.not_after)

    async def _work(self, fn: Callable[..., T], *args: Any) -> T:
        """Planning and publishing run on their own thread, never queued behind a burst
        of status writes (which have theirs)."""
        return await asyncio.get_running_loop().run_in_executor(self.work_pool, fn, *args)

    # --- reconcile ------------------------------------------------------------------

    def levels(self) -> dict[str, privilege.Level]:
        """The privilege level of every namespace (absent ones get the default)."""
        index = self.indexes.get("namespace_index") or {}
        return {name: privilege.resolve_level(labels)
                for name, store in index.items() for labels in store}

    def _objects(self, name: str) -> list[Any]:
        index = self.indexes.get(name)
        if index is None:
            return []
        return [obj for store in index.values() for obj in store]

    async def _reconcile_loop(self) -> None:
        timeout = self.settings.resync
        loop = asyncio.get_running_loop()
        full_at = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=timeout)
            self.wake.clear()
            started = loop.time()
            # Every --resync, and on the first pass, every device is resolved again (the
            # level-triggered safety net); in between, only what changes can affect.
            full = self.passes == 0 or started - full_at >= self.settings.resync
            if full:
                full_at = started
            try:
                wake_at = await self.reconcile_once(full)
                self.metrics.observe_pass(asyncio.get_running_loop().time() - started)
            except Exception:
                logger.exception("reconcile pass failed; retrying")
                self.metrics.observe_pass(asyncio.get_running_loop().time() - started, True)
                wake_at = None
                full_at = -self.settings.resync  # what it consumed is looked at again
                await asyncio.sleep(1.0)
            timeout = self.settings.resync
            if wake_at is not None:
                timeout = max(0.0, min(timeout, (wake_at - _now()).total_seconds()))
            # Events arriving meanwhile coalesce into the next pass. Resting as long as
            # the pass took keeps a large fleet's re-planning under half of one core.
            took = asyncio.get_running_loop().time() - started
            await asyncio.sleep(max(self.settings.min_interval, took))

    async def reconcile_once(self, full: bool = True) -> datetime.datetime | None:
        """One pass, as a checklist of phases (Flux's reconcilers): each phase takes what
        the ones before it left, and the decisions are the core's (``fleet.plan_fleet``).
        ``full``: resolve every device; otherwise only those the changes since the last
        pass can affect (``hedgerow.core.impact``), and nothing at all when nothing
        changed and no timer is due: the last plan stands."""
        started = time.perf_counter()
        now = _now()
        changes, self.changes = self.changes, set()
        dirty, self.dirty_devices = self.dirty_devices, set()
        must, self.must_plan = self.must_plan, False
        if not full and not must and not changes and not dirty and self.planned and (
                self.wake_at is None or now < self.wake_at):
            self.skipped_passes += 1
            self.last_pass_resolved = 0
            self._passed(started)
            return self.wake_at
        seen = self._observe()  # the indexes, and our copy of every device's status
        await self._forget(seen.gone)  # clear the retained documents of deleted devices
        only = None if full else self._affected(seen, changes, dirty)
        self._sign(seen.coredevices, now, only)  # GitOps: spec.csr -> status.certificate
        plan = await self._plan(seen, now, only)  # core: what to publish, statuses, events
        if only is None:  # the next incremental pass compares against this fleet
            self.index = self._build_index(seen)
        await self._publish(plan, now)  # documents, then the devices' Applied conditions
        await self._report(seen, plan)  # Deployment and ThingGroup status, events
        self.wake_at = plan.wake_at
        self._passed(started, full=only is None)
        return plan.wake_at

    def _replan(self, *things: str) -> None:
        """Plan again soon, resolving ``things`` again (none: only the counts and
        statuses need a new look)."""
        self.dirty_devices.update(things)
        self.must_plan = True
        self.wake.set()

    def _affected(self, seen: _Observed, changes: set[impact.Ref],
                  dirty: set[str]) -> set[str]:
        """The devices the changes since the last pass can affect: from the index before
        the changes and the one after (rebuilt when the objects or devices changed)."""
        before = self.index
        self._ensure_fleet(seen)
        assert self.fleet is not None
        # A device may have been added or deleted since the index was built: the index
        # must describe exactly the devices this pass plans with.
        if before is None or before is not self.index or any(
                ref[0] in (impact.CORE_DEVICE, impact.NAMESPACE) for ref in changes) or (
                {cd.metadata.name for cd in seen.coredevices} != before.things):
            self.index = self._build_index(seen)
        return impact.resolve_affected(before, self.index, changes) | dirty

    def _build_index(self, seen: _Observed) -> impact.Index:
        assert self.fleet is not None
        return impact.Index(self.fleet[1], ((cd.metadata.name, cd.metadata.labels,
                                            cd.spec.namespace) for cd in seen.coredevices))

    def _passed(self, started: float, full: bool = False) -> None:
        self.last_pass_seconds = time.perf_counter() - started
        if full:
            self.last_full_pass_seconds = self.last_pass_seconds
        self.passes += 1
        if self.settings.stats_file:
            try:
                files.write_atomic(pathlib.Path(self.settings.stats_file),
                                   json.dumps(self.stats(), sort_keys=True).encode(), 0o644,
                                   durable=False)  # a counter, not a record: no fsync
            except OSError as exc:
                logger.warning("cannot write %s: %s", self.settings.stats_file, exc)

    def stats(self) -> dict[str, Any]:
        """Plain counters (what metrics will export): passes completed, documents
        published, whether the broker session is up."""
        w = self.writer
        return {"passes": self.passes, "published": self.published,
                "brokerConnected": self.broker is not None and self.broker.connected,
                "reportsAccepted": self.reports_accepted,
                "heartbeatsSkipped": self.heartbeats_skipped,
                "statusWrites": w.writes, "statusOffered": w.offered,
                "apiWrites": dict(self.api_writes),
                "statusCoalesced": w.coalesced, "statusQueue": w.depth,
                "statusQueueMax": w.max_depth,
                "statusWriteSeconds": round(w.write_seconds, 3),
                "statusThrottledSeconds": round(w.throttled_seconds, 3),
                "skippedPasses": self.skipped_passes,
                "lastPassSeconds": round(self.last_pass_seconds, 6),
                "lastFullPassSeconds": round(self.last_full_pass_seconds, 6),
                "lastPassResolved": self.last_pass_resolved,
                "resolvedTotal": self.resolved_total,
                "coreDeviceLists": self.informer.lists,
                "coreDeviceWatches": self.informer.watches}

    def _observe(self) -> _Observed:
        """Read the indexes; start or forget our copy of each object's status when its
        uid is new or gone (a deleted and re-created object starts from what it says)."""
        coredevices: list[coredevice.CoreDevice] = list(self.informer.index.values())
        seen = set()
        for cd in coredevices:
            thing = cd.metadata.name
            seen.add(thing)
            if self.uids.get(("", thing)) != cd.metadata.uid:
                self.uids[("", thing)] = cd.metadata.uid
                self.devices[thing] = cd.status or coredevice.CoreDeviceStatus()
                self.written.pop(("CoreDevice", "", thing), None)
            status = self.devices[thing]
            if status.observed_generation != cd.metadata.generation:
                # Carried by the next write this device needs anyway: a write of its own
                # for every device on the first run would only delay the publishing.
                self.devices[thing] = status.model_copy(
                    update={"observed_generation": cd.metadata.generation})
            if cd.spec.namespace is None and thing not in self.homeless:
                self.homeless.add(thing)  # stored before tenancy: said once, not every pass
                logger.warning("CoreDevice %s has no spec.namespace: nothing reaches it (it "
                               "keeps its document) until the fleet admin sets one", thing)
            elif cd.spec.namespace is not None:
                self.homeless.discard(thing)
        gone = sorted(set(self.devices) - seen)
        for thing in gone:
            del self.devices[thing]
            self.reports.pop(thing, None)
            self.signed.pop(thing, None)
            self.signed_certificates.pop(thing, None)
            self.uids.pop(("", thing), None)
            self.buckets.pop(thing, None)
            self.refusing.pop(thing, None)
            self.writer.forget(thing)
            self.faults.pop(thing, None)
        deployments: list[deployment.Deployment] = self._objects("deployment_index")
        statuses = {}
        for d in deployments:
            key = resolve.key_of(d)
            if self.uids.get(key) != d.metadata.uid:
                self.uids[key] = d.metadata.uid
                self.deployment_status.pop(key, None)
                self.written.pop(("Deployment", *key), None)
            # Our latest writes, which the watch may not have delivered yet.
            dstatus = self.deployment_status.get(key) or d.status
            if dstatus is not None:
                statuses[key] = dstatus
        return _Observed(coredevices, gone, self._objects("thinggroup_index"), deployments,
                         self._objects("component_index"), statuses, self.levels())

    async def _forget(self, gone: list[str]) -> None:
        """A deleted CoreDevice's retained document goes too (an empty retained message
        clears it), so a re-registered device starts from nothing."""
        if gone:
            assert self.broker is not None
            await self._work(self.broker.publish_desired, [(t, b"") for t in gone])

    def _ensure_fleet(self, seen: _Observed) -> None:
        # kopf's index replaces an object only when a watch event brings a new version, so
        # unchanged identities mean unchanged inputs: keep the Fleet and all it resolved.
        identity = (*(id(o) for o in (*seen.groups, *seen.deployments, *seen.components)),
                    *sorted(seen.levels.items()))
        if self.fleet is None or self.fleet[0] != identity:
            self.fleet = (identity, resolve.Fleet(seen.groups, seen.deployments,
                                                  seen.components, seen.levels),
                          (seen.groups, seen.deployments, seen.components))
            self.index = None  # built from the Fleet: built again when asked for

    async def _plan(self, seen: _Observed, now: datetime.datetime,
                    only: set[str] | None = None) -> fleet.FleetPlan:
        self._ensure_fleet(seen)
        assert self.fleet is not None
        devices = [fleet.Device(cd.metadata.name, cd.metadata.labels,
                                self.devices[cd.metadata.name], cd.spec.namespace)
                   for cd in seen.coredevices]
        plan = await self._work(
            functools.partial(fleet.plan_fleet, devices, seen.groups, seen.deployments,
                              seen.components, now, self.window, fleet=self.fleet[1],
                              statuses=seen.statuses, levels=seen.levels, only=only,
                              faults=self.faults,
                              # Built from this Fleet and these devices (see _affected).
                              index=self.index if only is not None else None))
        if only is None:
            self.faults = plan.faults
        else:
            self.faults.update(plan.faults)
        self.planned = True
        self.last_pass_resolved = plan.visited
        self.resolved_total += plan.visited
        if self.passes == 0:
            logger.info("first pass: %d devices, %d documents to publish",
                        len(devices), len(plan.publishes))
        return plan

    async def _publish(self, plan: fleet.FleetPlan, now: datetime.datetime) -> None:
        """Publish the documents; the devices whose PUBACK came are Notified."""
        if not plan.publishes:
            return
        assert self.broker is not None
        self.publishing = {p.thing for p in plan.publishes}
        try:
            await self._publish_all(plan, now)
        finally:
            self.publishing = set()
            for thing, acks in self.early_acks.items():  # written with the revision
                self._mark(thing)
                self._ack_after_write(thing, acks)
            self.early_acks = {}

    async def _publish_all(self, plan: fleet.FleetPlan, now: datetime.datetime) -> None:
        assert self.broker is not None
        planned = {p.thing: p.revision for p in plan.publishes}
        held = {t: r for t, r in (await self._held(plan.publishes)).items()
                if planned.get(t) == r}  # the broker holds what we were to publish
        sending = [p for p in plan.publishes if p.thing not in held]
        with metrics_.Timer() as took:
            sent = set(await self._work(
                self.broker.publish_desired, [(p.thing, p.payload) for p in sending]))
        self.metrics.observe_publish(len(sent), len(sending) - len(sent), took.seconds)
        if len(sending) < len(plan.publishes):
            logger.info("%d desired documents were published before this replica became "
                        "active (the broker holds them): recorded, not published again",
                        len(plan.publishes) - len(sending))
            sent.update(held)
        for p in plan.publishes:
            if p.thing not in sent:
                self.dirty_devices.add(p.thing)  # resolved (and tried) again next pass
                continue
            self.devices[p.thing], replan = fleet.render_published(
                self.devices[p.thing], p, self._early_report(p.thing, p.revision), now)
            if replan:
                self._replan(p.thing)
            self._mark(p.thing)
        self.published += len(sent) - len(held)
        logger.info("published %d desired documents", len(sent) - len(held))
        if len(sent) < len(plan.publishes):
            self.wake.set()  # try the rest again on the next pass

    def _early_report(self, thing: str, revision: str) -> documents.StatusReport | None:
        """The device's last report if its outcome is for ``revision`` (else None: it has
        nothing to fold into a document of that revision)."""
        last = self.reports.get(thing)
        if last is None or last[0] != revision:
            return None
        return documents.StatusReport.model_validate_json(last[1])

    async def _held(self, publishes: list[fleet.Publish]) -> dict[str, str]:
        """thing -> the revision the broker holds, for the things not checked since this
        replica became active: a document the previous active replica (or process)
        published but had no time to record is recorded now, not published twice. Each
        thing is checked once: after that this replica's own records are the truth."""
        assert self.broker is not None
        unchecked = [p.thing for p in publishes if p.payload and p.thing not in self.checked]
        if not unchecked:
            return {}
        try:
            held = await self._work(self.broker.fetch_published, unchecked)
        except (OSError, TimeoutError) as exc:
            logger.warning("could not read the documents the broker holds (%s): publishing "
                           "without checking; a device may get a document twice", exc)
            held = {}
        self.checked.update(unchecked)
        return held

    async def _report(self, seen: _Observed, plan: fleet.FleetPlan) -> None:
        """Deployment and ThingGroup status (what Argo CD and Flux read), then events.
        Devices' statuses have their own writer (``statuswriter``)."""
        for key, dstatus in plan.deployments.items():
            self.deployment_status[key] = dstatus
            await self._write_status("Deployment", key[0], key[1], dstatus.to_dict())
        groups = {resolve.key_of(g): g for g in seen.groups}
        for gkey, count in plan.member_counts.items():
            group = groups.get(gkey)
            if group is None:
                continue
            if self.uids.get(("ThingGroup", *gkey)) != group.metadata.uid:
                self.uids[("ThingGroup", *gkey)] = group.metadata.uid
                self.written.pop(("ThingGroup", *gkey), None)
            await self._write_status("ThingGroup", gkey[0], gkey[1],
                                     fleet.render_group_status(group, count).to_dict())
        by_key = {resolve.key_of(d): d for d in seen.deployments}
        for event in plan.events:
            d = by_key.get(event.deployment)
            if d is not None:
                self._post_event(d, event)

    async def _write_status(self, kind: str, namespace: str, name: str,
                            status: dict[str, Any], manager: str = kube.CONTROLLER) -> bool:
        """Write only what changed since our last write (each field manager owns its own
        fields). Errors are translated here, once: a 4xx is permanent (logged once, not
        retried until the object or the status changes), anything else transient (tried
        again after a capped, jittered backoff). Returns whether the status is written."""
        key = (kind, namespace, name)
        ours = manager == kube.CONTROLLER  # the other writers write once, when asked
        written = liveness.fingerprint(status) if ours else None
        if written is not None and self.written.get(key) == written:
            return True
        wkey = (*key, manager)
        if self.refused_writes.get(wkey) == status:
            return False
        assert self.kube is not None
        loop = asyncio.get_running_loop()
        took = metrics_.Timer()
        try:
            pool = self.api_pool if kind == "CoreDevice" else self.fleet_pool
            self.api_writes[kind] = self.api_writes.get(kind, 0) + 1
            with took:
                await loop.run_in_executor(pool, functools.partial(
                    self.kube.apply_status, kind, namespace or None, name, status, manager))
        except Exception as exc:
            permanent = kube.is_permanent(exc)
            self.metrics.observe_write(kind, "refused" if permanent else "transient",
                                       took.seconds)
            if permanent:
                if wkey not in self.refusals_logged:  # a change of state, not a repeat
                    self.refusals_logged.add(wkey)
                    logger.error("status of %s %s/%s refused (not retried until it or the "
                                 "object changes): %s", kind, namespace, name,
                                 _api_reason(exc))
                self.refused_writes[wkey] = status
                self.write_failures.pop(wkey, None)
                return False
            failures = self.write_failures[wkey] = self.write_failures.get(wkey, 0) + 1
            delay = _retry_delay(failures)
            if failures == 1:
                logger.warning("status of %s %s/%s not written, retrying: %s", kind,
                               namespace, name, _api_reason(exc))
            loop.call_later(delay, self._retry_write, kind, name)
            return False
        self.metrics.observe_write(kind, "ok", took.seconds)
        self.refused_writes.pop(wkey, None)
        self.refusals_logged.discard(wkey)
        if self.write_failures.pop(wkey, None):
            logger.info("status of %s %s/%s written again", kind, namespace, name)
        if written is not None:
            self.written[key] = written
        return True

    def _retry_write(self, kind: str, name: str) -> None:
        """A transient failure's retry: a device's status goes back to its writer; a
        Deployment's or ThingGroup's is written by the next pass (not marked written)."""
        if kind == "CoreDevice":
            self._mark(name)
        else:
            self._replan()

    def _post_event(self, d: deployment.Deployment, event: fleet.Event) -> None:
        body: dict[str, Any] = {"apiVersion": base.API_VERSION, "kind": "Deployment",
                "metadata": {"name": d.metadata.name, "namespace": d.metadata.namespace,
                             "uid": d.metadata.uid}}
        try:
            kopf.event(kopf.Body(body),  # type: ignore[arg-type]
                       type=event.type, reason=event.reason, message=event.message)
        except LookupError:  # outside kopf's context (never in the operator)
            logger.info("event %s %s: %s", event.reason, d.metadata.name, event.message)
        logger.info("%s/%s %s: %s", d.metadata.namespace, d.metadata.name, event.reason,
                    event.message)

    # --- device status ----------------------------------------------------------------

    def _report_from_thread(self, thing: str, payload: bytes, ack: Callable[[], None]) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._receive, thing, payload, ack)

    def _receive(self, thing: str, payload: bytes, ack: Callable[[], None]) -> None:
        """Fold a report; acknowledge it to the broker once what it changed is written
        (``_write_device``), at once when it changed nothing. A report this process
        received but did not write before it died is thus delivered to the next one."""
        self.fold_report(thing, payload)
        last = self.reports.get(thing)
        if thing in self.publishing and last is not None \
                and last[0] != self.devices[thing].desired_revision:
            # On a document whose PUBACK is still on its way: it counts only once the
            # revision is recorded (render_published), so it waits for that write.
            self.early_acks.setdefault(thing, []).append(ack)
        else:
            self._ack_after_write(thing, [ack])

    def _ack_after_write(self, thing: str, acks: list[Callable[[], None]]) -> None:
        """Acknowledge with the device's next status write, when one is due; at once
        when none is (what the reports changed is already written, or not worth it)."""
        if self.writer.priority_of(thing) is not None:
            self.unacked.setdefault(thing, []).extend(acks)
            return
        for ack in acks:
            ack()

    def fold_report(self, thing: str, payload: bytes, clock: float | None = None) -> None:
        self.metrics.reports.inc()
        if thing not in self.devices:
            return  # not a registered device: nothing to fold it into
        clock = time.monotonic() if clock is None else clock
        # The rate first: a flood costs one bucket update per message, never a parse.
        accepted, self.buckets[thing] = ratelimit.plan_take(
            self.buckets.get(thing), clock, limits.REPORT_BURST, limits.REPORT_INTERVAL_SECONDS)
        if not accepted:
            self._refuse(thing, RATE_LIMITED, (
                f"more than {limits.REPORT_BURST} reports at once or more than one per "
                f"{limits.REPORT_INTERVAL_SECONDS:g} s on average; the excess is dropped"),
                clock)
            return
        if len(payload) > limits.MAX_REPORT_BYTES:
            self._refuse(thing, REPORT_TOO_LARGE, (
                f"a report of {len(payload)} bytes, over the limit of "
                f"{limits.MAX_REPORT_BYTES} (MAX_REPORT_BYTES)"), clock)
            return
        try:
            report = documents.StatusReport.model_validate_json(payload)
        except pydantic.ValidationError as exc:
            # Where and what, never the device's input itself.
            first = exc.errors(include_input=False, include_url=False)[0]
            where = ".".join(str(x) for x in first["loc"])
            self._refuse(thing, REPORT_INVALID, f"not a valid StatusReport: {where}: "
                         f"{first['msg']}", clock)
            return
        if report.thing != thing:
            self._refuse(thing, REPORT_INVALID, "the report names another thing than its "
                         "topic", clock)
            return
        if report.sequence <= self.sequences.get(thing, -1):
            return  # stale or duplicate (QoS 1 may redeliver)
        self._accept(thing, clock)
        self.sequences[thing] = report.sequence
        if report.deployment is not None:
            self.reports[thing] = (sys.intern(report.deployment.revision), payload)
        else:
            self.reports.pop(thing, None)
        self.reports_accepted += 1
        old = self.devices[thing]
        new = fleet.render_report(old, report, _now())
        self.devices[thing] = new
        self._mark(thing)
        if fleet.applied_state(new) != fleet.applied_state(old) or new.platform != old.platform:
            self._replan(thing)  # counts, abort criteria or the platform changed

    def _refuse(self, thing: str, reason: str, message: str, clock: float) -> None:
        """Count a refused report; log and show it only when the reason changes."""
        counts = self.refused.setdefault(thing, {})
        counts[reason] = counts.get(reason, 0) + 1
        before = self.refusing.get(thing)
        self.refusing[thing] = (reason, clock)
        if before is not None and before[0] == reason:
            return
        logger.warning("refusing status reports of %s: %s", thing, message)
        self._show_reports(thing, base.ConditionStatus.FALSE, reason, message)

    def _accept(self, thing: str, clock: float) -> None:
        before = self.refusing.get(thing)
        if before is None or clock - before[1] < _QUIET_SECONDS:
            return
        del self.refusing[thing]
        total = sum(self.refused.get(thing, {}).values())
        logger.info("accepting status reports of %s again (%d refused so far)", thing, total)
        self._show_reports(thing, base.ConditionStatus.TRUE, "Accepted",
                           f"{total} reports refused so far")

    def _show_reports(self, thing: str, status: base.ConditionStatus, reason: str,
                      message: str) -> None:
        old = self.devices[thing]
        conditions = fleet.render_condition(old.conditions, REPORTS_ACCEPTED, status, reason,
                                            message, _now())
        self.devices[thing] = old.model_copy(update={"conditions": conditions})
        self._mark(thing)

    def _mark(self, thing: str) -> None:
        """Offer the device's status to the writer if what changed is worth a write, with
        its urgency (hedgerow.core.liveness): a heartbeat that changed nothing but
        lastSeen costs no write until lastSeen is due."""
        status = self.devices.get(thing)
        if status is None:
            return
        priority = liveness.resolve_priority(self.written.get(("CoreDevice", "", thing)),
                                             _device_body(status), self.last_seen)
        if priority is None and thing in self.signed_certificates:
            priority = liveness.Priority.VISIBLE
        if priority is None:
            self.heartbeats_skipped += 1
            return
        self.writer.offer(thing, priority)

    async def _write_device(self, thing: str) -> None:
        acks = self.unacked.pop(thing, [])
        written = await self._write_device_status(thing)
        if not written and (("CoreDevice", "", thing, kube.CONTROLLER) in self.write_failures):
            # Retried (transient): acknowledged once written.
            self.unacked[thing] = acks + self.unacked.get(thing, [])
            return
        for ack in acks:  # written, or never writable (gone, refused for good)
            ack()

    async def _write_device_status(self, thing: str) -> bool:
        status = self.devices.get(thing)
        if status is None:
            return False
        cert = self.signed_certificates.get(thing)
        if cert is not None and await self._write_status(
                "CoreDevice", "", thing, {"certificate": cert.to_dict()}, kube.SIGNER):
            self.signed_certificates.pop(thing, None)
        return await self._write_status("CoreDevice", "", thing, _device_body(status))


def _change_of(plural: str, namespace: str, name: str,
               body: Mapping[str, Any]) -> impact.Ref | None:
    """What a watch event changed, as the index names it (a Component by its component
    name: every version of it)."""
    if plural == "components":
        spec = body.get("spec") or {}
        return (impact.COMPONENT, namespace, str(spec.get("name") or name))
    kind = {"deployments": impact.DEPLOYMENT, "thinggroups": impact.THING_GROUP,
            "coredevices": impact.CORE_DEVICE, "namespaces": impact.NAMESPACE}.get(plural)
    return None if kind is None else (kind, namespace, name)


def _device_body(status: coredevice.CoreDeviceStatus) -> dict[str, Any]:
    """The CoreDevice status the controller writes: status.certificate belongs to its
    writers (the signer, `hedgerow device register`); leaving it out never removes it."""
    body = status.to_dict()
    body.pop("certificate", None)
    return body


def build_registry(controller: Controller) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    group, version = base.GROUP, base.VERSION

    def make_index(plural: str) -> Any:
        async def index(body: kopf.Body, namespace: str | None, name: str,
                        **_: Any) -> dict[tuple[str, str], Any] | None:
            model = parse_body(plural, body)
            return None if model is None else {(namespace or "", name): model}
        return index

    def make_event(plural: str) -> Any:
        async def on_event(body: kopf.Body, **kwargs: Any) -> None:
            controller.poke({k: v for k, v in kwargs.items() if k.endswith("_index")},
                            plural, kwargs.get("type"), body)
        return on_event

    # CoreDevices are the informer's (Controller.informer): kopf indexes the few others.
    for plural in ("components", "thinggroups", "deployments"):
        kind = plural[:-1]
        kopf.index(group, version, plural, id=f"{kind}_index",
                   registry=registry)(make_index(plural))

        kopf.on.event(group, version, plural, id=f"{kind}_event",
                      registry=registry)(make_event(plural))

    # Namespaces: their labels grant privilege levels (hedgerow.dev/enforce).
    @kopf.index("v1", "namespaces", id="namespace_index", registry=registry)
    async def namespace_index(name: str, labels: Mapping[str, str],
                              **_: Any) -> dict[str, dict[str, str]]:
        return {name: dict(labels)}

    kopf.on.event("v1", "namespaces", id="namespace_event",
                  registry=registry)(make_event("namespaces"))

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        # A custom registry does not get kopf's default login handlers.
        if controller.settings.kubeconfig:
            return kopf.login_with_kubeconfig(**kwargs)
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Standalone, no peering; the statuses we write need no kopf progress storage.
        settings.posting.level = logging.INFO
        settings.watching.server_timeout = 300
        # One line per watch event ("Handler succeeded") is noise at 10,000 devices.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        if controller.settings.metrics:
            # Before anything that may wait (the broker): a standby is scraped too.
            controller.metrics_runner = await metrics_.serve(
                controller.metrics, metrics_.resolve_address(controller.settings.metrics))
        await controller.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await controller.stop()

    @kopf.on.probe(id="published", registry=registry)
    def published(**_: Any) -> int:
        return controller.published

    @kopf.on.probe(id="refusedReports", registry=registry)
    def refused_reports(**_: Any) -> dict[str, int]:
        totals: dict[str, int] = {}
        for counts in controller.refused.values():
            for reason, n in counts.items():
                totals[reason] = totals.get(reason, 0) + n
        return totals

    return registry


def run(settings: Settings) -> None:
    """Run the operator until interrupted (clusterwide, standalone)."""
    import os

    if settings.kubeconfig:
        os.environ["KUBECONFIG"] = settings.kubeconfig
    controller = Controller(settings)
    kopf.configure(verbose=settings.verbose)
    kopf.run(registry=build_registry(controller), standalone=True, clusterwide=True,
             liveness_endpoint=settings.liveness)
