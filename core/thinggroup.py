"""ThingGroup: a set of devices, named statically and/or selected by CoreDevice labels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

import pydantic

from hedgerow.core import base


class Operator(base.StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class Requirement(base.Model):
    key: Annotated[str, pydantic.Field(min_length=1, max_length=317)]
    operator: Operator
    values: list[str] = []

    @pydantic.model_validator(mode="after")
    def _values_fit_operator(self) -> Requirement:
        needs_values = self.operator in (Operator.IN, Operator.NOT_IN)
        if needs_values != bool(self.values):
            raise ValueError(f"operator {self.operator} " +
                             ("needs values" if needs_values else "takes no values"))
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator is Operator.EXISTS:
            return self.key in labels
        if self.operator is Operator.DOES_NOT_EXIST:
            return self.key not in labels
        inside = self.key in labels and labels[self.key] in self.values
        return inside if self.operator is Operator.IN else not inside


class LabelSelector(base.Model):
    """metav1.LabelSelector semantics: all requirements must hold."""

    match_labels: dict[str, str] = {}
    match_expressions: list[Requirement] = []

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            r.matches(labels) for r in self.match_expressions
        )


class ThingGroupSpec(base.Model):
    model_config = pydantic.ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.things) || has(self.selector)",
         "message": "a thing group needs things, a selector, or both"},
    ]})

    things: Annotated[list[Annotated[str, pydantic.Field(pattern=base.THING_NAME)]] | None,
                      pydantic.Field(default=None, json_schema_extra={
                          "x-kubernetes-list-type": "set"})]
    selector: LabelSelector | None = None

    @pydantic.model_validator(mode="after")
    def _not_empty(self) -> ThingGroupSpec:
        if self.things is None and self.selector is None:
            raise ValueError("a thing group needs things, a selector, or both")
        return self

    def contains(self, thing: str, labels: Mapping[str, str]) -> bool:
        if self.things is not None and thing in self.things:
            return True
        return self.selector is not None and self.selector.matches(labels)


class ThingGroupStatus(base.Model):
    observed_generation: int | None = None
    member_count: int = 0
    conditions: Annotated[list[base.Condition], pydantic.Field(
        json_schema_extra=base.list_map("type"),
    )] = []


class ThingGroup(base.Model):
    api_version: base.ApiVersion = base.API_VERSION
    kind: Literal["ThingGroup"] = "ThingGroup"
    metadata: base.ObjectMeta
    spec: ThingGroupSpec
    status: ThingGroupStatus | None = None
