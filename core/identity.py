"""Device identity documents and rules shared by the controller and the agent (pure).

- :class:`Bundle` — what `hedgerow device register` hands to a device after signing its
  CSR: the device certificate, the fleet CA and the broker URL. Public material only: the
  private key is generated on the device and never leaves it.
- :func:`expiry_condition` — the ``CertificateValid`` condition the controller derives
  from the ``certificateDaysLeft`` a device reports.
- :func:`resolve_csr_signing` — the CertificateSigningRequest rule: when the controller
  may sign a CoreDevice's ``spec.csr`` by itself and when only after an admin approved
  that very CSR.
"""

from __future__ import annotations

import dataclasses
import datetime
import urllib.parse
from typing import Annotated, Final, Literal

import pydantic

from hedgerow.core import base

DEVICE_CERT_DAYS: Final = 365
MAX_DEVICE_CERT_DAYS: Final = 825  # the CA/Browser ceiling; never hand out longer
EXPIRY_WARNING_DAYS: Final = 30
CERTIFICATE_VALID: Final = "CertificateValid"


def _check_broker_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "mqtts" or not parts.hostname:
        raise ValueError(f"broker URL must be mqtts://HOST[:PORT] (got {url!r}): "
                         "devices only talk to the broker over mutual TLS")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"broker URL must be mqtts://HOST[:PORT] (got {url!r})")
    _ = parts.port  # raises ValueError on a bad port
    return url


class Bundle(base.Model):
    """The bootstrap bundle for one device (JSON, public material only)."""

    api_version: base.ApiVersion = base.API_VERSION
    kind: Literal["DeviceBundle"] = "DeviceBundle"
    thing: Annotated[str, pydantic.Field(pattern=base.THING_NAME)]
    broker_url: Annotated[str, pydantic.AfterValidator(_check_broker_url)]
    ca_pem: Annotated[str, pydantic.Field(max_length=16384)]
    certificate_pem: Annotated[str, pydantic.Field(max_length=16384)]
    signing_key_pem: Annotated[str, pydantic.Field(
        max_length=1024,
        description="The controller's Ed25519 public key (PEM) that signs desired "
                    "documents; the device pins it and refuses anything else.")]

    @pydantic.field_validator("ca_pem", "certificate_pem")
    @classmethod
    def _pem_certificate(cls, value: str) -> str:
        if "-----BEGIN CERTIFICATE-----" not in value:
            raise ValueError("not a PEM certificate")
        if "PRIVATE KEY" in value:
            raise ValueError("a bundle must never carry a private key")
        return value

    @pydantic.field_validator("signing_key_pem")
    @classmethod
    def _pem_public_key(cls, value: str) -> str:
        if "-----BEGIN PUBLIC KEY-----" not in value or "PRIVATE" in value:
            raise ValueError("not a PEM public key")
        return value


@dataclasses.dataclass(frozen=True)
class HeldCertificate:
    """The certificate from the fleet CA a device holds (status.certificate), as the
    signing decision sees it."""

    same_key: bool  # it certifies the key of the CSR now in spec.csr
    revoked: bool
    days_left: int


class CsrDecision(base.StrEnum):
    NOTHING = "Nothing"  # the current certificate stands
    SIGN = "Sign"
    AWAIT_APPROVAL = "AwaitApproval"


def resolve_csr_signing(held: HeldCertificate | None, approved: bool,
                        renew_days: int = EXPIRY_WARNING_DAYS) -> CsrDecision:
    """The CertificateSigningRequest rule.

    - no certificate from this CA yet: first registration, sign;
    - the same key, not revoked: keep it, or renew it near expiry (the key was approved
      when it was first signed);
    - a new key, or the same key after revocation: only with an approval of this very
      CSR (whoever may patch spec.csr must not be able to mint a device's identity).
    """
    if held is None:
        return CsrDecision.SIGN
    if held.same_key and not held.revoked:
        return CsrDecision.NOTHING if held.days_left > renew_days else CsrDecision.SIGN
    return CsrDecision.SIGN if approved else CsrDecision.AWAIT_APPROVAL


def days_left(not_after: datetime.datetime, now: datetime.datetime) -> int:
    """Whole days until expiry, rounded down; negative once expired."""
    return (not_after - now) // datetime.timedelta(days=1)


def expiry_condition(
    days: int | None, now: datetime.datetime, warning_days: int = EXPIRY_WARNING_DAYS,
    observed_generation: int | None = None,
) -> base.Condition:
    """``CertificateValid`` from a reported days-to-expiry (None: not reported yet)."""
    if days is None:
        status, reason, message = (base.ConditionStatus.UNKNOWN, "NotReported",
                                   "the device has not reported its certificate expiry")
    elif days < 0:
        status, reason, message = (base.ConditionStatus.FALSE, "Expired",
                                   "the device certificate has expired; register the "
                                   "device again with a new CSR")
    elif days <= warning_days:
        status, reason, message = (base.ConditionStatus.FALSE, "ExpiringSoon",
                                   f"the device certificate expires in {days} day(s); "
                                   "renew it (hedgerow agent init --renew, then register)")
    else:
        status, reason, message = (base.ConditionStatus.TRUE, "Valid",
                                   f"the device certificate expires in {days} day(s)")
    return base.Condition(type=CERTIFICATE_VALID, status=status, reason=reason,
                          message=message, last_transition_time=now,
                          observed_generation=observed_generation)
