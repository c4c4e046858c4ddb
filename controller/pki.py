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

The CA folder also keeps what the fleet's trust needs besides the CA itself:

- ``signing.key`` (0600): the Ed25519 key the controller signs desired documents with
  (:class:`DocumentSigner`); its public half is pinned in every device bundle. Made on
  first use, never replaced silently.
- ``revoked.json``: the revoked device certificates (serial, thing, time, reason), and
  ``crl.pem``, the CRL rendered from it that the broker loads (``crlfile``).
- CSR approvals: ``hedgerow device approve`` signs ``approval:<thing>:<sha256 of the
  CSR>`` with the CA key into the CoreDevice annotation ``hedgerow.dev/approved-csr``;
  whoever may patch a CoreDevice can write an annotation, but only the CA key holder can
  write one that verifies, and it approves that one CSR only.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime
import hashlib
import ipaddress
import json
import os
import pathlib
import tempfile
from collections.abc import Sequence
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hedgerow import files
from hedgerow.core import broker, coredevice, envelope, identity

CA_CERT: Final = "ca.pem"
CA_KEY: Final = "ca.key"
SIGNING_KEY: Final = "signing.key"
REVOKED: Final = "revoked.json"
ISSUED: Final = "issued.log"
CRL: Final = "crl.pem"
APPROVAL_ANNOTATION: Final = "hedgerow.dev/approved-csr"
_APPROVAL_DOMAIN: Final = b"hedgerow.dev/csr-approval/v1\0"
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


