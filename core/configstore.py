"""A component's configuration as Greengrass IPC sees it: what its deployment gave it,
with what the component changed itself (UpdateConfiguration) on top. Pure.

The component's own changes are an `Overlay`: leaf values by key path, each with the
timestamp of the update that wrote it (Greengrass's rule: an update older than the value
it would overwrite is not applied). The overlay remembers the deployment configuration
it was made on (`base`); when a new deployment changes a key the component had changed
too, the deployment's value wins (it "applies on top", as in Greengrass) and the
component's value for that key is dropped — keys the deployment left alone keep the
component's value.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from hedgerow.core import base

KeyPath = tuple[str, ...]


class StaleUpdateError(ValueError):
    """Every value the update would write is newer than the update."""


class Overlay(base.Model):
    base: dict[str, Any] = {}       # the deployment's configuration it was made on
    values: dict[str, Any] = {}     # "\x1f"-joined key path -> the value written there
    times: dict[str, float] = {}    # same keys -> the update's timestamp (seconds)


_SEP = "\x1f"  # key paths are lists of arbitrary strings: joined by a control character


def render_key(path: Sequence[str]) -> str:
    return _SEP.join(path)


def resolve_key(key: str) -> KeyPath:
    return tuple(key.split(_SEP)) if key else ()


def render_pointer(path: Sequence[str]) -> str:
    """A key path as a JSON pointer, for people (status, logs)."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in path)


_MISSING = object()


def _get(config: Any, path: Sequence[str]) -> Any:
    node = config
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _set(config: dict[str, Any], path: Sequence[str], value: Any) -> None:
    node = config
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = copy.deepcopy(value)


def resolve_effective(configuration: Mapping[str, Any], overlay: Overlay | None,
                      ) -> dict[str, Any]:
    """The configuration the component sees: its deployment's, its own changes on top."""
    out = copy.deepcopy(dict(configuration))
    if overlay is None:
        return out
    for key in sorted(overlay.values, key=lambda k: len(resolve_key(k))):
        path = resolve_key(key)
        if path:
            _set(out, path, overlay.values[key])
        elif isinstance(overlay.values[key], dict):
            out = copy.deepcopy(overlay.values[key])
    return out


def _leaves(value: Any, path: KeyPath) -> list[tuple[KeyPath, Any]]:
    """A merge's leaves: every value that is not a non-empty mapping, by its path."""
    if isinstance(value, dict) and value:
        return [leaf for k, v in value.items() for leaf in _leaves(v, (*path, str(k)))]
    return [(path, value)]


def _related(a: KeyPath, b: KeyPath) -> bool:
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]


def resolve_update(configuration: Mapping[str, Any], overlay: Overlay | None,
                   key_path: Sequence[str], value_to_merge: Mapping[str, Any],
                   timestamp: float) -> tuple[Overlay, list[KeyPath]]:
    """UpdateConfiguration: `value_to_merge` merged at `key_path`. The new overlay and
    the key paths whose value changed. A value written by a newer update stays; when
    that leaves nothing to write, StaleUpdateError."""
    overlay = overlay or Overlay(base=dict(configuration))
    before = resolve_effective(configuration, overlay)
    values, times = dict(overlay.values), dict(overlay.times)
    written = skipped = 0
    for path, value in _leaves(dict(value_to_merge), tuple(key_path)):
        newer = [k for k in times if _related(resolve_key(k), path) and times[k] > timestamp]
        if newer:
            skipped += 1
            continue
        for key in [k for k in values if _related(resolve_key(k), path)]:
            del values[key]  # an ancestor leaf becomes a mapping, or a subtree a leaf
            times.pop(key, None)
        values[render_key(path)] = value
        times[render_key(path)] = timestamp
        written += 1
    if skipped and not written:
        raise StaleUpdateError(
            f"the update's timestamp {timestamp} is older than the value at "
            f"{render_pointer(key_path) or '/'} (an older update never overwrites a newer "
            "value)")
    new = Overlay(base=overlay.base, values=values, times=times)
    return new, resolve_changed(before, resolve_effective(configuration, new))


def resolve_rebased(overlay: Overlay, configuration: Mapping[str, Any]) -> Overlay:
    """The overlay after a deployment changed the configuration to `configuration`: the
    component's values for keys the deployment changed are dropped (the deployment
    applies on top); the rest stay."""
    if overlay.base == configuration:
        return overlay
    keep = {k: v for k, v in overlay.values.items()
            if _get(overlay.base, resolve_key(k)) == _get(configuration, resolve_key(k))}
    return Overlay(base=dict(configuration), values=keep,
                   times={k: t for k, t in overlay.times.items() if k in keep})


def resolve_rendered(configuration: Mapping[str, Any], overlay: Overlay | None,
                     ) -> dict[str, Any]:
    """What a component's lifecycle steps render `{configuration:/x}` from when it
    (re)starts, as in Greengrass: `configuration` (its deployment's, possibly newer than
    the overlay's base) with its own changes on top, except for keys that deployment
    changed -- those the deployment wins, whether or not the overlay was rebased yet."""
    if overlay is None:
        return copy.deepcopy(dict(configuration))
    return resolve_effective(configuration, resolve_rebased(overlay, configuration))


def resolve_changed(before: Any, after: Any, path: KeyPath = ()) -> list[KeyPath]:
    """The key paths of every leaf that differs (added, removed or changed); a value
    replaced by a mapping (or the reverse) is its own path and the mapping's leaves."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[KeyPath] = []
        for key in sorted(set(before) | set(after)):
            out += resolve_changed(before.get(key, _MISSING), after.get(key, _MISSING),
                                   (*path, key))
        return out
    if isinstance(before, dict) or isinstance(after, dict):
        mapping, other = (before, after) if isinstance(before, dict) else (after, before)
        inner = resolve_changed(mapping, {}, path) if mapping else []
        return ([path] if other is not _MISSING or not inner else []) + inner
    return [] if before == after else [path]


def resolve_value(config: Mapping[str, Any], key_path: Sequence[str]) -> dict[str, Any]:
    """GetConfiguration's `value`: the mapping at `key_path`, or — for a single value —
    `{last key: value}`, as Greengrass answers. KeyError when nothing is there."""
    node = _get(dict(config), key_path)
    if node is _MISSING:
        raise KeyError(render_pointer(key_path))
    if isinstance(node, dict):
        return copy.deepcopy(node)
    return {key_path[-1]: copy.deepcopy(node)}


def is_under(changed: Sequence[str], subscribed: Sequence[str]) -> bool:
    """A change at `changed` concerns a subscriber to `subscribed` (either contains the
    other: a subtree replaced by a value changes everything below it)."""
    return _related(tuple(changed), tuple(subscribed))
