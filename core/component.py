"""Component: one immutable version of a recipe (Greengrass V2 recipe semantics).

A component runs either as a native process, driven by lifecycle steps, or as a Docker
container. Manifests pick the variant for a device by os/arch; the first matching
manifest wins, as in Greengrass.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import pydantic

from hedgerow.core import base, semver

SHA256 = r"^[a-f0-9]{64}$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# The C0 controls and DEL. No argument, environment entry or path can carry a NUL (the
# kernel ends a string there: posix_spawn refuses it); in a name or a path the others
# are never meant and only hide what a line of a log or a listing says.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip")


def _no_nul(value: str) -> str:
    if "\0" in value:
        raise ValueError(f"holds a NUL byte at offset {value.index(chr(0))}: no program "
                         "argument or environment value can carry one")
    return value


def _no_control(value: str) -> str:
    found = _CONTROL.search(value)
    if found:
        raise ValueError(f"holds the control character {found.group()!r} at offset "
                         f"{found.start()}")
    return value


def _env_names(env: dict[str, str]) -> dict[str, str]:
    """An environment entry is NAME=VALUE: a name cannot hold '=' (nor be empty), and
    neither can hold a NUL; a value may span lines (the kernel carries that)."""
    for name, value in env.items():
        if not name or "=" in name or _CONTROL.search(name):
            raise ValueError(f"{name!r} is not an environment variable name (empty, or "
                             "holds '=' or a control character)")
        try:
            _no_nul(value)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return env


# What reaches a process as an argument or as its environment: no NUL.
Text = Annotated[str, pydantic.AfterValidator(_no_nul)]
# A name or a path: no control characters at all.
Name = Annotated[str, pydantic.AfterValidator(_no_control)]
Env = Annotated[dict[str, str], pydantic.AfterValidator(_env_names)]


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

    script: Annotated[str, pydantic.Field(min_length=1, max_length=65536),
                      pydantic.AfterValidator(_no_nul)]
    timeout_seconds: Annotated[int | None, pydantic.Field(
        default=None, ge=1, description="Defaults: install 120, startup 120, shutdown 15, "
        "recover 60, run none.",
    )]
    setenv: Annotated[Env, pydantic.Field(default_factory=dict)]
    skip_if: Annotated[str | None, pydantic.Field(
        default=None, pattern=r"^(onpath|exists) \S.*$",
        description="'onpath CMD' skips when CMD is on PATH; 'exists FILE' when FILE exists.",
    )]
    requires_privilege: bool = False

    @pydantic.field_validator("skip_if")
    @classmethod
    def _skip_if_text(cls, value: str | None) -> str | None:
        return None if value is None else _no_control(value)


class Lifecycle(base.Model):
    model_config = pydantic.ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "!(has(self.startup) && has(self.run))",
         "message": "a lifecycle has either startup or run, not both"},
    ]})

    setenv: Annotated[Env, pydantic.Field(default_factory=dict)]
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
    uri: Annotated[str, pydantic.Field(pattern=r"^(file|https?)://\S+$", max_length=2048),
                   pydantic.AfterValidator(_no_control)]
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
        if self.filename in ("", ".", "..") or (
                self.unarchive is not Unarchive.NONE and self.folder in ("", ".", "..")):
            raise ValueError(f"{self.uri}: names no file (its last path segment is the "
                             "file's name on the device, and an archive's folder)")
        return self

    @property
    def filename(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def folder(self) -> str:
        """Where an archive unpacks, under {artifacts:decompressedPath}: its file name
        without the extension, as Greengrass does (recipes written for Greengrass name
        `{artifacts:decompressedPath}/bundle/...` for bundle.zip)."""
        for suffix in _ARCHIVE_SUFFIXES:
            if self.filename.endswith(suffix):
                return self.filename[: -len(suffix)]
        return self.filename.rsplit(".", 1)[0]


class ImageArchive(base.Model):
    """An image saved with `docker save`, loaded on devices that cannot reach a registry."""

    uri: Annotated[str, pydantic.Field(pattern=r"^(file|https?)://\S+$", max_length=2048),
                   pydantic.AfterValidator(_no_control)]
    sha256: Annotated[str, pydantic.Field(pattern=SHA256)]


class Port(base.Model):
    container_port: Annotated[int, pydantic.Field(ge=1, le=65535)]
    host_port: Annotated[int | None, pydantic.Field(default=None, ge=1, le=65535)]
    host_ip: str = "127.0.0.1"
    protocol: Literal["tcp", "udp"] = "tcp"


class Volume(base.Model):
    source: Annotated[str, pydantic.Field(
        min_length=1, description="An absolute host path (bind mount) or a volume name.",
    ), pydantic.AfterValidator(_no_control)]
    target: Annotated[str, pydantic.Field(pattern=r"^/"), pydantic.AfterValidator(_no_control)]
    read_only: bool = False


class HealthCheck(base.Model):
    command: Annotated[list[Text], pydantic.Field(min_length=1)]
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
    command: list[Text] | None = None
    args: list[Text] | None = None
    env: Annotated[Env, pydantic.Field(description="Environment variables.")] = {}
    ports: list[Port] = []
    volumes: list[Volume] = []
    mount_ipc_socket: Annotated[bool, pydantic.Field(
        description="Bind-mount the agent's IPC socket so the container can use IPC.",
    )] = False
    user: Name | None = None
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
        clash = resolve_artifact_clash(self.artifacts)
        if clash:
            raise ValueError(clash)
        return self


def resolve_artifact_clash(artifacts: list[Artifact]) -> str | None:
    """Two artifacts may not land on one name: not one file in {artifacts:path}, not one
    folder in {artifacts:decompressedPath} (bundle.zip and bundle.tar.gz both unpack to
    bundle/, as in Greengrass: which one a recipe meant cannot be guessed, and skipping
    the second would run the recipe against the wrong files). The problem, or None."""
    files: dict[str, str] = {}
    folders: dict[str, str] = {}
    for artifact in artifacts:
        other = files.setdefault(artifact.filename, artifact.uri)
        if other != artifact.uri:
            return (f"artifacts {other} and {artifact.uri} have the same file name "
                    f"{artifact.filename!r} in {{artifacts:path}}: rename one")
        if artifact.unarchive is Unarchive.NONE:
            continue
        other = folders.setdefault(artifact.folder, artifact.uri)
        if other != artifact.uri:
            return (f"archives {other} and {artifact.uri} would both unpack to "
                    f"{{artifacts:decompressedPath}}/{artifact.folder}/ (the folder is the "
                    "file name without its extension, as in Greengrass): rename one")
    return None


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
