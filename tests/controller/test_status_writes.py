"""Status writes: one field manager per writer (server-side apply), so a certificate that
`hedgerow device register` wrote survives the controller's writes without the controller
carrying it; a CSR approval wakes the controller at once; a refused write (4xx) is not
retried blindly, a failed one (5xx, timeout) is."""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client, config

from hedgerow.agent import identity
from hedgerow.controller import kube, operator, pki
from tests.conftest import ROOT
from tests.controller.conftest import Cluster, ControllerProcess, Devices
from tests.controller.test_operator import condition, retained
from tests.controller.test_reports import controller
from tests.support.mosquitto import Mosquitto
from tests.support.wait import wait_for

PEM = "-----BEGIN CERTIFICATE-----\nregistered\n-----END CERTIFICATE-----\n"


def _managers(cluster: Cluster, thing: str) -> dict[str, str]:
    """The field manager owning each field of a CoreDevice's status."""
    obj = json.loads(cluster.kubectl("get", "coredevice", thing, "-o", "json",
                                     "--show-managed-fields"))
    owners: dict[str, str] = {}
    for entry in obj["metadata"].get("managedFields", []):
        fields = (entry.get("fieldsV1") or {}).get("f:status") or {}
        for field in fields:
            owners.setdefault(field, entry["manager"])
    return owners


@pytest.mark.apiserver
@pytest.mark.mqtt
def test_a_registered_certificate_survives_the_controller_writes(
    cluster: Cluster, broker: Mosquitto, devices: Devices,
    controller_factory: Callable[..., ControllerProcess],
) -> None:
    cluster.kubectl("apply", "-n", "default", "-f", str(ROOT / "examples"))
    controller_factory()
    retained(broker, ["gateway-1"], timeout=60)
    wait_for(lambda: cluster.get("coredevice", "gateway-1", None).get("status", {}).get(
        "desiredRevision"), 30, "the controller's first status write")
    # What `hedgerow device register` does, with its own field manager.
    api = client.CustomObjectsApi(config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=cluster.kubeconfig))
    kube.apply_status(api, "CoreDevice", None, "gateway-1",
                      {"certificate": {"pem": PEM, "notAfter": "2030-01-01T00:00:00Z"}},
                      kube.REGISTRAR)
    # The device reports: the controller writes the device's status again.
    devices.report("gateway-1", "SUCCEEDED")
    wait_for(lambda: condition(cluster.get("coredevice", "gateway-1", None), "Applied")
             == ("True", "Succeeded"), 30, "the report folded into the status")
    obj = cluster.get("coredevice", "gateway-1", None)
    assert obj["status"]["certificate"]["pem"] == PEM
    assert obj["status"]["health"] == "HEALTHY"
    owners = _managers(cluster, "gateway-1")
    assert owners["f:certificate"] == kube.REGISTRAR
    assert owners["f:health"] == kube.CONTROLLER


@pytest.mark.apiserver
@pytest.mark.mqtt
def test_an_approval_is_signed_at_once_not_at_the_next_resync(
    cluster: Cluster, tmp_path: pathlib.Path,
    controller_factory: Callable[..., ControllerProcess],
) -> None:
    ca = pki.FleetCA.create(tmp_path / "ca")
    thing = "ssa-approve-1"
    first = identity.init(tmp_path / "a", thing).read_text()
    cluster.apply({"apiVersion": "hedgerow.dev/v1alpha1", "kind": "CoreDevice",
                   "metadata": {"name": thing},
                   "spec": {"namespace": "default", "csr": first}})
    # A resync far beyond the test's waits: only a wake-up can explain a signature.
    controller_factory("--ca-dir", str(tmp_path / "ca"), "--resync", "600")

    def certificate() -> str | None:
        obj = cluster.get("coredevice", thing, None)
        pem: str | None = obj.get("status", {}).get("certificate", {}).get("pem")
        return pem

    wait_for(certificate, 60, "the first CSR signed")
    issued = certificate()
    assert _managers(cluster, thing)["f:certificate"] == kube.SIGNER
    # A new key: held back until approved (the spec change wakes the controller).
    second = identity.init(tmp_path / "b", thing).read_text()
    cluster.kubectl("patch", "coredevice", thing, "--type", "merge", "-p",
                    json.dumps({"spec": {"csr": second}}))
    # The approval is an annotation: no new generation. It must still wake the loop.
    cluster.kubectl("annotate", "coredevice", thing,
                    f"{pki.APPROVAL_ANNOTATION}={ca.approve_csr(thing, second)}")
    wait_for(lambda: certificate() not in (None, issued), 20,
             "the approved CSR signed without waiting for the resync")
    new = certificate()
    assert new is not None
    assert pki.certifies_csr_key(pki.load_certificate(new), second)


