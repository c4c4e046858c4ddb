"""Semantic versions and npm-style version ranges.

Greengrass recipes state dependencies as npm ranges (``>=1.0.0 <2.0.0``, ``^1.2``,
``~1.2.3``, ``1.x``, ``1.0.0 - 1.4.0``, ``a || b``). A range is compiled to a union of
intervals, which makes both "does this version satisfy it" and "do two ranges have a
version in common" (deployment conflicts) simple, exact questions.
"""

from __future__ import annotations

import dataclasses
import functools
import re

_NUM = r"0|[1-9]\d*"
_IDENT = r"[0-9A-Za-z-]+"
VERSION_PATTERN = (
    rf"^(?P<major>{_NUM})\.(?P<minor>{_NUM})\.(?P<patch>{_NUM})"
    rf"(?:-(?P<pre>{_IDENT}(?:\.{_IDENT})*))?(?:\+(?P<build>{_IDENT}(?:\.{_IDENT})*))?$"
)
_VERSION_RE = re.compile(VERSION_PATTERN)
_PARTIAL_RE = re.compile(
    r"^v?(?P<major>\d+|[xX*])(?:\.(?P<minor>\d+|[xX*])(?:\.(?P<patch>\d+|[xX*])"
    rf"(?:-(?P<pre>{_IDENT}(?:\.{_IDENT})*))?(?:\+{_IDENT}(?:\.{_IDENT})*)?)?)?$"
)
_COMPARATOR_RE = re.compile(r"^(?P<op><=|>=|<|>|=|\^|~>?)?\s*(?P<partial>\S+)$")


class InvalidVersionError(ValueError):
    """A version or range string that is not valid semver / npm range syntax."""


