"""hedgerow-gate, the first program of every step the agent starts as another user: it
waits at its gate, drops every privilege, then runs the step. Both builds (freestanding
on x86_64, the hosted one other machines get) and the setpriv fallback are exercised."""

from __future__ import annotations

import contextlib
import os
import pathlib
import platform
import pwd
import signal
import subprocess
from collections.abc import Iterator

import pytest

from hedgerow.agent import gatebuild, process
from hedgerow.core import component

from .conftest import THING, AgentProcess, rc, wait_for

SOURCE = pathlib.Path(process.__file__).with_name("gate") / "gate.c"
NOBODY = pwd.getpwnam("nobody")


@pytest.fixture(params=["built", "hosted"])
def gate(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> pathlib.Path:
    if request.param == "built":
        built = SOURCE.with_name("hedgerow-gate")
        assert os.access(built, os.X_OK), (
            f"{built} is missing: run `make gate` (hedgerow agent build-gate)")
        if platform.machine() == "x86_64":  # freestanding: no libc to load
            assert b"GLIBC" not in built.read_bytes()
        return built
    hosted = tmp_path / "hedgerow-gate-hosted"
    subprocess.run(gatebuild.render_command(platform.machine(), SOURCE, hosted, hosted=True),
                   check=True)
    return hosted


# Supplementary groups (disk, sudo) the spawner holds: the step must not keep them.
SPAWNER_GROUPS = [6, 27]


class Gated:
    """The gate program started as the agent starts it: posix_spawn, a pipe on fd 3,
    from a process with supplementary groups and one more open descriptor (fd 7, which
    must not reach the step either)."""

    def __init__(self, gate: pathlib.Path, *argv: str) -> None:
        gate_r, self.gate_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        held = os.open("/etc/hostname", os.O_RDONLY)  # inheritable, as a parent may leave
        os.setgroups(SPAWNER_GROUPS)
        try:
            self.pid = os.posix_spawn(
                str(gate), [str(gate), *argv], {"PATH": "/usr/bin:/bin"},
                file_actions=[(os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2),
                              (os.POSIX_SPAWN_DUP2, gate_r, 3), (os.POSIX_SPAWN_DUP2, held, 7)])
        finally:
            os.setgroups([])
            for fd in (gate_r, out_w, err_w, held):
                os.close(fd)
        self.out = os.fdopen(out_r, "rb")
        self.err = os.fdopen(err_r, "rb")

    def is_waiting(self) -> bool:
        return os.waitpid(self.pid, os.WNOHANG) == (0, 0)

    def is_blocked_at_gate(self) -> bool:
        """Asleep in a read of a pipe on fd 3 (its gate), as the kernel shows it: proof
        that it got as far as waiting, rather than a guess that it had time to go on."""
        try:
            wchan = pathlib.Path(f"/proc/{self.pid}/wchan").read_text()
            fd = pathlib.Path(f"/proc/{self.pid}/syscall").read_text().split()[1]
        except (OSError, IndexError):
            return False
        return "pipe_read" in wchan and fd == "0x3"

    def open_gate(self) -> None:
        with contextlib.suppress(BrokenPipeError):  # a usage error exits before the gate
            os.write(self.gate_w, b"\n")
        os.close(self.gate_w)

    def close_gate(self) -> None:
        os.close(self.gate_w)

    def finish(self) -> tuple[int, str, str]:
        out, err = self.out.read().decode(), self.err.read().decode()
        code = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        self.out.close()
        self.err.close()
        return code, out, err


def _status(text: str) -> dict[str, str]:
    """/proc/PID/status as {field: value with single spaces}."""
    return {k: " ".join(v.split()) for k, _, v in
            (line.partition(":") for line in text.splitlines()) if k}


@pytest.fixture
def work(tmp_path: pathlib.Path) -> pathlib.Path:
    tmp_path.chmod(0o711)  # as the agent's work/ folder: nobody may pass, not list
    return tmp_path / "work-a"


def test_waits_at_its_gate_then_runs_the_step_with_nothing_of_root(
    gate: pathlib.Path, work: pathlib.Path,
) -> None:
    proc = Gated(gate, str(NOBODY.pw_uid), str(NOBODY.pw_gid), str(work), "-",
                 "/bin/sh", "-c", "pwd; ls /proc/self/fd | tr '\\n' ' '; echo; "
                 "cat /proc/self/status")
    wait_for(proc.is_blocked_at_gate, 10, "the gate to block on its pipe")
    assert proc.is_waiting()  # nothing ran yet, not even its folder
    assert not work.exists()
    assert os.readlink(f"/proc/{proc.pid}/exe") == str(gate.resolve())
    assert _status(pathlib.Path(f"/proc/{proc.pid}/status").read_text())["Uid"] == "0 0 0 0"
    proc.open_gate()
    code, out, err = proc.finish()
    assert code == 0, err
    cwd, fds, out = out.split("\n", 2)
    assert cwd == str(work)  # made, its user's, private, and entered
    assert fds.split() == ["0", "1", "2", "3"]  # 3: the listing's own; no gate, no fd 7
    assert (work.stat().st_uid, work.stat().st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert work.stat().st_mode & 0o777 == 0o700
    status = _status(out)
    uid, gid = NOBODY.pw_uid, NOBODY.pw_gid
    assert status["Uid"] == f"{uid} {uid} {uid} {uid}"  # real, effective, saved, fs
    assert status["Gid"] == f"{gid} {gid} {gid} {gid}"
    assert status["Groups"] == ""
    assert int(status["CapPrm"], 16) == int(status["CapEff"], 16) == 0


def test_a_closed_gate_runs_nothing(gate: pathlib.Path, work: pathlib.Path) -> None:
    marker = work.parent / "ran"
    proc = Gated(gate, str(NOBODY.pw_uid), str(NOBODY.pw_gid), str(work), "-", "/bin/touch",
                 str(marker))
    proc.close_gate()  # the agent gave up on it (its cgroup could not take it)
    assert proc.finish()[0] == 125
    assert not marker.exists()
    assert not work.exists()


def test_no_pipe_on_fd_3_is_no_gate(gate: pathlib.Path, work: pathlib.Path) -> None:
    marker = work.parent / "ran"
    for fd3 in ("/dev/zero", None):  # readable but no gate; nothing at all
        actions = [(os.POSIX_SPAWN_OPEN, 3, fd3, os.O_RDONLY, 0)] if fd3 else [
            (os.POSIX_SPAWN_CLOSE, 3)]
        pid = os.posix_spawn(str(gate), [str(gate), str(NOBODY.pw_uid), str(NOBODY.pw_gid),
                                         str(work), "-", "/bin/touch", str(marker)], {},
                             file_actions=actions)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 125
    assert not marker.exists()
    assert not work.exists()


def test_an_existing_folder_is_taken_over_and_a_link_is_refused(
    gate: pathlib.Path, work: pathlib.Path,
) -> None:
    work.mkdir(mode=0o755)  # an earlier step's, or one from before a restart
    (work / "state").write_text("kept")
    proc = Gated(gate, str(NOBODY.pw_uid), str(NOBODY.pw_gid), str(work), "-", "/bin/cat",
                 "state")
    proc.open_gate()
    assert proc.finish()[:2] == (0, "kept")
    assert work.stat().st_mode & 0o777 == 0o700
    assert work.stat().st_uid == NOBODY.pw_uid
    elsewhere = work.parent / "elsewhere"
    elsewhere.mkdir()
    link = work.parent / "work-b"
    link.symlink_to(elsewhere)
    proc = Gated(gate, str(NOBODY.pw_uid), str(NOBODY.pw_gid), str(link), "-", "/bin/true")
    proc.open_gate()
    code, _, err = proc.finish()
    assert code == 126
    assert "cannot prepare the work folder" in err
    assert elsewhere.stat().st_uid == 0  # not given away through the link


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["65534", "x", "{work}", "-", "/bin/true"], 127, "usage"),
    (["65534", "4294967295", "{work}", "-", "/bin/true"], 127, "usage"),  # -1: "unchanged"
    (["65534", "65534", "relative", "-", "/bin/true"], 127, "usage"),
    (["65534", "65534", "{work}", "-"], 127, "usage"),
    (["65534", "65534", "{work}", "/bin/true"], 127, "usage"),  # no exit file argument
    (["65534", "65534", "{work}", "exits", "/bin/true"], 127, "usage"),  # not absolute
    (["65534", "65534", "{work}", "-", "/no/such/program"], 127,
     "cannot run the step: errno 2"),
    (["65534", "65534", "{work}", "{work}.exit", "/no/such/program"], 127,
     "cannot run the step: errno 2"),
    (["65534", "65534", "/proc/nope/work", "-", "/bin/true"], 126,
     "cannot prepare the work folder: errno 2"),
])
def test_bad_arguments_and_failures_are_reported(
    gate: pathlib.Path, work: pathlib.Path, argv: list[str], code: int, message: str,
) -> None:
    proc = Gated(gate, *(a.format(work=work) for a in argv))
    proc.open_gate()
    got, _, err = proc.finish()
    assert got == code
    assert message in err


