"""Containers as the agent loop's second runtime: a real agent, a real dockerd."""

from __future__ import annotations

import hashlib
import pathlib
import socket
import subprocess
import uuid

import docker

from hedgerow.core import container
from tests.agent_docker.agent_support import DockerAgent, SocketProxy, cc, pc
from tests.support.wait import wait_for


def test_create_noop_update_limits_ipc_logs_orphans_and_removal(
    dagent: DockerAgent, docker_client: docker.DockerClient,
) -> None:
    # An orphan (our labels and name, no desired state wants it) and a stranger.
    orphan = docker_client.containers.create(
        "hedgerow/busybox:latest", ["sleep", "1000"],
        name=container.render_container_name(dagent.thing, "com.example.Gone"),
        labels={container.LABEL_THING: dagent.thing,
                container.LABEL_COMPONENT: "com.example.Gone"})
    stranger = docker_client.containers.create(
        "hedgerow/busybox:latest", ["sleep", "1000"], name=f"unlabelled-{dagent.thing}")
    dagent.start()
    web = dagent.deploy(cc("com.example.Web", command=[
        "/bin/sh", "-c", "echo hello-from-container; trap 'exit 0' TERM; sleep 1000 & wait"]))
    dagent.wait_states({"com.example.Web": "RUNNING"})
    wait_for(lambda: dagent.outcome(web) == "SUCCEEDED", 10, "SUCCEEDED")
    first = dagent.container("com.example.Web")
    assert first.status == "running"
    assert first.attrs["HostConfig"]["RestartPolicy"]["Name"] == "no"

    # orphans go, strangers stay
    wait_for(lambda: not any(c.id == orphan.id for c in dagent.containers()), 10, "orphan")
    assert docker_client.containers.get(str(stranger.id)).status == "created"

    # unchanged: the same container across passes
    dagent.passes(3)
    assert dagent.container("com.example.Web").id == first.id

    # logs get works for a container as for a process
    out = str(wait_for(lambda: (r := dagent.cli("logs", "get", "com.example.Web"))
                       .returncode == 0 and "hello-from-container" in r.stdout and r.stdout,
                       30, "logs"))  # each poll a CLI interpreter: 6.8 s under load
    assert out.splitlines()[0][:4].isdigit()  # timestamped like process logs

    # spec change: replaced; limits and the IPC folder visible in docker inspect
    dagent.deploy(cc("com.example.Web", "1.1.0", mountIpcSocket=True,
                     limits={"memory": "64Mi", "cpus": 0.5}))
    wait_for(lambda: dagent.container_id("com.example.Web") not in (None, first.id)
             and dagent.states() == {"com.example.Web": "RUNNING"}, 15, "replacement")
    second = dagent.container("com.example.Web")
    assert second.attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert second.attrs["HostConfig"]["NanoCpus"] == 500_000_000
    mounts = {m["Destination"]: m for m in second.attrs["Mounts"]}
    assert mounts["/run/hedgerow"]["Source"] == str(dagent.root / "ipc")
    assert mounts["/run/hedgerow"]["RW"] is False
    assert len(dagent.containers()) == 1
    # a socket made after the container started is visible inside (folder bind): as
    # when the agent restarts, the served socket is replaced by a new one
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    (dagent.root / "ipc" / "ipc.sock").unlink()
    server.bind(str(dagent.root / "ipc" / "ipc.sock"))
    try:
        code, _ = second.exec_run(["/bin/sh", "-c", 'test -S "$HEDGEROW_IPC_SOCKET"'])
        assert code == 0
    finally:
        server.close()

    # removal
    dagent.deploy()
    wait_for(lambda: not dagent.containers(), 15, "removal")
    dagent.wait_states({})
    assert docker_client.containers.get(str(stranger.id)).status == "created"


def test_adoption_after_kill9_keeps_the_same_container(dagent: DockerAgent) -> None:
    dagent.start()
    dagent.deploy(cc("com.example.Keep"))
    dagent.wait_states({"com.example.Keep": "RUNNING"})
    before = dagent.container("com.example.Keep")
    dagent.kill9()
    assert dagent.container("com.example.Keep").status == "running"  # Docker keeps it
    dagent.start()
    dagent.passes(3)
    assert dagent.states() == {"com.example.Keep": "RUNNING"}
    after = dagent.container("com.example.Keep")
    assert after.id == before.id
    assert after.attrs["State"]["StartedAt"] == before.attrs["State"]["StartedAt"]
    assert len(dagent.containers()) == 1


def test_a_crashing_container_is_restarted_up_to_broken(dagent: DockerAgent) -> None:
    dagent.start()
    crash = dagent.deploy(
        cc("com.example.Crash", command=["/bin/sh", "-c", "sleep 0.3; exit 3"]),
        failure_handling="DO_NOTHING")
    # Three restarts on the agent's backoff: 9 s of the 20 once allowed, under load.
    wait_for(lambda: dagent.states() == {"com.example.Crash": "BROKEN"}, 45, "BROKEN")
    wait_for(lambda: dagent.outcome(crash) == "FAILED", 15, "FAILED")
    crashed = dagent.container("com.example.Crash")
    assert crashed.attrs["RestartCount"] == 0  # Docker did not restart it: the agent did
    assert len(dagent.containers()) == 1       # restarted in place, never duplicated
    assert "exited with 3" in dagent.status()["components"][0]["message"]


