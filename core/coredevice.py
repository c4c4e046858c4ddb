"""CoreDevice: one edge device. Labels (metadata) select it into groups; the controller
writes its status from the device's reports.

The status is kept under 2 KB: at 10,000 devices every byte and every write counts, so
components are listed as compact name/version/state triples and nothing is repeated.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Literal

import pydantic

from hedgerow.core import base, documents


class CoreDeviceSpec(base.Model):
    csr: Annotated[str | None, pydantic.Field(
        default=None, max_length=8192,
        description="PEM certificate signing request made on the device; the controller "
                    "signs it and writes the certificate to status.certificate.",
    )]


class CertificateStatus(base.Model):
    pem: Annotated[str | None, pydantic.Field(default=None, max_length=8192)]
    not_after: datetime.datetime | None = None


class DeviceComponent(base.Model):
    name: str
    version: str
    state: documents.ComponentState


class CoreDeviceStatus(base.Model):
    observed_generation: int | None = None
    health: documents.Health = documents.Health.UNKNOWN
    last_seen: datetime.datetime | None = None
    platform: documents.PlatformInfo | None = None
    agent_version: str | None = None
    desired_revision: str | None = None
    desired_generations: Annotated[dict[str, int], pydantic.Field(
        description="The generation of each deployment the desired revision was built "
                    "from ('namespace/name': generation); written by the controller.",
    )] = {}
    applied_revision: str | None = None
    components: Annotated[list[DeviceComponent], pydantic.Field(max_length=256)] = []
    certificate: CertificateStatus | None = None
    conditions: Annotated[list[base.Condition], pydantic.Field(
        json_schema_extra=base.list_map("type"),
    )] = []


class CoreDevice(base.Model):
    api_version: base.ApiVersion = base.API_VERSION
    kind: Literal["CoreDevice"] = "CoreDevice"
    metadata: base.ObjectMeta
    spec: CoreDeviceSpec = CoreDeviceSpec()
    status: CoreDeviceStatus | None = None
