"""Building hedgerow-gate on the device it runs on.

The gate (gate/gate.c) is machine code for one architecture and, on x86_64, for no libc
at all; a wheel that carried a copy would claim `py3-none-any` while running on one kind
of machine only. So the wheel ships the source and the device compiles it once, at
install (`hedgerow agent build-gate`, or `make gate` in a checkout). Without it the agent
uses setpriv (see process.py), so a device with no C compiler still works.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import platform
import subprocess
import tempfile

SOURCE = pathlib.Path(__file__).with_name("gate") / "gate.c"
# Where the agent looks first (process.py: beside the package, unless $HEDGEROW_GATE).
DEFAULT_OUTPUT = SOURCE.with_name("hedgerow-gate")
# Freestanding on x86_64 (no libc: nothing to load at each start); a static program
# elsewhere, where gate.c uses the C library's system call wrappers.
_FREESTANDING = ["-nostdlib", "-ffreestanding", "-fno-stack-protector", "-fno-builtin"]


class GateBuildError(RuntimeError):
    pass


def render_command(machine: str, source: pathlib.Path, output: pathlib.Path,
                   cc: str = "cc", *, hosted: bool = False) -> list[str]:
    """The compiler command for ``machine`` (as ``uname -m`` names it); ``hosted``: the
    C-library build even on x86_64 (the tests check both variants)."""
    mode = (["-DHEDGEROW_GATE_HOSTED"] if hosted else
            _FREESTANDING if machine == "x86_64" else [])
    return [cc, "-O2", "-Wall", "-Wextra", "-Werror", "-static", *mode,
            "-o", str(output), str(source)]


def apply_build(output: pathlib.Path = DEFAULT_OUTPUT, cc: str = "cc") -> pathlib.Path:
    """Compile the gate into ``output``: built beside it under a name nobody can guess,
    made 0755, then renamed over it, so the agent (root) never runs a half-written or
    foreign file from that path."""
    output = output.absolute()
    fd, tmp_name = tempfile.mkstemp(prefix=".hedgerow-gate.", dir=output.parent)
    os.close(fd)
    tmp = pathlib.Path(tmp_name)
    try:
        try:
            proc = subprocess.run(render_command(platform.machine(), SOURCE, tmp, cc),
                                  capture_output=True, text=True, timeout=120, check=False)
        except FileNotFoundError:
            raise GateBuildError(f"no C compiler {cc!r} on this device: the agent will use "
                                 "setpriv (each step start costs ~1.3 ms more CPU)") from None
        if proc.returncode != 0:
            raise GateBuildError(f"{cc} could not build {SOURCE}:\n{proc.stderr.strip()}")
        tmp.chmod(0o755)
        tmp.replace(output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return output
