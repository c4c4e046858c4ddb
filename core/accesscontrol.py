"""Greengrass `accessControl` policies: who may call which IPC operation on what. Pure.

A component's configuration carries its policies, exactly as on Greengrass:

    accessControl:
      aws.greengrass.ipc.pubsub:              # the service
        com.example.Pub:pubsub:1:              # a policy id, any unique string
          policyDescription: publish readings
          operations: [aws.greengrass#PublishToTopic]   # or "*": every operation
          resources: [sensors/+/temperature]            # "*", globs, MQTT + and #

Default deny: an operation of a service listed in `SERVICES` is allowed only when a
policy of that service names it (or "*") and a resource that covers the one asked for.
For the MQTT services a resource covers a topic (or a topic filter, when subscribing)
when it is the same string, when it is a glob whose `*` stands for any characters, or
when it is an MQTT filter that is a superset of it (`+` a level, `#` the rest).
`{iot:thingName}` in a resource is the device's thing name, as on Greengrass.

Adding a service (later issues: configuration, the CLI, shadows …) is one entry in
`SERVICES`: its operations and whether its resources are MQTT topics.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from hedgerow.core import component as component_
from hedgerow.core import deployment, mqtttopic

PUBSUB: Final = "aws.greengrass.ipc.pubsub"
MQTTPROXY: Final = "aws.greengrass.ipc.mqttproxy"
ANY: Final = "*"
THING_VARIABLE: Final = "{iot:thingName}"


@dataclasses.dataclass(frozen=True)
class Service:
    operations: frozenset[str]
    mqtt_resources: bool = False  # resources are MQTT topics (+ and # are wildcards)


def _ops(*names: str) -> frozenset[str]:
    return frozenset(f"aws.greengrass#{n}" for n in names)


# Services whose policies Hedgerow knows (validated, enforced where an operation is
# served). Greengrass's own names, so a Greengrass recipe's policies carry over as is.
SERVICES: Final[dict[str, Service]] = {
    PUBSUB: Service(_ops("PublishToTopic", "SubscribeToTopic"), mqtt_resources=True),
    MQTTPROXY: Service(_ops("PublishToIoTCore", "SubscribeToIoTCore"), mqtt_resources=True),
    "aws.greengrass.ShadowManager": Service(_ops(
        "GetThingShadow", "UpdateThingShadow", "DeleteThingShadow",
        "ListNamedShadowsForThing")),
    "aws.greengrass.SecretManager": Service(_ops("GetSecretValue")),
    "aws.greengrass.Cli": Service(_ops(
        "CreateLocalDeployment", "ListLocalDeployments", "GetLocalDeploymentStatus",
        "ListComponents", "GetComponentDetails", "RestartComponent", "StopComponent",
        "CreateDebugPassword", "PauseComponent", "ResumeComponent",
        "ValidateAuthorizationToken")),
}


@dataclasses.dataclass(frozen=True)
class Policy:
    service: str
    policy_id: str
    operations: tuple[str, ...]
    resources: tuple[str, ...]
    description: str = ""


@dataclasses.dataclass(frozen=True)
class Policies:
    """One component's policies, parsed; `problems` name what was wrong (and skipped)."""
    component: str
    policies: tuple[Policy, ...] = ()
    problems: tuple[str, ...] = ()


def resolve_policies(component: str, configuration: Mapping[str, Any]) -> Policies:
    """The policies in `configuration["accessControl"]`. Anything malformed is a problem
    naming component, service, policy id and field, and grants nothing."""
    raw = configuration.get("accessControl")
    if raw is None:
        return Policies(component)
    where = f"{component}: configuration.accessControl"
    if not isinstance(raw, Mapping):
        return Policies(component, (), (f"{where}: must be a map of service to policies",))
    found: list[Policy] = []
    problems: list[str] = []
    for service, by_id in raw.items():
        if not isinstance(by_id, Mapping):
            problems.append(f"{where}.{service}: must be a map of policy id to policy")
            continue
        known = SERVICES.get(str(service))
        for policy_id, body in by_id.items():
            here = f"{where}.{service}.{policy_id}"
            if not isinstance(body, Mapping):
                problems.append(f"{here}: must be a map with operations and resources")
                continue
            fields: dict[str, tuple[str, ...]] = {}
            for field in ("operations", "resources"):
                value = body.get(field)
                if not isinstance(value, list) or not value or not all(
                        isinstance(v, str) and v for v in value):
                    problems.append(f"{here}.{field}: must be a non-empty list of strings")
                else:
                    fields[field] = tuple(value)
            unknown = sorted(set(body) - {"operations", "resources", "policyDescription"})
            if unknown:
                problems.append(f"{here}: unknown field(s) {unknown} (allowed: "
                                "policyDescription, operations, resources)")
            if len(fields) < 2 or unknown:
                continue
            if known is not None:
                bad = [op for op in fields["operations"]
                       if op != ANY and op not in known.operations]
                if bad:
                    problems.append(
                        f"{here}.operations: unknown operation(s) {bad} for service "
                        f"{service} (known: {', '.join(sorted(known.operations))}, or '*')")
                    continue
                if known.mqtt_resources:
                    bad = [r for r in fields["resources"] if r != ANY and "*" not in r
                           and mqtttopic.resolve_filter_problem(r) is not None]
                    if bad:
                        problems.append(f"{here}.resources: not MQTT topic filters: {bad}")
                        continue
            description = body.get("policyDescription", "")
            found.append(Policy(str(service), str(policy_id), fields["operations"],
                                fields["resources"], str(description)))
    return Policies(component, tuple(found), tuple(problems))


