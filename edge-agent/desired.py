"""Read what the device must run: the cloud document in desired/ plus local deployments.

Local deployments are the same Component/Deployment YAML `kubectl apply` takes, resolved
by the same core resolver with this device as the only target. Any problem — a torn or
altered desired document, an invalid manifest, an unresolvable deployment — is reported
with file, object, field and reason, and the reading carries no document: the loop then
keeps running the last good state and removes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pydantic

from hedgerow.agent.layout import Layout
from hedgerow.core import (
    component,
    deployment,
    documents,
    manifest,
    outcome,
    privilege,
    resolve,
    thinggroup,
)


@dataclasses.dataclass(frozen=True)
class Reading:
    desired: documents.DesiredState | None
    problems: tuple[str, ...] = ()
    revision: str | None = None  # of a document that was read but refused as a whole
    source: outcome.Source = outcome.Source.CLOUD  # where `desired` came from
    # CLOUD_AND_LOCAL: the cloud document's revision, the one the controller published
    # (the merge has a revision of its own, which the controller never sent).
    cloud_revision: str | None = None


def _cloud(path: pathlib.Path) -> tuple[documents.DesiredState | None, list[str]]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None, []
    except (OSError, ValueError) as exc:
        return None, [f"{path}: not a JSON document: {exc}"]
    try:
        return documents.DesiredState.model_validate(data), []
    except pydantic.ValidationError as exc:
        return None, [f"{path} DesiredState: {manifest.render_field(e['loc'])}: {e['msg']}"
                      for e in exc.errors()]


def _local(folder: pathlib.Path) -> tuple[list[manifest.Resource], list[str]]:
    resources: list[manifest.Resource] = []
    problems: list[str] = []
    for path in sorted([*folder.rglob("*.yaml"), *folder.rglob("*.yml")]):
        try:
            resources += manifest.parse_documents(path.read_text(), str(path))
        except manifest.InvalidDocumentError as exc:
            problems += [str(p) for p in exc.problems]
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc.strerror}")
    return resources, problems


# Who sets the device's ceiling, for the refusal's reason.
CEILING_SOURCE = "the device's ceiling, hedgerow agent run --max-privilege"


def resolve_ceiling_violations(doc: documents.DesiredState,
                               ceiling: privilege.Level) -> tuple[str, ...]:
    """Every component feature the device's ceiling does not allow, one line each
    (component, field, level): the controller should have refused them already; a
    controller that was fooled, or a local deployment, still cannot get them run."""
    return tuple(
        privilege.render_violation(c.name, v, ceiling, CEILING_SOURCE)
        for c in doc.components
        for v in privilege.resolve_violations(c.lifecycle, c.container, c.run_with, ceiling))


def fetch_desired(layout: Layout, thing: str, platform: documents.PlatformInfo,
                  ceiling: privilege.Level = privilege.Level.PRIVILEGED) -> Reading:
    """The document the device must run, or the problems that refuse it as a whole
    (bad files, unresolvable local deployments, needs above `ceiling`)."""
    reading = _fetch(layout, thing, platform)
    if reading.desired is None:
        return reading
    refused = resolve_ceiling_violations(reading.desired, ceiling)
    return Reading(None, refused, revision=reading.desired.revision,
                   cloud_revision=reading.cloud_revision) if refused else reading


def _fetch(layout: Layout, thing: str, platform: documents.PlatformInfo) -> Reading:
    cloud, problems = _cloud(layout.desired_file)
    resources, local_problems = _local(layout.deployments)
    problems += local_problems
    if problems:
        return Reading(None, tuple(problems))
    deployments = [r for r in resources if isinstance(r, deployment.Deployment)]
    components = [r for r in resources if isinstance(r, component.Component)]
    groups = [r for r in resources if isinstance(r, thinggroup.ThingGroup)]
    refs = list(cloud.deployments) if cloud else []
    merged = {c.name: c for c in cloud.components} if cloud else {}
    if deployments:
        result = resolve.resolve_device(thing, {}, platform, groups, deployments, components)
        if result.problems or result.desired is None:
            return Reading(None, tuple(f"{layout.deployments} deployment {p.deployment}: "
                                       f"{p.reason}: {p.message}" for p in result.problems))
        # A local deployment is the operator on the device: it wins over the cloud's.
        merged.update({c.name: c for c in result.desired.components})
        refs += [r for r in result.desired.deployments
                 if (r.namespace, r.name) not in {(x.namespace, x.name) for x in refs}]
    # No cloud document (yet) and no local deployment: the empty document is the
    # device's own start-up state, listed as local.
    source = (outcome.Source.CLOUD_AND_LOCAL if cloud and deployments else
              outcome.Source.CLOUD if cloud else outcome.Source.LOCAL)
    return Reading(documents.render_desired_state(thing, refs, list(merged.values())),
                   source=source, cloud_revision=cloud.revision if cloud and deployments
                   else None)
