"""The Ready / Progressing / Stalled table: the code's table is the one docs/controller.md
draws (so Flux and Argo CD users read what the controller does), and every situation is
decided by the rules in their order of precedence."""

from __future__ import annotations

import pathlib
import re

import pytest

from hedgerow.core import base, readiness

DOC = pathlib.Path(__file__).parents[2] / "docs" / "controller.md"
T, F = base.ConditionStatus.TRUE, base.ConditionStatus.FALSE
S = readiness.Situation

# The first column of the doc's table, per situation.
ROW_NAMES = {
    "rolling out / waiting for devices": S.ROLLING_OUT,
    "suspended": S.SUSPENDED,
    "every targeted device succeeded": S.SUCCEEDED,
    "finished with failures (no abort)": S.FAILED,
    "aborted": S.ABORTED,
    "semantic error": S.PROBLEM,
}


def _doc_table() -> dict[readiness.Situation, list[str]]:
    text = DOC.read_text()
    start = text.index("| situation | Ready | Progressing | Stalled |")
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[ROW_NAMES[cells[0]]] = cells[1:]
    return rows


def _render(cell: readiness.Cell) -> tuple[str, str | None]:
    return cell.status.value, cell.reason or None


def _parse(doc_cell: str) -> tuple[str, str | None]:
    """'False `RollingOut`' -> ('False', 'RollingOut'); a list of reasons (the semantic
    errors) -> the problem's own reason (None); a bare status -> no reason checked."""
    status, _, rest = doc_cell.partition(" ")
    reasons = re.findall(r"`([A-Za-z]+)`", rest)
    return status, reasons[0] if len(reasons) == 1 else None


@pytest.mark.parametrize("situation", list(S))
def test_the_code_table_is_the_documented_table(situation: readiness.Situation) -> None:
    doc = _doc_table()
    assert set(doc) == set(S)  # every documented row has a situation, and the reverse
    row = readiness.TABLE[situation]
    for cell, doc_cell in zip((row.ready, row.progressing, row.stalled), doc[situation],
                              strict=True):
        status, reason = _parse(doc_cell)
        assert cell.status.value == status, (situation, doc_cell)
        if reason is not None:
            assert cell.reason == reason, (situation, doc_cell)


def facts(problem: bool = False, aborted: bool = False, suspended: bool = False,
          targeted: int = 4, notified: int = 4, executed: int = 4,
          unsuccessful: int = 0) -> readiness.Facts:
    return readiness.Facts(problem, aborted, suspended, targeted, notified, executed,
                           unsuccessful)


@pytest.mark.parametrize(("given", "expected"), [
    (facts(), S.SUCCEEDED),
    (facts(targeted=0, notified=0, executed=0), S.SUCCEEDED),  # nothing targeted: done
    (facts(notified=2, executed=2), S.ROLLING_OUT),
    (facts(executed=3), S.ROLLING_OUT),  # all notified, one still applying
    (facts(unsuccessful=1), S.FAILED),
    (facts(notified=2, executed=2, suspended=True), S.SUSPENDED),
    (facts(suspended=True), S.SUCCEEDED),  # suspending a finished rollout changes nothing
    (facts(aborted=True, unsuccessful=2, notified=2, suspended=True), S.ABORTED),
    (facts(problem=True, aborted=True), S.PROBLEM),  # a spec error outranks everything
])
def test_situations_follow_the_rules_in_order(given: readiness.Facts,
                                              expected: readiness.Situation) -> None:
    assert readiness.resolve_situation(given) is expected


def test_a_problem_names_its_own_reason_and_waits_for_the_spec() -> None:
    ready, progressing, stalled = readiness.render_conditions(
        S.PROBLEM, progress="0/4 notified", detail="unknown component x (and 1 more problems)",
        cause="unknown component x", cause_reason="UnknownComponent")
    assert (ready.type, ready.status, ready.reason) == ("Ready", F, "UnknownComponent")
    assert ready.message == "unknown component x (and 1 more problems)"
    assert (progressing.status, progressing.message) == (F, "waiting for the spec to change")
    assert (stalled.type, stalled.status, stalled.message) == ("Stalled", T,
                                                               "unknown component x")


def test_rolling_out_reports_progress_and_is_not_stalled() -> None:
    ready, progressing, stalled = readiness.render_conditions(
        S.ROLLING_OUT, progress="2/4 notified")
    assert [(v.status, v.message) for v in (ready, progressing, stalled)] == [
        (F, "2/4 notified"), (T, "2/4 notified"), (F, "")]
