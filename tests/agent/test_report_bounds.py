"""The status report the agent emits stays within core/limits.py, whatever components do
(issue 12: "a 1.4 MB agentVersion patched every second; the component-count limit
bypassed"). Messages come from components (exit codes, Docker's start errors quote the
recipe), so the bound is applied where the report is made."""

from __future__ import annotations

import pathlib

from hedgerow.agent import agent as agent_
from hedgerow.agent import desired, records
from hedgerow.core import documents, limits
from hedgerow.core.documents import ComponentState as S
from tests.agent.conftest import rc


def test_a_report_with_too_many_long_components_is_bounded(tmp_path: pathlib.Path) -> None:
    the_agent = agent_.Agent(tmp_path / "root", "gw-bounds")
    for i in range(limits.MAX_REPORT_COMPONENTS + 100):
        comp = rc(f"com.example.C{i:04d}")
        the_agent.records[comp.name] = records.Record(
            name=comp.name, version="1.0.0", spec_hash=comp.spec_hash, spec=comp.to_dict(),
            state=S.BROKEN if i % 97 == 0 else S.RUNNING,
            message="\x00\"" * 100_000)  # escapes to 6 bytes a character in JSON
    problems = tuple("x" * 10_000 for _ in range(10))
    report = the_agent.report(desired.Reading(None, problems, "r" * 64))
    data = documents.render_bytes(report)
    assert len(data) <= limits.MAX_REPORT_BYTES
    assert len(report.components) == limits.MAX_REPORT_COMPONENTS
    # what is cut first is what an operator needs least: the BROKEN ones are all there
    assert {c.name for c in report.components if c.state is S.BROKEN} == {
        f"com.example.C{i:04d}" for i in range(0, limits.MAX_REPORT_COMPONENTS + 100, 97)}
    assert report.deployment is not None
    assert len(report.deployment.reason) <= limits.MAX_REPORT_REASON
    assert report.deployment.revision == "r" * 64  # the refused document, not the applied
    assert report.deployment.outcome is documents.Outcome.REJECTED


def test_an_ordinary_report_is_unchanged(tmp_path: pathlib.Path) -> None:
    the_agent = agent_.Agent(tmp_path / "root", "gw-bounds")
    comp = rc("com.example.Small")
    the_agent.records[comp.name] = records.Record(
        name=comp.name, version="1.0.0", spec_hash=comp.spec_hash, spec=comp.to_dict(),
        state=S.RUNNING, message="pid 42")
    report = the_agent.report()
    assert [(c.name, c.message) for c in report.components] == [("com.example.Small",
                                                                  "pid 42")]
