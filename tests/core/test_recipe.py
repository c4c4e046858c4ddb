"""Recipe variable interpolation."""

from __future__ import annotations

import pytest

from hedgerow.core import recipe

OWN = recipe.Paths(artifacts="/r/artifacts/a/1.0.0", decompressed="/r/unpacked/a/1.0.0",
                   work="/r/work/a", configuration={"m": "hi", "n": 3, "o": {"k": [1, 2]},
                                                    "a/b": True})
DEP = recipe.Paths(artifacts="/r/artifacts/d/2.0.0", decompressed="/r/unpacked/d/2.0.0",
                   work="/r/work/d", configuration={"port": 8080})
CTX = recipe.Context(component="a", own=OWN, root="/r", thing="gw-1",
                     dependencies={"com.x.Dep": DEP})


@pytest.mark.parametrize(("text", "expected"), [
    ("{artifacts:path}/run.sh", "/r/artifacts/a/1.0.0/run.sh"),
    ("{artifacts:decompressedPath}", "/r/unpacked/a/1.0.0"),
    ("cd {work:path}", "cd /r/work/a"),
    ("{configuration:/m} {configuration:/n}", "hi 3"),
    ("{configuration:/o}", '{"k": [1, 2]}'),
    ("{configuration:/o/k/1}", "2"),
    ("{configuration:/a~1b}", "true"),
    ("{kernel:rootPath} {iot:thingName}", "/r gw-1"),
    ("{com.x.Dep:configuration:/port}", "8080"),
    ("{com.x.Dep:artifacts:path}", "/r/artifacts/d/2.0.0"),
    ("{com.x.Dep:artifacts:decompressedPath}", "/r/unpacked/d/2.0.0"),
    # Shell syntax that merely looks like braces is not touched.
    ("${HOME} ${X:-y} {a,b} { echo; } awk '{print $1}' '{\"k\":1}'",
     "${HOME} ${X:-y} {a,b} { echo; } awk '{print $1}' '{\"k\":1}'"),
])
def test_placeholders_are_replaced(text: str, expected: str) -> None:
    assert recipe.render_text(text, CTX) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("{confguration:/m}", "unknown variable"),
    ("{artifacts:paht}", "unknown variable"),
    ("{iot:thingname}", "unknown variable"),
    ("{configuration:/missing}", "a has no configuration value at '/missing'"),
    ("{configuration:m}", "no configuration value"),
    ("{com.x.Other:configuration:/port}", "com.x.Other is not a direct dependency of a"),
    ("{com.x.Dep:configuration:/nope}", "com.x.Dep has no configuration value"),
])
def test_unknown_or_missing_variables_are_errors_naming_them(text: str, message: str) -> None:
    with pytest.raises(recipe.RecipeVariableError, match=message) as info:
        recipe.render_text(text, CTX)
    assert text in str(info.value)


def test_env_values_are_rendered() -> None:
    assert recipe.render_env({"G": "{configuration:/m}!"}, CTX) == {"G": "hi!"}
