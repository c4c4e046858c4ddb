"""Read Hedgerow YAML documents (what `kubectl apply` and the device's deployments folder
take) into models, with errors a person can act on: file, document, object, field, reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pydantic
import yaml

from hedgerow.core import base, component, coredevice, deployment, semver, thinggroup

Resource = (component.Component | deployment.Deployment | thinggroup.ThingGroup
            | coredevice.CoreDevice)

MODELS: dict[str, type[Resource]] = {
    "Component": component.Component,
    "Deployment": deployment.Deployment,
    "ThingGroup": thinggroup.ThingGroup,
    "CoreDevice": coredevice.CoreDevice,
}

# Regexes are exact but unreadable in an error; say what the pattern means instead.
_PATTERN_MEANING = {
    semver.VERSION_PATTERN: "a semantic version such as 1.2.3",
    base.DNS_SUBDOMAIN: "a lowercase DNS name (a-z, 0-9, '-', '.')",
    base.THING_NAME: "a thing name (a-z, 0-9, '-', '.'; at most 64 characters)",
    base.COMPONENT_NAME: "a component name (letters, digits, '.', '-', '_')",
    component.SHA256: "64 lowercase hex digits",
    deployment.JSON_POINTER: "a JSON pointer such as /a/b",
    deployment.QUANTITY: "a quantity such as 64Mi or 1G",
}


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with one document."""

    source: str
    document: int  # 1-based position in a multi-document file
    kind: str
    name: str
    field: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.source}#{self.document}"
        what = f"{self.kind}/{self.name}" if self.name else (self.kind or "document")
        field = f" {self.field}:" if self.field else ""
        return f"{where} {what}:{field} {self.reason}"


class InvalidDocumentError(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def render_field(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _reason(error: Any) -> str:
    kind = error["type"]
    given = error.get("input")
    if kind == "string_pattern_mismatch":
        meaning = _PATTERN_MEANING.get(error["ctx"]["pattern"])
        if meaning:
            return f"must be {meaning} (got {given!r})"
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; field names are camelCase)"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    if kind in ("enum", "literal_error"):
        msg = str(error["msg"])
        return f"{msg[:1].lower()}{msg[1:]} (got {given!r})"
    return f"{error['msg']}" + ("" if isinstance(given, dict | list) else f" (got {given!r})")


def parse_resource(data: Any, source: str = "<input>", document: int = 1) -> Resource:
    """Validate one decoded document; raise InvalidDocumentError listing every problem."""
    if not isinstance(data, dict):
        raise InvalidDocumentError(
            [Problem(source, document, "", "", "", "a document must be a mapping")])
    kind = str(data.get("kind", ""))
    meta = data.get("metadata")
    name = str(meta.get("name", "")) if isinstance(meta, dict) else ""
    model = MODELS.get(kind)
    if model is None:
        known = ", ".join(MODELS)
        raise InvalidDocumentError([Problem(
            source, document, kind, name, "kind",
            f"unknown kind {kind!r} (expected one of {known})")])
    if data.get("apiVersion") != base.API_VERSION:
        raise InvalidDocumentError([Problem(
            source, document, kind, name, "apiVersion",
            f"must be {base.API_VERSION} (got {data.get('apiVersion')!r})")])
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise InvalidDocumentError([
            Problem(source, document, kind, name, render_field(e["loc"]), _reason(e))
            for e in exc.errors()
        ]) from None


def parse_documents(text: str, source: str = "<input>") -> list[Resource]:
    """Every document in a (multi-document) YAML text; the first invalid one raises."""
    try:
        decoded = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidDocumentError(
            [Problem(source, 0, "", "", "", f"not valid YAML: {at}{problem}")]) from None
    return [parse_resource(d, source, i) for i, d in enumerate(decoded, start=1)]
