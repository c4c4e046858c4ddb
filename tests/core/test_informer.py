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