def load_private_key(path: pathlib.Path) -> PrivateKeyTypes:
    """A PEM private key that only its owner can read (a key others can read is refused,
    not used)."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


class FleetCA:
    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey,
                 directory: pathlib.Path | None = None) -> None:
        self.certificate = certificate
        self.key = key
        self.directory = directory  # where the revocation list lives (None: in memory)
        self._revoked: list[Revocation] = []

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
        return cls(cert, key, directory)

    @classmethod
    def load(cls, directory: pathlib.Path) -> FleetCA:
        key_path = directory / CA_KEY
        key = load_private_key(key_path)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: not an EC private key")
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        if cert.public_key() != key.public_key():
            raise ValueError(f"{directory}: {CA_CERT} and {CA_KEY} do not belong together")
        return cls(cert, key, directory)

    @classmethod
    def load_or_create(cls, directory: pathlib.Path) -> FleetCA:
        if (directory / CA_KEY).exists():
            return cls.load(directory)
        return cls.create(directory)

    @property
    def pem(self) -> str:
        return cert_pem(self.certificate).decode()

    # --- revocation -------------------------------------------------------------------

    def revocations(self) -> list[Revocation]:
        """The revoked certificates, re-read from the CA folder (another process, such as
        `hedgerow device revoke`, may have added some)."""
        if self.directory is None:
            return list(self._revoked)
        try:
            raw = json.loads((self.directory / REVOKED).read_bytes())
        except FileNotFoundError:
            return []
        except ValueError as exc:  # never silently forget a revocation
            raise ValueError(f"{self.directory / REVOKED}: unreadable: {exc}") from None
        return [Revocation.from_dict(item) for item in raw.get("revoked", [])]

    def is_revoked(self, cert: x509.Certificate) -> bool:
        return any(r.serial == cert.serial_number for r in self.revocations())

    def revoke(self, cert: x509.Certificate, thing: str, reason: str,
               now: datetime.datetime | None = None) -> bool:
        """Add ``cert`` to the revocation list and re-render the CRL; False if it was
        revoked already. Only certificates this CA issued can be revoked."""
        try:
            cert.verify_directly_issued_by(self.certificate)
        except (ValueError, TypeError, InvalidSignature):
            raise ValueError(f"the certificate of {thing} was not issued by this CA"
                             ) from None
        return bool(self._revoke_serials([cert.serial_number], thing, reason, now))

    def _revoke_serials(self, serials: list[int], thing: str, reason: str,
                        now: datetime.datetime | None = None) -> list[int]:
        revoked = self.revocations()
        known = {r.serial for r in revoked}
        new = [serial for serial in serials if serial not in known]
        if not new:
            return []
        revoked += [Revocation(serial, thing, now or _now(), reason) for serial in new]
        self._revoked = revoked
        if self.directory is not None:
            files.write_atomic(self.directory / REVOKED, json.dumps(
                {"revoked": [r.to_dict() for r in revoked]}, indent=1).encode(), 0o644)
            files.write_atomic(self.directory / CRL, self.render_crl(now), 0o644)
        return new

    def render_crl(self, now: datetime.datetime | None = None) -> bytes:
        """The CRL (PEM) of every revoked certificate. Its nextUpdate is the CA's own
        expiry: OpenSSL refuses *every* client once a CRL is past nextUpdate, so a short
        one would cut the whole fleet off the day nobody re-rendered it."""
        now = now or _now()
        builder = (x509.CertificateRevocationListBuilder()
                   .issuer_name(self.certificate.subject)
                   .last_update(now - _BACKDATE)
                   .next_update(self.certificate.not_valid_after_utc))
        for r in self.revocations():
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(r.serial)
                .revocation_date(r.time).build())
        return builder.sign(self.key, hashes.SHA256()).public_bytes(
            serialization.Encoding.PEM)

    # --- CSR approval -----------------------------------------------------------------

    def approve_csr(self, thing: str, csr_pem: str) -> str:
        """The value of the approval annotation for exactly this CSR of ``thing``."""
        digest = csr_digest(csr_pem)
        signature = self.key.sign(_approval_input(thing, digest), ec.ECDSA(hashes.SHA256()))
        return f"{digest}.{base64.urlsafe_b64encode(signature).decode().rstrip('=')}"

    def is_approved(self, thing: str, csr_pem: str, value: str | None) -> bool:
        """True if ``value`` is this CA's approval of this very CSR for ``thing``."""
        if not value or "." not in value:
            return False
        digest, _, sig = value.partition(".")
        try:
            if digest != csr_digest(csr_pem):
                return False
            signature = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
            self.key.public_key().verify(signature, _approval_input(thing, digest),
                                         ec.ECDSA(hashes.SHA256()))
        except (ValueError, binascii.Error, InvalidSignature):
            return False
        return True

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

    def record_issued(self, cert: x509.Certificate, thing: str) -> None:
        """Note a device certificate that was handed out (``issued.log``, append-only),
        so revoking a device revokes every certificate it holds, not only the one its
        CoreDevice status shows. Best effort: a read-only CA folder (a Secret mount)
        keeps no log, and revocation then covers the certificate in the status."""
        if self.directory is None:
            return
        line = json.dumps({"serial": str(cert.serial_number), "thing": thing,
                           "notAfter": cert.not_valid_after_utc.isoformat(),
                           "key": _key_digest(cert.public_key())}) + "\n"
        try:
            fd = os.open(self.directory / ISSUED, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                         0o644)
        except OSError:
            return
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def issued_to(self, thing: str, now: datetime.datetime | None = None,
                  ) -> list[tuple[int, str]]:
        """(serial, key digest) of the unexpired certificates recorded for ``thing``."""
        if self.directory is None:
            return []
        now = now or _now()
        try:
            lines = (self.directory / ISSUED).read_text().splitlines()
        except FileNotFoundError:
            return []
        found = []
        for line in lines:
            try:
                entry = json.loads(line)
                if (entry["thing"] == thing and datetime.datetime.fromisoformat(
                        entry["notAfter"]) > now):
                    found.append((int(entry["serial"]), str(entry["key"])))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line after a crash
        return found

    def revoke_device(self, thing: str, reason: str, current: x509.Certificate | None = None,
                      keep_key_of_csr: str | None = None,
                      now: datetime.datetime | None = None) -> list[int]:
        """Revoke every certificate ``thing`` holds (``current``, and all recorded as
        issued to it), except those for the key of ``keep_key_of_csr``; the serials newly
        revoked."""
        keep = None
        if keep_key_of_csr is not None:
            keep = _key_digest(x509.load_pem_x509_csr(keep_key_of_csr.encode()).public_key())
        serials = {serial for serial, key in self.issued_to(thing, now) if key != keep}
        if current is not None and _key_digest(current.public_key()) != keep:
            try:
                current.verify_directly_issued_by(self.certificate)
                serials.add(current.serial_number)
            except (ValueError, TypeError, InvalidSignature):
                pass  # not ours: nothing to revoke
        return self._revoke_serials(sorted(serials), thing, reason, now)

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


def csr_digest(csr_pem: str | bytes) -> str:
    """SHA-256 of the CSR's DER: the same request in other PEM whitespace is the same."""
    data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    csr = x509.load_pem_x509_csr(data)
    return hashlib.sha256(csr.public_bytes(serialization.Encoding.DER)).hexdigest()


def _key_digest(public: object) -> str:
    der = public.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def certifies_csr_key(cert: x509.Certificate, csr_pem: str) -> bool:
    """Whether ``cert`` certifies the key the CSR was made with (False if unreadable)."""
    try:
        return bool(cert.public_key() == x509.load_pem_x509_csr(csr_pem.encode()).public_key())
    except ValueError:
        return False


def _approval_input(thing: str, digest: str) -> bytes:
    return _APPROVAL_DOMAIN + f"{thing}\0{digest}".encode()


@dataclasses.dataclass(frozen=True)
class Revocation:
    serial: int
    thing: str
    time: datetime.datetime
    reason: str

    def to_dict(self) -> dict[str, str]:
        # The serial as text: 159-bit serials do not survive JSON readers that use floats.
        return {"serial": str(self.serial), "thing": self.thing,
                "time": self.time.isoformat(), "reason": self.reason}

    @classmethod
    def from_dict(cls, raw: dict[str, str]) -> Revocation:
        return cls(int(raw["serial"]), raw["thing"],
                   datetime.datetime.fromisoformat(raw["time"]), raw.get("reason", ""))


