"""Identity and trust against a real mosquitto with TLS, the generated ACL and a CRL:
revoked certificates, documents from a broker-side attacker, pinned trust in
install-bundle, CSR approval, and the connector on a full disk."""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from hedgerow.agent import identity
from hedgerow.agent.layout import Layout
from hedgerow.controller import pki
from hedgerow.core import base, coredevice, envelope
from hedgerow.core import identity as core_identity
from tests.identity.conftest import Fleet, MqttClient, wait_for
from tests.identity.test_cli import run
from tests.identity.test_connector import desired, status, topic, write_status


def rejections(fleet: Fleet, thing: str) -> str:
    try:
        record = json.loads((fleet.root(thing) / "state" / "connector.json").read_text())
    except (OSError, ValueError):
        return ""
    reason: str = record.get("lastRejection", {}).get("reason", "")
    return reason


@pytest.mark.mqtt
def test_a_revoked_certificate_cannot_connect(fleet: Fleet) -> None:
    dev_a, dev_b = fleet.device("dev-a"), fleet.device("dev-b")
    # A spare identity, never connected, revoked first without a reload: once a new
    # connection with it is refused, the broker has reloaded the CRL that revokes dev-a
    # too (probing with dev-a's own certificate would take over its session).
    spare = fleet.device("dev-spare")
    conn_a = fleet.connector(dev_a)
    assert conn_a.wait_connected(10), conn_a.stats.last_error
    assert fleet.broker.proc is not None
    code, _ = run("device", "revoke", "dev-spare", "--cert", str(spare.cert),
                  "--ca-dir", str(fleet.dir / "ca"))
    assert code == 0
    code, _ = run("device", "revoke", "dev-a", "--cert", str(dev_a.cert),
                  "--ca-dir", str(fleet.dir / "ca"), "--broker-dir", str(fleet.broker_dir),
                  "--broker-pid", str(fleet.broker.proc.pid))
    assert code == 0
    revoked = json.loads((fleet.dir / "ca" / pki.REVOKED).read_text())["revoked"]
    assert [r["thing"] for r in revoked] == ["dev-spare", "dev-a"]

    def spare_refused() -> bool:
        try:
            MqttClient(fleet.broker.url, spare.ca, spare.cert, spare.key,
                       "dev-spare").connect().close()
        except (OSError, AssertionError):
            return True
        return False

    wait_for(spare_refused, 20, "the broker to reload its CRL")
    assert conn_a.connected  # a reload refuses new connections only (see --disconnect)
    conn_a.stop()
    # A new connection with the revoked certificate fails the TLS handshake, whoever
    # makes it: the agent's connector, or any client holding the key.
    again = fleet.connector(dev_a)
    wait_for(lambda: again.stats.connect_failures >= 2, what="refused attempts")
    assert again.stats.connects == 0 and not again.connected
    with pytest.raises((OSError, AssertionError)):
        MqttClient(fleet.broker.url, dev_a.ca, dev_a.cert, dev_a.key, "dev-a").connect()
    # Everyone else still connects, and revoking again changes nothing.
    conn_b = fleet.connector(dev_b)
    assert conn_b.wait_connected(10), conn_b.stats.last_error
    code, _ = run("device", "revoke", "dev-a", "--cert", str(dev_a.cert),
                  "--ca-dir", str(fleet.dir / "ca"))
    assert code == 0
    assert len(json.loads((fleet.dir / "ca" / pki.REVOKED).read_text())["revoked"]) == 2
    # --disconnect also ends the open session; the device's reconnect meets the CRL.
    code, _ = run("device", "revoke", "dev-b", "--cert", str(dev_b.cert), "--disconnect",
                  "--ca-dir", str(fleet.dir / "ca"), "--broker-dir", str(fleet.broker_dir),
                  "--broker-pid", str(fleet.broker.proc.pid), "--broker-url", fleet.broker.url)
    assert code == 0
    wait_for(lambda: not conn_b.connected, 10, "dev-b's open session to end")
    failures = conn_b.stats.connect_failures
    wait_for(lambda: conn_b.stats.connect_failures >= failures + 2, 20, "refused reconnects")
    assert conn_b.stats.connects == 1 and not conn_b.connected


