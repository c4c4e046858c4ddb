"""Render CustomResourceDefinitions from the pydantic models: one source of truth.

pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3.0 schema:
every node typed, no $ref, no anyOf-with-null, exclusive bounds as booleans, and explicit
markers where arbitrary JSON is allowed. The conversion is a pure tree walk.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pydantic

from hedgerow.core import base, fleet
from hedgerow.core import component as component_
from hedgerow.core import coredevice as coredevice_
from hedgerow.core import deployment as deployment_
from hedgerow.core import thinggroup as thinggroup_

_DROP = {"title", "additionalProperties", "$defs", "$schema", "default"}


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    json_path: str
    type: str = "string"
    priority: int = 0
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.priority:
            out["priority"] = self.priority
        if self.description:
            out["description"] = self.description
        return out


def _condition(kind: str, field: str = "status") -> str:
    return f'.status.conditions[?(@.type=="{kind}")].{field}'


@dataclasses.dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    scope: str
    spec_model: type[pydantic.BaseModel]
    status_model: type[pydantic.BaseModel]
    columns: tuple[Column, ...]
    spec_required: bool = True

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{base.GROUP}"


AGE = Column("Age", ".metadata.creationTimestamp", "date")
READY = Column("Ready", _condition("Ready"))
REASON = Column("Reason", _condition("Ready", "reason"), priority=1)

KINDS: tuple[Kind, ...] = (
    Kind("Component", "components", ("hcomp", "hcomponent"), "Namespaced",
         component_.ComponentSpec, component_.ComponentStatus, (
             Column("Component", ".spec.name"),
             Column("Version", ".spec.version"),
             Column("Publisher", ".spec.publisher", priority=1),
             AGE,
         )),
    Kind("ThingGroup", "thinggroups", ("tg", "thinggroup"), "Namespaced",
         thinggroup_.ThingGroupSpec, thinggroup_.ThingGroupStatus, (
             Column("Members", ".status.memberCount", "integer"),
             AGE,
         )),
    Kind("Deployment", "deployments", ("hdep", "hdeploy"), "Namespaced",
         deployment_.DeploymentSpec, deployment_.DeploymentStatus, (
             Column("Group", ".spec.target.thingGroup"),
             Column("Thing", ".spec.target.thing"),
             Column("Targeted", ".status.targeted", "integer"),
             Column("Succeeded", ".status.succeeded", "integer"),
             Column("Failed", ".status.failed", "integer"),
             READY, REASON,
             Column("Priority", ".spec.priority", "integer", priority=1),
             AGE,
         )),
    Kind("CoreDevice", "coredevices", ("cd", "device"), "Cluster",
         coredevice_.CoreDeviceSpec, coredevice_.CoreDeviceStatus, (
             Column("Namespace", ".spec.namespace"),
             Column("Health", ".status.health"),
             # The Applied condition's reason: Succeeded, InProgress, Deferred (a
             # component holds its update back), RolledBack, Failed… -- what an operator
             # watching a rollout wants to see; who and why in -o wide.
             Column("Deployment", _condition(fleet.APPLIED, "reason")),
             Column("Applied", ".status.appliedRevision"),
             Column("Desired", ".status.desiredRevision", priority=1),
             Column("Message", _condition(fleet.APPLIED, "message"), priority=1),
             Column("Agent", ".status.agentVersion"),
             Column("Last Seen", ".status.lastSeen", "date"),
             AGE,
         )),
)


def render_crd(kind: Kind) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": render_schema(kind.spec_model),
        "status": render_schema(kind.status_model),
    }
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if kind.spec_required:
        schema["required"] = ["spec"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name},
        "spec": {
            "group": base.GROUP,
            "scope": kind.scope,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": ["hedgerow"],
            },
            "versions": [{
                "name": base.VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [c.to_dict() for c in kind.columns],
                "schema": {"openAPIV3Schema": schema},
            }],
        },
    }


def render_schema(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(raw, raw.get("$defs", {}))


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _convert(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"a CRD schema cannot express the union {node['anyOf']}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return _convert({**options[0], **rest}, defs)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = value

    if out.get("type") == "object" and "properties" not in out:
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = _convert(extra, defs)
        else:
            # Free-form JSON (configuration): keep what the user wrote.
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif "type" not in out and "enum" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if "format" in out and out["format"] not in ("date-time", "int32", "int64", "double"):
        del out["format"]
    default = node.get("default")
    if isinstance(default, str | int | float | bool) and default is not None:
        out["default"] = default
    return out


def render_all() -> dict[str, dict[str, Any]]:
    """File name → CRD document, for every kind."""
    return {f"{k.crd_name}.yaml": render_crd(k) for k in KINDS}
