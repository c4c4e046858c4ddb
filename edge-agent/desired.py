"""Read what the device must run: the cloud document in desired/ plus local deployments.

Local deployments are the same Component/Deployment YAML `kubectl apply` takes, resolved
by the same core resolver with this device as the only target. Any problem — a torn or
altered desired document, an invalid manifest, an unresolvable deployment — is reported
with file, object, field and reason, and the reading carries no document: the loop then
keeps running the last good state and removes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pathlib
import time

import pydantic

from hedgerow.agent.layout import Layout
from hedgerow.core import (
    component,
    deployment,
    documents,
    greengrass,
    manifest,
    outcome,
    privilege,
    resolve,
    thinggroup,
)

log = logging.getLogger("hedgerow.agent")


@dataclasses.dataclass(frozen=True)
class Reading:
    desired: documents.DesiredState | None
    problems: tuple[str, ...] = ()
    revision: str | None = None  # of a document that was read but refused as a whole
    source: outcome.Source = outcome.Source.CLOUD  # where `desired` came from
    # CLOUD_AND_LOCAL: the cloud document's revision, the one the controller published
    # (the merge has a revision of its own, which the controller never sent).
    cloud_revision: str | None = None


# What a file read gives: its bytes, None (no such file) or the error that kept it.
_Blob = bytes | None | OSError


def _read(path: pathlib.Path) -> _Blob:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc


def _cloud(path: pathlib.Path, blob: _Blob) -> tuple[documents.DesiredState | None, list[str]]:
    if blob is None:
        return None, []
    try:
        if isinstance(blob, OSError):
            raise blob
        data = json.loads(blob)
    except (OSError, ValueError) as exc:
        return None, [f"{path}: not a JSON document: {exc}"]
    try:
        return documents.DesiredState.model_validate(data), []
    except pydantic.ValidationError as exc:
        return None, [f"{path} DesiredState: {manifest.render_field(e['loc'])}: {e['msg']}"
                      for e in exc.errors()]


def _local_files(folder: pathlib.Path) -> list[pathlib.Path]:
    # Greengrass recipes may be JSON: read as such in recipes/ (see _local).
    return sorted([*folder.rglob("*.yaml"), *folder.rglob("*.yml"),
                   *(folder / RECIPES).rglob("*.json")])


# deployments/recipes/: Component manifests, or Greengrass recipes as they are.
RECIPES = "recipes"
# Where a local Greengrass recipe's s3:// artifacts are, under the root: the layout of
# `greengrass-cli deployment create --artifactDir` (NAME/VERSION/FILE), which
# `hedgerow deployment create --artifacts DIR` copies there.
LOCAL_ARTIFACTS = "local-artifacts"


def parse_local(path: pathlib.Path, text: str, layout: Layout) -> list[manifest.Resource]:
    """One file of deployments/: Hedgerow manifests, or under recipes/ a Greengrass
    recipe read as the Component it stands for (fields it cannot carry over are named
    in the annotation hedgerow.dev/not-carried-over)."""
    if path.is_relative_to(layout.deployments / RECIPES) and greengrass.is_recipe_text(text):
        artifacts = greengrass.ArtifactMap(f"file://{layout.root / LOCAL_ARTIFACTS}",
                                           per_component=True)
        imported = greengrass.resolve_text(text, str(path), artifacts)
        for loss in imported.losses:  # read once per change of the file (Reader)
            log.warning("%s: %s: not carried over: %s", path, loss.path, loss.reason)
        return [imported.component]
    return manifest.parse_documents(text, str(path))


def _local(blobs: dict[pathlib.Path, _Blob],
           layout: Layout) -> tuple[list[manifest.Resource], list[str]]:
    resources: list[manifest.Resource] = []
    problems: list[str] = []
    for path, blob in blobs.items():
        if blob is None:
            continue  # gone since it was listed: as if never there
        try:
            if isinstance(blob, OSError):
                raise blob
            resources += parse_local(path, blob.decode(), layout)
        except greengrass.RecipeError as exc:
            problems.append(str(exc))
        except manifest.InvalidDocumentError as exc:
            problems += [str(p) for p in exc.problems]
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc.strerror}")
        except UnicodeDecodeError as exc:
            problems.append(f"{path}: not UTF-8 text: {exc}")
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
    return Reader().fetch(layout, thing, platform, ceiling)


def _refuse(reading: Reading, ceiling: privilege.Level) -> Reading:
    if reading.desired is None:
        return reading
    refused = resolve_ceiling_violations(reading.desired, ceiling)
    return Reading(None, refused, revision=reading.desired.revision,
                   cloud_revision=reading.cloud_revision) if refused else reading


# A file whose stat is unchanged is taken as unchanged only once its mtime is this much
# in the past (git's "racily clean" rule): a rewrite within the filesystem's timestamp
# granularity, with the same size, in place, would otherwise go unseen.
_RACY_S = 2.0
_StatKey = tuple[int, int, int, int, int] | None


def _stat_key(path: pathlib.Path) -> _StatKey:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Reader:
    """`fetch_desired` that parses, validates (the revision's content hash), resolves and
    checks a document once per change of its files, not on every pass: files whose
    identity, size and times are unchanged (and not racily recent) are not read again;
    files read again with the same bytes (a touch, a rewrite of the same content) keep
    the last reading. The connector replaces desired.json by rename (a new inode), and
    watchfiles wakes the loop on every change, so nothing is missed."""

    def __init__(self) -> None:
        self._inputs: tuple[object, ...] | None = None  # parameters and stat keys
        self._settled = False  # every file's mtime was past the racy window
        self._content: tuple[object, ...] | None = None  # parameters and bytes digests
        self._reading: Reading | None = None
        self.parses = 0  # how many times the inputs were parsed (for tests and logs)

    def fetch(self, layout: Layout, thing: str, platform: documents.PlatformInfo,
              ceiling: privilege.Level = privilege.Level.PRIVILEGED) -> Reading:
        params = (thing, platform, ceiling)
        paths = [layout.desired_file, *_local_files(layout.deployments)]
        stats = tuple(_stat_key(p) for p in paths)
        inputs = (params, tuple(paths), stats)
        if self._reading is not None and self._settled and inputs == self._inputs:
            return self._reading
        now = time.time_ns()
        blobs = {p: _read(p) for p in paths}
        content = (params, tuple(
            (p, hashlib.sha256(b).digest() if isinstance(b, bytes) else repr(b))
            for p, b in blobs.items()))
        self._inputs = inputs
        # A missing file is settled too: appearing changes its stat.
        self._settled = all(s is None or now - s[3] > _RACY_S * 1e9 for s in stats)
        if any(isinstance(b, OSError) for b in blobs.values()):
            self._settled = False  # an I/O error is read again at the next pass
        if self._reading is not None and content == self._content:
            return self._reading
        self.parses += 1
        self._content = content
        self._reading = _refuse(_fetch(layout, thing, platform, blobs), ceiling)
        return self._reading


def _fetch(layout: Layout, thing: str, platform: documents.PlatformInfo,
           blobs: dict[pathlib.Path, _Blob]) -> Reading:
    cloud, problems = _cloud(layout.desired_file, blobs[layout.desired_file])
    resources, local_problems = _local(
        {p: b for p, b in blobs.items() if p != layout.desired_file}, layout)
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