def forge(data: bytes, thing: str, counter: int, key_id: str) -> bytes:
    """An envelope signed by an attacker's own key (claiming the pinned key's id)."""
    mine = ed25519.Ed25519PrivateKey.generate()
    signature = mine.sign(envelope.render_signing_input(thing, counter, key_id, data))
    return envelope.render_envelope(thing, counter, key_id, data, signature)


@pytest.mark.mqtt
def test_b_broker_side_attacker_cannot_plant_a_document(fleet: Fleet) -> None:
    dev = fleet.device("dev-a")
    controller = fleet.controller()  # the attacker holds the controller's credentials
    v1, v2 = desired("dev-a", "1.0.0"), desired("dev-a", "2.0.0")
    first = fleet.seal(v1)  # genuinely signed, kept by the attacker for a replay
    controller.publish(topic("dev-a", "desired"), first, retain=True)
    conn = fleet.connector(dev)
    target = Layout(fleet.root("dev-a")).desired_file
    wait_for(lambda: conn.stats.written == 1, what="v1")
    controller.publish(topic("dev-a", "desired"), fleet.seal(v2), retain=True)
    wait_for(lambda: conn.stats.written == 2, what="v2")
    good = target.read_bytes()

    evil = desired("dev-a", "6.6.6")
    evil_bytes = json.dumps(evil.to_dict()).encode()
    counter = 2**62  # far ahead: it would lock out every genuine document if accepted
    attacks = {
        "forged signature": (forge(evil_bytes, "dev-a", counter, conn.key_id or ""),
                             "does not verify"),
        "own key": (forge(evil_bytes, "dev-a", counter, "0123456789abcdef"),
                    "this device pins"),
        "unsigned": (evil_bytes, "not signed"),
        "replay of v1": (first, "not above the highest seen"),
        "another device's document": (fleet.seal(desired("dev-b", "6.6.6")),
                                      "signed for thing 'dev-b'"),
        "signature moved to a higher counter": (
            first.replace(f'"counter":{json.loads(first)["counter"]}'.encode(),
                          f'"counter":{counter}'.encode()), "does not verify"),
    }
    for n, (name, (payload, reason)) in enumerate(attacks.items(), 1):
        controller.publish(topic("dev-a", "desired"), payload, retain=True)
        wait_for(lambda n=n: conn.stats.rejected == n,  # type: ignore[misc]
                 what=f"the refusal of: {name}")
        assert reason in conn.stats.last_rejection, (name, conn.stats.last_rejection)
        assert target.read_bytes() == good, name
    assert conn.connected and conn.stats.written == 2
    wait_for(lambda: rejections(fleet, "dev-a") == conn.stats.last_rejection,
             what="the last refusal recorded in state/connector.json")

    # A rollback is old content under a new counter: accepted.
    controller.publish(topic("dev-a", "desired"), fleet.seal(v1), retain=True)
    wait_for(lambda: conn.stats.written == 3, what="the rollback to v1")
    assert json.loads(target.read_bytes())["revision"] == v1.revision

    # The highest counter survives a restart: the first v1 envelope, replayed while the
    # device was down (it waits retained for the next start), is refused by a fresh
    # connector too, and the device keeps its state.
    conn.stop()
    trust = json.loads((fleet.root("dev-a") / "state" / "trust.json").read_text())
    controller.publish(topic("dev-a", "desired"), first, retain=True)
    conn = fleet.connector(dev)
    # (>= 1: the persistent session queued it, and the subscription delivers it retained)
    wait_for(lambda: conn.stats.rejected >= 1, what="the replay refused after a restart")
    assert "not above the highest seen" in conn.stats.last_rejection
    assert json.loads(target.read_bytes())["revision"] == v1.revision
    assert json.loads((fleet.root("dev-a") / "state" / "trust.json").read_text()) == trust


