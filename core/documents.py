"""The two documents that cross the network between controller and device.

DesiredState (controller → device, retained): everything one device must run, already
resolved for its platform. StatusReport (device → controller): what the device observed.
Both are plain JSON on MQTT; the revision is a content hash so "same inputs, same bytes"
can be checked by comparing one string.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from typing import Annotated, Any, Literal

import pydantic

from hedgerow.core import base, limits, semver
from hedgerow.core import component as component_
from hedgerow.core import deployment as deployment_


class ComponentState(base.StrEnum):
    NEW = "NEW"
    INSTALLED = "INSTALLED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    FINISHED = "FINISHED"
    ERRORED = "ERRORED"
    BROKEN = "BROKEN"


class ResolvedDependency(base.Model):
    name: str
    version: str
    type: component_.DependencyType


class ResolvedComponent(base.Model):
    """One component as a device runs it: the manifest for its platform, merged config."""

    name: Annotated[str, pydantic.Field(pattern=base.COMPONENT_NAME)]
    version: Annotated[str, pydantic.Field(pattern=semver.VERSION_PATTERN)]
    publisher: str = ""
    dependencies: list[ResolvedDependency] = []
    lifecycle: component_.Lifecycle | None = None
    container: component_.Container | None = None
    artifacts: list[component_.Artifact] = []
    configuration: dict[str, Any] = {}
    run_with: deployment_.RunWith | None = None
    deployment: Annotated[str, pydantic.Field(
        description="The deployment whose request put this component here ('' for a "
                    "dependency pulled in by another component).",
    )] = ""

    @pydantic.model_validator(mode="after")
    def _one_runtime(self) -> ResolvedComponent:
        if (self.lifecycle is None) == (self.container is None):
            raise ValueError(f"{self.name}: exactly one of lifecycle or container")
        return self

    @property
    def spec_hash(self) -> str:
        """Fingerprint of everything that, when changed, requires a restart."""
        return content_hash(self.to_dict())


class DeploymentRef(base.Model):
    name: str
    namespace: str = ""
    generation: int = 0
    priority: int = 0
    policies: deployment_.Policies = deployment_.Policies()


class DesiredState(base.Model):
    api_version: base.ApiVersion = base.API_VERSION
    kind: Literal["DesiredState"] = "DesiredState"
    thing: Annotated[str, pydantic.Field(pattern=base.THING_NAME)]
    revision: Annotated[str, pydantic.Field(pattern=r"^[a-f0-9]{16,64}$")]
    deployments: list[DeploymentRef] = []
    components: list[ResolvedComponent] = []

    @pydantic.model_validator(mode="after")
    def _revision_matches_content(self) -> DesiredState:
        expected = revision_of(self.thing, self.deployments, self.components)
        if self.revision != expected:
            raise ValueError(
                f"revision {self.revision} does not match the content (expected {expected}): "
                "the document was altered or truncated")
        return self

    @property
    def failure_handling(self) -> deployment_.FailureHandling:
        """ROLLBACK when any contributing deployment asks for it (the safe choice)."""
        rollback = any(
            d.policies.failure_handling is deployment_.FailureHandling.ROLLBACK
            for d in self.deployments
        )
        return (deployment_.FailureHandling.ROLLBACK if rollback or not self.deployments
                else deployment_.FailureHandling.DO_NOTHING)

    def component(self, name: str) -> ResolvedComponent | None:
        return next((c for c in self.components if c.name == name), None)


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_hash(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()[:32]


def revision_of(
    thing: str,
    deployments: list[DeploymentRef],
    components: list[ResolvedComponent],
) -> str:
    return content_hash({
        "thing": thing,
        "deployments": [d.to_dict() for d in deployments],
        "components": [c.to_dict() for c in components],
    })


def render_desired_state(
    thing: str,
    deployments: list[DeploymentRef],
    components: list[ResolvedComponent],
) -> DesiredState:
    """Build a DesiredState in canonical order, so the same inputs give the same bytes."""
    deployments = sorted(deployments, key=lambda d: (d.namespace, d.name))
    components = sorted(components, key=lambda c: c.name)
    return DesiredState(
        thing=thing,
        revision=revision_of(thing, deployments, components),
        deployments=deployments,
        components=components,
    )


def render_bytes(document: base.Model) -> bytes:
    return canonical_json(document.to_dict())


class Health(base.StrEnum):
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    UNKNOWN = "UNKNOWN"


class Outcome(base.StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    ROLLED_BACK = "ROLLED_BACK"
    REJECTED = "REJECTED"
    # A newer revision arrived before this one settled (device history only: the
    # revision a device reports is always the one it is asked for, never superseded).
    SUPERSEDED = "SUPERSEDED"


# Everything a device reports is bounded (core/limits.py): a report is input from a
# device the controller does not trust, and what it says is copied into the cluster.
_Text = Annotated[str, pydantic.Field(max_length=limits.MAX_REPORT_TEXT)]


class PlatformInfo(base.Model):
    os: _Text
    arch: _Text


class ComponentReport(base.Model):
    name: _Text
    version: _Text
    state: ComponentState
    message: Annotated[str, pydantic.Field(max_length=512)] = ""
    own_configuration: Annotated[list[_Text] | None, pydantic.Field(
        max_length=limits.MAX_REPORT_OWN_KEYS,
        description="Keys (JSON pointers) the component changed in its own configuration "
                    "over IPC (UpdateConfiguration); a deployment's change of a key wins.",
    )] = None


class DeploymentOutcome(base.Model):
    revision: _Text
    outcome: Outcome
    reason: Annotated[str, pydantic.Field(max_length=limits.MAX_REPORT_REASON)] = ""
    rolled_back_to: _Text | None = None


class StatusReport(base.Model):
    """What a device observed. Bounded: at most MAX_REPORT_COMPONENTS components, short
    texts (MAX_REPORT_TEXT, reasons MAX_REPORT_REASON); the controller also refuses a
    payload over MAX_REPORT_BYTES before parsing it."""

    api_version: base.ApiVersion = base.API_VERSION
    kind: Literal["StatusReport"] = "StatusReport"
    thing: Annotated[str, pydantic.Field(pattern=base.THING_NAME)]
    sequence: Annotated[int, pydantic.Field(
        ge=0, description="Grows with every report sent, so a receiver can drop stale "
                          "ones. Stamped by the sender (the device's connector) alone.",
    )] = 0
    time: datetime.datetime
    agent_version: _Text
    platform: PlatformInfo
    health: Health
    desired_revision: _Text | None = None
    applied_revision: Annotated[_Text | None, pydantic.Field(
        description="The revision the device runs, as the controller published it: with "
                    "local deployments merged over the cloud document, the cloud one's "
                    "(the merge is in localRevision).",
    )] = None
    local_revision: Annotated[_Text | None, pydantic.Field(
        description="With local deployments merged over the cloud document: the revision "
                    "of the merged document the device runs (its local additions).",
    )] = None
    components: Annotated[list[ComponentReport], pydantic.Field(
        max_length=limits.MAX_REPORT_COMPONENTS)] = []
    deployment: DeploymentOutcome | None = None
    certificate_days_left: int | None = None
