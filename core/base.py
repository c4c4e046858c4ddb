"""The base every Hedgerow model shares, and the Kubernetes envelope pieces.

Models are frozen (a parsed document is a value, never mutated in place) and forbid
unknown fields (a typo in YAML is an error, not a silently ignored key). Python names are
snake_case; YAML/JSON names are the Kubernetes camelCase, produced by the alias generator.
"""

from __future__ import annotations

import datetime
import enum
from typing import Annotated, Any, Final, Literal

import pydantic
from pydantic import alias_generators

GROUP = "hedgerow.dev"
VERSION = "v1alpha1"
API_VERSION: Final = "hedgerow.dev/v1alpha1"

# RFC 1123 subdomain, as Kubernetes requires of object names.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Greengrass component names: reverse-DNS style, letters, digits, '.', '-', '_'.
COMPONENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# A thing name is a CoreDevice's object name, the CN of its certificate (at most 64
# characters) and an MQTT topic level, so it must be all three: no uppercase, no wildcards.
THING_NAME = r"^[a-z0-9]([-a-z0-9.]{0,62}[a-z0-9])?$"


class Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=alias_generators.to_camel,
        populate_by_name=True,
        use_enum_values=False,
    )

    def to_dict(self) -> dict[str, Any]:
        """The YAML/JSON form: camelCase keys, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def list_map(key: str = "name") -> dict[str, Any]:
    """Schema markers for a list keyed by one field (merges per item under server-side apply)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]}


class StrEnum(enum.StrEnum):
    """String enums whose YAML form is their value."""


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(Model):
    """metav1.Condition: the one status vocabulary kubectl, Argo CD and Flux understand."""

    type: Annotated[str, pydantic.Field(pattern=r"^[A-Za-z][A-Za-z0-9]*$", max_length=64)]
    status: ConditionStatus
    reason: Annotated[str, pydantic.Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
                                          max_length=256)]
    message: Annotated[str, pydantic.Field(max_length=4096)] = ""
    last_transition_time: datetime.datetime
    observed_generation: Annotated[int, pydantic.Field(ge=0)] | None = None


class ObjectMeta(Model):
    """The part of metadata Hedgerow reads; the API server owns the rest."""

    model_config = pydantic.ConfigDict(extra="allow")

    name: Annotated[str, pydantic.Field(pattern=DNS_SUBDOMAIN, max_length=253)]
    namespace: str | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    generation: int | None = None
    uid: str | None = None
    resource_version: str | None = None


ApiVersion = Literal["hedgerow.dev/v1alpha1"]
