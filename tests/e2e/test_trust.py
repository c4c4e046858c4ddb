"""Identity and trust, everything real: the API server, `hedgerow controller` (signing
with the fleet's key), mosquitto from `hedgerow broker config` (TLS, ACL, CRL) and three
`hedgerow agent run` processes.

A broker-side attacker (holding the controller's broker credentials) publishes a forged,
an unsigned and a replayed document: each agent refuses them and its components keep
running. A CSR swapped into a CoreDevice that already has a certificate is not signed
until `hedgerow device approve`; then it is, the old certificate is revoked and can no
longer connect. `hedgerow device revoke` shuts a device out.

The steps build on each other (one fleet per module) and run in file order.
"""

from __future__ import annotations

import functools
import json
import pathlib
import shutil

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from hedgerow.core import envelope
from tests.e2e.conftest import HEDGEROW, Agent, Fleet, examples, run, wait_for
from tests.e2e.test_fleet import both, converged
from tests.identity.conftest import MqttClient
from tests.support import passes
from tests.support.passes import wait_passes


def attacker(fleet: Fleet) -> MqttClient:
    """A client with the controller's broker certificate: it may publish any desired
    document (its client id becomes the controller's: keep the session short)."""
    b = fleet.broker_dir
    return MqttClient(fleet.broker_url, b / "ca.pem", b / "controller.pem",
                      b / "controller.key", "attacker").connect()


def retained_desired(fleet: Fleet, agent: Agent) -> bytes:
    """The retained envelope, read with the device's own certificate while its agent is
    stopped (a live agent and the reader would take the session from each other; the
    controller's session is taken over only by the attack itself)."""
    ident = agent.root / "identity"
    agent.stop()
    try:
        spy = MqttClient(fleet.broker_url, ident / "ca.pem", ident / "device.pem",
                         ident / "device.key", agent.thing).connect()
        try:
            spy.subscribe(f"hedgerow/things/{agent.thing}/desired")
            payloads: list[bytes] = wait_for(
                lambda: spy.on(f"hedgerow/things/{agent.thing}/desired"), 10,
                "the retained document")
            return payloads[0]
        finally:
            spy.close()
    finally:
        agent.start()


def agent_log(agent: Agent) -> str:
    return agent.log.read_text(errors="replace") if agent.log.exists() else ""


def test_a_examples_converge_with_signed_documents(fleet: Fleet) -> None:
    g1, g2, g3 = fleet.agents.values()
    fleet.apply(examples())
    for agent in (g1, g2):
        wait_for(functools.partial(converged, fleet, agent, both()), 90,
                 f"{agent.thing} to converge")
    wait_for(lambda: fleet.device_status(g3).get("health") == "HEALTHY", 30,
             "gateway-3 to report")
    assert "desired-document signing key" in fleet.controller_output()
    assert "UNSIGNED" not in fleet.controller_output()
    # The connector accepted a signed document, and wrote the plain DesiredState for its
    # agent (the revision the controller recorded).
    revision = fleet.device_status(g1)["desiredRevision"]
    assert f"desired revision {revision} accepted (counter" in agent_log(g1)
    desired = json.loads((g1.root / "desired" / "desired.json").read_bytes())
    assert desired["kind"] == "DesiredState" and desired["revision"] == revision


