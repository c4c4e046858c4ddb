"""A component's own configuration changes (core/configstore.py): merge at a key path,
the timestamp rule, a deployment applying on top, Greengrass's GetConfiguration answer,
and the changed key paths subscribers are told of."""

from __future__ import annotations

from typing import Any

import pytest

from hedgerow.core import configstore

DEPLOYED = {"batch": 10, "nested": {"x": 1, "y": "keep"}, "list": [1, 2]}


def update(overlay: configstore.Overlay | None, path: list[str], value: dict[str, Any],
           at: float, deployed: dict[str, Any] | None = None,
           ) -> tuple[configstore.Overlay, list[tuple[str, ...]]]:
    return configstore.resolve_update(DEPLOYED if deployed is None else deployed, overlay,
                                      path, value, at)


@pytest.mark.parametrize(("path", "value", "effective", "changed"), [
    (["nested"], {"x": 2}, {**DEPLOYED, "nested": {"x": 2, "y": "keep"}}, [("nested", "x")]),
    ([], {"batch": 11, "new": {"a": True}}, {**DEPLOYED, "batch": 11, "new": {"a": True}},
     [("batch",), ("new", "a")]),
    # A value becomes a mapping, a mapping a value; lists are values.
    (["batch"], {"per": 5}, {**DEPLOYED, "batch": {"per": 5}}, [("batch",), ("batch", "per")]),
    ([], {"nested": 3}, {**DEPLOYED, "nested": 3},
     [("nested",), ("nested", "x"), ("nested", "y")]),
    ([], {"list": [3]}, {**DEPLOYED, "list": [3]}, [("list",)]),
    (["nested"], {"x": 1}, DEPLOYED, []),  # the same value: nothing changed
    (["deep", "er"], {"k": "v"}, {**DEPLOYED, "deep": {"er": {"k": "v"}}},
     [("deep", "er", "k")]),
])
def test_merges_at_a_key_path(path: list[str], value: dict[str, Any],
                              effective: dict[str, Any], changed: list[tuple[str, ...]],
                              ) -> None:
    overlay, found = update(None, path, value, 100.0)
    assert configstore.resolve_effective(DEPLOYED, overlay) == effective
    assert sorted(found) == sorted(changed)


def test_an_older_update_never_overwrites_a_newer_value() -> None:
    overlay, _ = update(None, ["nested"], {"x": 2}, 100.0)
    with pytest.raises(configstore.StaleUpdateError, match="older than the value at /nested"):
        update(overlay, ["nested"], {"x": 0}, 50.0)
    # Partly stale: the newer leaves of the update are written, the older are not.
    overlay, changed = update(overlay, ["nested"], {"x": 0, "w": 1}, 50.0)
    assert configstore.resolve_effective(DEPLOYED, overlay)["nested"] == {
        "x": 2, "y": "keep", "w": 1}
    assert changed == [("nested", "w")]
    # Replacing an ancestor of a newer value is stale too.
    with pytest.raises(configstore.StaleUpdateError):
        update(overlay, [], {"nested": "flat"}, 60.0)
    # The same or a newer timestamp wins.
    overlay, _ = update(overlay, ["nested"], {"x": 3}, 100.0)
    assert configstore.resolve_effective(DEPLOYED, overlay)["nested"]["x"] == 3


@pytest.mark.parametrize(("new_deployment", "effective"), [
    # The deployment changed another key: the component's own value stays.
    ({**DEPLOYED, "batch": 20}, {**DEPLOYED, "batch": 20, "nested": {"x": 5, "y": "keep"}}),
    # It changed the component's key: the deployment wins.
    ({**DEPLOYED, "nested": {"x": 9, "y": "keep"}}, {**DEPLOYED, "nested": {"x": 9,
                                                                          "y": "keep"}}),
    # It removed the component's key: removed.
    ({"batch": 10}, {"batch": 10}),
    # Unchanged.
    (DEPLOYED, {**DEPLOYED, "nested": {"x": 5, "y": "keep"}}),
])
def test_a_deployment_applies_on_top(new_deployment: dict[str, Any],
                                     effective: dict[str, Any]) -> None:
    overlay, _ = update(None, ["nested"], {"x": 5}, 100.0)
    rebased = configstore.resolve_rebased(overlay, new_deployment)
    assert configstore.resolve_effective(new_deployment, rebased) == effective
    assert configstore.resolve_rebased(rebased, new_deployment) == rebased


@pytest.mark.parametrize(("new_deployment", "rendered"), [
    # No new deployment: the component's own value fills its recipe variables.
    (DEPLOYED, {**DEPLOYED, "nested": {"x": 5, "y": "keep"}}),
    # A deployment that changed another key: both.
    ({**DEPLOYED, "batch": 20}, {**DEPLOYED, "batch": 20, "nested": {"x": 5, "y": "keep"}}),
    # One that changed the component's key wins -- even before the agent's pass rebased
    # the overlay (a restart for that very change renders during the pass).
    ({**DEPLOYED, "nested": {"x": 9, "y": "keep"}}, {**DEPLOYED, "nested": {"x": 9,
                                                                          "y": "keep"}}),
    ({"batch": 10}, {"batch": 10}),
])
def test_steps_render_with_the_components_own_changes_on_top(
        new_deployment: dict[str, Any], rendered: dict[str, Any]) -> None:
    overlay, _ = update(None, ["nested"], {"x": 5}, 100.0)
    assert configstore.resolve_rendered(new_deployment, overlay) == rendered
    assert configstore.resolve_rendered(new_deployment, None) == new_deployment
    # What GetConfiguration answers once rebased is what the steps rendered with.
    rebased = configstore.resolve_rebased(overlay, new_deployment)
    assert configstore.resolve_effective(new_deployment, rebased) == rendered


@pytest.mark.parametrize(("path", "value"), [
    ([], DEPLOYED),
    (["nested"], {"x": 1, "y": "keep"}),
    (["nested", "x"], {"x": 1}),   # a single value: {last key: value}, as Greengrass
    (["list"], {"list": [1, 2]}),
])
def test_get_configuration_values(path: list[str], value: dict[str, Any]) -> None:
    assert configstore.resolve_value(DEPLOYED, path) == value


@pytest.mark.parametrize("path", [["missing"], ["nested", "x", "deeper"], ["list", "0"]])
def test_get_configuration_of_nothing(path: list[str]) -> None:
    with pytest.raises(KeyError):
        configstore.resolve_value(DEPLOYED, path)


@pytest.mark.parametrize(("changed", "subscribed", "expected"), [
    (("nested", "x"), ("nested",), True),
    (("nested", "x"), (), True),
    (("nested",), ("nested", "x"), True),  # a subtree replaced changes what is below
    (("batch",), ("nested",), False),
    (("nested2",), ("nested",), False),
])
def test_who_hears_of_a_change(changed: tuple[str, ...], subscribed: tuple[str, ...],
                               expected: bool) -> None:
    assert configstore.is_under(changed, subscribed) is expected


def test_key_paths_with_any_characters_round_trip() -> None:
    path = ("a/b", "~c", "")
    assert configstore.resolve_key(configstore.render_key(path)) == path
    assert configstore.render_pointer(path) == "/a~1b/~0c/"
