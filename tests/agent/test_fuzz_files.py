"""The agent's file handling against components that plant hostile things, at random
(fixed seed): links to root's files and folders, link loops, FIFOs, sparse 20 GiB
files, deep trees and racing loops that swap names, in their work folders and — where
they are refused — in their artifact views, unpack folders, the exit codes' folder
and the logs; stale hostile entries (left as by an older version, planted as root) in
the artifact folders; restarts and kill -9 of the agent in between. After every round
the agent answers and goes on passing, root's files are as they were, and in the end
every process, work folder and cgroup of the components is gone."""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import random
import tarfile
import time

from hedgerow.agent import control
from hedgerow.core import component

from .conftest import THING, AgentProcess, pids_with_marker, rc, wait_for
from .test_hostile import NOBODY, Victim

SEED = 20261203
ROUNDS = 6

# What a component's steps do, as nobody; {v} is the victim's folder.
ACTIONS = [
    "ln -sf {v}/victim .hedgerow-exit-$HEDGEROW_INSTANCE",
    "mkfifo .hedgerow-exit-$HEDGEROW_INSTANCE",
    "mkfifo fifo$$",
    "truncate -s 20G huge$$",
    "ln -sfn {v}/etc etc; ln -sf {v}/secret secret",
    "ln -s loop2 loop1; ln -s loop1 loop2; ln -s . self",
    "d=deep; for i in $(seq 40); do d=$d/d; done; mkdir -p $d; ln -s {v} $d/v",
    "(while :; do ln -sfn {v}/etc swap; rm -f swap; mkfifo swap; rm -f swap; done) &",
    "ln -sf {v}/victim {artifacts:path}/.tool.txt.tmp",
    "ln -sf {v}/secret {artifacts:path}/tool.txt",
    "ln -sfn {v}/etc {artifacts:decompressedPath}/.bundle.tmp",
    "mkfifo $HEDGEROW_ROOT/state/exits/$HEDGEROW_INSTANCE",
    "ln -sf {v}/victim $HEDGEROW_ROOT/logs/$HEDGEROW_COMPONENT.log",
    "head -c 200000 /dev/zero | tr '\\0' x",
    "exec 0</dev/null; setsid env -i /bin/sleep 300 &",
    "mkdir many; cd many; seq 3000 | xargs touch; cd ..",
]


def _script(rng: random.Random, victim: Victim, last: str) -> str:
    steps = [a.replace("{v}", str(victim.folder))
             for a in rng.sample(ACTIONS, rng.randint(2, 6))]
    return "\n".join([*(f"{{ {s}\n}} 2>/dev/null" for s in steps), last])


def _plant_stale(rng: random.Random, root: pathlib.Path, name: str, victim: Victim) -> None:
    """What an older agent let a component leave in its artifact folders."""
    for base in ("artifacts", "artifacts-unarchived"):
        folder = root / base / name / "1.0.0"
        folder.mkdir(parents=True, exist_ok=True)
        os.chown(folder, NOBODY.pw_uid, NOBODY.pw_gid)
        choice = rng.randrange(3)
        target = folder / (".tool.txt.tmp" if choice == 0 else "tool.txt" if choice == 1
                           else "bundle")
        if target.is_symlink() or target.exists():
            continue
        if choice == 2:
            target.symlink_to(victim.dir)
        elif rng.random() < 0.5:
            target.symlink_to(victim.file if choice == 0 else victim.secret)
        else:
            os.mkfifo(target)


def test_hostile_files_never_hang_crash_or_leak_the_agent(agent: AgentProcess) -> None:
    rng = random.Random(SEED)
    victim = Victim(agent.root.parent)
    sources = agent.root.parent / "sources"
    sources.mkdir()
    tool = sources / "tool.txt"
    tool.write_text("tool\n")
    bundle = sources / "bundle.tar.gz"
    with tarfile.open(bundle, "w:gz") as tf:
        info = tarfile.TarInfo("in/bundle.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"ok\n"))
    artifacts = [
        component.Artifact(uri=f"file://{tool}",
                           sha256=hashlib.sha256(tool.read_bytes()).hexdigest()),
        component.Artifact.model_validate(
            {"uri": f"file://{bundle}", "unarchive": "TAR",
             "sha256": hashlib.sha256(bundle.read_bytes()).hexdigest()})]
    names = [f"z{i}" for i in range(4)]
    for round_ in range(ROUNDS):
        chosen = rng.sample(names, rng.randint(1, len(names)))
        for name in chosen:
            if rng.random() < 0.3 and not (agent.root / "work" / name).exists():
                _plant_stale(rng, agent.root, name, victim)
        comps = []
        for name in chosen:
            last = rng.choice(["sleep 300", "exit 0", "exit 7", "kill -9 $$", "sleep 1"])
            life = {"run": {"script": _script(rng, victim, last)}}
            if rng.random() < 0.5:
                life["install"] = {"script": _script(rng, victim, rng.choice(
                    ["exit 0", "exit 0", "exit 1"]))}
            comps.append(rc(name, lifecycle=component.Lifecycle.model_validate(life),
                            artifacts=artifacts, configuration={"round": round_}))
        agent.deploy(*comps, failure_handling="DO_NOTHING")
        wait_for(lambda c=chosen: set(agent.states()) == set(c), 20,
                 f"round {round_}: {chosen} recorded (last: {agent.states()})")
        time.sleep(rng.uniform(0.5, 2.0))
        if rng.random() < 0.4:
            agent.kill9()
            agent.start()
        _check(agent, victim, f"round {round_}")
    agent.deploy()
    wait_for(lambda: agent.states() == {}, 30, "every component removed")
    wait_for(lambda: not pids_with_marker(agent.root), 15, "no component process left")
    wait_for(lambda: not list((agent.root / "work").iterdir()), 10, "work folders deleted")
    wait_for(lambda: not [p for p in pathlib.Path(f"/sys/fs/cgroup/cpu/hedgerow/{THING}")
                          .glob("*") if p.is_dir()], 10, "no component cgroup left")
    _check(agent, victim, "the end")


def _check(agent: AgentProcess, victim: Victim, when: str) -> None:
    assert agent.proc is not None and agent.proc.poll() is None, f"{when}: agent died"
    before = agent.status().get("time")
    # The agent's answer is timed, not the CLI's: a fresh interpreter importing the CLI
    # took 10 s on a loaded machine (2 cores, 5 test workers), the socket's answer none.
    started = time.monotonic()
    control.request(agent.root / "agent.sock", {"op": "component.list"}, timeout=10)
    assert time.monotonic() - started < 10, f"{when}: the control socket is slow"
    listed = agent.cli("component", "list")
    assert listed.returncode == 0, f"{when}: {listed.stderr}"
    wait_for(lambda: agent.status().get("time") != before, 10, f"{when}: a pass")
    victim.assert_untouched()
    assert "Traceback" not in agent.log.read_text(), f"{when}: the agent logged a crash"
