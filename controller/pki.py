"""The fleet CA: one EC P-256 key that signs device CSRs and the controller's and the
broker's own certificates.

Device certificates are issued only from a CSR whose signature verifies (the requester
holds the private key), whose subject is exactly one CN, a valid thing name equal to the
CoreDevice's name, and never the controller identity. Nothing else from the CSR is
copied: the CA decides the extensions (client-auth EKU only, not a CA) and the validity
(365 days by default, capped). Key files are written 0600 in a 0700 folder and are never
logged.

    ca = FleetCA.load_or_create(path)
    pem = ca.sign_device_csr(csr_pem, thing="pump-7")
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import pathlib
from collections.abc import Sequence
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hedgerow import files
from hedgerow.core import broker, coredevice, identity

CA_CERT: Final = "ca.pem"
CA_KEY: Final = "ca.key"
CA_DAYS: Final = 3650
SERVER_DAYS: Final = 365
_BACKDATE: Final = datetime.timedelta(minutes=5)  # tolerate small device clock skew


class CertificateRequestError(ValueError):
    """A CSR that must not be signed (permanent: fix the request, do not retry)."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _private_dir(path: pathlib.Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_key(path: pathlib.Path, key: ec.EllipticCurvePrivateKey) -> None:
    files.write_atomic(path, key_pem(key), 0o600)


def write_cert(path: pathlib.Path, cert: x509.Certificate) -> None:
    files.write_atomic(path, cert_pem(cert), 0o644)


@dataclasses.dataclass(frozen=True)
class Issued:
    """A certificate and the key made for it (controller and broker certificates only;
    a device's key is made on the device)."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def write(self, cert_path: pathlib.Path, key_path: pathlib.Path) -> None:
        _private_dir(key_path.parent)
        write_key(key_path, self.key)
        write_cert(cert_path, self.certificate)


class FleetCA:
    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.certificate = certificate
        self.key = key

    # --- create / load ------------------------------------------------------------

    @classmethod
    def create(cls, directory: pathlib.Path, name: str = "Hedgerow fleet CA",
               days: int = CA_DAYS, now: datetime.datetime | None = None) -> FleetCA:
        """A new CA in ``directory`` (0700): ca.pem (0644) and ca.key (0600). Refuses to
        overwrite an existing CA: every device certificate depends on it."""
        if (directory / CA_KEY).exists() or (directory / CA_CERT).exists():
            raise FileExistsError(f"{directory} already holds a CA; load it instead")
        now = now or _now()
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        _private_dir(directory)
        write_key(directory / CA_KEY, key)
        write_cert(directory / CA_CERT, cert)
        return cls(cert, key)

    @classmethod
    def load(cls, directory: pathlib.Path) -> FleetCA:
        key_path = directory / CA_KEY
        mode = key_path.stat().st_mode & 0o777
        if mode & 0o077:
            raise PermissionError(f"{key_path} is readable by others (mode {mode:o}); "
                                  "chmod 600 it")
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: not an EC private key")
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        if cert.public_key() != key.public_key():
            raise ValueError(f"{directory}: {CA_CERT} and {CA_KEY} do not belong together")
        return cls(cert, key)

    @classmethod
    def load_or_create(cls, directory: pathlib.Path) -> FleetCA:
        if (directory / CA_KEY).exists():
            return cls.load(directory)
        return cls.create(directory)

    @property
    def pem(self) -> str:
        return cert_pem(self.certificate).decode()

    # --- issuing --------------------------------------------------------------------

    def _builder(self, subject: x509.Name, public: ec.EllipticCurvePublicKey
                 | rsa.RSAPublicKey, days: int,
                 now: datetime.datetime) -> x509.CertificateBuilder:
        not_after = min(now + datetime.timedelta(days=days),
                        self.certificate.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=isinstance(public, rsa.RSAPublicKey),
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
        )

    def sign_device_csr(self, csr_pem: str | bytes, thing: str,
                        days: int = identity.DEVICE_CERT_DAYS,
                        now: datetime.datetime | None = None) -> x509.Certificate:
        """Sign a device's CSR; raise CertificateRequestError saying why not."""
        now = now or _now()
        if not 0 < days <= identity.MAX_DEVICE_CERT_DAYS:
            raise CertificateRequestError(
                f"validity {days} days: must be 1..{identity.MAX_DEVICE_CERT_DAYS}")
        if not broker.is_thing_name(thing):
            raise CertificateRequestError(f"{thing!r} is not a valid thing name")
        data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
        try:
            csr = x509.load_pem_x509_csr(data)
        except ValueError as exc:
            raise CertificateRequestError(f"not a PEM certificate signing request: {exc}"
                                          ) from None
        try:
            valid = csr.is_signature_valid
        except (ValueError, InvalidSignature, x509.UnsupportedGeneralNameType):
            valid = False
        if not valid:
            raise CertificateRequestError("the CSR's signature does not verify: it was "
                                          "altered, or not made with the device's key")
        attributes = list(csr.subject)
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(cns) != 1 or len(attributes) != 1:
            raise CertificateRequestError("the CSR subject must be exactly one CN "
                                          "(the thing name)")
        cn = cns[0].value
        cn = cn.decode() if isinstance(cn, bytes) else cn
        if cn != thing:
            raise CertificateRequestError(
                f"the CSR's CN {cn!r} is not the device's name {thing!r}")
        public = csr.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            if public.curve.name not in ("secp256r1", "secp384r1"):
                raise CertificateRequestError(f"EC curve {public.curve.name} not accepted "
                                              "(use P-256 or P-384)")
        elif isinstance(public, rsa.RSAPublicKey):
            if public.key_size < 2048:
                raise CertificateRequestError(f"RSA key of {public.key_size} bits is too "
                                              "small (at least 2048)")
        else:
            raise CertificateRequestError(f"key type {type(public).__name__} not accepted "
                                          "(use EC P-256)")
        builder = self._builder(_name(thing), public, days, now).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def issue_client(self, cn: str, days: int = SERVER_DAYS,
                     now: datetime.datetime | None = None) -> Issued:
        """A client certificate with its own new key (the controller's identity)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._builder(_name(cn), key.public_key(), days, now or _now()).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        ).sign(self.key, hashes.SHA256())
        return Issued(cert, key)

    def issue_controller(self, controller_identity: str = broker.CONTROLLER_IDENTITY,
                         days: int = SERVER_DAYS,
                         now: datetime.datetime | None = None) -> Issued:
        return self.issue_client(broker.check_controller_identity(controller_identity),
                                 days, now)

    def issue_server(self, hosts: Sequence[str], days: int = SERVER_DAYS,
                     now: datetime.datetime | None = None) -> Issued:
        """The broker's server certificate for these DNS names / IP addresses."""
        if not hosts:
            raise ValueError("a server certificate needs at least one host name or IP")
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            self._builder(_name(hosts[0]), key.public_key(), days, now or _now())
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Issued(cert, key)