CREDS = ("grep -E '^(Uid|Gid|Groups|CapPrm|CapEff|SigIgn):' /proc/self/status > creds; "
         "sleep 60")


@pytest.fixture(params=["hedgerow-gate", "setpriv"])
def dropping_agent(request: pytest.FixtureRequest,
                   agent: AgentProcess) -> Iterator[tuple[AgentProcess, str]]:
    """The agent restarted with supplementary groups, with its gate or, as on a device
    where it was not built, with setpriv."""
    agent.stop()
    env = {**os.environ, "HEDGEROW_GATE": ""} if request.param == "setpriv" else None
    agent.start(env=env, extra_groups=SPAWNER_GROUPS)
    yield agent, request.param


def test_components_run_as_their_user_in_their_cgroup_either_way(
    dropping_agent: tuple[AgentProcess, str],
) -> None:
    agent, dropper = dropping_agent
    agent.deploy(rc("a", CREDS))
    agent.wait_states({"a": "RUNNING"})
    creds = agent.root / "work" / "a" / "creds"
    wait_for(lambda: creds.exists() and "CapEff" in creds.read_text())
    status = _status(creds.read_text())
    uid, gid = NOBODY.pw_uid, NOBODY.pw_gid
    assert status["Uid"] == f"{uid} {uid} {uid} {uid}"
    assert status["Gid"] == f"{gid} {gid} {gid} {gid}"
    assert status["Groups"] == ""
    assert int(status["CapPrm"], 16) == int(status["CapEff"], 16) == 0
    assert not int(status["SigIgn"], 16) & (1 << (signal.SIGPIPE - 1))  # Python's, not ours
    pid = agent.record("a")["process"]["pid"]
    assert f":/hedgerow/{THING}/a" in pathlib.Path(f"/proc/{pid}/cgroup").read_text()
    # The fallback says so once, with what to do about it.
    assert ("steps drop privileges with setpriv" in agent.log.read_text()) == (
        dropper == "setpriv")


