"""Small things a new user trips over: the version, and commands the examples name."""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import subprocess
import sys

import hedgerow
from hedgerow.agent import agent

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_version_is_one_number_everywhere() -> None:
    done = subprocess.run([sys.executable, "-m", "hedgerow", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"hedgerow {hedgerow.__version__}"
    assert hedgerow.__version__ == importlib.metadata.version("hedgerow")  # pyproject.toml
    assert hedgerow.__version__ == agent.AGENT_VERSION  # what devices report


def test_make_targets_the_examples_name_exist() -> None:
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+):", (ROOT / "Makefile").read_text(), re.M))
    named = {(path.name, target) for path in (ROOT / "examples").rglob("*.y*ml")
             for target in re.findall(r"`make ([A-Za-z0-9_.-]+)", path.read_text())}
    assert named, "the examples name no make target any more: drop this test"
    assert {(f, t) for f, t in named if t not in targets} == set()
