"""Leader election for controller replicas over a coordination.k8s.io/v1 Lease (the
decisions are hedgerow.core.leadership's; this module reads and writes the Lease).

One replica is active: it holds the Lease, connects to the broker with the fleet's one
persistent session, publishes and writes status. The others stand by with kopf's
indexes full (so a takeover does not wait for a 10,000-object listing) and no broker
connection: a standby that connected with the controller's client id would take the
session -- and the reports queued in it -- away from the active replica.

A holder that cannot renew within the renew deadline exits the process at once (as
kube-controller-manager does): it can never publish after another replica may have
taken over, and Kubernetes restarts it as a standby. On a graceful stop the holder
releases the Lease so a standby takes over without waiting for it to expire.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

from kubernetes import client

from hedgerow.core import leadership

logger = logging.getLogger(__name__)

GROUP: Final = "coordination.k8s.io"
VERSION: Final = "v1"
PLURAL: Final = "leases"
_SERVICE_ACCOUNT_NAMESPACE: Final = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


@dataclasses.dataclass(frozen=True)
class Settings:
    namespace: str
    name: str = "hedgerow-controller"
    duration_s: int = 8  # a standby takes over this long after the holder's last renew
    identity: str = ""  # default: hostname (the pod's name) and a random suffix

    @property
    def retry_s(self) -> float:
        """How often the holder renews and a standby looks."""
        return max(0.25, self.duration_s / 8)

    @property
    def renew_deadline_s(self) -> float:
        """The holder stops this long after its last renew: well before a standby may
        take over (``duration_s`` after it last saw the record change)."""
        return self.duration_s * 0.7


def default_namespace() -> str:
    """The pod's own namespace in a cluster, else ``default``."""
    try:
        with open(_SERVICE_ACCOUNT_NAMESPACE) as f:  # noqa: PTH123 - one read
            return f.read().strip() or "default"
    except OSError:
        return "default"


def default_identity() -> str:
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Elector:
    def __init__(self, settings: Settings, on_lost: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.identity = settings.identity or default_identity()
        self.api = client.CustomObjectsApi()
        self.seen: leadership.Seen | None = None
        self.holding = False
        self.on_lost = on_lost or _exit
        self._failure: str | None = None  # the last error, logged once

    # --- one look (a thread: the kubernetes client is synchronous) --------------------

    def _fetch(self) -> tuple[leadership.Record | None, str | None]:
        s = self.settings
        try:
            lease: dict[str, Any] = self.api.get_namespaced_custom_object(  # type: ignore[assignment]
                GROUP, VERSION, s.namespace, PLURAL, s.name, _request_timeout=(2, 5))
        except client.ApiException as exc:
            if exc.status == 404:
                return None, None
            raise
        return (leadership.resolve_record(lease.get("spec")),
                lease.get("metadata", {}).get("resourceVersion"))

    def look(self) -> bool:
        """Read the Lease, and take, create or renew it when that is the step; whether we
        hold it now. Raises on API errors other than losing a race (409)."""
        s = self.settings
        record, version = self._fetch()
        now = time.monotonic()
        self.seen = leadership.plan_seen(self.seen, record, now)
        step = leadership.plan_step(self.seen, self.identity, now)
        if step is leadership.Step.WAIT:
            return False
        spec = leadership.render_spec(step, self.seen, self.identity, s.duration_s, _now())
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Lease",
                "metadata": {"name": s.name, "namespace": s.namespace}, "spec": spec}
        try:
            if step is leadership.Step.CREATE:
                self.api.create_namespaced_custom_object(
                    GROUP, VERSION, s.namespace, PLURAL, body, _request_timeout=(2, 5))
            else:
                # The resourceVersion read: of two writers, only the first succeeds.
                body["metadata"]["resourceVersion"] = version  # type: ignore[index]
                self.api.replace_namespaced_custom_object(
                    GROUP, VERSION, s.namespace, PLURAL, s.name, body,
                    _request_timeout=(2, 5))
        except client.ApiException as exc:
            if exc.status == 409:  # another replica wrote first: look again later
                return False
            raise
        self.seen = leadership.Seen(leadership.resolve_record(spec) or
                                    leadership.Record(self.identity, s.duration_s), now)
        if step is leadership.Step.TAKE and record is not None and record.holder:
            logger.info("took the lease %s/%s over from %s (not renewed for %d s)",
                        s.namespace, s.name, record.holder, s.duration_s)
        return True

    async def _look(self) -> bool | None:
        """One look; None when the API server could not be asked (logged once)."""
        try:
            held = await asyncio.to_thread(self.look)
        except Exception as exc:
            message = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            if message != self._failure:
                self._failure = message
                logger.warning("lease %s/%s: %s", self.settings.namespace,
                               self.settings.name, message)
            return None
        if self._failure is not None:
            self._failure = None
            logger.info("lease %s/%s: the API server answers again",
                        self.settings.namespace, self.settings.name)
        return held

    # --- the two phases ---------------------------------------------------------------

    async def acquire(self) -> None:
        """Stand by until this replica holds the Lease."""
        s = self.settings
        logger.info("standing by for the lease %s/%s as %s", s.namespace, s.name,
                    self.identity)
        while not await self._look():
            await asyncio.sleep(s.retry_s)
        self.holding = True
        logger.info("acquired the lease %s/%s as %s: this replica is active", s.namespace,
                    s.name, self.identity)

    async def hold(self) -> None:
        """Renew until the process ends; when the Lease is lost (another holder, or no
        renew for the renew deadline), call ``on_lost`` (by default: exit at once)."""
        s = self.settings
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(s.retry_s)
            held = await self._look()
            if held:
                renewed = time.monotonic()
                continue
            holder = self.seen.record.holder if self.seen is not None else None
            if held is False or time.monotonic() - renewed > s.renew_deadline_s:
                self.holding = False
                logger.critical("lost the lease %s/%s (%s): stopping at once so that only "
                                "one replica publishes", s.namespace, s.name,
                                f"now held by {holder}" if held is False else
                                f"not renewed for {s.renew_deadline_s:.1f} s")
                self.on_lost()
                return

    def release(self) -> None:
        """Give the Lease up (a graceful stop): a standby takes over at its next look."""
        if not self.holding:
            return
        self.holding = False
        s = self.settings
        try:
            record, version = self._fetch()
            if record is None or record.holder != self.identity:
                return
            spec = {"holderIdentity": "", "leaseDurationSeconds": 1,
                    "acquireTime": record.acquire_time, "renewTime": record.renew_time,
                    "leaseTransitions": record.transitions}
            self.api.replace_namespaced_custom_object(
                GROUP, VERSION, s.namespace, PLURAL, s.name,
                {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Lease",
                 "metadata": {"name": s.name, "namespace": s.namespace,
                              "resourceVersion": version}, "spec": spec},
                _request_timeout=(2, 5))
            logger.info("released the lease %s/%s", s.namespace, s.name)
        except Exception as exc:  # it expires by itself
            logger.warning("could not release the lease %s/%s: %s", s.namespace, s.name,
                           getattr(exc, "reason", exc))


def _exit() -> None:
    logging.shutdown()  # flush what says why
    os._exit(70)