@functools.lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    """Greengrass's resource wildcard: `*` is any run of characters (across `/` too);
    everything else is literal."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.S)


def is_covered(resource: str, wanted: str, *, mqtt: bool, thing: str = "") -> bool:
    """Policy resource `resource` covers the resource `wanted` an operation asks for."""
    if thing:
        resource = resource.replace(THING_VARIABLE, thing)
    if resource in (ANY, wanted):
        return True
    if "*" in resource and _glob(resource).fullmatch(wanted):
        return True
    return mqtt and ("+" in resource or "#" in resource) and \
        mqtttopic.is_superset(resource, wanted)


def resolve_allowing(policies: Policies, service: str, operation: str, resource: str,
                     thing: str = "") -> Policy | None:
    """The first policy that allows `operation` on `resource`, or None (default deny)."""
    mqtt = SERVICES[service].mqtt_resources if service in SERVICES else False
    for policy in policies.policies:
        if policy.service != service:
            continue
        if ANY not in policy.operations and operation not in policy.operations:
            continue
        if any(is_covered(r, resource, mqtt=mqtt, thing=thing) for r in policy.resources):
            return policy
    return None


def is_allowed(policies: Policies, service: str, operation: str, resource: str,
               thing: str = "") -> bool:
    return resolve_allowing(policies, service, operation, resource, thing) is not None


def render_refusal(component: str, service: str, operation: str, resource: str) -> str:
    """What a refused component is told: who, what, on which resource, and the policy
    that would allow it, ready to paste into the component's configuration."""
    short = operation.split("#", 1)[-1]
    kind = {PUBSUB: "pubsub", MQTTPROXY: "mqttproxy"}.get(service, short.lower())
    quoted = _yaml_scalar(resource)
    return (
        f"{component} is not authorized to call {operation} on resource {json.dumps(resource)}: no "
        f"accessControl policy of {service} in its configuration allows it (default "
        f"deny). To allow it, add to the component's configuration:\n"
        f"accessControl:\n"
        f"  {service}:\n"
        f"    {component}:{kind}:1:\n"
        f"      policyDescription: {_yaml_scalar(f'Allows {short} on {resource}')}\n"
        f"      operations:\n"
        f"        - {operation}\n"
        f"      resources:\n"
        f"        - {quoted}\n")


def _yaml_scalar(text: str) -> str:
    """`text` as a YAML scalar: plain when it surely reads back as the same string, else
    double-quoted (a JSON string is a valid YAML double-quoted scalar)."""
    if re.fullmatch(r"[A-Za-z0-9_./][A-Za-z0-9_.$/{}:+ -]*", text) and \
            not text.endswith((":", " ")) and ": " not in text:
        return text
    return json.dumps(text)


def render_permissions(policies: Policies) -> list[str]:
    """Effective permissions, one line per service and operation, for `hedgerow plan`."""
    lines: list[str] = []
    by_op: dict[tuple[str, str], list[str]] = {}
    for policy in policies.policies:
        known = SERVICES.get(policy.service)
        ops: Iterable[str] = (sorted(known.operations) if known is not None and ANY in
                              policy.operations else policy.operations)
        for op in ops:
            by_op.setdefault((policy.service, op), []).extend(policy.resources)
    for (service, op), resources in sorted(by_op.items()):
        lines.append(f"{service} {op}: {', '.join(dict.fromkeys(resources))}")
    return lines


def resolve_manifest_problems(resource: object) -> list[str]:
    """The policy problems of a Component's default configuration or of what a
    Deployment merges into its components' (`hedgerow validate`): each part as written;
    what a device gets once merged is checked again where it is used."""
    if isinstance(resource, component_.Component):
        return list(resolve_policies(resource.spec.name,
                                     resource.spec.default_configuration).problems)
    problems: list[str] = []
    if isinstance(resource, deployment.Deployment):
        for comp in resource.spec.components:
            if comp.configuration_update is not None:
                problems += resolve_policies(comp.name,
                                             comp.configuration_update.merge).problems
    return problems