def not_after(cert: x509.Certificate) -> datetime.datetime:
    return cert.not_valid_after_utc


def load_certificate(pem: str | bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)


def certificate_for(device: coredevice.CoreDevice, ca: FleetCA,
                    renew_days: int = identity.EXPIRY_WARNING_DAYS,
                    now: datetime.datetime | None = None,
                    ) -> coredevice.CertificateStatus | None:
    """The GitOps half of the round trip: what ``status.certificate`` must become for this
    CoreDevice, or None when nothing needs signing (no CSR, or the current certificate
    already certifies the CSR's key, comes from this CA and is not near expiry).

    Raises CertificateRequestError for a CSR that must not be signed; the caller records
    it as a condition and waits for the spec to change.
    """
    csr_pem = device.spec.csr
    if not csr_pem:
        return None
    now = now or _now()
    current = device.status.certificate if device.status else None
    if current is not None and current.pem and _still_good(current.pem, csr_pem, ca, now,
                                                           renew_days):
        return None
    cert = ca.sign_device_csr(csr_pem, device.metadata.name, now=now)
    return coredevice.CertificateStatus(pem=cert_pem(cert).decode(),
                                        not_after=cert.not_valid_after_utc)


def _still_good(pem: str, csr_pem: str, ca: FleetCA, now: datetime.datetime,
                renew_days: int) -> bool:
    try:
        cert = load_certificate(pem)
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        cert.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return (cert.public_key() == csr.public_key()
            and identity.days_left(cert.not_valid_after_utc, now) > renew_days)