@functools.total_ordering
@dataclasses.dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()

    def __str__(self) -> str:
        core = f"{self.major}.{self.minor}.{self.patch}"
        return f"{core}-{'.'.join(self.prerelease)}" if self.prerelease else core

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
        # A release sorts after all of its prereleases; numeric identifiers sort before
        # alphanumeric ones (semver 2.0.0 §11).
        pre = tuple((0, int(p)) if p.isdigit() else (1, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    @property
    def release(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)


def parse_version(text: str) -> Version:
    match = _VERSION_RE.match(text.strip())
    if not match:
        raise InvalidVersionError(f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH)")
    pre = match["pre"]
    return Version(
        int(match["major"]), int(match["minor"]), int(match["patch"]),
        tuple(pre.split(".")) if pre else (),
    )


@dataclasses.dataclass(frozen=True)
class Bound:
    version: Version
    inclusive: bool


@dataclasses.dataclass(frozen=True)
class Interval:
    """Versions between ``low`` and ``high``; None means unbounded on that side."""

    low: Bound | None = None
    high: Bound | None = None
    # Prereleases match only when a comparator named the same major.minor.patch (npm).
    prerelease_releases: frozenset[tuple[int, int, int]] = frozenset()

    def contains(self, version: Version) -> bool:
        if version.prerelease and version.release not in self.prerelease_releases:
            return False
        if self.low is not None and (
            version < self.low.version or (version == self.low.version and not self.low.inclusive)
        ):
            return False
        return not (
            self.high is not None
            and (
                version > self.high.version
                or (version == self.high.version and not self.high.inclusive)
            )
        )

    def intersect(self, other: Interval) -> Interval | None:
        low = _tighter(self.low, other.low, lower=True)
        high = _tighter(self.high, other.high, lower=False)
        if low is not None and high is not None and (
            low.version > high.version
            or (low.version == high.version and not (low.inclusive and high.inclusive))
        ):
            return None
        return Interval(low, high, self.prerelease_releases | other.prerelease_releases)


def _tighter(a: Bound | None, b: Bound | None, *, lower: bool) -> Bound | None:
    if a is None:
        return b
    if b is None:
        return a
    if a.version == b.version:
        return Bound(a.version, a.inclusive and b.inclusive)
    a_wins = (a.version > b.version) if lower else (a.version < b.version)
    return a if a_wins else b


@dataclasses.dataclass(frozen=True)
class Range:
    text: str
    intervals: tuple[Interval, ...]

    def __str__(self) -> str:
        return self.text

    def satisfied_by(self, version: Version) -> bool:
        return any(i.contains(version) for i in self.intervals)

    def intersects(self, other: Range) -> bool:
        return any(a.intersect(b) is not None for a in self.intervals for b in other.intervals)


@functools.lru_cache(maxsize=4096)
def parse_range(text: str) -> Range:
    alternatives = [part.strip() for part in text.split("||")]
    intervals: list[Interval] = []
    for alternative in alternatives:
        interval = _parse_comparator_set(alternative, text)
        if interval is not None:
            intervals.append(interval)
    return Range(text.strip(), tuple(intervals))


def _parse_comparator_set(text: str, whole: str) -> Interval | None:
    hyphen = re.fullmatch(r"(\S+)\s+-\s+(\S+)", text)
    if hyphen:
        low, high = _partial(hyphen[1], whole), _partial(hyphen[2], whole)
        parts = [_comparator(">=", low), _comparator("<=", high)]
    else:
        # npm allows a space between an operator and its version: ">= 1.2.3".
        tokens = re.sub(r"(<=|>=|<|>|=|\^|~>?)\s+", r"\1", text).split()
        parts = []
        for token in tokens or ["*"]:
            match = _COMPARATOR_RE.match(token)
            if not match:
                raise InvalidVersionError(f"{whole!r}: cannot read {token!r} as a comparator")
            parts.append(_comparator(match["op"] or "=", _partial(match["partial"], whole)))
    result: Interval | None = Interval()
    for part in parts:
        result = result.intersect(part) if result is not None else None
    return result


@dataclasses.dataclass(frozen=True)
class _Partial:
    major: int | None
    minor: int | None
    patch: int | None
    prerelease: tuple[str, ...]

    def floor(self) -> Version:
        return Version(self.major or 0, self.minor or 0, self.patch or 0, self.prerelease)


def _partial(text: str, whole: str) -> _Partial:
    match = _PARTIAL_RE.match(text)
    if not match:
        raise InvalidVersionError(f"{whole!r}: {text!r} is not a version")

    def num(name: str) -> int | None:
        value = match[name]
        return None if value is None or value in "xX*" else int(value)

    major, minor, patch = num("major"), num("minor"), num("patch")
    if (major is None and minor is not None) or (minor is None and patch is not None):
        raise InvalidVersionError(f"{whole!r}: {text!r} has a number after a wildcard")
    pre = tuple(match["pre"].split(".")) if match["pre"] else ()
    return _Partial(major, minor, patch, pre)


def _ge(v: Version) -> Bound:
    return Bound(v, inclusive=True)


def _lt(v: Version) -> Bound:
    return Bound(v, inclusive=False)


def _bump(p: _Partial) -> Version:
    """The first version above everything a partial like 1 or 1.2 matches."""
    if p.minor is None:
        return Version((p.major or 0) + 1, 0, 0)
    return Version(p.major or 0, p.minor + 1, 0)


def _comparator(op: str, p: _Partial) -> Interval:
    pre = frozenset({p.floor().release}) if p.prerelease else frozenset()
    floor = p.floor()
    exact = p.patch is not None
    if p.major is None:
        return Interval() if op in ("=", ">=", "<=", "^", "~", "~>") else _nothing()
    if op == "=":
        if exact:
            return Interval(_ge(floor), Bound(floor, True), pre)
        return Interval(_ge(floor), _lt(_bump(p)), pre)
    if op == ">=":
        return Interval(_ge(floor), None, pre)
    if op == ">":
        return Interval(Bound(floor, False), None, pre) if exact else Interval(_ge(_bump(p)))
    if op == "<":
        return Interval(None, _lt(floor), pre)
    if op == "<=":
        return Interval(None, Bound(floor, True), pre) if exact else Interval(None, _lt(_bump(p)))
    if op in ("~", "~>"):
        return Interval(_ge(floor), _lt(_bump(p if p.minor is None else
                                               _Partial(p.major, p.minor, None, ()))), pre)
    # Caret: allow changes that do not modify the left-most non-zero part.
    if p.major > 0 or p.minor is None:
        high = Version(p.major + 1, 0, 0)
    elif p.minor > 0 or p.patch is None:
        high = Version(0, p.minor + 1, 0)
    else:
        high = Version(0, 0, (p.patch or 0) + 1)
    return Interval(_ge(floor), _lt(high), pre)


def _nothing() -> Interval:
    zero = Version(0, 0, 0)
    return Interval(Bound(zero, False), Bound(zero, False))
