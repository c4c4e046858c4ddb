"""Certificates in the controller: the reported expiry becomes CertificateValid, a
certificate written by `hedgerow device register` is seen, never written back, and
with the fleet CA the controller signs spec.csr (GitOps)."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hedgerow.controller import pki
from hedgerow.core import base, coredevice
from tests.controller.test_reports import controller, report


def condition(c: object, type_: str) -> tuple[str, str]:
    status = c.devices["gw-1"]  # type: ignore[attr-defined]
    cond = next(x for x in status.conditions if x.type == type_)
    return cond.status.value, cond.reason


def test_reported_expiry_raises_a_condition() -> None:
    c = controller()
    c.fold_report("gw-1", report(sequence=1))
    assert condition(c, "CertificateValid") == ("Unknown", "NotReported")
    c.fold_report("gw-1", report(sequence=2, certificateDaysLeft=200))
    assert condition(c, "CertificateValid") == ("True", "Valid")
    c.fold_report("gw-1", report(sequence=3, certificateDaysLeft=12))
    assert condition(c, "CertificateValid") == ("False", "ExpiringSoon")
    c.fold_report("gw-1", report(sequence=4, certificateDaysLeft=-1))
    assert condition(c, "CertificateValid") == ("False", "Expired")


def _body(pem: str | None, not_after: str = "2027-01-01T00:00:00Z") -> dict[str, object]:
    status = {"certificate": {"pem": pem, "notAfter": not_after}} if pem else {}
    return {"metadata": {"name": "gw-1", "generation": 1}, "status": status}


def test_a_registered_certificate_is_seen_but_never_written_by_us() -> None:
    c = controller()
    pem = "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
    c._observe_certificate("gw-1", _body(pem))
    # The signer decides from it; no write of ours follows (it is the registrar's field).
    assert c.devices["gw-1"].certificate is not None
    assert c.devices["gw-1"].certificate.pem == pem
    assert c.writer.priority_of("gw-1") is None
    # The echo of an older certificate changes nothing.
    c._observe_certificate("gw-1", _body(None))
    c._observe_certificate("gw-1", _body(pem.replace("x", "y"), "2026-06-01T00:00:00Z"))
    assert c.devices["gw-1"].certificate.pem == pem


def test_the_controller_signs_spec_csr_with_the_fleet_ca(tmp_path: Path) -> None:
    c = controller()
    c.ca = pki.FleetCA.create(tmp_path / "ca")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-1")]))
           .sign(key, hashes.SHA256())).public_bytes(serialization.Encoding.PEM).decode()
    cd = coredevice.CoreDevice(metadata=base.ObjectMeta(name="gw-1", generation=1),
                               spec=coredevice.CoreDeviceSpec(csr=csr))
    now = datetime.datetime.now(datetime.UTC)
    c._sign([cd], now)
    cert = c.devices["gw-1"].certificate
    assert cert is not None and cert.pem
    assert pki.load_certificate(cert.pem).public_key() == key.public_key()
    c._sign([cd], now)  # nothing to do the second time
    assert c.devices["gw-1"].certificate == cert