def test_b_broker_side_attacker_is_refused(fleet: Fleet) -> None:
    _g1, _g2, g3 = fleet.agents.values()
    # gateway-3 joins factory-1 and leaves it again: the attacker keeps the genuinely
    # signed (empty) document of that moment for a replay once it runs components again.
    fleet.kubectl("label", "coredevice", g3.thing, "site=factory-1", "--overwrite")
    wait_for(lambda: converged(fleet, g3, both()), 60, "gateway-3 to join factory-1")
    fleet.kubectl("label", "coredevice", g3.thing, "site=factory-2", "--overwrite")
    wait_for(lambda: converged(fleet, g3, {}), 60, "gateway-3 to leave factory-1")
    empty = retained_desired(fleet, g3)
    assert json.loads(envelope.parse_envelope(empty).document_bytes())["components"] == []
    fleet.kubectl("label", "coredevice", g3.thing, "site=factory-1", "--overwrite")
    wait_for(lambda: converged(fleet, g3, both()), 60, "gateway-3 to rejoin factory-1")
    pids = g3.pids()
    desired_file = g3.root / "desired" / "desired.json"
    good = desired_file.read_bytes()

    sealed = envelope.parse_envelope(empty)
    data = sealed.document_bytes()
    mine = ed25519.Ed25519PrivateKey.generate()
    far = 2**62
    forged = envelope.render_envelope(
        g3.thing, far, sealed.key_id, data,
        mine.sign(envelope.render_signing_input(g3.thing, far, sealed.key_id, data)))
    topic = f"hedgerow/things/{g3.thing}/desired"
    spy = attacker(fleet)  # one short session for all three
    try:
        for payload in (forged, data, empty):  # forged, unsigned, replayed
            spy.publish(topic, payload, retain=True)
    finally:
        spy.close()
    for reason in ("does not verify", "not signed", "not above the highest seen"):
        wait_for(lambda reason=reason: reason in agent_log(g3), 20,  # type: ignore[misc]
                 f"gateway-3 to refuse a document ({reason})")
    wait_passes(g3.root)  # whole agent passes after the refusals: nothing changed
    assert desired_file.read_bytes() == good
    assert g3.states() == both() and g3.pids() == pids
    assert "pwned" not in agent_log(g3)
    # The genuine controller still gets through: a relabel publishes a new document.
    fleet.kubectl("label", "coredevice", g3.thing, "site=factory-2", "--overwrite")
    wait_for(lambda: converged(fleet, g3, {}), 60, "gateway-3 to follow the controller")


def _csr(agent: Agent, *extra: str) -> str:
    return run([*HEDGEROW, "agent", "init", "--root", str(agent.root), "--thing",
                agent.thing, *extra]).stdout


def _cert_pem(fleet: Fleet, agent: Agent) -> str:
    pem: str = (fleet.device_status(agent).get("certificate") or {}).get("pem", "")
    return pem


def _cannot_connect(fleet: Fleet, cert: pathlib.Path, key: pathlib.Path, cn: str) -> bool:
    try:
        client = MqttClient(fleet.broker_url, fleet.broker_dir / "ca.pem", cert, key, cn)
        client.connect()
    except (OSError, AssertionError):
        return True
    client.close()
    return False