def _create_exclusive(path: pathlib.Path, data: bytes, mode: int) -> bool:
    """Create ``path`` with ``data`` unless it exists (then False): temp, fsync, link.
    Two processes creating it at once end with one file, and each sees the one that won."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        try:
            path.hardlink_to(tmp)
        except FileExistsError:
            return False
        files.fsync_dir(path.parent)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            pathlib.Path(tmp).unlink()


class DocumentSigner:
    """The Ed25519 key that signs desired documents (its public half is pinned on every
    device). Kept in the CA folder as ``signing.key`` (0600)."""

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key
        self.public_raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                                        serialization.PublicFormat.Raw)
        self.key_id = envelope.key_id_of(self.public_raw)

    @property
    def public_pem(self) -> str:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    @classmethod
    def load(cls, path: pathlib.Path) -> DocumentSigner:
        key = load_private_key(path)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: pathlib.Path) -> tuple[DocumentSigner, bool]:
        """The key at ``path``, made on first use; (signer, whether it was made now)."""
        if not path.exists():
            key = ed25519.Ed25519PrivateKey.generate()
            try:
                _private_dir(path.parent)
                made = _create_exclusive(path, key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption()), 0o600)
            except OSError as exc:
                raise OSError(exc.errno, f"no signing key at {path}, and none can be made "
                              f"there ({exc.strerror}): make one with `hedgerow broker "
                              "config` and ship it with the CA (e.g. in the controller's "
                              "Secret)") from None
            if made:
                return cls(key), True
        return cls.load(path), False


def signing_key_of(directory: pathlib.Path) -> tuple[DocumentSigner, bool]:
    return DocumentSigner.load_or_create(directory / SIGNING_KEY)


class ApprovalRequiredError(CertificateRequestError):
    """A CSR that may be signed only once an admin approves it (`hedgerow device
    approve`); not an error in the request itself."""


def certificate_for(device: coredevice.CoreDevice, ca: FleetCA,
                    renew_days: int = identity.EXPIRY_WARNING_DAYS,
                    now: datetime.datetime | None = None,
                    ) -> coredevice.CertificateStatus | None:
    """The GitOps half of the round trip: what ``status.certificate`` must become for this
    CoreDevice, or None when nothing needs signing (no CSR, or the current certificate
    already certifies the CSR's key, comes from this CA and is not near expiry).

    The CertificateSigningRequest model (core.identity.resolve_csr_signing): a device
    that never had a certificate from this CA is signed at once; a new key for a device
    that has one (valid, expired or revoked), or the same key once revoked, waits for
    the approval annotation of this very CSR (ApprovalRequiredError until then).

    Raises CertificateRequestError for a CSR that must not be signed; the caller records
    it as a condition and waits for the spec to change.
    """
    csr_pem = device.spec.csr
    if not csr_pem:
        return None
    now = now or _now()
    # Signed first, kept only if the decision says so: a bad CSR is reported as what it
    # is, not as "waiting for approval".
    cert = ca.sign_device_csr(csr_pem, device.metadata.name, now=now)
    current = device.status.certificate if device.status else None
    held = _held(current.pem if current else None, csr_pem, ca, now)
    approval = device.metadata.annotations.get(APPROVAL_ANNOTATION)
    decision = identity.resolve_csr_signing(
        held, approved=ca.is_approved(device.metadata.name, csr_pem, approval),
        renew_days=renew_days)
    if decision is identity.CsrDecision.NOTHING:
        return None
    if decision is identity.CsrDecision.AWAIT_APPROVAL:
        raise ApprovalRequiredError(
            f"{device.metadata.name} already holds a certificate from this CA; a CSR "
            f"{'for a new key' if held and not held.same_key else 'after revocation'} is "
            f"signed only once approved: hedgerow device approve {device.metadata.name}")
    ca.record_issued(cert, device.metadata.name)
    return coredevice.CertificateStatus(pem=cert_pem(cert).decode(),
                                        not_after=cert.not_valid_after_utc)


def _held(pem: str | None, csr_pem: str, ca: FleetCA, now: datetime.datetime,
          ) -> identity.HeldCertificate | None:
    """What the device holds now, for the decision: None if nothing from this CA."""
    if not pem:
        return None
    try:
        cert = load_certificate(pem)
        cert.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, InvalidSignature):
        return None
    try:
        revoked = ca.is_revoked(cert)
    except ValueError as exc:  # fail closed, for this device only
        raise CertificateRequestError(f"cannot check revocation: {exc}") from None
    return identity.HeldCertificate(
        same_key=certifies_csr_key(cert, csr_pem), revoked=revoked,
        days_left=identity.days_left(cert.not_valid_after_utc, now))
