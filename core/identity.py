"""Device identity documents and rules shared by the controller and the agent (pure).

- :class:`Bundle` — what `hedgerow device register` hands to a device after signing its
  CSR: the device certificate, the fleet CA and the broker URL. Public material only: the
  private key is generated on the device and never leaves it.
- :func:`expiry_condition` — the ``CertificateValid`` condition the controller derives
  from the ``certificateDaysLeft`` a device reports.
"""

from __future__ import annotations

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

    @pydantic.field_validator("ca_pem", "certificate_pem")
    @classmethod
    def _pem_certificate(cls, value: str) -> str:
        if "-----BEGIN CERTIFICATE-----" not in value:
            raise ValueError("not a PEM certificate")
        if "PRIVATE KEY" in value:
            raise ValueError("a bundle must never carry a private key")
        return value


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