def test_running_waits_for_the_health_check(dagent: DockerAgent) -> None:
    dagent.start()
    dagent.deploy(cc("com.example.Health", command=[
        "/bin/sh", "-c", "sleep 2; touch /tmp/ok; trap 'exit 0' TERM; sleep 1000 & wait"],
        healthCheck={"command": ["test", "-f", "/tmp/ok"], "intervalSeconds": 1,
                     "retries": 30}))
    wait_for(lambda: dagent.states() == {"com.example.Health": "STARTING"}, 10, "STARTING")
    assert dagent.container("com.example.Health").status == "running"
    dagent.wait_states({"com.example.Health": "RUNNING"}, 15)
    health = dagent.container("com.example.Health").attrs["State"]["Health"]["Status"]
    assert health == "healthy"


def test_image_archive_is_verified_loaded_and_collected(
    dagent: DockerAgent, docker_client: docker.DockerClient, images: list[str],
) -> None:
    ref = f"hedgerow-test/archived-{uuid.uuid4().hex[:8]}:1"
    images.append(ref)
    archive = dagent.home / "image.tar"
    docker_client.images.get("hedgerow/busybox:latest").tag(ref)
    subprocess.run(["docker", "save", "-o", str(archive), ref], check=True)
    docker_client.images.remove(ref)  # the agent must load it
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    dagent.start()
    first = dagent.deploy(cc("com.example.Arch", image=ref,
                             imageArchive={"uri": archive.as_uri(), "sha256": digest}))
    dagent.wait_states({"com.example.Arch": "RUNNING"}, 20)
    wait_for(lambda: dagent.outcome(first) == "SUCCEEDED", 10, "SUCCEEDED")
    good = dagent.container("com.example.Arch")
    docker_client.images.get(ref)  # loaded

    # a mismatching digest: refused in PREPARE, the deployment fails, the old one runs
    bad = dagent.home / "bad.tar"
    bad.write_bytes(archive.read_bytes() + b"tampered")
    other = f"hedgerow-test/archived-{uuid.uuid4().hex[:8]}:2"
    claimed = hashlib.sha256(b"what the recipe claims").hexdigest()
    second = dagent.deploy(cc("com.example.Arch", "2.0.0", image=other,
                              imageArchive={"uri": bad.as_uri(), "sha256": claimed}))
    wait_for(lambda: dagent.outcome(second) in ("ROLLED_BACK", "FAILED"), 15, "failure")
    assert "sha256" in dagent.status()["deployment"]["reason"]
    dagent.passes(2)
    assert dagent.container("com.example.Arch").id == good.id
    assert dagent.states() == {"com.example.Arch": "RUNNING"}

    # removed from the desired state: container and the image it loaded are collected
    dagent.deploy(pc("com.example.Proc"))
    wait_for(lambda: not dagent.containers(), 15, "removal")
    wait_for(lambda: not docker_client.images.list(name=ref.split(":")[0]), 15, "image GC")
    docker_client.images.get("hedgerow/busybox:latest")  # never ours to collect


def test_failed_container_update_rolls_back_to_the_previous_spec(dagent: DockerAgent) -> None:
    dagent.start()
    good = dagent.deploy(cc("com.example.Roll"))
    # Wait for *this* revision: until the agent has judged it, the status still reports
    # the empty start-up revision, which would be the rollback target instead.
    wait_for(lambda: dagent.outcome(good) == "SUCCEEDED", 15, "SUCCEEDED")
    old = dagent.container("com.example.Roll").attrs["Config"]
    bad = dagent.deploy(cc("com.example.Roll", "2.0.0", command=["/bin/sh", "-c", "exit 7"]))
    wait_for(lambda: dagent.outcome(bad) == "ROLLED_BACK", 25, "ROLLED_BACK")
    assert dagent.status()["deployment"]["rolledBackTo"] == good.revision
    # The previous recipe again (a new record, so a new per-component auth token).
    wait_for(lambda: dagent.states() == {"com.example.Roll": "RUNNING"}
             and dagent.label("com.example.Roll", container.LABEL_VERSION) == "1.0.0",
             30, "the previous spec running again")
    assert dagent.container("com.example.Roll").attrs["Config"]["Entrypoint"] == \
        old["Entrypoint"]


def test_processes_carry_on_while_dockerd_is_unreachable(
    dagent: DockerAgent, docker_client: docker.DockerClient,
) -> None:
    proxy = SocketProxy(pathlib.Path(dagent.home / "docker.sock"))
    proxy.start()
    try:
        dagent.start(docker_host=f"unix://{proxy.path}")
        dagent.deploy(pc("com.example.P1"), cc("com.example.C"))
        dagent.wait_states({"com.example.P1": "RUNNING", "com.example.C": "RUNNING"})
        first = dagent.container("com.example.C").id

        proxy.stop()  # dockerd gone, as far as this agent can tell
        dagent.deploy(pc("com.example.P1"), pc("com.example.P2"),
                      cc("com.example.C", "1.1.0", env={"V": "2"}))
        wait_for(lambda: dagent.states().get("com.example.P2") == "RUNNING", 15, "P2")
        wait_for(lambda: dagent.status().get("health") == "UNHEALTHY", 10, "UNHEALTHY")
        report = {c["name"]: c for c in dagent.status()["components"]}
        assert "container runtime unavailable" in report["com.example.C"]["message"]
        assert dagent.container("com.example.C").id == first  # left alone meanwhile

        proxy.start()  # back: the loop converges
        wait_for(lambda: dagent.container_id("com.example.C") not in (None, first)
                 and dagent.states() == {"com.example.P1": "RUNNING",
                                         "com.example.P2": "RUNNING",
                                         "com.example.C": "RUNNING"}, 40, "convergence")
        wait_for(lambda: dagent.status().get("health") == "HEALTHY", 10, "HEALTHY")
        assert dagent.container("com.example.C").labels[container.LABEL_VERSION] == "1.1.0"
    finally:
        proxy.stop()