def _bundle(ca: pki.FleetCA, cert_pem: str, url: str = "mqtts://127.0.0.1:8883",
            signing_key_pem: str | None = None) -> bytes:
    assert ca.directory is not None
    key = signing_key_pem or pki.signing_key_of(ca.directory)[0].public_pem
    return core_identity.Bundle(thing="dev-a", broker_url=url, ca_pem=ca.pem,
                                certificate_pem=cert_pem, signing_key_pem=key,
                                ).model_dump_json(by_alias=True).encode()


def test_c_install_bundle_never_silently_swaps_the_pinned_trust(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "device"
    ca = pki.FleetCA.create(tmp_path / "ca")
    csr = identity.init(root, "dev-a").read_bytes()
    cert = pki.cert_pem(ca.sign_device_csr(csr, "dev-a")).decode()
    identity.install_bundle(root, _bundle(ca, cert))
    paths = identity.Paths(root)
    pinned = {p: p.read_bytes() for p in (paths.ca, paths.signing_key, paths.connection,
                                          paths.cert)}
    # An attacker's bundle: their CA signed this device's CSR, their signing key, their
    # broker. Each change alone is refused, naming it, and nothing is written.
    rogue = pki.FleetCA.create(tmp_path / "rogue")
    rogue_cert = pki.cert_pem(rogue.sign_device_csr(csr, "dev-a")).decode()
    other_key = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    swaps = {
        "fleet CA": _bundle(rogue, rogue_cert, signing_key_pem=pki.signing_key_of(
            ca.directory or tmp_path)[0].public_pem),
        "signing key": _bundle(ca, cert, signing_key_pem=other_key),
        "broker URL": _bundle(ca, cert, url="mqtts://evil.example.com:8883"),
    }
    for what, data in swaps.items():
        bundle_file = tmp_path / "swap.json"
        bundle_file.write_bytes(data)
        code, _ = run("agent", "install-bundle", "--root", str(root), str(bundle_file))
        err = capsys.readouterr().err
        assert code == 1 and what in err and "--replace-trust" in err, err
        assert {p: p.read_bytes() for p in pinned} == pinned, what
    # A renewal (same trust, new certificate) needs no flag.
    renewed = pki.cert_pem(ca.sign_device_csr(csr, "dev-a")).decode()
    identity.install_bundle(root, _bundle(ca, renewed))
    assert paths.cert.read_text() == renewed
    code, out = run("agent", "identity", "--root", str(root), "-o", "json")
    assert json.loads(out)["signingKey"] == pki.signing_key_of(tmp_path / "ca")[0].key_id
    # With the flag the swap happens, and says what it replaced.
    bundle_file = tmp_path / "new-broker.json"
    bundle_file.write_bytes(swaps["broker URL"])
    code, _ = run("agent", "install-bundle", "--root", str(root), "--replace-trust",
                  str(bundle_file))
    err = capsys.readouterr().err
    assert code == 0 and "replaced the pinned broker URL" in err, err
    assert identity.load(root).broker_url == "mqtts://evil.example.com:8883"


def _device(ca: pki.FleetCA, csr: str, cert: coredevice.CertificateStatus | None = None,
            approval: str | None = None) -> coredevice.CoreDevice:
    annotations = {pki.APPROVAL_ANNOTATION: approval} if approval else {}
    return coredevice.CoreDevice(
        metadata=base.ObjectMeta(name="dev-a", annotations=annotations),
        spec=coredevice.CoreDeviceSpec(csr=csr),
        status=coredevice.CoreDeviceStatus(certificate=cert))


def test_d_a_resubmitted_csr_waits_for_an_approval_of_that_very_csr(tmp_path: Path) -> None:
    ca = pki.FleetCA.create(tmp_path / "ca")
    first = identity.init(tmp_path / "a", "dev-a").read_text()
    issued = pki.certificate_for(_device(ca, first), ca)  # first registration: signed
    assert issued is not None and issued.pem
    # Someone who may patch the CoreDevice swaps in a CSR for their own key.
    attacker = identity.init(tmp_path / "evil", "dev-a").read_text()
    with pytest.raises(pki.ApprovalRequiredError, match="hedgerow device approve dev-a"):
        pki.certificate_for(_device(ca, attacker, issued), ca)
    # An approval of another CSR, or one made with another CA key, approves nothing.
    rogue = pki.FleetCA.create(tmp_path / "rogue")
    renewal = identity.init(tmp_path / "a", "dev-a", renew=True).read_text()
    for approval in (ca.approve_csr("dev-a", renewal), rogue.approve_csr("dev-a", attacker),
                     ca.approve_csr("dev-b", attacker), "garbage", pki.csr_digest(attacker)):
        with pytest.raises(pki.ApprovalRequiredError):
            pki.certificate_for(_device(ca, attacker, issued, approval), ca)
    # The approved CSR is signed; once signed, nothing more happens.
    approval = ca.approve_csr("dev-a", renewal)
    signed = pki.certificate_for(_device(ca, renewal, issued, approval), ca)
    assert signed is not None and signed.pem != issued.pem
    assert pki.certificate_for(_device(ca, renewal, signed, approval), ca) is None
    # Near expiry the same (approved) key renews by itself; a revoked one does not.
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=340)
    assert pki.certificate_for(_device(ca, renewal, signed), ca, now=later) is not None
    assert signed.pem is not None
    assert ca.revoke(pki.load_certificate(signed.pem), "dev-a", "test")
    with pytest.raises(pki.ApprovalRequiredError, match="after revocation"):
        pki.certificate_for(_device(ca, renewal, signed), ca)
    # The CRL the broker loads lists it, signed by the CA.
    crl = pki.x509.load_pem_x509_crl((tmp_path / "ca" / pki.CRL).read_bytes())
    assert crl.is_signature_valid(ca.key.public_key())
    assert crl.get_revoked_certificate_by_serial_number(
        pki.load_certificate(signed.pem).serial_number) is not None


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "1m"):  # type: ignore[no-untyped-def]
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                    str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> Path:
    """Fill the file system under ``folder`` to the last byte (unbuffered writes)."""
    filler = folder / f"filler-{uuid.uuid4().hex}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


