"""Component configuration: JSON pointers (RFC 6901) and Greengrass's reset-then-merge.

One implementation serves both the resolver (a deployment's configurationUpdate) and
recipe interpolation (`{configuration:/a/b}`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from hedgerow.core import deployment

_MISSING: Final = object()


def pointer_tokens(pointer: str) -> list[str]:
    """'/a/b~1c' → ['a', 'b/c']; '' (the whole document) → []."""
    if pointer and not pointer.startswith("/"):
        raise KeyError(pointer)
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]


def _lookup(value: Any, tokens: Sequence[str]) -> Any:
    for token in tokens:
        if isinstance(value, dict) and token in value:
            value = value[token]
        elif isinstance(value, list) and token.isdigit() and int(token) < len(value):
            value = value[int(token)]
        else:
            return _MISSING
    return value


def resolve_pointer(document: Any, pointer: str) -> Any:
    """The value at ``pointer``; KeyError names the first part that is missing."""
    node = document
    for token in pointer_tokens(pointer):
        node = _lookup(node, [token])
        if node is _MISSING:
            raise KeyError(token)
    return node


def _reset(config: dict[str, Any], defaults: Mapping[str, Any], pointer: str) -> dict[str, Any]:
    """Restore the default at ``pointer``, or remove the key when the default has none."""
    if pointer == "":
        return copy.deepcopy(dict(defaults))
    tokens = pointer_tokens(pointer)
    parent = _lookup(config, tokens[:-1])
    last = tokens[-1]
    default = _lookup(defaults, tokens)
    if isinstance(parent, dict):
        if default is _MISSING:
            parent.pop(last, None)
        else:
            parent[last] = copy.deepcopy(default)
    elif (isinstance(parent, list) and last.isdigit() and int(last) < len(parent)
          and default is not _MISSING):
        parent[int(last)] = copy.deepcopy(default)
    return config


def _merge(into: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)
    return into


def resolve_configuration(
    defaults: Mapping[str, Any], updates: Iterable[deployment.ConfigurationUpdate],
) -> dict[str, Any]:
    """Defaults, then for each update: reset its pointers, then deep-merge."""
    config = copy.deepcopy(dict(defaults))
    for update in updates:
        for pointer in update.reset:
            config = _reset(config, defaults, pointer)
        _merge(config, update.merge)
    return config
