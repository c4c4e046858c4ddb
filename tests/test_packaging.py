"""What `pip install hedgerow` gets: the sdist and wheel built for real, then opened.

The import names live in core/, controller/, edge-agent/ and streams/, reached through symlinks in
src/hedgerow; these tests show that the sdist holds those real files (not links, not the
test suite, not a gate compiled on the build machine), that a wheel built from that sdist
alone is pure Python and installs and imports, that the installed package compiles the
gate for the device, and that in a checkout tracebacks name the files people edit.
"""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import sys
import tarfile
import traceback
import zipfile

import pytest

from hedgerow.core import semver
from tests.conftest import ROOT

# import name → the folder that holds its real sources
REAL = {"hedgerow/core": ROOT / "core", "hedgerow/controller": ROOT / "controller",
        "hedgerow/agent": ROOT / "edge-agent", "hedgerow/streams": ROOT / "streams"}


def _sources(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.suffix in (".py", ".c") and "__pycache__" not in p.parts}


def _build(*args: str, out: pathlib.Path) -> pathlib.Path:
    # --no-isolation: the test venv has the build backend; an isolated build would fetch
    # it from the index each time.
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "-o", str(out),
                           *args], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [built] = [p for p in out.iterdir() if p.suffix in (".gz", ".whl")
               and p.name.endswith(".tar.gz" if "--sdist" in args else ".whl")]
    return built


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, pathlib.Path]:
    base = tmp_path_factory.mktemp("dist")
    sdist = _build("--sdist", str(ROOT), out=base / "sdist")
    wheel = _build("--wheel", str(sdist), out=base / "wheel")  # from the sdist alone
    return sdist, wheel


def test_the_sdist_holds_the_real_sources_and_nothing_stray(
    dists: tuple[pathlib.Path, pathlib.Path],
) -> None:
    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        members = tar.getmembers()
        links = [m.name for m in members if m.issym() or m.islnk()]
        assert not links, f"links in the sdist: {links}"
        top = f"{sdist.name.removesuffix('.tar.gz')}/"
        names = {m.name.removeprefix(top): m for m in members}
        for package, folder in REAL.items():
            want = _sources(folder)
            assert want, folder
            for rel, data in want.items():
                member = names.get(f"src/{package}/{rel}")
                assert member is not None, f"{folder / rel} is not in the sdist"
                extracted = tar.extractfile(member)
                assert extracted is not None and extracted.read() == data, rel
    stray = [n for n in names if n.startswith("tests/") or "/tests/" in n
             or n.endswith("hedgerow-gate") or "__pycache__" in n]
    assert not stray, f"not for the sdist: {stray}"


def test_the_wheel_is_pure_python_and_ships_the_gate_as_source(
    dists: tuple[pathlib.Path, pathlib.Path],
) -> None:
    _, wheel = dists
    assert wheel.name == "hedgerow-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert "hedgerow/agent/gate/gate.c" in names
    assert not [n for n in names if n.endswith("hedgerow-gate")], "a machine-specific gate"
    assert not [n for n in names if n.startswith("tests/")]
    for package, folder in REAL.items():
        missing = {f"{package}/{rel}" for rel in _sources(folder)} - set(names)
        assert not missing, missing


def test_the_installed_wheel_imports_and_builds_its_gate_on_the_device(
    dists: tuple[pathlib.Path, pathlib.Path], tmp_path: pathlib.Path,
) -> None:
    _, wheel = dists
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--target", str(site), str(wheel)], check=True, timeout=120,
                   capture_output=True)
    # The installed copy comes first (its dependencies are the test venv's): every module
    # imports from it, and its build-gate compiles the source it shipped.
    env = {**os.environ, "PYTHONPATH": str(site)}
    check = ("import hedgerow, pkgutil, importlib\n"
             f"assert hedgerow.__file__.startswith({str(site)!r}), hedgerow.__file__\n"
             "for m in pkgutil.walk_packages(hedgerow.__path__, 'hedgerow.'):\n"
             "    if not m.name.endswith('__main__'):  # that one runs the CLI\n"
             "        importlib.import_module(m.name)\n"
             "print('imported')\n")
    done = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr
    done = subprocess.run([sys.executable, "-m", "hedgerow", "agent", "build-gate"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    gate = site / "hedgerow" / "agent" / "gate" / "hedgerow-gate"
    assert done.stdout.strip() == str(gate)
    assert stat.S_IMODE(gate.stat().st_mode) == 0o755
    assert gate.read_bytes()[:4] == b"\x7fELF"
    assert not list(gate.parent.glob(".hedgerow-gate.*"))  # no temp file left behind


def test_a_missing_compiler_is_said_and_nothing_is_left(tmp_path: pathlib.Path) -> None:
    done = subprocess.run([sys.executable, "-m", "hedgerow", "agent", "build-gate",
                           "--out", str(tmp_path / "gate"), "--cc", "no-such-cc"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "no C compiler 'no-such-cc'" in done.stderr and "setpriv" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_tracebacks_in_a_checkout_name_the_files_people_edit() -> None:
    assert pathlib.Path(semver.__file__) == ROOT / "core" / "semver.py"
    with pytest.raises(semver.InvalidVersionError) as raised:
        semver.parse_version("one")
    where = traceback.extract_tb(raised.value.__traceback__)[-1].filename
    assert where == str(ROOT / "core" / "semver.py")
    from hedgerow.agent import control
    from hedgerow.controller import cli
    assert pathlib.Path(control.__file__) == ROOT / "edge-agent" / "control.py"
    assert pathlib.Path(cli.__file__) == ROOT / "controller" / "cli.py"