@pytest.mark.mqtt
def test_e_a_full_disk_does_not_stop_the_connector(fleet: Fleet) -> None:
    root = fleet.root("dev-t")
    controller = fleet.controller()
    with tiny_tmpfs(root):
        dev = fleet.device("dev-t")
        conn = fleet.connector(dev, heartbeat_s=0.2)  # stamps (and records) all the time
        try:
            write_status(root, status("dev-t", 1))
            controller.publish(topic("dev-t", "desired"), fleet.seal(desired("dev-t")),
                               retain=True)
            target = Layout(root).desired_file
            wait_for(lambda: conn.stats.written == 1, what="the first document")
            filler = fill(root)
            v2 = desired("dev-t", "2.0.0")
            controller.publish(topic("dev-t", "desired"), fleet.seal(v2), retain=True)
            wait_for(lambda: conn.stats.io_errors >= 3, what="writes failing on a full disk")
            assert "No space left" in conn.stats.last_error
            assert json.loads(target.read_bytes())["revision"] != v2.revision
            # Status reports still go out meanwhile (the sequence lives in memory).
            sent = len(controller.on(topic("dev-t", "status")))
            wait_for(lambda: len(controller.on(topic("dev-t", "status"))) > sent + 2,
                     what="reports while the disk is full")
            assert conn._thread is not None and conn._thread.is_alive()

            filler.unlink()  # space comes back: the held document is written
            wait_for(lambda: json.loads(target.read_bytes())["revision"] == v2.revision,
                     timeout=40, what="v2 after the disk recovered")
            v3 = desired("dev-t", "3.0.0")  # and so is the next one
            controller.publish(topic("dev-t", "desired"), fleet.seal(v3), retain=True)
            wait_for(lambda: json.loads(target.read_bytes())["revision"] == v3.revision,
                     what="v3")
            assert conn.connected and conn.stats.crashes == 0
            trust = json.loads((root / "state" / "trust.json").read_text())
            assert trust["sha256"] == envelope.digest_of(target.read_bytes())
        finally:
            conn.stop()