class FakeKube:
    """The API server's answers, scripted: each write pops the next outcome."""

    def __init__(self, *outcomes: int) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, str, dict[str, Any], str]] = []

    def apply_status(self, kind: str, namespace: str | None, name: str,
                     status: dict[str, Any], manager: str) -> None:
        self.calls.append((kind, name, status, manager))
        code = self.outcomes.pop(0) if self.outcomes else 200
        if code >= 400:
            raise client.ApiException(status=code, reason="scripted")


def test_a_refused_write_is_logged_once_and_waits_for_a_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = controller()
    fake = FakeKube(422, 422)
    c.kube = fake  # type: ignore[assignment]

    async def scenario() -> None:
        c.tasks = [asyncio.create_task(asyncio.sleep(0))]  # no reconcile loop in this test
        for _ in range(3):  # the same status, pass after pass: tried once
            assert not await c._write_status("Deployment", "default", "d", {"targeted": 1})
        assert len(fake.calls) == 1
        # The object changed (a watch event): tried again, refused again, still one log.
        c.poke({}, "deployments", "MODIFIED", {"metadata": {"namespace": "default",
                                                            "name": "d", "generation": 2}})
        assert not await c._write_status("Deployment", "default", "d", {"targeted": 1})
        assert len(fake.calls) == 2
        # What we write changed: tried, and written.
        assert await c._write_status("Deployment", "default", "d", {"targeted": 2})
        assert len(fake.calls) == 3

    with caplog.at_level(logging.INFO, logger=operator.__name__):
        asyncio.run(scenario())
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and "422" in refusals[0].getMessage()


def test_a_failed_device_write_is_retried_after_a_backoff() -> None:
    c = controller()
    fake = FakeKube(503, 503)
    c.kube = fake  # type: ignore[assignment]

    async def scenario() -> None:
        for attempt in range(3):
            c.writer.forget("gw-1")
            written = await c._write_status("CoreDevice", "", "gw-1", {"health": "HEALTHY"})
            if attempt < 2:
                assert not written and c.writer.priority_of("gw-1") is None
                # The retry offers the device to its writer again after the backoff.
                for _ in range(500):
                    if c.writer.priority_of("gw-1") is not None:
                        break
                    await asyncio.sleep(0.01)
                assert c.writer.priority_of("gw-1") is not None
            else:
                assert written
        assert len(fake.calls) == 3

    asyncio.run(scenario())


@pytest.mark.apiserver
def test_a_map_emptied_by_the_controller_is_removed_not_refused(cluster: Cluster) -> None:
    """A device all of whose deployments went away: desiredGenerations becomes {}. Under
    server-side apply an applied {} turns into null, which the schema refuses (422)."""
    cluster.apply({"apiVersion": "hedgerow.dev/v1alpha1", "kind": "CoreDevice",
                   "metadata": {"name": "ssa-empty-1"}, "spec": {"namespace": "default"}})
    api = client.CustomObjectsApi(config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=cluster.kubeconfig))
    kube.apply_status(api, "CoreDevice", None, "ssa-empty-1",
                      {"health": "HEALTHY", "desiredGenerations": {"team/d": 1}}, kube.CONTROLLER)
    kube.apply_status(api, "CoreDevice", None, "ssa-empty-1",
                      {"health": "HEALTHY", "desiredGenerations": {}, "components": []},
                      kube.CONTROLLER)
    status = cluster.get("coredevice", "ssa-empty-1", None)["status"]
    assert "desiredGenerations" not in status and status["health"] == "HEALTHY"