def test_c_resubmitted_csr_waits_for_approval_and_revokes_the_old(fleet: Fleet,
                                                                  tmp_path: pathlib.Path,
                                                                  ) -> None:
    _g1, g2, _g3 = fleet.agents.values()
    ident = g2.root / "identity"
    old_cert, old_key = tmp_path / "old.pem", tmp_path / "old.key"
    shutil.copy(ident / "device.pem", old_cert)
    shutil.copy(ident / "device.key", old_key)
    before = _cert_pem(fleet, g2)
    assert before
    # A new key on the device; the CSR lands in spec.csr (here by kubectl, as anyone
    # allowed to patch CoreDevices could do, e.g. a GitOps pipeline).
    renewal = _csr(g2, "--renew")
    patch = json.dumps({"spec": {"csr": renewal}})
    fleet.kubectl("patch", "coredevice", g2.thing, "--type=merge", "-p", patch)
    wait_for(lambda: f"not signing the CSR of {g2.thing}" in fleet.controller_output(), 30,
             "the controller to hold the CSR back")
    assert "hedgerow device approve" in fleet.controller_output()
    fleet.wait_controller_passes()  # it looked again (and again): still not signed
    assert _cert_pem(fleet, g2) == before

    assert fleet.broker.proc is not None
    out = run([*HEDGEROW, "device", "approve", g2.thing, "--ca-dir", str(fleet.ca_dir),
               "--kubeconfig", fleet.kubeconfig, "--broker-dir", str(fleet.broker_dir),
               "--broker-pid", str(fleet.broker.proc.pid)])
    assert "revoked the current certificate" in out.stderr, out.stderr
    wait_for(lambda: _cert_pem(fleet, g2) not in ("", before), 30,
             "the controller to sign the approved CSR")
    # The old certificate cannot connect any more (the CRL was reloaded).
    assert _cannot_connect(fleet, old_cert, old_key, g2.thing)

    # The device installs the new certificate (a renewal: the pinned trust is the same,
    # no flag needed) and reconnects with it.
    bundle = g2.dir / "renewed.json"
    run([*HEDGEROW, "device", "bundle", g2.thing, "--broker-url", fleet.broker_url,
         "--ca-dir", str(fleet.ca_dir), "--kubeconfig", fleet.kubeconfig,
         "--out", str(bundle)])
    run([*HEDGEROW, "agent", "install-bundle", "--root", str(g2.root), "--thing",
         g2.thing, str(bundle)])
    seen = fleet.device_status(g2).get("lastSeen")
    g2.stop()
    g2.start()
    wait_for(lambda: fleet.device_status(g2).get("lastSeen") != seen, 30,
             "gateway-2 to report with its new certificate")

    # Approving one CSR does not approve the next: another key swapped in is held back.
    approved = _cert_pem(fleet, g2)
    other = tmp_path / "other"
    swapped = run([*HEDGEROW, "agent", "init", "--root", str(other), "--thing",
                   g2.thing]).stdout
    refusals = fleet.controller_output().count(f"not signing the CSR of {g2.thing}")
    fleet.kubectl("patch", "coredevice", g2.thing, "--type=merge", "-p",
                  json.dumps({"spec": {"csr": swapped}}))
    # The controller looked at this CSR and said no (it checks each spec change once).
    wait_for(lambda: fleet.controller_output().count(f"not signing the CSR of {g2.thing}")
             > refusals, 30, "the controller to hold the swapped CSR back")
    assert _cert_pem(fleet, g2) == approved
    assert converged(fleet, g2, both())


def test_d_revoked_device_is_shut_out(fleet: Fleet) -> None:
    g1, g2, _g3 = fleet.agents.values()
    assert fleet.broker.proc is not None
    run([*HEDGEROW, "device", "revoke", g1.thing, "--ca-dir", str(fleet.ca_dir),
         "--kubeconfig", fleet.kubeconfig, "--broker-dir", str(fleet.broker_dir),
         "--broker-pid", str(fleet.broker.proc.pid)])
    ident = g1.root / "identity"
    assert _cannot_connect(fleet, ident / "device.pem", ident / "device.key", g1.thing)
    # Its agent, restarted, cannot reach the broker; its components keep running offline.
    offset = len(agent_log(g1))
    g1.stop()
    g1.start()
    wait_for(lambda: "unreachable" in agent_log(g1)[offset:], 30,
             "gateway-1's connector to be refused")
    wait_for(lambda: g1.states() == both(), 20, "gateway-1 to run its components offline")
    # The others are untouched: gateway-2 (re-certified above) still reports.
    seen = fleet.device_status(g2).get("lastSeen")
    g2.stop()
    g2.start()
    wait_for(lambda: fleet.device_status(g2).get("lastSeen") != seen, 30,
             "gateway-2 to report")


@pytest.fixture(autouse=True)
def _controller_settled(fleet: Fleet) -> None:
    """Attacker sessions take the controller's session over: each step starts once the
    controller has completed a pass connected to the broker again."""
    def settled() -> bool:
        fleet.wait_controller_passes(1)
        return bool(passes.controller_stats(fleet.stats_file).get("brokerConnected"))

    wait_for(settled, 60, "the controller connected to the broker again")
