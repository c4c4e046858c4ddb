"""CoreDevice: one edge device. It belongs to one namespace (``spec.namespace``, set by
the fleet admin): only ThingGroups and Deployments of that namespace reach it. Labels
(metadata) select it into groups there; the controller writes its status from the
device's reports.

The status is kept under 2 KB: at 10,000 devices every byte and every write counts, so
components are listed as compact name/version/state triples and nothing is repeated.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Literal

import pydantic

from hedgerow.core import base, documents

# RFC 1123 label: what Kubernetes allows as a namespace name.
NAMESPACE_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class CoreDeviceSpec(base.Model):
    # Required in the CRD (every new or updated CoreDevice names its namespace); optional
    # here, so a CoreDevice stored before tenancy is still read: it belongs to no
    # namespace, nothing targets it and it keeps its last document.
    model_config = pydantic.ConfigDict(json_schema_extra={"required": ["namespace"]})

    namespace: Annotated[str | None, pydantic.Field(
        default=None, pattern=NAMESPACE_NAME, max_length=63,
        description="The namespace the device belongs to: only ThingGroups and Deployments "
                    "of this namespace select or target it, and the namespace's privilege "
                    "level (label hedgerow.dev/enforce) applies. Set by the fleet admin "
                    "(`hedgerow device register --namespace`); changing it moves the device "
                    "to another team.",
    )]
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
