"""Recipe variables: `{namespace:key}` placeholders in lifecycle scripts and setenv.

Greengrass syntax. A placeholder is `{artifacts:path}`, `{artifacts:decompressedPath}`,
`{work:path}`, `{configuration:/json/pointer}`, `{kernel:rootPath}`, `{iot:thingName}`,
or, for a direct dependency D, `{D:configuration:/ptr}`, `{D:artifacts:path}`,
`{D:artifacts:decompressedPath}` and `{D:work:path}`. Shell syntax is left alone: `${VAR}`,
`${VAR:-x}`, brace expansion `{a,b}` and groups `{ cmd; }` are not placeholders because a
placeholder has no leading `$` and no spaces or commas. Anything else that looks like a
placeholder is an error naming it, so a typo fails the deployment instead of running a
script with a literal `{confguration:/x}` in it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

from hedgerow.core import configuration, documents

_PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z][A-Za-z0-9._-]*):([^{}\s,]*)\}")
_BUILTIN = frozenset({"artifacts", "work", "configuration", "kernel", "iot"})


class RecipeVariableError(ValueError):
    """A placeholder that names nothing known, or a pointer to a missing value."""


@dataclasses.dataclass(frozen=True)
class Paths:
    """What one component's placeholders can refer to."""

    artifacts: str
    decompressed: str
    work: str
    configuration: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Context:
    component: str
    own: Paths
    root: str
    thing: str
    dependencies: Mapping[str, Paths] = dataclasses.field(default_factory=dict)


def render_value(value: Any) -> str:
    """Strings as they are; numbers, booleans, objects as JSON (Greengrass does the same)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _lookup(paths: Paths, namespace: str, key: str, whole: str, who: str) -> str:
    if namespace == "configuration":
        try:
            return render_value(configuration.resolve_pointer(paths.configuration, key))
        except KeyError:
            raise RecipeVariableError(
                f"{whole}: {who} has no configuration value at {key!r}") from None
    table = {
        ("artifacts", "path"): paths.artifacts,
        ("artifacts", "decompressedPath"): paths.decompressed,
        ("work", "path"): paths.work,
    }
    found = table.get((namespace, key))
    if found is None:
        raise RecipeVariableError(f"{whole}: unknown variable")
    return found


def _replace(match: re.Match[str], context: Context) -> str:
    whole, namespace, key = match.group(0), match.group(1), match.group(2)
    if namespace == "kernel" and key == "rootPath":
        return context.root
    if namespace == "iot" and key == "thingName":
        return context.thing
    if namespace in _BUILTIN:
        return _lookup(context.own, namespace, key, whole, context.component)
    dep_namespace, _, dep_key = key.partition(":")
    if dep_namespace in ("configuration", "artifacts", "work"):
        paths = context.dependencies.get(namespace)
        if paths is None:
            raise RecipeVariableError(
                f"{whole}: {namespace} is not a direct dependency of {context.component}")
        return _lookup(paths, dep_namespace, dep_key, whole, namespace)
    raise RecipeVariableError(
        f"{whole}: unknown variable (known: artifacts:path, artifacts:decompressedPath, "
        "work:path, configuration:/pointer, kernel:rootPath, iot:thingName, "
        "DEPENDENCY:configuration:/pointer, DEPENDENCY:artifacts:path)")


def _replace_checked(match: re.Match[str], context: Context) -> str:
    value = _replace(match, context)
    if "\0" in value:  # configuration is free-form JSON; a script or variable is not
        raise RecipeVariableError(
            f"{match.group(0)}: the value holds a NUL byte, which no script or "
            "environment variable can carry")
    return value


def render_text(text: str, context: Context) -> str:
    """Every placeholder in `text` replaced; the first unknown one raises, and so does a
    value no process could be given (a NUL byte)."""
    return _PLACEHOLDER.sub(lambda m: _replace_checked(m, context), text)


def render_env(env: Mapping[str, str], context: Context) -> dict[str, str]:
    out = {}
    for name, value in env.items():
        try:
            out[name] = render_text(value, context)
        except RecipeVariableError as exc:
            raise RecipeVariableError(f"setenv {name}: {exc}") from None
    return out


def _render_all(value: Any, context: Context) -> Any:
    if isinstance(value, str):
        return render_text(value, context)
    if isinstance(value, dict):
        return {k: _render_all(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_all(v, context) for v in value]
    return value


def render_restart_hash(comp: documents.ResolvedComponent, context: Context) -> str:
    """What decides whether a changed component must restart, as in Greengrass: the
    component without its configuration, with its lifecycle (or container) as rendered —
    every variable filled in. A configuration change that no rendered step, setenv or
    container field uses leaves this unchanged, and the component keeps running (it
    learns of the change over IPC); one that a step uses, or a runWith change, changes
    it. '' when a variable cannot be rendered: the caller then restarts, and the start
    reports the variable."""
    body = comp.to_dict()
    body.pop("configuration", None)
    try:
        for field in ("lifecycle", "container"):
            if field in body:
                body[field] = _render_all(body[field], context)
    except RecipeVariableError:
        return ""
    return documents.content_hash(body)
