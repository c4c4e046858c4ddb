"""Greengrass recipes as they are: a recipe file (RecipeFormatVersion 2020-01-25, YAML or
JSON) converted into a Hedgerow Component, with every field that cannot be carried over
named by its path in the recipe.

The conversion walks the recipe and takes each field it knows; whatever is left in a
mapping afterwards is reported as a `Loss` (path and reason), so nothing is dropped
silently — the caller prints the losses, records them on the Component
(annotation `hedgerow.dev/not-carried-over`), or refuses them (strict). What cannot be
converted at all (a Lambda component, `docker:` artifacts, an S3 artifact with nowhere to
map it, a digest in an algorithm the device cannot check) is a `RecipeError`.

Greengrass reads recipe keys case-insensitively (its loader accepts `run`, `Run` and
`RUN`); so does this. Configuration values, environment variable names and dependency
names keep their case. Recipe variables (`{artifacts:path}`, `{configuration:/x}`,
`{iot:thingName}`, …) are kept as they are: the device fills them in (core/recipe.py).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

import pydantic
import yaml

from hedgerow.core import base, component, manifest

FORMAT_VERSION = "2020-01-25"
LOSSES_ANNOTATION = "hedgerow.dev/not-carried-over"
SOURCE_ANNOTATION = "hedgerow.dev/imported-from"

# Greengrass platform names, as the agent reports them (edge-agent observe_platform).
_OS = ("linux", "darwin", "windows")
_ARCH = {"amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "arm": "arm", "x86": "x86"}
# Components that are the Greengrass nucleus itself: the Hedgerow agent stands in for it.
_NUCLEUS = frozenset({"aws.greengrass.Nucleus", "aws.greengrass.NucleusLite"})
_STEPS = ("install", "startup", "run", "shutdown", "recover")
_BOOTSTRAP = ("Bootstrap", "BootstrapOnRollback")
_LIFECYCLE_KEYS = frozenset({*_STEPS, "setenv", *(b.lower() for b in _BOOTSTRAP)})
_STEP_KEYS = frozenset({"script", "timeout", "setenv", "requiresprivilege", "skipif"})


@dataclasses.dataclass(frozen=True)
class Loss:
    """One recipe field that the Component does not carry."""

    path: str      # where in the recipe, e.g. Manifests[0].Platform.runtime
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class RecipeError(ValueError):
    """A recipe that cannot become a Component; the message names file and field."""


@dataclasses.dataclass(frozen=True)
class ArtifactMap:
    """Where `s3://BUCKET/KEY` artifacts are on a network or disk the device can reach.

    `base` alone: `BASE/BUCKET/KEY` (a mirror of the buckets, `--artifact-base`).
    `per_component`: `BASE/NAME/VERSION/FILE`, the folder layout of Greengrass's local
    deployments (`greengrass-cli deployment create --artifactDir`)."""

    base: str | None = None
    per_component: bool = False

    def render(self, uri: str, name: str, version: str) -> str | None:
        if self.base is None:
            return None
        root = self.base.rstrip("/")
        bucket_key = uri[len("s3://"):]
        if self.per_component:
            return f"{root}/{name}/{version}/{bucket_key.rsplit('/', 1)[-1]}"
        return f"{root}/{bucket_key}"


@dataclasses.dataclass(frozen=True)
class Imported:
    component: component.Component
    losses: tuple[Loss, ...]


class _Fields:
    """A recipe mapping read case-insensitively; what is never taken is a loss."""

    def __init__(self, value: Any, path: str, losses: list[Loss]) -> None:
        if not isinstance(value, dict):
            raise RecipeError(f"{path or 'the recipe'}: must be a mapping "
                              f"(got {type(value).__name__})")
        self.path, self._losses = path, losses
        self._keys: dict[str, str] = {}
        for key in value:
            folded = str(key).lower()
            if folded in self._keys:
                raise RecipeError(f"{self.at(str(key))}: given twice "
                                  f"(as {self._keys[folded]!r} too; keys ignore case)")
            self._keys[folded] = str(key)
        self._value = value
        self._taken: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, name: str) -> bool:
        return name.lower() in self._keys

    def take(self, name: str, default: Any = None) -> Any:
        key = self._keys.get(name.lower())
        if key is None:
            return default
        self._taken.add(key)
        return self._value[key]

    def path_of(self, name: str) -> str:
        return self.at(self._keys.get(name.lower(), name))

    def text(self, name: str, default: str = "") -> str:
        value = self.take(name, default)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise RecipeError(f"{self.path_of(name)}: must be text (got {value!r})")
        return str(value)

    def rest(self, reason: str = "not a Greengrass recipe field Hedgerow knows") -> None:
        """Every key not taken, as a loss."""
        for key in self._value:
            if str(key) not in self._taken:
                self._losses.append(Loss(self.at(str(key)), reason))


def is_recipe(data: Any) -> bool:
    """A Greengrass recipe (not a Hedgerow manifest): it states its RecipeFormatVersion."""
    return isinstance(data, dict) and any(
        str(k).lower() == "recipeformatversion" for k in data)


_RECIPE_KEY = re.compile(r"""(^|[{,])\s*["']?recipeformatversion["']?\s*:""",
                         re.IGNORECASE | re.MULTILINE)


def is_recipe_text(text: str) -> bool:
    """Whether a file's text is a Greengrass recipe rather than Hedgerow manifests (a
    look at its keys, before parsing it either way)."""
    return _RECIPE_KEY.search(text) is not None


def parse_text(text: str, source: str) -> Any:
    """A recipe file's content: JSON or YAML, one document."""
    try:
        if text.lstrip().startswith("{"):
            return json.loads(text)
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except json.JSONDecodeError as exc:
        raise RecipeError(f"{source}:{exc.lineno}:{exc.colno}: not valid JSON: "
                          f"{exc.msg}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(str(manifest.render_yaml_problem(exc, text, source))) from None
    if len(documents) != 1:
        raise RecipeError(f"{source}: a recipe file holds one recipe "
                          f"(found {len(documents)} documents)")
    return documents[0]


def render_object_name(name: str, version: str) -> str:
    """A Kubernetes object name for one component version: lowercase, '_' and '+' as
    '-', as the examples name them (com.example.helloworld-1.0.0)."""
    text = re.sub(r"[^a-z0-9.-]+", "-", f"{name}-{version}".lower())
    text = re.sub(r"([.-])[.-]+", r"\1", text).strip(".-")
    return text[:253].rstrip(".-")


def _digest(fields: _Fields, path: str) -> str | None:
    digest = fields.take("Digest")
    algorithm = fields.take("Algorithm", "SHA-256")
    if digest is None:
        return None
    if str(algorithm).upper().replace("_", "-") not in ("SHA-256", "SHA256"):
        raise RecipeError(f"{fields.path_of('Algorithm')}: {algorithm!r}: the device "
                          "verifies SHA-256 digests only")
    try:
        raw = base64.b64decode(str(digest), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise RecipeError(f"{fields.path_of('Digest')}: not a base64 SHA-256 digest "
                          f"(as Greengrass writes them): {digest!r}")
    return raw.hex()


def _artifact(value: Any, path: str, name: str, version: str, artifacts: ArtifactMap,
              losses: list[Loss]) -> component.Artifact:
    fields = _Fields(value, path, losses)
    uri = fields.text("Uri")
    if not uri:
        raise RecipeError(f"{path}: an artifact needs a Uri")
    if uri.startswith("docker:"):
        raise RecipeError(
            f"{fields.path_of('Uri')}: {uri}: docker artifacts are not imported — Hedgerow "
            "runs containers itself: write a Component whose manifest has "
            f"container: {{image: {uri[len('docker:'):]}}} instead of a `docker run` "
            "lifecycle (docs/migrating-from-greengrass.md)")
    if uri.startswith("s3://"):
        mapped = artifacts.render(uri, name, version)
        if mapped is None:
            raise RecipeError(f"{fields.path_of('Uri')}: {uri}: the device cannot read "
                              "S3; give --artifact-base URL (s3://BUCKET/KEY is fetched "
                              "from URL/BUCKET/KEY)")
        uri = mapped
    elif not uri.startswith(("http://", "https://", "file://")):
        raise RecipeError(f"{fields.path_of('Uri')}: {uri}: not a URI the device can "
                          "fetch (s3:// with --artifact-base, https://, http://, file://)")
    sha256 = _digest(fields, path)
    unarchive = fields.text("Unarchive", "NONE").upper()
    permission: dict[str, str] = {}
    if fields.has("Permission"):
        perm = _Fields(fields.take("Permission"), fields.path_of("Permission"), losses)
        for key in ("Read", "Execute"):
            if perm.has(key):
                permission[key.lower()] = perm.text(key).upper()
        perm.rest()
    fields.rest()
    try:
        return component.Artifact.model_validate({
            "uri": uri, "sha256": sha256, "unarchive": unarchive, "permission": permission})
    except pydantic.ValidationError as exc:
        raise RecipeError(f"{path}: {_first_error(exc)}") from None


def _first_error(exc: pydantic.ValidationError) -> str:
    errors = exc.errors()
    parts = []
    for error in errors:
        where = manifest.render_field(error["loc"])
        text = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
        parts.append(f"{where}: {text}" if where else text)
    return "; ".join(parts)


def _select(value: Any, keys: frozenset[str], selections: tuple[str, ...]) -> Any:
    """A part of a global lifecycle keyed by selection keys (`linux: {...}`) is the part
    under the first of the manifest's Selections it has (then `all`); a part keyed by
    recipe fields is itself."""
    if not isinstance(value, dict) or not value or any(
            str(k).lower() in keys for k in value):
        return value
    folded = {str(k).lower(): v for k, v in value.items()}
    for key in (*selections, "all"):
        if key.lower() in folded:
            return folded[key.lower()]
    return None


def _env(value: Any, path: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise RecipeError(f"{path}: must be a mapping of variable names to values")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


def _step(value: Any, path: str, selections: tuple[str, ...],
          losses: list[Loss]) -> dict[str, Any] | None:
    value = _select(value, _STEP_KEYS, selections)
    if value is None:
        return None
    if isinstance(value, str):
        return {"script": value}
    fields = _Fields(value, path, losses)
    script = _select(fields.take("Script"), frozenset(), selections)
    if not isinstance(script, str) or not script:
        raise RecipeError(f"{fields.path_of('Script')}: a step needs a script (text)")
    step: dict[str, Any] = {"script": script}
    if fields.has("Timeout"):
        timeout = fields.take("Timeout")
        try:
            step["timeoutSeconds"] = int(timeout)
        except (TypeError, ValueError):
            raise RecipeError(f"{fields.path_of('Timeout')}: seconds, a whole number "
                              f"(got {timeout!r})") from None
    if fields.has("Setenv"):
        step["setenv"] = _env(fields.take("Setenv"), fields.path_of("Setenv"))
    if fields.has("RequiresPrivilege"):
        flag = fields.take("RequiresPrivilege")
        step["requiresPrivilege"] = flag is True or str(flag).lower() == "true"
    if fields.has("SkipIf"):
        step["skipIf"] = fields.text("SkipIf")
    fields.rest()
    return step


def _lifecycle(value: Any, path: str, selections: tuple[str, ...],
               losses: list[Loss]) -> dict[str, Any]:
    value = _select(value, _LIFECYCLE_KEYS, selections)
    if value is None:
        return {}
    fields = _Fields(value, path, losses)
    out: dict[str, Any] = {}
    if fields.has("Setenv"):
        out["setenv"] = _env(fields.take("Setenv"), fields.path_of("Setenv"))
    for name in _STEPS:
        if fields.has(name):
            step = _step(fields.take(name), fields.path_of(name), selections, losses)
            if step is not None:
                out[name] = step
    # Named, never folded into Install: a bootstrap script's contract is its exit code
    # asking the nucleus (100) or the device (101) to restart, which Hedgerow never does
    # on a component's word, and it runs once per version where Install re-runs on each
    # re-install (recovery, restart) -- merged, it would run more often than written for.
    for name in _BOOTSTRAP:
        if fields.has(name):
            fields.take(name)
            losses.append(Loss(fields.path_of(name),
                               "Hedgerow has no bootstrap step (it never restarts itself or "
                               "the device for a component); move idempotent work into "
                               "Install"))
    fields.rest("not a lifecycle step Hedgerow knows (Install, Startup, Run, Shutdown, "
                "Recover, Setenv)")
    return out


def _platforms(value: Any, path: str, losses: list[Loss]) -> list[dict[str, str]] | None:
    """The Hedgerow platforms one Greengrass Platform stands for; None: this manifest can
    never match a device Hedgerow runs (the reason is a loss)."""
    fields = _Fields(value if value is not None else {}, path, losses)

    def choose(key: str, names: Mapping[str, str]) -> list[str] | None:
        given = fields.text(key, "*")
        if given in ("*", "all", ""):
            return ["*"]
        if len(given) > 1 and given.startswith("/") and given.endswith("/"):
            try:
                pattern = re.compile(given[1:-1])
            except re.error as exc:
                raise RecipeError(f"{fields.path_of(key)}: {given}: not a regular "
                                  f"expression: {exc}") from None
            found = sorted({names[n] for n in names if pattern.fullmatch(n)})
            if set(found) >= set(names.values()):
                return ["*"]
            return found or None
        mapped = names.get(given.lower())
        return [mapped] if mapped else [given.lower()]

    oses = choose("os", {n: n for n in _OS})
    arches = choose("architecture", _ARCH)
    if fields.has("architecture.detail"):
        fields.take("architecture.detail")
        losses.append(Loss(fields.path_of("architecture.detail"),
                           "Hedgerow selects manifests by os and architecture only; this "
                           "manifest matches every variant of the architecture"))
    runtime = fields.text("runtime", "*")
    fields.rest("Hedgerow selects manifests by os and architecture only (a device has no "
                "custom platform attributes); this manifest ignores it")
    if runtime not in ("*", "aws_nucleus_classic"):
        losses.append(Loss(fields.path_of("runtime"),
                           f"{runtime!r}: Hedgerow behaves as the classic nucleus "
                           "(runtime aws_nucleus_classic), so this manifest never matches "
                           "and is left out"))
        return None
    if oses is None or arches is None:
        losses.append(Loss(path, "matches no os/architecture a Hedgerow device reports "
                                 f"({', '.join(_OS)}; {', '.join(sorted(set(_ARCH.values())))}"
                                 "); left out"))
        return None
    return [{"os": o, "arch": a} for o in oses for a in arches]


def _manifests(fields: _Fields, name: str, version: str, artifacts: ArtifactMap,
               losses: list[Loss]) -> list[dict[str, Any]]:
    global_lifecycle = fields.take("Lifecycle")
    global_path = fields.path_of("Lifecycle")
    raw = fields.take("Manifests")
    if raw is None:  # an old-style recipe: one global lifecycle for every platform
        raw = [{}]
    if not isinstance(raw, list) or not raw:
        raise RecipeError(f"{fields.path_of('Manifests')}: must be a list of manifests")
    out = []
    for index, value in enumerate(raw):
        path = f"{fields.path_of('Manifests')}[{index}]"
        entry = _Fields(value, path, losses)
        if entry.has("Name"):
            losses.append(Loss(entry.path_of("Name"),
                               f"{entry.take('Name')!r}: a manifest's name is a label "
                               "Hedgerow does not keep"))
        selections = entry.take("Selections", [])
        if not isinstance(selections, list):
            raise RecipeError(f"{entry.path_of('Selections')}: must be a list of keys")
        selection = tuple(str(s) for s in selections)
        platforms = _platforms(entry.take("Platform"), entry.path_of("Platform"), losses)
        if entry.has("Lifecycle"):
            life = _lifecycle(entry.take("Lifecycle"), entry.path_of("Lifecycle"),
                              selection, losses)
        elif global_lifecycle is not None:
            life = _lifecycle(global_lifecycle, global_path, selection, losses)
        else:
            life = {}
        arts = entry.take("Artifacts", [])
        if not isinstance(arts, list):
            raise RecipeError(f"{entry.path_of('Artifacts')}: must be a list")
        converted = [_artifact(a, f"{entry.path_of('Artifacts')}[{i}]", name, version,
                               artifacts, losses).to_dict() for i, a in enumerate(arts)]
        entry.rest()
        for platform in platforms or []:
            out.append({"platform": platform, "lifecycle": life, "artifacts": converted})
    if global_lifecycle is not None and isinstance(raw, list) and all(
            isinstance(m, dict) and any(str(k).lower() == "lifecycle" for k in m)
            for m in raw):
        losses.append(Loss(global_path, "every manifest has its own Lifecycle; the "
                                        "global one is never used"))
    if not out:
        raise RecipeError(f"{fields.path_of('Manifests')}: no manifest matches a platform "
                          "a Hedgerow device reports")
    return out


def _dependencies(value: Any, path: str, losses: list[Loss]) -> list[dict[str, Any]]:
    if not isinstance(value, dict):
        raise RecipeError(f"{path}: must be a mapping of component names to requirements")
    out = []
    for dep_name, body in value.items():  # names keep their case: they are identities
        dep_path = f"{path}.{dep_name}"
        dep = _Fields(body or {}, dep_path, losses)
        requirement = dep.text("VersionRequirement", "*") or "*"
        kind = dep.text("DependencyType", "HARD").upper()
        dep.rest()
        if str(dep_name) in _NUCLEUS:
            losses.append(Loss(dep_path, "the Hedgerow agent stands in for the Greengrass "
                                         "nucleus; this dependency is left out"))
            continue
        out.append({"name": str(dep_name), "versionRequirement": requirement, "type": kind})
    return out


def resolve_import(data: Any, source: str, artifacts: ArtifactMap = ArtifactMap(),
                   ) -> Imported:
    """The Component a recipe stands for, and what it could not carry over."""
    losses: list[Loss] = []
    try:
        spec, meta = _convert(_Fields(data, "", losses), artifacts, losses)
    except RecipeError as exc:
        raise RecipeError(f"{source}: {exc}") from None
    losses = list(dict.fromkeys(losses))  # a global lifecycle is read once per manifest
    annotations = {SOURCE_ANNOTATION: "greengrass-recipe"}
    if losses:
        annotations[LOSSES_ANNOTATION] = "\n".join(str(loss) for loss in losses)
    body = {"apiVersion": base.API_VERSION, "kind": "Component",
            "metadata": {**meta, "annotations": annotations}, "spec": spec}
    try:
        comp = component.Component.model_validate(body)
    except pydantic.ValidationError as exc:
        raise RecipeError(f"{source}: {_first_error(exc)}") from None
    return Imported(comp, tuple(losses))


def _convert(fields: _Fields, artifacts: ArtifactMap, losses: list[Loss],
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    fmt = fields.take("RecipeFormatVersion")
    if str(fmt) != FORMAT_VERSION:
        raise RecipeError(f"RecipeFormatVersion: {fmt!r}: only {FORMAT_VERSION} recipes "
                          "are known")
    kind = fields.text("ComponentType", "aws.greengrass.generic")
    if kind != "aws.greengrass.generic":
        raise RecipeError(f"ComponentType: {kind}: only generic components (processes) "
                          "are imported; Lambda functions, plugins and the nucleus have "
                          "no Hedgerow equivalent")
    if fields.has("ComponentSource"):
        losses.append(Loss(fields.path_of("ComponentSource"),
                           f"{fields.take('ComponentSource')!r}: names a Lambda function's "
                           "source, which Hedgerow does not run"))
    name = fields.text("ComponentName")
    version = fields.text("ComponentVersion")
    if not name or not version:
        raise RecipeError("ComponentName and ComponentVersion are required")
    spec: dict[str, Any] = {
        "name": name, "version": version,
        "description": fields.text("ComponentDescription"),
        "publisher": fields.text("ComponentPublisher"),
    }
    if fields.has("ComponentConfiguration"):
        config = _Fields(fields.take("ComponentConfiguration") or {},
                         fields.path_of("ComponentConfiguration"), losses)
        defaults = config.take("DefaultConfiguration", {}) or {}
        if not isinstance(defaults, dict):
            raise RecipeError(f"{config.path_of('DefaultConfiguration')}: must be a mapping")
        spec["defaultConfiguration"] = defaults
        config.rest()
    if fields.has("ComponentDependencies"):
        spec["dependencies"] = _dependencies(fields.take("ComponentDependencies") or {},
                                             fields.path_of("ComponentDependencies"), losses)
    spec["manifests"] = _manifests(fields, name, version, artifacts, losses)
    fields.rest()
    return spec, {"name": render_object_name(name, version)}


def resolve_text(text: str, source: str, artifacts: ArtifactMap = ArtifactMap(),
                 ) -> Imported:
    """A recipe file's text, converted (see resolve_import)."""
    return resolve_import(parse_text(text, source), source, artifacts)



def render_manifest(imported: Imported, recipe_path: str) -> str:
    """The Component as a YAML file: defaults left out, the losses as a comment on top
    (they are in the annotation too, for `kubectl get -o yaml`)."""
    body = imported.component.model_dump(mode="json", by_alias=True, exclude_defaults=True,
                                         exclude_none=True)
    doc = {"apiVersion": base.API_VERSION, "kind": "Component", **body}
    head = f"# Imported from the Greengrass recipe {recipe_path} by `hedgerow component import`.\n"
    for loss in imported.losses:
        head += f"# not carried over: {loss}\n"
    return head + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