PRELOAD = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((constructor)) static void noted(void) {
    char line[64];
    int fd = open(getenv("PRELOAD_NOTES"), O_WRONLY | O_APPEND);
    if (fd >= 0) write(fd, line, (size_t)snprintf(line, sizeof line, "uid=%d\n", getuid()));
}
"""


def test_a_recipe_environment_never_loads_code_into_root(
    dropping_agent: tuple[AgentProcess, str],
) -> None:
    # setpriv is dynamically linked and runs as root: a recipe's LD_PRELOAD must not
    # reach it. It must reach the step, which runs as its user.
    agent, _ = dropping_agent
    home = agent.root.parent
    (home / "preload.c").write_text(PRELOAD)
    library = home / "preload.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(home / "preload.c")],
                   check=True)
    library.chmod(0o755)
    notes = home / "notes"
    notes.touch(mode=0o666)
    notes.chmod(0o666)
    agent.deploy(rc("a", "sleep 60", lifecycle=component.Lifecycle(
        setenv={"LD_PRELOAD": str(library), "PRELOAD_NOTES": str(notes)},
        run=component.Step(script="sleep 60"))))
    agent.wait_states({"a": "RUNNING"})
    wait_for(lambda: notes.read_text().strip() != "", 20, "the step to load the library")
    assert set(notes.read_text().split()) == {f"uid={NOBODY.pw_uid}"}


@pytest.mark.parametrize(("script", "code"), [("exit 7", 7), ("kill -TERM $$", 143),
                                              ("exec true", 0)])
def test_its_root_half_records_the_exit_code_the_step_cannot_forge(
    gate: pathlib.Path, work: pathlib.Path, script: str, code: int,
) -> None:
    exits = work.parent / "exits"
    exits.mkdir(mode=0o700)  # root's, as state/exits: the step cannot reach it
    proc = Gated(gate, str(NOBODY.pw_uid), str(NOBODY.pw_gid), str(work), str(exits / "m"),
                 "/bin/sh", "-c", f"echo 0 > {exits}/m; {script}")
    proc.open_gate()
    got, _, err = proc.finish()
    assert got == code
    assert "Permission denied" in err  # the forged 0 never lands
    assert (exits / "m").read_text() == f"{code}\n"
    written = (exits / "m").stat()
    assert (written.st_uid, written.st_mode & 0o777) == (0, 0o600)


def test_its_root_half_never_writes_through_a_link(
    gate: pathlib.Path, work: pathlib.Path,
) -> None:
    target = work.parent / "root-file"
    target.write_text("root's\n")
    link = work.parent / "exit-link"
    link.symlink_to(target)
    proc = Gated(gate, str(NOBODY.pw_uid), str(NOBODY.pw_gid), str(work), str(link),
                 "/bin/sh", "-c", "exit 3")
    proc.open_gate()
    assert proc.finish()[0] == 3
    assert target.read_text() == "root's\n"
