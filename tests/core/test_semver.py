"""npm-style ranges: the table npm's own semver tests use, trimmed to what recipes write."""

from __future__ import annotations

import pytest

from hedgerow.core import semver

SATISFIES = [
    ("1.0.0", "1.0.0", True),
    ("1.0.1", "1.0.0", False),
    ("*", "3.4.5", True),
    ("", "0.0.1", True),
    ("1.x", "1.9.9", True),
    ("1.x", "2.0.0", False),
    ("1.2", "1.2.7", True),
    ("1.2", "1.3.0", False),
    (">=1.0.0 <2.0.0", "1.99.0", True),
    (">=1.0.0 <2.0.0", "2.0.0", False),
    (">= 1.0.0", "1.0.0", True),
    (">1.0.0", "1.0.0", False),
    ("<=1.2", "1.2.9", True),
    ("<=1.2", "1.3.0", False),
    ("^1.2.3", "1.9.0", True),
    ("^1.2.3", "2.0.0", False),
    ("^1.2.3", "1.2.2", False),
    ("^0.2.3", "0.2.9", True),
    ("^0.2.3", "0.3.0", False),
    ("^0.0.3", "0.0.4", False),
    ("~1.2.3", "1.2.9", True),
    ("~1.2.3", "1.3.0", False),
    ("~1", "1.9.0", True),
    ("1.0.0 - 1.4.0", "1.4.0", True),
    ("1.0.0 - 1.4.0", "1.4.1", False),
    ("<1.0.0 || >=2.0.0", "1.5.0", False),
    ("<1.0.0 || >=2.0.0", "2.1.0", True),
    (">=1.0.0", "1.1.0-beta.1", False),  # prereleases only match a range naming them
    (">=1.1.0-beta.0", "1.1.0-beta.1", True),
    (">=1.1.0-beta.0", "1.1.0", True),
]


@pytest.mark.parametrize(("rng", "version", "expected"), SATISFIES)
def test_range_satisfaction(rng: str, version: str, expected: bool) -> None:
    assert semver.parse_range(rng).satisfied_by(semver.parse_version(version)) is expected


INTERSECTS = [
    ("^1.0.0", ">=1.5.0", True),
    ("^1.0.0", "^2.0.0", False),
    ("1.0.0", "1.0.0", True),
    ("1.0.0", "1.0.1", False),
    ("<1.0.0", ">=1.0.0", False),
    ("<=1.0.0", ">=1.0.0", True),
    ("~1.2 || ^3", ">=3.1.0 <3.2.0", True),
]


@pytest.mark.parametrize(("a", "b", "expected"), INTERSECTS)
def test_range_intersection(a: str, b: str, expected: bool) -> None:
    assert semver.parse_range(a).intersects(semver.parse_range(b)) is expected
    assert semver.parse_range(b).intersects(semver.parse_range(a)) is expected


def test_versions_order_as_semver_says() -> None:
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
               "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.10.0"]
    parsed = [semver.parse_version(v) for v in ordered]
    shuffled = parsed[1::2] + parsed[::2]
    assert sorted(shuffled) == parsed
    assert [str(v) for v in parsed] == ordered


@pytest.mark.parametrize("bad", ["1.0", "v1.0.0.0", "01.0.0", "1.0.0-", "latest"])
def test_invalid_versions_are_rejected(bad: str) -> None:
    with pytest.raises(semver.InvalidVersionError):
        semver.parse_version(bad)


@pytest.mark.parametrize("bad", [">=1 <<2", "^x.1", "1.x.3", "~>", "banana"])
def test_invalid_ranges_name_the_part(bad: str) -> None:
    with pytest.raises(semver.InvalidVersionError, match=r"is not a version|comparator|wildcard"):
        semver.parse_range(bad)
