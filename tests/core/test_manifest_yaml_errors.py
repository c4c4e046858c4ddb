"""A YAML syntax error points where the user must look: the file, the line and column
where the parser gave up *and* where the unclosed construct began, with PyYAML's own
context — not only "expected ',' or ']', but got '<stream end>'"."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from hedgerow.core import manifest

UNCLOSED = """apiVersion: hedgerow.dev/v1alpha1
kind: Component
metadata: {name: web-1.0.0}
spec:
  name: web
  version: 1.0.0
  manifests:
    - container:
        image: busybox
        ports: [8080, 8443
"""


def problem_of(text: str, source: str = "web.yaml") -> str:
    with pytest.raises(manifest.InvalidDocumentError) as caught:
        manifest.parse_documents(text, source)
    [problem] = caught.value.problems
    return str(problem)


def test_unclosed_bracket_names_the_line_it_was_opened_on() -> None:
    text = problem_of(UNCLOSED)
    assert text.startswith("web.yaml:11:1: not valid YAML: expected ',' or ']', "
                           "but got '<stream end>'"), text
    assert ("while parsing a flow sequence that began at line 10, column 16: "
            "'ports: [8080, 8443'") in text


@pytest.mark.parametrize(("text", "where", "says"), [
    ("a: 'abc\nb: 1\n", "x.yaml:3:1:",
     "while scanning a quoted scalar that began at line 1, column 4: \"a: 'abc\""),
    ("a:\n  - b\n c: 1\n", "x.yaml:3:2:",
     "expected <block end>, but found '<block mapping start>': 'c: 1' "
     "(while parsing a block mapping that began at line 1, column 1: 'a:')"),
    ("a: *nothing\n", "x.yaml:1:4:", "found undefined alias 'nothing': 'a: *nothing'"),
])
def test_other_syntax_errors_keep_both_marks_and_the_context(
        text: str, where: str, says: str) -> None:
    got = problem_of(text, "x.yaml")
    assert got.startswith(where) and says in got, got


def test_validate_prints_it(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(UNCLOSED)
    done = subprocess.run([sys.executable, "-m", "hedgerow", "validate", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"{path}:11:1: not valid YAML" in done.stderr
    assert "began at line 10, column 16" in done.stderr
