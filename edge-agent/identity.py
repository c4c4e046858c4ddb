"""The device's identity: its private key, its CSR, and the bundle that completes them.

`hedgerow agent init` makes an EC P-256 key **on the device** and a CSR whose only
subject is CN = thing name. The CSR goes to the operator (CLI or GitOps, see
docs/identity.md); the signed certificate comes back in a bootstrap bundle
(`hedgerow agent install-bundle`), which is checked before anything is written: the
certificate must certify *this device's* key, carry CN = this thing, be signed by the
bundle's CA and be valid now. The key never leaves ``<root>/identity/`` and is never
printed or logged.

    <root>/identity/            0700
        device.key              0600  the private key
        device.csr              0644  the request (public)
        device.pem              0644  the signed certificate
        ca.pem                  0644  the fleet CA the broker's certificate must chain to
        signing.pub             0644  the controller's Ed25519 key: desired documents must
                                      be signed by it (hedgerow.core.envelope)
        connection.json         0600  {"thing": …, "brokerUrl": "mqtts://…"}
        next.key / next.csr           a renewal in progress (`init --renew`); installing a
                                      certificate for next.key makes it device.key

All writes are temp → fsync → rename → fsync dir (hedgerow.agent.files).

Trust is pinned on first install: a later bundle that would change the fleet CA, the
signing key, the broker URL or the thing name is refused unless ``replace_trust`` is
given (``install-bundle --replace-trust``), and then what changed is reported. A renewal
(the same trust, a new certificate) needs no flag.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib

import pydantic
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hedgerow import files
from hedgerow.core import broker, identity


class IdentityError(Exception):
    """The identity cannot be made or installed; the message says why (no secrets)."""


@dataclasses.dataclass(frozen=True)
class Paths:
    root: pathlib.Path

    @property
    def folder(self) -> pathlib.Path:
        return self.root / "identity"

    @property
    def key(self) -> pathlib.Path:
        return self.folder / "device.key"

    @property
    def csr(self) -> pathlib.Path:
        return self.folder / "device.csr"

    @property
    def cert(self) -> pathlib.Path:
        return self.folder / "device.pem"

    @property
    def ca(self) -> pathlib.Path:
        return self.folder / "ca.pem"

    @property
    def signing_key(self) -> pathlib.Path:
        return self.folder / "signing.pub"

    @property
    def connection(self) -> pathlib.Path:
        return self.folder / "connection.json"

    @property
    def next_key(self) -> pathlib.Path:
        return self.folder / "next.key"

    @property
    def next_csr(self) -> pathlib.Path:
        return self.folder / "next.csr"

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.folder.mkdir(mode=0o700, exist_ok=True)
        self.folder.chmod(0o700)


@dataclasses.dataclass(frozen=True)
class DeviceIdentity:
    """What the connector needs, as file paths (the key is read by the TLS library only)."""

    thing: str
    broker_url: str
    ca: pathlib.Path
    cert: pathlib.Path
    key: pathlib.Path
    signing_key: pathlib.Path | None = None  # None: none pinned (documents are refused)
    changed: tuple[str, ...] = ()  # what a --replace-trust install replaced

    def days_left(self, now: datetime.datetime | None = None) -> int:
        return certificate_days_left(self.cert, now)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _load_key(path: pathlib.Path) -> ec.EllipticCurvePrivateKey:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise IdentityError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IdentityError(f"{path}: not an EC private key")
    return key


def _new_key(path: pathlib.Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    files.write_atomic(path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), mode=0o600)
    return key


def _csr(key: ec.EllipticCurvePrivateKey, thing: str) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, thing)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def init(root: pathlib.Path, thing: str, renew: bool = False) -> pathlib.Path:
    """Make (or keep) the device key and write a CSR for ``thing``; return the CSR path.

    Idempotent: an existing key is reused, so running it twice yields a CSR for the same
    key. ``renew`` makes a second key (next.key) for a certificate rotation while the
    current certificate keeps working; installing its certificate promotes it.
    """
    if not broker.is_thing_name(thing):
        raise IdentityError(f"{thing!r} is not a valid thing name: lowercase letters, "
                            "digits, '-' and '.', at most 64 characters")
    paths = Paths(root)
    paths.ensure()
    if renew:
        key_path, csr_path = paths.next_key, paths.next_csr
        key = _load_key(key_path) if key_path.exists() else _new_key(key_path)
    else:
        key_path, csr_path = paths.key, paths.csr
        key = _load_key(key_path) if key_path.exists() else _new_key(key_path)
    files.write_atomic(csr_path, _csr(key, thing), mode=0o644)
    return csr_path


def read_bundle(data: bytes) -> identity.Bundle:
    try:
        return identity.Bundle.model_validate_json(data)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        raise IdentityError(f"not a device bundle: {problems}") from None


def _check(bundle: identity.Bundle, key: ec.EllipticCurvePrivateKey,
           now: datetime.datetime) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(bundle.certificate_pem.encode())
        ca = x509.load_pem_x509_certificate(bundle.ca_pem.encode())
    except ValueError as exc:
        raise IdentityError(f"bundle: unreadable certificate: {exc}") from None
    if cert.public_key() != key.public_key():
        raise IdentityError("the bundle's certificate is not for this device's key "
                            "(was the CSR made on another device, or by an older init?)")
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [a.value for a in cns] != [bundle.thing]:
        raise IdentityError(f"the certificate's CN is not {bundle.thing!r}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise IdentityError("the certificate is not signed by the bundle's CA") from None
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise IdentityError(f"the certificate is not valid now (valid "
                            f"{cert.not_valid_before_utc:%Y-%m-%d} .. "
                            f"{cert.not_valid_after_utc:%Y-%m-%d})")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise IdentityError("the certificate is not for client authentication")
    return cert


def _same_certificate(pem_a: bytes, pem_b: bytes) -> bool:
    try:
        return bool(x509.load_pem_x509_certificate(pem_a)
                    == x509.load_pem_x509_certificate(pem_b))
    except ValueError:
        return False


def _same_public_key(pem_a: bytes, pem_b: bytes) -> bool:
    try:
        return bool(serialization.load_pem_public_key(pem_a)
                    == serialization.load_pem_public_key(pem_b))
    except (ValueError, TypeError):
        return False


def resolve_trust_changes(paths: Paths, bundle: identity.Bundle) -> list[str]:
    """What installing ``bundle`` would change in the pinned trust of an initialised
    device (empty for a first install, or a renewal of the same trust)."""
    try:
        connection = json.loads(paths.connection.read_bytes())
    except FileNotFoundError:
        return []  # not initialised: the first bundle pins everything
    except ValueError:
        connection = {}
    changes = []
    if connection.get("thing") != bundle.thing:
        changes.append(f"thing name ({connection.get('thing')!r} -> {bundle.thing!r})")
    if connection.get("brokerUrl") != bundle.broker_url:
        changes.append(f"broker URL ({connection.get('brokerUrl')} -> {bundle.broker_url})")
    try:
        old_ca = paths.ca.read_bytes()
    except FileNotFoundError:
        old_ca = b""
    if not _same_certificate(old_ca, bundle.ca_pem.encode()):
        changes.append("fleet CA (ca.pem)")
    try:
        old_key = paths.signing_key.read_bytes()
    except FileNotFoundError:
        old_key = None  # an identity from before signed documents: pinning one is no change
    if old_key is not None and not _same_public_key(old_key, bundle.signing_key_pem.encode()):
        changes.append("desired-document signing key (signing.pub)")
    return changes


def _check_signing_key(bundle: identity.Bundle) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        key = serialization.load_pem_public_key(bundle.signing_key_pem.encode())
    except ValueError as exc:
        raise IdentityError(f"bundle: unreadable signing key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise IdentityError("bundle: the signing key is not an Ed25519 public key")


def install_bundle(root: pathlib.Path, data: bytes, thing: str | None = None,
                   now: datetime.datetime | None = None,
                   replace_trust: bool = False) -> DeviceIdentity:
    """Check a bundle against this device's key (or a pending renewal key) and install
    certificate, CA, signing key and broker URL. Nothing is written unless every check
    passes — and, on an initialised device, unless the bundle keeps the pinned CA,
    signing key, broker URL and thing, or ``replace_trust`` says to replace them (the
    result's ``changed`` lists what was)."""
    bundle = read_bundle(data)
    if thing is not None and bundle.thing != thing:
        raise IdentityError(f"the bundle is for {bundle.thing!r}, this device is {thing!r}")
    paths = Paths(root)
    now = now or _now()
    _check_signing_key(bundle)
    changes = resolve_trust_changes(paths, bundle)
    if changes and not replace_trust:
        raise IdentityError(
            "the bundle would change this device's pinned trust: " + "; ".join(changes)
            + ". Nothing was installed. If this is intended (a new fleet CA, signing key "
            "or broker), install it again with --replace-trust")
    candidates = [(p, _load_key(p)) for p in (paths.next_key, paths.key) if p.exists()]
    if not candidates:
        raise IdentityError(f"no device key in {paths.folder}; run `hedgerow agent init` "
                            "first")
    problem: IdentityError | None = None
    for key_path, key in candidates:
        try:
            _check(bundle, key, now)
        except IdentityError as exc:
            problem = exc  # the current key's reason wins: it is tried last
            continue
        if key_path == paths.next_key:  # a renewal: the new key becomes the device key
            paths.next_key.replace(paths.key)
            if paths.next_csr.exists():
                paths.next_csr.replace(paths.csr)
            files.fsync_dir(paths.folder)
        files.write_atomic(paths.ca, bundle.ca_pem.encode(), mode=0o644)
        files.write_atomic(paths.cert, bundle.certificate_pem.encode(), mode=0o644)
        files.write_atomic(paths.signing_key, bundle.signing_key_pem.encode(), mode=0o644)
        files.write_json(paths.connection,
                         {"thing": bundle.thing, "brokerUrl": bundle.broker_url})
        return dataclasses.replace(load(root), changed=tuple(changes))
    assert problem is not None
    raise problem


def load(root: pathlib.Path) -> DeviceIdentity:
    """The installed identity, for the connector; IdentityError when not installed."""
    paths = Paths(root)
    try:
        connection = json.loads(paths.connection.read_bytes())
    except FileNotFoundError:
        raise IdentityError(f"no identity installed in {paths.folder}; run `hedgerow agent "
                            "init` and `hedgerow agent install-bundle`") from None
    except ValueError as exc:
        raise IdentityError(f"{paths.connection}: {exc}") from None
    for path in (paths.key, paths.cert, paths.ca):
        if not path.is_file():
            raise IdentityError(f"{path} is missing")
    _load_key(paths.key)  # checks the mode; the key itself stays with the TLS library
    return DeviceIdentity(thing=str(connection["thing"]),
                          broker_url=str(connection["brokerUrl"]),
                          ca=paths.ca, cert=paths.cert, key=paths.key,
                          signing_key=paths.signing_key if paths.signing_key.is_file()
                          else None)


def certificate_days_left(cert: pathlib.Path, now: datetime.datetime | None = None) -> int:
    """Whole days until the certificate at ``cert`` expires (negative once expired)."""
    certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    return identity.days_left(certificate.not_valid_after_utc, now or _now())
