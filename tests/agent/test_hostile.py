"""Components as attackers: real `nobody` processes against the real agent (root), doing
what a review did to an earlier version — links planted where the agent writes, a FIFO
where it reads, a daemon that leaves with `setsid env -i`, a NUL byte in the
environment. Each time: the agent is unharmed (it answers, it reports), root's files
are untouched, and the component fails with a clear reason or simply cannot."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import pathlib
import pwd
import signal
import stat
import tarfile
import zipfile

import pydantic
import pytest

from hedgerow.agent import cgroups, layout, process, records
from hedgerow.core import component

from .conftest import THING, AgentProcess, pids_with_marker, rc, wait_for

NOBODY = pwd.getpwnam("nobody")


class Victim:
    """Root-only files the attacks aim at, and a way to prove them untouched."""

    def __init__(self, home: pathlib.Path) -> None:
        self.folder = home / "victim"
        self.folder.mkdir(mode=0o700)
        self.folder.chmod(0o711)  # reachable by name, as /etc is, but not listable
        self.file = self.folder / "victim"
        self.file.write_text("root's file\n")
        self.file.chmod(0o600)
        self.secret = self.folder / "secret"
        self.secret.write_text("root's secret\n")
        self.secret.chmod(0o600)
        self.dir = self.folder / "etc"
        self.dir.mkdir(mode=0o755)
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, tuple[int, int, int, str]]:
        out = {}
        for path in [self.folder, *sorted(self.folder.rglob("*"))]:
            st = path.lstat()
            digest = (hashlib.sha256(path.read_bytes()).hexdigest()
                      if stat.S_ISREG(st.st_mode) else "")
            out[str(path)] = (st.st_mode, st.st_uid, st.st_gid, digest)
        return out

    def assert_untouched(self) -> None:
        assert self.snapshot() == self.before


@pytest.fixture
def victim(agent_home: pathlib.Path) -> Victim:
    return Victim(agent_home)


def _file_artifact(home: pathlib.Path, name: str, data: bytes,
                   **kw: object) -> component.Artifact:
    source = home / "sources" / name
    source.parent.mkdir(exist_ok=True)
    source.write_bytes(data)
    return component.Artifact.model_validate(
        {"uri": f"file://{source}", "sha256": hashlib.sha256(data).hexdigest(), **kw})


def _tar(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _answers(agent: AgentProcess) -> bool:
    """The agent is not hung: its control socket answers and its passes go on."""
    before = agent.status().get("time")  # a restarted agent counts its passes anew
    listed = agent.cli("component", "list")
    return listed.returncode == 0 and wait_for(
        lambda: agent.status().get("time") != before, 10, "another pass")


def test_links_planted_in_the_artifact_view_are_never_followed(
    agent: AgentProcess, victim: Victim,
) -> None:
    # The component tries to plant, in its own view, the links that once made the agent
    # overwrite a root file with the artifact and chmod a root secret to 0444.
    tool = _file_artifact(agent.root.parent, "tool.txt", b"the tool\n")
    payload = _file_artifact(agent.root.parent, "payload.txt", b"payload\n",
                             permission={"read": "ALL"})
    attack = (f"cd {{artifacts:path}}; rm -f tool.txt payload.txt 2>>{{work:path}}/err; "
              f"ln -sf {victim.file} .tool.txt.tmp 2>>{{work:path}}/err; "
              f"ln -sf {victim.secret} payload.txt 2>>{{work:path}}/err; "
              "cat tool.txt > {work:path}/read; sleep 60")
    first = rc("c", attack, artifacts=[tool, payload])
    agent.deploy(first)
    agent.wait_states({"c": "RUNNING"})
    err = agent.root / "work" / "c" / "err"
    wait_for(lambda: err.exists() and len(err.read_text().splitlines()) >= 4, 20, "attempts")
    lines = err.read_text().splitlines()
    assert all("Permission denied" in line for line in lines), lines
    wait_for(lambda: (agent.root / "work" / "c" / "read").read_text() == "the tool\n", 20)

    view = agent.root / "artifacts" / "c" / "1.0.0"
    assert (view.stat().st_uid, view.stat().st_gid) == (0, NOBODY.pw_gid)
    assert view.stat().st_mode & 0o777 == 0o755  # one artifact readable by all
    copy = view / "tool.txt"
    assert (copy.stat().st_uid, copy.stat().st_mode & 0o777) == (NOBODY.pw_uid, 0o400)

    # A view an older agent gave to the component, with the links in it: the agent
    # prepares it again (a new run step, the same version) and makes it anew.
    for entry in view.iterdir():
        entry.unlink()
    os.chown(view, NOBODY.pw_uid, NOBODY.pw_gid)
    (view / ".tool.txt.tmp").symlink_to(victim.file)
    (view / "payload.txt").symlink_to(victim.secret)
    agent.deploy(rc("c", attack.replace("sleep 60", "sleep 61"), artifacts=[tool, payload],
                    configuration={"n": 2}))
    wait_for(lambda: (agent.record("c")["spec"].get("configuration") or {}).get("n") == 2)
    agent.wait_states({"c": "RUNNING"})
    victim.assert_untouched()
    assert view.stat().st_uid == 0
    assert not (view / ".tool.txt.tmp").is_symlink()
    assert (view / "payload.txt").read_bytes() == b"payload\n"
    assert oct((view / "payload.txt").lstat().st_mode & 0o777) == "0o444"
    assert _answers(agent)


def test_the_unpack_staging_cannot_be_swapped_for_a_link(
    agent: AgentProcess, victim: Victim,
) -> None:
    # v1 runs and races, as nobody, to put links where v2's archive is staged and
    # unpacked; the agent then unpacks v2. Nothing may land in, or be given away in,
    # the victim's folder.
    bundle = _file_artifact(agent.root.parent, "bundle.tar.gz",
                            _tar({"bin/run.sh": b"echo v2\n", "data.txt": b"x\n"}),
                            unarchive="TAR")
    unpacked = agent.root / "artifacts-unarchived" / "c"
    race = (f"while :; do for v in 1.0.0 2.0.0; do "
            f"ln -s {victim.dir} {unpacked}/$v 2>/dev/null && echo planted; "
            f"ln -s {victim.dir} {unpacked}/$v/.bundle.tmp 2>/dev/null && echo planted; "
            f"ln -s {victim.dir} {unpacked}/$v/bundle 2>/dev/null && echo planted; "
            f"mkdir {unpacked}/$v/bundle/x 2>/dev/null && echo planted; "
            "done; echo tried; done > {work:path}/planted")
    agent.deploy(rc("c", race, artifacts=[bundle]))
    agent.wait_states({"c": "RUNNING"})
    planted = agent.root / "work" / "c" / "planted"
    # The race has run at least once before v2 comes (on a loaded machine v1 may not
    # have been scheduled yet when it is RUNNING).
    wait_for(lambda: planted.exists() and "tried" in planted.read_text(), 15,
             "v1 racing")
    v2 = rc("c", "cat {artifacts:decompressedPath}/bundle/data.txt > {work:path}/v2; "
                 "sleep 60", version="2.0.0", artifacts=[bundle])
    agent.deploy(v2)
    wait_for(lambda: agent.record("c")["version"] == "2.0.0"
             and agent.states() == {"c": "RUNNING"}, 15, "v2 running")
    out = agent.root / "work" / "c" / "v2"
    wait_for(lambda: out.exists() and out.read_text() == "x\n", 20, "v2 reading its bundle")
    victim.assert_untouched()
    assert not list(victim.dir.iterdir())
    folder = unpacked / "2.0.0" / "bundle"
    assert not folder.is_symlink() and folder.stat().st_uid == 0
    assert (folder / "bin" / "run.sh").stat().st_uid == NOBODY.pw_uid
    tries = planted.read_text().split()
    assert tries and set(tries) == {"tried"}  # it ran, and never planted anything


def test_a_fifo_for_an_exit_code_does_not_hang_the_agent_nor_forge_the_code(
    agent: AgentProcess, victim: Victim,
) -> None:
    # The component knows its marker. It plants FIFOs where exit codes once were read
    # (its work folder) and where they are now (state/exits, root's: refused), links to
    # a root file there too, and a forged "0" — then exits 3 while the agent is away.
    script = ("mkfifo .hedgerow-exit-$HEDGEROW_INSTANCE; "
              f"ln -s {victim.file} .hedgerow-exit-x; "
              "mkfifo $HEDGEROW_ROOT/state/exits/$HEDGEROW_INSTANCE 2>err; "
              "echo 0 2>>err > $HEDGEROW_ROOT/state/exits/$HEDGEROW_INSTANCE; "
              "touch ready; sleep 3; exit 3")
    agent.deploy(rc("c", script), rc("ok"))
    agent.wait_states({"c": "RUNNING", "ok": "RUNNING"})
    work = agent.root / "work" / "c"
    wait_for((work / "ready").exists, 20, "the attempts")
    assert (work / "err").read_text().count("Permission denied") == 2
    agent.kill9()
    agent.start()  # adopts c's process: it is not c's parent any more
    wait_for(lambda: "c: RUNNING -> ERRORED (exited with 3)" in agent.log.read_text(), 15,
             "c's real exit code, as root saw it")
    assert _answers(agent)
    assert agent.states()["ok"] == "RUNNING"
    victim.assert_untouched()
    assert any(stat.S_ISFIFO(p.lstat().st_mode) for p in work.iterdir())  # its own folder


def test_a_daemon_that_leaves_with_setsid_env_i_is_removed_with_its_component(
    agent: AgentProcess,
) -> None:
    daemon_script = ("setsid env -i /bin/sh -c 'echo $$ > {work:path}/daemon.pid; "
                     "exec /bin/sleep 300' & sleep 300")
    agent.deploy(rc("c", daemon_script), rc("other"))
    agent.wait_states({"c": "RUNNING", "other": "RUNNING"})
    pid_file = agent.root / "work" / "c" / "daemon.pid"
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 20)
    daemon = int(pid_file.read_text())
    environ = pathlib.Path(f"/proc/{daemon}/environ").read_bytes()
    assert b"HEDGEROW" not in environ  # no marker to find it by
    assert os.getsid(daemon) == daemon  # its own session and group
    cgroup = pathlib.Path(f"/sys/fs/cgroup/cpu/hedgerow/{THING}/c")
    assert str(daemon) in (cgroup / "cgroup.procs").read_text().split()
    agent.deploy(rc("other"))  # c removed
    agent.wait_states({"other": "RUNNING"})
    wait_for(lambda: not pathlib.Path(f"/proc/{daemon}").exists()
             or pathlib.Path(f"/proc/{daemon}/stat").read_text().split(") ")[1][0] == "Z",
             10, "the daemon gone")
    wait_for(lambda: not cgroup.exists(), 10, "c's cgroup removed")
    assert pathlib.Path(f"/sys/fs/cgroup/cpu/hedgerow/{THING}/other").is_dir()


def test_empty_cgroups_of_removed_components_are_removed_and_other_things_left_alone(
    agent: AgentProcess,
) -> None:
    base = pathlib.Path("/sys/fs/cgroup")
    # Leftovers of earlier runs: a removed component and the shared group of an older
    # version; one with a process in it stays. Another thing's empty folder is its
    # agent's (it may have just made it, to move a process in): left alone.
    leftovers = [base / "cpu" / "hedgerow" / THING / "removed",
                 base / "cpu" / "hedgerow" / THING / "_shared",
                 base / "memory" / "hedgerow" / THING / "removed",
                 base / "freezer" / "hedgerow" / THING / "removed"]  # was paused
    for folder in leftovers:
        folder.mkdir(parents=True, exist_ok=True)
    other = base / "cpu" / "hedgerow" / f"{THING}-other" / "x"
    other.mkdir(parents=True, exist_ok=True)
    busy = base / "cpu" / "hedgerow" / THING / "busy" / "y"
    busy.mkdir(parents=True, exist_ok=True)
    sleeper = os.posix_spawn("/bin/sleep", ["sleep", "60"], {})
    try:
        (busy / "cgroup.procs").write_text(str(sleeper))
        agent.stop()
        agent.start()
        for folder in leftovers:
            assert not folder.exists(), folder
        assert other.is_dir()  # another thing's: not ours to remove
        assert busy.is_dir()  # a process lives there: not ours to remove
        agent.deploy(rc("a"), rc("b"))
        agent.wait_states({"a": "RUNNING", "b": "RUNNING"})
        agent.deploy(rc("a"))
        agent.wait_states({"a": "RUNNING"})
        wait_for(lambda: not (base / "cpu" / "hedgerow" / THING / "b").exists(), 10,
                 "b's cgroup removed with b")
    finally:
        os.kill(sleeper, signal.SIGKILL)
        os.waitpid(sleeper, 0)
        for folder in (busy, busy.parent, other, other.parent):
            wait_for(lambda f=folder: _rmdir(f), 5)


def _rmdir(folder: pathlib.Path) -> bool:
    try:
        folder.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def test_a_nul_byte_is_refused_by_the_schema_naming_the_field() -> None:
    with pytest.raises(pydantic.ValidationError, match=r"run\.setenv[\s\S]*GREETING: holds a NUL"):
        component.Lifecycle.model_validate(
            {"run": {"script": "true", "setenv": {"GREETING": "a\0b"}}})
    with pytest.raises(pydantic.ValidationError, match=r"setenv[\s\S]*not an environment"):
        component.Lifecycle.model_validate({"setenv": {"A=B": "x"}, "run": {"script": "x"}})
    with pytest.raises(pydantic.ValidationError, match=r"run\.script[\s\S]*NUL"):
        component.Lifecycle.model_validate({"run": {"script": "echo \0"}})
    with pytest.raises(pydantic.ValidationError, match=r"uri[\s\S]*control character"):
        component.Artifact.model_validate({"uri": "file:///a/b\x01c"})
    with pytest.raises(pydantic.ValidationError, match=r"env[\s\S]*NUL"):
        component.Container.model_validate({"image": "busybox:1", "env": {"A": "\0"}})
    # Lines and tabs are what scripts and values are made of: accepted.
    component.Lifecycle.model_validate(
        {"run": {"script": "echo a\n\techo b", "setenv": {"LINES": "a\nb"}}})


def test_a_component_that_cannot_be_spawned_is_errored_at_once_and_the_pass_goes_on(
    agent: AgentProcess,
) -> None:
    # A NUL byte arrives through configuration (free-form JSON) into setenv and into a
    # script; a document with one in the recipe itself is rejected as a whole.
    bad = rc("bad", "echo {configuration:/word}; sleep 60", configuration={"word": "a\0b"})
    worse = rc("worse", lifecycle=component.Lifecycle(
        setenv={"GREETING": "{configuration:/word}"}, run=component.Step(script="sleep 60")),
        configuration={"word": "x\0y"})
    agent.deploy(bad, worse, rc("good"))
    wait_for(lambda: agent.states().get("good") == "RUNNING"
             and agent.states().get("bad") in ("ERRORED", "BROKEN")
             and agent.states().get("worse") in ("ERRORED", "BROKEN"), 5,
             f"good RUNNING, bad and worse ERRORED at once (last: {agent.states()})")
    messages = {c["name"]: c.get("message", "") for c in agent.status()["components"]}
    assert "{configuration:/word}" in messages["bad"] and "NUL" in messages["bad"]
    assert "setenv GREETING" in messages["worse"] and "NUL" in messages["worse"]
    assert agent.status()["health"] == "UNHEALTHY"
    # In the recipe itself: the document is refused, naming the field; nothing changes.
    desired = agent.root / "desired" / "desired.json"
    text = desired.read_text()
    desired.write_text(text.replace('"script":"sleep 60"', '"script":"sleep \\u0000"', 1))
    wait_for(lambda: agent.outcome() == "REJECTED", 10, "the document rejected")
    reason = agent.status()["deployment"]["reason"]
    assert "script" in reason and "NUL" in reason
    assert agent.states()["good"] == "RUNNING"


def test_two_archives_with_one_folder_are_refused_naming_both(tmp_path: pathlib.Path) -> None:
    zip_art = {"uri": "file:///srv/bundle.zip", "unarchive": "ZIP"}
    tar_art = {"uri": "file:///srv/bundle.tar.gz", "unarchive": "TAR"}
    with pytest.raises(pydantic.ValidationError,
                       match=r"bundle\.zip and file:///srv/bundle\.tar\.gz would both unpack "
                             r"to \{artifacts:decompressedPath\}/bundle/"):
        component.Manifest.model_validate(
            {"lifecycle": {"run": {"script": "x"}}, "artifacts": [zip_art, tar_art]})
    with pytest.raises(pydantic.ValidationError, match=r"same file name 'tool'"):
        component.Manifest.model_validate(
            {"lifecycle": {"run": {"script": "x"}},
             "artifacts": [{"uri": "file:///a/tool"},
                           {"uri": "https://h/tool", "sha256": "0" * 64}]})
    # Not one an archive: both may share a stem (two files, no folders).
    component.Manifest.model_validate(
        {"lifecycle": {"run": {"script": "x"}},
         "artifacts": [{"uri": "file:///srv/bundle.zip"}, {"uri": "file:///srv/bundle.tar.gz"}]})


def test_a_device_refuses_clashing_archives_and_names_an_escaping_archive(
    agent: AgentProcess,
) -> None:
    home = agent.root.parent
    one = _file_artifact(home, "bundle.tar.gz", _tar({"a": b"1"}), unarchive="TAR")
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as zf:
        zf.writestr("b", "2")
    two = _file_artifact(home, "bundle.zip", data.getvalue(), unarchive="ZIP")
    doc = agent.deploy(rc("c", artifacts=[one, two]), failure_handling="DO_NOTHING")
    wait_for(lambda: agent.outcome(doc) == "FAILED", 10)
    reason = agent.status()["deployment"]["reason"]
    assert "bundle.tar.gz" in reason and "bundle.zip" in reason and "rename one" in reason
    evil = _file_artifact(home, "evil.tar.gz", _tar({"../../escape": b"x"}), unarchive="TAR")
    doc = agent.deploy(rc("c", artifacts=[evil]), failure_handling="DO_NOTHING")
    wait_for(lambda: agent.outcome(doc) == "FAILED", 10)
    reason = agent.status()["deployment"]["reason"]
    assert "evil.tar.gz: archive member '../../escape' escapes the extraction folder" in reason
    assert not list(agent.root.glob("**/escape"))
    assert not pids_with_marker(agent.root)



def test_a_spawn_the_kernel_refuses_is_a_failed_step_not_an_exception(
    agent_home: pathlib.Path,
) -> None:
    # Past every schema (a bug, a new way in): posix_spawn itself refuses the NUL.
    lay = layout.Layout(agent_home / "root")
    lay.ensure()
    runtime = process.ProcessRuntime(lay, THING, cgroups.Cgroups(group=f"hedgerow/{THING}"))
    comp = rc("c")
    rec = records.Record(name="c", version="1.0.0", spec_hash="x", spec=comp.to_dict(),
                         instance="i")
    step = component.Step(script="true")

    async def run() -> process.StepResult:
        return await runtime.run_step(rec, comp, "install", step, "true",
                                      {"BAD": "a\0b"}, None, lambda ref: None)

    result = asyncio.run(run())
    assert not result.ok
    assert result.message.startswith("install could not start:")
    assert "null" in result.message
