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
    line: int | None = None  # 1-based, where the file cannot be read as YAML
    column: int | None = None

    def __str__(self) -> str:
        if self.line is not None:  # FILE:LINE:COLUMN, as editors and CI logs link it
            return f"{self.source}:{self.line}:{self.column}: {self.reason}"
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
        raise InvalidDocumentError([render_yaml_problem(exc, text, source)]) from None
    return [parse_resource(d, source, i) for i, d in enumerate(decoded, start=1)]


def render_yaml_problem(exc: yaml.YAMLError, text: str, source: str) -> Problem:
    """A YAML syntax error as a person needs it: where the parser gave up, and — often the
    real mistake — where the construct it was reading began (an unclosed bracket or
    quote), each with its line of text; plus PyYAML's note, when it has one."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return Problem(source, 0, "", "", "", f"not valid YAML: {exc}")
    lines = text.splitlines()

    def quote(mark: Any) -> str:
        line = lines[mark.line] if 0 <= mark.line < len(lines) else ""
        return f": {line.strip()!r}" if line.strip() else ""

    problem, mark = exc.problem or "not valid YAML", exc.problem_mark
    reason = f"not valid YAML: {problem}"
    if mark is not None:
        reason += quote(mark)
    if exc.context:
        began = exc.context_mark
        same = began is not None and mark is not None and (
            began.line, began.column) == (mark.line, mark.column)
        reason += f" ({exc.context}"
        if began is not None and not same:
            reason += (f" that began at line {began.line + 1}, column {began.column + 1}"
                       f"{quote(began)}")
        reason += ")"
    if exc.note:
        reason += f"; {exc.note}"
    at = mark or exc.context_mark
    return Problem(source, 0, "", "", "", reason,
                   line=at.line + 1 if at else None, column=at.column + 1 if at else None)
