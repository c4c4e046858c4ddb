"""What an informer (a list, then a watch from the list's resourceVersion) does with
what the API server says: which changes a listing stands for, what a watch event does
to the local copy, and when the copy must be listed again.

The controller watches CoreDevices this way instead of through kopf's index, whose
initial indexing is quadratic in the number of objects (docs/scale.md). The consumer
sees what kopf's index and event handler gave it: a mapping (namespace, name) -> object
and one event per change, ``None`` as the type of an object seen in a listing (kopf's
convention), ``"DELETED"`` for one that is gone.

Pure: the shell (``hedgerow.controller.informer``) does the HTTP.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from typing import Any, Final

__all__ = [
    "DELETED",
    "GONE",
    "LISTED",
    "Action",
    "Key",
    "key_of",
    "plan_listing",
    "resolve_event",
    "resolve_response",
    "trim",
    "version_of",
]

Key = tuple[str, str]  # (namespace or "", name)

LISTED: Final = None  # the event type of an object seen in a listing (kopf's)
DELETED: Final = "DELETED"
GONE: Final = 410  # the resourceVersion asked for is older than the server keeps
_CHANGES: Final = frozenset({"ADDED", "MODIFIED", DELETED})
# The metadata a consumer's model reads (base.ObjectMeta). The rest is the API server's:
# managedFields above all, which after a few status writes are larger than the object
# (a field set per field written) and which, kept per object, cost ~8 KB a CoreDevice
# in memory: most of the controller's memory at 10,000 devices (docs/scale.md).
KEPT_METADATA: Final = frozenset({
    "name", "namespace", "labels", "annotations", "generation", "uid", "resourceVersion"})


class Action(enum.Enum):
    APPLY = "apply"  # a change of one object: update the copy, tell the consumer
    BOOKMARK = "bookmark"  # nothing changed; the watch resumes from a newer version
    RELIST = "relist"  # the version is too old (410 Gone): list again, compare, resume
    RETRY = "retry"  # any other failure: watch again from the same version, after a backoff


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def version_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def trim(obj: Mapping[str, Any], *, status: bool = True,
         annotations: Collection[str] | None = None) -> dict[str, Any]:
    """The part of an object's body worth keeping a copy of: its metadata as far as
    ``KEPT_METADATA`` names it, of its annotations only those named (None: every one;
    kubectl's last-applied-configuration repeats the whole object), and its status only
    when ``status``."""
    out = {k: v for k, v in obj.items() if k != "metadata" and (status or k != "status")}
    meta = obj.get("metadata")
    if isinstance(meta, Mapping):
        kept = {k: v for k, v in meta.items() if k in KEPT_METADATA}
        if annotations is not None and isinstance(kept.get("annotations"), Mapping):
            kept["annotations"] = {k: v for k, v in kept["annotations"].items()
                                   if k in annotations}
        out["metadata"] = kept
    elif "metadata" in obj:  # not ours to judge: the parser refuses it
        out["metadata"] = meta
    return out


def plan_listing(known: Mapping[Key, str],
                 listed: Mapping[Key, str]) -> list[tuple[str | None, Key]]:
    """The events a listing stands for, given the versions of the objects already known
    (none on the first listing): ``LISTED`` for each object new or changed, ``DELETED``
    for each known object the listing no longer has (deleted while no watch was open: a
    watch that expired). An object whose version did not change is no event: after a
    re-list of 10,000 devices the consumer hears of what changed, not of everything."""
    events: list[tuple[str | None, Key]] = [
        (LISTED, key) for key, version in listed.items() if known.get(key) != version]
    events.extend((DELETED, key) for key in known if key not in listed)
    return events


def resolve_event(event: Mapping[str, Any]) -> Action:
    """What one watch event asks for. An ERROR event carries a Status: 410 means the
    version we watch from is gone (compacted, or older than the server's watch cache),
    and only a new listing can tell what changed since; any other error, or an event
    this code does not know, is retried from the same version."""
    kind = event.get("type")
    if kind in _CHANGES and isinstance(event.get("object"), Mapping):
        return Action.APPLY
    if kind == "BOOKMARK":
        return Action.BOOKMARK
    if kind == "ERROR":
        status = event.get("object")
        if isinstance(status, Mapping) and status.get("code") == GONE:
            return Action.RELIST
    return Action.RETRY


def resolve_response(status: int) -> Action | None:
    """What the HTTP status of a list or watch request asks for; ``None``: read on."""
    if status == 200:
        return None
    if status == GONE:  # an expired continue token or a version too old
        return Action.RELIST
    return Action.RETRY
