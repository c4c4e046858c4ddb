"""The fleet CA and the device's side of the CSR round trip (no network)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hedgerow.agent import identity
from hedgerow.controller import pki
from hedgerow.core import base, coredevice
from hedgerow.core import identity as core_identity


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def csr_for(cn: str, key: ec.EllipticCurvePrivateKey | None = None,
            extra: list[x509.NameAttribute[str]] | None = None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), *(extra or [])])
    return x509.CertificateSigningRequestBuilder().subject_name(name).sign(
        key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def ca(tmp_path: Path) -> pki.FleetCA:
    return pki.FleetCA.create(tmp_path / "ca")


def test_ca_files_and_modes(tmp_path: Path, ca: pki.FleetCA) -> None:
    assert mode(tmp_path / "ca") == 0o700
    assert mode(tmp_path / "ca" / "ca.key") == 0o600
    assert pki.FleetCA.load(tmp_path / "ca").certificate == ca.certificate
    with pytest.raises(FileExistsError):
        pki.FleetCA.create(tmp_path / "ca")
    (tmp_path / "ca" / "ca.key").chmod(0o644)
    with pytest.raises(PermissionError):
        pki.FleetCA.load(tmp_path / "ca")


def test_device_init_makes_key_on_device_and_csr(tmp_path: Path) -> None:
    root = tmp_path / "root"
    csr_path = identity.init(root, "dev-a")
    paths = identity.Paths(root)
    assert mode(paths.folder) == 0o700 and mode(paths.key) == 0o600
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=dev-a"
    key_before = paths.key.read_bytes()
    identity.init(root, "dev-a")  # idempotent: same key
    assert paths.key.read_bytes() == key_before
    assert b"PRIVATE" not in csr_path.read_bytes()
    with pytest.raises(identity.IdentityError):
        identity.init(root, "Dev_A")


def test_sign_device_csr(ca: pki.FleetCA, tmp_path: Path) -> None:
    csr = identity.init(tmp_path / "root", "dev-a").read_bytes()
    now = datetime.datetime.now(datetime.UTC)
    cert = ca.sign_device_csr(csr, "dev-a", now=now)
    cert.verify_directly_issued_by(ca.certificate)
    assert cert.subject.rfc4514_string() == "CN=dev-a"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc - now <= datetime.timedelta(days=365)
    assert cert.not_valid_after_utc - now > datetime.timedelta(days=364)


def test_refused_csrs(ca: pki.FleetCA) -> None:
    refused = {
        "wrong CN": (csr_for("dev-b"), "dev-a"),
        "invalid thing name": (csr_for("Dev_A"), "Dev_A"),
        "controller identity": (csr_for("hedgerow_controller"), "hedgerow_controller"),
        "extra subject": (csr_for("dev-a", extra=[x509.NameAttribute(
            NameOID.ORGANIZATION_NAME, "evil")]), "dev-a"),
        "small curve": (csr_for("dev-a", ec.generate_private_key(ec.SECP192R1())), "dev-a"),
        "garbage": (b"not a csr", "dev-a"),
    }
    for what, (csr, thing) in refused.items():
        with pytest.raises(pki.CertificateRequestError):
            ca.sign_device_csr(csr, thing)
            pytest.fail(f"signed: {what}")
    with pytest.raises(pki.CertificateRequestError):
        ca.sign_device_csr(csr_for("dev-a"), "dev-a", days=5000)


def test_tampered_csr_signature_refused(ca: pki.FleetCA) -> None:
    # Swap the public key of a CSR for another one: the self-signature no longer verifies.
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    der = x509.load_pem_x509_csr(csr_for("dev-a", key)).public_bytes(serialization.Encoding.DER)
    old = key.public_key().public_bytes(serialization.Encoding.X962,
                                        serialization.PublicFormat.UncompressedPoint)
    new = other.public_key().public_bytes(serialization.Encoding.X962,
                                          serialization.PublicFormat.UncompressedPoint)
    forged = x509.load_der_x509_csr(der.replace(old, new))
    with pytest.raises(pki.CertificateRequestError, match="signature"):
        ca.sign_device_csr(forged.public_bytes(serialization.Encoding.PEM), "dev-a")


def bundle(ca: pki.FleetCA, thing: str, cert: x509.Certificate) -> bytes:
    assert ca.directory is not None
    signer, _ = pki.signing_key_of(ca.directory)
    return core_identity.Bundle(
        thing=thing, broker_url="mqtts://127.0.0.1:8883", ca_pem=ca.pem,
        certificate_pem=pki.cert_pem(cert).decode(),
        signing_key_pem=signer.public_pem).model_dump_json(by_alias=True).encode()


def test_install_bundle_checks_everything(ca: pki.FleetCA, tmp_path: Path) -> None:
    root, other = tmp_path / "a", tmp_path / "b"
    cert = ca.sign_device_csr(identity.init(root, "dev-a").read_bytes(), "dev-a")
    stranger = ca.sign_device_csr(identity.init(other, "dev-a").read_bytes(), "dev-a")
    with pytest.raises(identity.IdentityError, match="not for this device's key"):
        identity.install_bundle(root, bundle(ca, "dev-a", stranger))
    rogue = pki.FleetCA.create(tmp_path / "rogue")
    mine_by_rogue = rogue.sign_device_csr(identity.Paths(root).csr.read_bytes(), "dev-a")
    with pytest.raises(identity.IdentityError, match="CA"):
        identity.install_bundle(root, bundle(ca, "dev-a", mine_by_rogue))
    with pytest.raises(identity.IdentityError, match="for 'dev-a'"):
        identity.install_bundle(root, bundle(ca, "dev-a", cert), thing="dev-z")
    assert not identity.Paths(root).cert.exists()  # nothing written on refusal
    installed = identity.install_bundle(root, bundle(ca, "dev-a", cert))
    assert installed.thing == "dev-a" and installed.broker_url == "mqtts://127.0.0.1:8883"
    assert installed.days_left() in (364, 365)
    assert identity.load(root) == installed


def test_renewal_promotes_the_new_key(ca: pki.FleetCA, tmp_path: Path) -> None:
    root = tmp_path / "a"
    first = ca.sign_device_csr(identity.init(root, "dev-a").read_bytes(), "dev-a")
    identity.install_bundle(root, bundle(ca, "dev-a", first))
    old_key = identity.Paths(root).key.read_bytes()
    csr = identity.init(root, "dev-a", renew=True)
    assert identity.Paths(root).key.read_bytes() == old_key  # still the working key
    second = ca.sign_device_csr(csr.read_bytes(), "dev-a")
    identity.install_bundle(root, bundle(ca, "dev-a", second))
    paths = identity.Paths(root)
    assert paths.key.read_bytes() != old_key and not paths.next_key.exists()
    assert mode(paths.key) == 0o600


def test_gitops_certificate_for(ca: pki.FleetCA, tmp_path: Path) -> None:
    csr = identity.init(tmp_path / "a", "dev-a").read_text()
    device = coredevice.CoreDevice(metadata=base.ObjectMeta(name="dev-a"),
                                   spec=coredevice.CoreDeviceSpec(csr=csr))
    issued = pki.certificate_for(device, ca)
    assert issued is not None and issued.pem and issued.not_after
    signed = device.model_copy(update={"status": coredevice.CoreDeviceStatus(
        certificate=issued)})
    assert pki.certificate_for(signed, ca) is None  # already signed: nothing to do
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=340)
    assert pki.certificate_for(signed, ca, now=later) is not None  # renew near expiry
    assert pki.certificate_for(coredevice.CoreDevice(
        metadata=base.ObjectMeta(name="dev-a")), ca) is None
    with pytest.raises(pki.CertificateRequestError):
        pki.certificate_for(device.model_copy(update={
            "metadata": base.ObjectMeta(name="dev-b")}), ca)