@pytest.mark.mqtt
def test_g_a_takeover_loop_is_detected_and_backed_off(fleet: Fleet,
                                                      caplog: pytest.LogCaptureFixture,
                                                      ) -> None:
    dev = fleet.device("dev-a")
    conn = fleet.connector(dev, takeover_backoff_s=6.0)
    assert conn.wait_connected(10)
    # A "debugging tool" with the device's certificate that reconnects whenever it is
    # kicked: with use_username_as_clientid the two take the session from each other.
    tool = fleet.client(dev)
    wait_for(lambda: conn.stats.takeovers >= 3, 30, "the loop to be noticed")
    assert "TAKEOVER LOOP" in caplog.text
    # Backed off: the tool keeps the session for a while (it would lose it within about
    # a second otherwise).
    wait_for(lambda: tool.connected.is_set(), 10, "the tool to hold the session")
    held = 0
    for _ in range(30):
        if not tool.connected.is_set():
            break
        held += 1
        time.sleep(0.1)
    assert held >= 25, f"the tool lost the session after {held / 10:.1f} s"
    tool.close()  # the tool goes away: the device is back after its backoff
    assert conn.wait_connected(20)
    assert caplog.text.count("TAKEOVER LOOP") == 1  # said once, not on every kick


def test_f_the_signing_key_is_made_once(tmp_path: Path) -> None:
    a, made_a = pki.signing_key_of(tmp_path / "ca")
    b, made_b = pki.signing_key_of(tmp_path / "ca")
    assert made_a and not made_b and a.key_id == b.key_id
    assert (tmp_path / "ca" / pki.SIGNING_KEY).stat().st_mode & 0o777 == 0o600
    assert base64.b64encode(a.public_raw).decode() not in (tmp_path / "ca" / pki.SIGNING_KEY
                                                           ).read_text()


def test_h_the_controller_seals_every_document_under_a_growing_counter(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from hedgerow.controller import broker as controller_broker

    def sealer() -> controller_broker.Broker:  # a paho client is made, never connected
        return controller_broker.Broker(controller_broker.BrokerSettings(
            "mqtts://127.0.0.1:1", signing_key=str(tmp_path / "ca" / pki.SIGNING_KEY)),
            lambda t, p, a: None)

    first = sealer()
    data = json.dumps(desired("dev-a").to_dict()).encode()
    counters = [envelope.parse_envelope(first.seal("dev-a", data) or b"").counter
                for _ in range(3)]
    assert counters == sorted(set(counters))  # strictly growing, even within one ms
    # A restarted controller (a new process: nothing remembered) continues above them
    # (a restart takes longer than the few milliseconds a burst can run ahead).
    time.sleep(0.01)
    later = envelope.parse_envelope(sealer().seal("dev-a", data) or b"")
    assert later.counter > counters[-1] and later.key_id == first.signer.key_id  # type: ignore[union-attr]
    assert first.seal("dev-a", b"") == b""  # clearing a retained document stays empty
    # A document over the bound is never handed to paho, and said once.
    huge = b"x" * (envelope.MAX_DOCUMENT_BYTES + 1)
    assert first.seal("dev-a", huge) is None and first.seal("dev-a", huge) is None
    assert caplog.text.count("not publishing the desired document of dev-a") == 1
