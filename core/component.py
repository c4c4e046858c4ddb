"""Component: one immutable version of a recipe (Greengrass V2 recipe semantics).

A component runs either as a native process, driven by lifecycle steps, or as a Docker
container. Manifests pick the variant for a device by os/arch; the first matching
manifest wins, as in Greengrass.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pydantic

from hedgerow.core import base, semver

SHA256 = r"^[a-f0-9]{64}$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"

Env = Annotated[dict[str, str], pydantic.Field(description="Environment variables.")]


class DependencyType(base.StrEnum):
    HARD = "HARD"  # the dependent restarts when the dependency restarts or changes state
    SOFT = "SOFT"  # ordering only


class Dependency(base.Model):
    name: Annotated[str, pydantic.Field(pattern=base.COMPONENT_NAME)]
    version_requirement: Annotated[str, pydantic.Field(
        default="*", max_length=256,
        description="npm-style range, e.g. '>=1.0.0 <2.0.0' or '^1.2'.",
    )]
    type: DependencyType = DependencyType.HARD

    @pydantic.field_validator("version_requirement")
    @classmethod
    def _valid_range(cls, value: str) -> str:
        semver.parse_range(value)
        return value


class Step(base.Model):
    """One lifecycle step: a shell script run with /bin/sh -c."""

    script: Annotated[str, pydantic.Field(min_length=1, max_length=65536)]
    timeout_seconds: Annotated[int | None, pydantic.Field(
        default=None, ge=1, description="Defaults: install 120, startup 120, shutdown 15, "
        "recover 60, run none.",
    )]
    setenv: Annotated[dict[str, str], pydantic.Field(default_factory=dict)]
    skip_if: Annotated[str | None, pydantic.Field(
        default=None, pattern=r"^(onpath|exists) \S.*$",
        description="'onpath CMD' skips when CMD is on PATH; 'exists FILE' when FILE exists.",
    )]
    requires_privilege: bool = False


class Lifecycle(base.Model):
    model_config = pydantic.ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "!(has(self.startup) && has(self.run))",
         "message": "a lifecycle has either startup or run, not both"},
    ]})

    setenv: Annotated[dict[str, str], pydantic.Field(default_factory=dict)]
    install: Step | None = None
    startup: Step | None = None
    run: Step | None = None
    shutdown: Step | None = None
    recover: Step | None = None

    @pydantic.model_validator(mode="after")
    def _startup_or_run(self) -> Lifecycle:
        if self.startup is not None and self.run is not None:
            raise ValueError("a lifecycle has either startup or run, not both")
        return self


class Unarchive(base.StrEnum):
    NONE = "NONE"
    ZIP = "ZIP"
    TAR = "TAR"


class Access(base.StrEnum):
    NONE = "NONE"
    OWNER = "OWNER"
    ALL = "ALL"


class Permission(base.Model):
    read: Access = Access.OWNER
    execute: Access = Access.NONE


class Artifact(base.Model):
    uri: Annotated[str, pydantic.Field(pattern=r"^(file|https?)://\S+$", max_length=2048)]
    sha256: Annotated[str | None, pydantic.Field(
        default=None, pattern=SHA256,
        description="Hex digest; verified before use. Required for http(s) URIs.",
    )]
    unarchive: Unarchive = Unarchive.NONE
    permission: Permission = Permission()

    @pydantic.model_validator(mode="after")
    def _remote_needs_digest(self) -> Artifact:
        if self.uri.startswith(("http://", "https://")) and self.sha256 is None:
            raise ValueError("an http(s) artifact needs a sha256 digest")
        return self

    @property
    def filename(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]


class ImageArchive(base.Model):
    """An image saved with `docker save`, loaded on devices that cannot reach a registry."""

    uri: Annotated[str, pydantic.Field(pattern=r"^(file|https?)://\S+$", max_length=2048)]
    sha256: Annotated[str, pydantic.Field(pattern=SHA256)]


class Port(base.Model):
    container_port: Annotated[int, pydantic.Field(ge=1, le=65535)]
    host_port: Annotated[int | None, pydantic.Field(default=None, ge=1, le=65535)]
    host_ip: str = "127.0.0.1"
    protocol: Literal["tcp", "udp"] = "tcp"


class Volume(base.Model):
    source: Annotated[str, pydantic.Field(
        min_length=1, description="An absolute host path (bind mount) or a volume name.",
    )]
    target: Annotated[str, pydantic.Field(pattern=r"^/")]
    read_only: bool = False


class HealthCheck(base.Model):
    command: Annotated[list[str], pydantic.Field(min_length=1)]
    interval_seconds: Annotated[int, pydantic.Field(ge=1)] = 10
    timeout_seconds: Annotated[int, pydantic.Field(ge=1)] = 5
    retries: Annotated[int, pydantic.Field(ge=1)] = 3
    start_period_seconds: Annotated[int, pydantic.Field(ge=0)] = 0


class Container(base.Model):
    image: Annotated[str, pydantic.Field(
        min_length=1, max_length=512,
        pattern=r"^[a-z0-9]+([._/-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*"
                r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$",
        description="Image reference with a tag or digest.",
    )]
    image_archive: ImageArchive | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    env: Env = {}
    ports: list[Port] = []
    volumes: list[Volume] = []
    mount_ipc_socket: Annotated[bool, pydantic.Field(
        description="Bind-mount the agent's IPC socket so the container can use IPC.",
    )] = False
    user: str | None = None
    read_only_root_filesystem: bool = False
    health_check: HealthCheck | None = None
    requires_privilege: Annotated[bool, pydantic.Field(
        description="The only way to run the container privileged.",
    )] = False


class Platform(base.Model):
    os: Annotated[str, pydantic.Field(pattern=r"^(\*|[a-z0-9]+)$")] = "*"
    arch: Annotated[str, pydantic.Field(pattern=r"^(\*|[a-z0-9_]+)$")] = "*"

    def matches(self, os: str, arch: str) -> bool:
        return self.os in ("*", os) and self.arch in ("*", arch)


class Manifest(base.Model):
    model_config = pydantic.ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.lifecycle) != has(self.container)",
         "message": "a manifest has exactly one of lifecycle (a process) or container"},
    ]})

    platform: Platform = Platform()
    lifecycle: Lifecycle | None = None
    container: Container | None = None
    artifacts: Annotated[list[Artifact], pydantic.Field(max_length=64)] = []

    @pydantic.model_validator(mode="after")
    def _one_runtime(self) -> Manifest:
        if (self.lifecycle is None) == (self.container is None):
            raise ValueError("a manifest has exactly one of lifecycle (a process) or container")
        return self


class ComponentSpec(base.Model):
    model_config = pydantic.ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self == oldSelf",
         "message": "spec is immutable: a Component is one version; apply a new Component "
                    "for a new version"},
    ]})

    name: Annotated[str, pydantic.Field(pattern=base.COMPONENT_NAME)]
    version: Annotated[str, pydantic.Field(pattern=semver.VERSION_PATTERN, max_length=128)]
    description: Annotated[str, pydantic.Field(max_length=4096)] = ""
    publisher: Annotated[str, pydantic.Field(max_length=256)] = ""
    default_configuration: dict[str, Any] = {}
    dependencies: Annotated[list[Dependency], pydantic.Field(
        max_length=64, json_schema_extra=base.list_map(),
    )] = []
    manifests: Annotated[list[Manifest], pydantic.Field(min_length=1, max_length=16)]

    @pydantic.model_validator(mode="after")
    def _unique_dependencies(self) -> ComponentSpec:
        names = [d.name for d in self.dependencies]
        if len(names) != len(set(names)):
            raise ValueError(f"dependencies name a component twice: {sorted(names)}")
        if self.name in names:
            raise ValueError(f"{self.name} depends on itself")
        return self

    def manifest_for(self, os: str, arch: str) -> Manifest | None:
        return next((m for m in self.manifests if m.platform.matches(os, arch)), None)


class ComponentStatus(base.Model):
    observed_generation: int | None = None
    conditions: Annotated[list[base.Condition], pydantic.Field(
        json_schema_extra=base.list_map("type"),
    )] = []


class Component(base.Model):
    api_version: base.ApiVersion = base.API_VERSION
    kind: Literal["Component"] = "Component"
    metadata: base.ObjectMeta
    spec: ComponentSpec
    status: ComponentStatus | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.spec.name, self.spec.version)
