"""Deployment: which component versions a thing or a thing group runs, and how to roll out."""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Literal

import pydantic

from hedgerow.core import base, semver

JSON_POINTER = r"^(/([^~/]|~[01])*)*$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"
POSIX_USER = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$"


class ConfigurationUpdate(base.Model):
    """Applied to the default configuration: first reset (JSON pointers), then merge."""

    reset: Annotated[list[Annotated[str, pydantic.Field(pattern=JSON_POINTER)]],
                     pydantic.Field(max_length=256)] = []
    merge: dict[str, Any] = {}


class SystemResourceLimits(base.Model):
    memory: Annotated[str | None, pydantic.Field(
        default=None, pattern=QUANTITY, description="A quantity such as 64Mi.",
    )]
    cpus: Annotated[float | None, pydantic.Field(
        default=None, gt=0, description="CPU time as a number of cores, e.g. 0.5.",
    )]


class RunWith(base.Model):
    posix_user: Annotated[str | None, pydantic.Field(
        default=None, pattern=POSIX_USER, description="user or user:group",
    )]
    system_resource_limits: SystemResourceLimits | None = None


class DeploymentComponent(base.Model):
    name: Annotated[str, pydantic.Field(pattern=base.COMPONENT_NAME)]
    version: Annotated[str, pydantic.Field(
        max_length=256, description="A version or an npm-style range; the highest match wins.",
    )]
    configuration_update: ConfigurationUpdate | None = None
    run_with: RunWith | None = None

    @pydantic.field_validator("version")
    @classmethod
    def _valid_range(cls, value: str) -> str:
        semver.parse_range(value)
        return value


class Target(base.Model):
    model_config = pydantic.ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.thingGroup) != has(self.thing)",
         "message": "a deployment targets exactly one of thingGroup or thing"},
    ]})

    thing_group: Annotated[str | None, pydantic.Field(default=None, pattern=base.DNS_SUBDOMAIN)]
    thing: Annotated[str | None, pydantic.Field(default=None, pattern=base.THING_NAME)]

    @pydantic.model_validator(mode="after")
    def _exactly_one(self) -> Target:
        if (self.thing_group is None) == (self.thing is None):
            raise ValueError("a deployment targets exactly one of thingGroup or thing")
        return self


class FailureHandling(base.StrEnum):
    ROLLBACK = "ROLLBACK"
    DO_NOTHING = "DO_NOTHING"


class UpdateAction(base.StrEnum):
    NOTIFY_COMPONENTS = "NOTIFY_COMPONENTS"
    SKIP_NOTIFY_COMPONENTS = "SKIP_NOTIFY_COMPONENTS"


class ComponentUpdatePolicy(base.Model):
    action: UpdateAction = UpdateAction.NOTIFY_COMPONENTS
    timeout_seconds: Annotated[int, pydantic.Field(ge=1, le=86400)] = 60


class ConfigurationValidationPolicy(base.Model):
    timeout_seconds: Annotated[int, pydantic.Field(ge=1, le=86400)] = 30


class Policies(base.Model):
    failure_handling: FailureHandling = FailureHandling.ROLLBACK
    component_update: ComponentUpdatePolicy = ComponentUpdatePolicy()
    configuration_validation: ConfigurationValidationPolicy = ConfigurationValidationPolicy()


class RateIncreaseCriteria(base.Model):
    model_config = pydantic.ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.numberOfNotifiedThings) != has(self.numberOfSucceededThings)",
         "message": "give exactly one of numberOfNotifiedThings or numberOfSucceededThings"},
    ]})

    number_of_notified_things: Annotated[int | None, pydantic.Field(default=None, ge=1)]
    number_of_succeeded_things: Annotated[int | None, pydantic.Field(default=None, ge=1)]

    @pydantic.model_validator(mode="after")
    def _exactly_one(self) -> RateIncreaseCriteria:
        if (self.number_of_notified_things is None) == (self.number_of_succeeded_things is None):
            raise ValueError(
                "give exactly one of numberOfNotifiedThings or numberOfSucceededThings")
        return self


class ExponentialRate(base.Model):
    base_rate_per_minute: Annotated[int, pydantic.Field(ge=1, le=1000)]
    increment_factor: Annotated[float, pydantic.Field(ge=1.1, le=5.0)]
    rate_increase_criteria: RateIncreaseCriteria


class FailureType(base.StrEnum):
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    ALL = "ALL"


class AbortCriterion(base.Model):
    failure_type: FailureType
    action: Literal["CANCEL"] = "CANCEL"
    threshold_percentage: Annotated[float, pydantic.Field(gt=0, le=100)]
    min_number_of_executed_things: Annotated[int, pydantic.Field(ge=1)] = 1


class Rollout(base.Model):
    model_config = pydantic.ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "!(has(self.maximumPerMinute) && has(self.exponentialRate))",
         "message": "give maximumPerMinute or exponentialRate, not both"},
    ]})

    maximum_per_minute: Annotated[int | None, pydantic.Field(default=None, ge=1, le=100000)]
    exponential_rate: ExponentialRate | None = None
    timeout_minutes: Annotated[int | None, pydantic.Field(
        default=None, ge=1, description="How long one device may take before TIMED_OUT.",
    )]
    abort_criteria: Annotated[list[AbortCriterion], pydantic.Field(max_length=8)] = []
    suspend: Annotated[bool, pydantic.Field(description="Pause the rollout where it is.")] = False

    @pydantic.model_validator(mode="after")
    def _one_rate(self) -> Rollout:
        if self.maximum_per_minute is not None and self.exponential_rate is not None:
            raise ValueError("give maximumPerMinute or exponentialRate, not both")
        return self


class DeploymentSpec(base.Model):
    target: Target
    components: Annotated[list[DeploymentComponent], pydantic.Field(
        min_length=1, max_length=256, json_schema_extra=base.list_map(),
    )]
    priority: Annotated[int, pydantic.Field(
        ge=-1000, le=1000,
        description="When two deployments name one component, the higher priority wins.",
    )] = 0
    policies: Policies = Policies()
    rollout: Rollout = Rollout()

    @pydantic.model_validator(mode="after")
    def _unique_components(self) -> DeploymentSpec:
        names = [c.name for c in self.components]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"components are listed twice: {', '.join(duplicates)}")
        return self


class RolloutStatus(base.Model):
    """The rollout of one generation: when it started and whether it was aborted."""

    generation: int
    started_at: datetime.datetime
    aborted_at: datetime.datetime | None = None


class GenerationSpec(base.Model):
    """A spec some devices still run: devices a rollout has not reached keep theirs."""

    generation: int
    spec: DeploymentSpec


class DeploymentStatus(base.Model):
    observed_generation: int | None = None
    targeted: int = 0
    notified: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    rolled_back: int = 0
    rollout: RolloutStatus | None = None
    history: Annotated[list[GenerationSpec], pydantic.Field(
        max_length=8, description="Specs of generations devices still run (for rollouts "
        "and rollback); written by the controller.",
    )] = []
    conditions: Annotated[list[base.Condition], pydantic.Field(
        json_schema_extra=base.list_map("type"),
    )] = []


class Deployment(base.Model):
    api_version: base.ApiVersion = base.API_VERSION
    kind: Literal["Deployment"] = "Deployment"
    metadata: base.ObjectMeta
    spec: DeploymentSpec
    status: DeploymentStatus | None = None
