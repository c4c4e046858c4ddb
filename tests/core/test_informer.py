"""The informer's decisions: what a (re-)listing stands for, what a watch event or an
HTTP answer asks for."""

from __future__ import annotations

from typing import Any

import pytest

from hedgerow.core import informer
from hedgerow.core.informer import DELETED, LISTED, Action

A, B, C = ("", "a"), ("", "b"), ("ns", "c")


@pytest.mark.parametrize(("known", "listed", "events"), [
    ({}, {}, []),
    # The first listing: every object, as kopf's listing events (type None).
    ({}, {A: "1", B: "2"}, [(LISTED, A), (LISTED, B)]),
    # A re-list after a 410: unchanged objects are no event...
    ({A: "1", B: "2"}, {A: "1", B: "2"}, []),
    # ... a changed one is, and so is a new one ...
    ({A: "1", B: "2"}, {A: "5", B: "2", C: "6"}, [(LISTED, A), (LISTED, C)]),
    # ... and one deleted while no watch was open is told as deleted.
    ({A: "1", B: "2", C: "3"}, {B: "2"}, [(DELETED, A), (DELETED, C)]),
    ({A: "1"}, {}, [(DELETED, A)]),
    # Deleted and re-created under the same name: a new version, a listing event.
    ({A: "1"}, {A: "9"}, [(LISTED, A)]),
])
def test_plan_listing(known: dict[informer.Key, str], listed: dict[informer.Key, str],
                      events: list[tuple[str | None, informer.Key]]) -> None:
    assert informer.plan_listing(known, listed) == events


_OBJ = {"metadata": {"name": "a", "resourceVersion": "7"}}


@pytest.mark.parametrize(("event", "action"), [
    ({"type": "ADDED", "object": _OBJ}, Action.APPLY),
    ({"type": "MODIFIED", "object": _OBJ}, Action.APPLY),
    ({"type": "DELETED", "object": _OBJ}, Action.APPLY),
    ({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}},
     Action.BOOKMARK),
    # What the API server sends when the version is older than it keeps.
    ({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                  "message": "too old resource version: 1 (16)"}},
     Action.RELIST),
    ({"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "etcd"}},
     Action.RETRY),
    ({"type": "ERROR", "object": "not a status"}, Action.RETRY),
    ({"type": "ADDED"}, Action.RETRY),  # a change without its object
    ({"type": "SOMETHING-NEW", "object": _OBJ}, Action.RETRY),
    ({}, Action.RETRY),
])
def test_resolve_event(event: dict[str, Any], action: Action) -> None:
    assert informer.resolve_event(event) is action


@pytest.mark.parametrize(("status", "action"), [
    (200, None),
    (410, Action.RELIST),  # an expired continue token, or a version too old
    (500, Action.RETRY),
    (503, Action.RETRY),
    (429, Action.RETRY),
    (403, Action.RETRY),  # RBAC fixed later: keep trying, with the backoff's cap
])
def test_resolve_response(status: int, action: Action | None) -> None:
    assert informer.resolve_response(status) is action


@pytest.mark.parametrize(("obj", "key", "version"), [
    ({"metadata": {"name": "gw", "resourceVersion": "12"}}, ("", "gw"), "12"),
    ({"metadata": {"name": "d", "namespace": "team", "resourceVersion": "3"}},
     ("team", "d"), "3"),
    ({}, ("", ""), ""),
])
def test_key_and_version(obj: dict[str, Any], key: informer.Key, version: str) -> None:
    assert informer.key_of(obj) == key
    assert informer.version_of(obj) == version


_MANAGED = [{"manager": "hedgerow-controller", "operation": "Apply", "subresource": "status",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:health": {}}}}]
_META = {"name": "gw", "namespace": "team", "uid": "u1", "resourceVersion": "12",
         "generation": 3, "labels": {"site": "a"},
         "annotations": {"hedgerow.dev/approved": "yes", "kubectl.kubernetes.io/"
                         "last-applied-configuration": "{...}"},
         "managedFields": _MANAGED, "creationTimestamp": "2026-01-01T00:00:00Z"}
_BODY = {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "CoreDevice", "metadata": _META,
         "spec": {"namespace": "team"}, "status": {"health": "HEALTHY"}}
_KEPT_META = {k: v for k, v in _META.items() if k not in ("managedFields", "creationTimestamp")}


@pytest.mark.parametrize(("kwargs", "expected"), [
    # What the model reads of metadata, and nothing the API server adds (managedFields)
    ({}, {**_BODY, "metadata": _KEPT_META}),
    ({"status": False}, {"apiVersion": "hedgerow.dev/v1alpha1", "kind": "CoreDevice",
                         "metadata": _KEPT_META, "spec": {"namespace": "team"}}),
    # Of the annotations, those named (kubectl's copy of the object is not one)
    ({"annotations": {"hedgerow.dev/approved"}},
     {**_BODY, "metadata": {**_KEPT_META, "annotations": {"hedgerow.dev/approved": "yes"}}}),
    ({"annotations": ()}, {**_BODY, "metadata": {**_KEPT_META, "annotations": {}}}),
])
def test_trim(kwargs: dict[str, Any], expected: dict[str, Any]) -> None:
    assert informer.trim(_BODY, **kwargs) == expected


@pytest.mark.parametrize("obj", [
    {}, {"metadata": {"name": "a"}}, {"kind": "CoreDevice", "status": {}},
    {"metadata": None}, {"metadata": {"name": "a", "annotations": None}},
])
def test_trim_leaves_what_it_does_not_know(obj: dict[str, Any]) -> None:
    assert informer.trim(obj) == obj
