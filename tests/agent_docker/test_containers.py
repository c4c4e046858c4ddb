"""ContainerRuntime against the real dockerd: lifecycle, ownership, images, failures."""

from __future__ import annotations

import hashlib
import pathlib
import socket
import time
import uuid

import docker
import docker.errors
import pytest

from hedgerow.agent.containers import Backoff, ContainerRuntime
from hedgerow.agent.dockererrors import PermanentError, TransientError
from hedgerow.core import container
from hedgerow.core.documents import ComponentState
from tests.support import net
from tests.support.wait import wait_for

from .conftest import SLEEPER, ConfigMaker, Made, owned_images

pytestmark = pytest.mark.docker


def _state_of(runtime: ContainerRuntime, component: str) -> ComponentState | None:
    found = [o for o in runtime.observe() if o.component == component]
    assert len(found) <= 1, f"duplicates for {component}: {found}"
    return container.render_component_state(found[0]) if found else None


def _wait_state(runtime: ContainerRuntime, component: str, state: ComponentState,
                timeout: float = 15.0) -> None:
    wait_for(lambda: _state_of(runtime, component) is state, timeout)


def test_apply_creates_a_labelled_running_container(
    runtime: ContainerRuntime, make_config: ConfigMaker, docker_client: docker.DockerClient,
    thing: str,
) -> None:
    config = make_config(version="1.2.3")
    result = runtime.apply(config)
    assert result.action == "created"

    [observed] = runtime.observe()
    assert (observed.name, observed.component, observed.version, observed.spec_hash) == (
        config.name, "com.example.App", "1.2.3", config.spec_hash)
    assert observed.container_id == result.container_id
    assert observed.status == "running" and observed.health == "none"
    assert observed.started_at is not None
    assert container.render_component_state(observed) is ComponentState.RUNNING

    attrs = docker_client.containers.get(config.name).attrs
    labels = attrs["Config"]["Labels"]
    assert {k: v for k, v in labels.items() if k in config.labels} == {
        "hedgerow.dev/thing": thing, "hedgerow.dev/component": "com.example.App",
        "hedgerow.dev/version": "1.2.3", "hedgerow.dev/spec-hash": config.spec_hash,
    }
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "no"
    assert attrs["HostConfig"]["Privileged"] is False


def test_unchanged_spec_is_left_alone_even_across_an_agent_restart(
    runtime: ContainerRuntime, make_config: ConfigMaker, thing: str,
) -> None:
    config = make_config()
    first = runtime.apply(config)
    again = runtime.apply(make_config())
    assert (again.action, again.container_id) == ("unchanged", first.container_id)

    # A new runtime (the agent after kill -9) adopts the container by its labels.
    restarted = ContainerRuntime(docker.from_env, thing=thing)
    try:
        adopted = restarted.apply(make_config())
        assert (adopted.action, adopted.container_id) == ("unchanged", first.container_id)
    finally:
        restarted.close()


def test_a_stopped_container_with_the_same_spec_is_started_in_place(
    runtime: ContainerRuntime, make_config: ConfigMaker,
) -> None:
    config = make_config()
    first = runtime.apply(config)
    assert runtime.stop(config.component, timeout=5)
    assert _state_of(runtime, config.component) is ComponentState.FINISHED  # trap exits 0
    again = runtime.apply(config)
    assert (again.action, again.container_id) == ("started", first.container_id)
    assert _state_of(runtime, config.component) is ComponentState.RUNNING


def test_spec_change_replaces_the_container(
    runtime: ContainerRuntime, make_config: ConfigMaker, docker_client: docker.DockerClient,
) -> None:
    old = runtime.apply(make_config(env={"MODE": "a"}))
    config = make_config(env={"MODE": "b"}, version="1.0.1")
    new = runtime.apply(config)
    assert new.action == "replaced" and new.container_id != old.container_id

    [observed] = runtime.observe()
    assert (observed.container_id, observed.name) == (new.container_id, config.name)
    assert (observed.version, observed.spec_hash) == ("1.0.1", config.spec_hash)
    assert observed.status == "running"
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(old.container_id)
    assert "MODE=b" in docker_client.containers.get(config.name).attrs["Config"]["Env"]


def test_a_failing_update_leaves_the_old_container_running(
    runtime: ContainerRuntime, make_config: ConfigMaker, tmp_path: pathlib.Path,
) -> None:
    old = runtime.apply(make_config())
    # The image cannot be had (its archive fails verification): nothing is stopped.
    archive = tmp_path / "image.tar"
    archive.write_bytes(b"not an image")
    broken_image = make_config(image=f"hedgerow/absent-{uuid.uuid4().hex[:8]}:1",
                               imageArchive={"uri": "file:///image.tar", "sha256": "0" * 64})
    with pytest.raises(PermanentError, match="sha256"):
        runtime.apply(broken_image, archive)
    # Docker rejects the spec at create (below its 6 MB minimum): still nothing stopped.
    with pytest.raises(PermanentError, match="memory"):
        runtime.apply(make_config(limits={"memory": "1Mi"}))

    [observed] = runtime.observe()
    assert (observed.container_id, observed.status) == (old.container_id, "running")


def test_leftovers_of_an_interrupted_update_are_cleaned_up(
    runtime: ContainerRuntime, make_config: ConfigMaker, docker_client: docker.DockerClient,
) -> None:
    config = make_config()
    runtime.apply(config)
    # As if the agent died after creating the replacement under its temporary name.
    leftover = make_config(env={"MODE": "next"})
    kwargs = leftover.create_kwargs()
    kwargs["name"] = f"{config.name}.next"
    docker_client.containers.create(**kwargs)
    assert len(runtime.observe()) == 2

    assert runtime.apply(config).action == "unchanged"
    assert [o.name for o in runtime.observe()] == [config.name]


def test_remove_stops_and_deletes(
    runtime: ContainerRuntime, make_config: ConfigMaker,
) -> None:
    config = make_config()
    runtime.apply(config)
    assert runtime.remove(config.component, timeout=5)
    assert runtime.observe() == []
    assert not runtime.remove(config.component)  # idempotent
    assert not runtime.stop(config.component)


def test_orphan_cleanup_removes_only_our_unwanted_containers(
    runtime: ContainerRuntime, make_config: ConfigMaker, docker_client: docker.DockerClient,
    made: Made, test_image: str,
) -> None:
    runtime.apply(make_config("keep"))
    runtime.apply(make_config("orphan"))
    stranger = f"stranger-{uuid.uuid4().hex[:8]}"
    made.containers.append(stranger)
    docker_client.containers.create(test_image, SLEEPER, name=stranger)
    # Another thing's container on the same daemon: its labels, not ours.
    neighbour = make_config("orphan").create_kwargs()
    neighbour["name"] = f"neighbour-{uuid.uuid4().hex[:8]}"
    neighbour["labels"] = {**neighbour["labels"], container.LABEL_THING: "someone-else"}
    made.containers.append(neighbour["name"])
    docker_client.containers.create(**neighbour)

    assert runtime.remove_orphans({"keep"}, timeout=5) == ["orphan"]
    assert [o.component for o in runtime.observe()] == ["keep"]
    docker_client.containers.get(stranger)
    docker_client.containers.get(neighbour["name"])


def test_a_name_held_by_a_container_we_do_not_own_is_a_permanent_error(
    runtime: ContainerRuntime, make_config: ConfigMaker, docker_client: docker.DockerClient,
    made: Made, test_image: str,
) -> None:
    config = make_config()
    made.containers.append(config.name)
    docker_client.containers.create(test_image, SLEEPER, name=config.name)
    with pytest.raises(PermanentError, match="already in use"):
        runtime.apply(config)
    assert container.LABEL_THING not in docker_client.containers.get(config.name).labels


def test_running_waits_for_a_passing_health_check(
    runtime: ContainerRuntime, make_config: ConfigMaker,
) -> None:
    config = make_config(
        command=["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 2; touch /tmp/ready; "
                 "sleep 1000 & wait"],
        healthCheck={"command": ["test", "-f", "/tmp/ready"], "intervalSeconds": 1,
                     "timeoutSeconds": 1, "retries": 5})
    runtime.apply(config)
    assert _state_of(runtime, config.component) is ComponentState.STARTING
    _wait_state(runtime, config.component, ComponentState.RUNNING)
    [observed] = runtime.observe()
    assert observed.health == "healthy"


def test_an_unhealthy_container_is_errored(
    runtime: ContainerRuntime, make_config: ConfigMaker,
) -> None:
    config = make_config(healthCheck={"command": ["false"], "intervalSeconds": 1,
                                      "timeoutSeconds": 1, "retries": 1})
    runtime.apply(config)
    _wait_state(runtime, config.component, ComponentState.ERRORED)


@pytest.mark.parametrize(("code", "state"), [
    (3, ComponentState.ERRORED), (0, ComponentState.FINISHED),
])
def test_exit_codes_map_to_states(
    runtime: ContainerRuntime, make_config: ConfigMaker, code: int, state: ComponentState,
) -> None:
    config = make_config(command=["/bin/sh", "-c", f"exit {code}"])
    runtime.apply(config)
    _wait_state(runtime, config.component, state)
    [observed] = runtime.observe()
    assert (observed.status, observed.exit_code) == ("exited", code)
    assert observed.finished_at is not None


def test_a_start_failure_is_a_permanent_error_and_errored(
    runtime: ContainerRuntime, make_config: ConfigMaker,
) -> None:
    config = make_config(command=["/no/such/binary"])
    with pytest.raises(PermanentError, match="no such file"):
        runtime.apply(config)
    assert _state_of(runtime, config.component) is ComponentState.ERRORED


def test_limits_are_visible_in_docker_inspect(
    runtime: ContainerRuntime, make_config: ConfigMaker, docker_client: docker.DockerClient,
) -> None:
    config = make_config(limits={"memory": "64Mi", "cpus": 0.5}, readOnlyRootFilesystem=True,
                         user="65534:65534")
    runtime.apply(config)
    host = docker_client.containers.get(config.name).attrs["HostConfig"]
    assert host["Memory"] == 64 * 2**20
    assert host["NanoCpus"] == 500_000_000
    assert host["ReadonlyRootfs"] is True
    assert host["LogConfig"] == {"Type": "json-file",
                                 "Config": {"max-size": "10m", "max-file": "3"}}
    assert docker_client.containers.get(config.name).attrs["Config"]["User"] == "65534:65534"


def test_ports_bind_to_loopback(
    runtime: ContainerRuntime, make_config: ConfigMaker,
) -> None:
    for attempt in range(5):
        port = net.free_port()  # held from other workers until docker-proxy binds it
        config = make_config(
            command=["/bin/sh", "-c", "mkdir -p /tmp/www && echo up > /tmp/www/index.html "
                     "&& exec httpd -f -p 8080 -h /tmp/www"],
            ports=[{"containerPort": 8080, "hostPort": port}])
        try:
            runtime.apply(config)
            break
        except (PermanentError, TransientError) as exc:
            # Free a moment ago, bound since by another worker's server: another port.
            if attempt == 4 or not any(taken in str(exc) for taken in (
                    "already allocated", "address already in use")):
                raise
            runtime.remove(config.component, timeout=5)

    def fetch() -> bytes:
        """The whole answer (headers and body may come in separate reads), or b""."""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
                answer = b""
                while chunk := conn.recv(4096):
                    answer += chunk
                return answer
        except OSError:
            return b""
    assert b"up" in wait_for(fetch)


def test_the_ipc_socket_is_mounted_into_the_container(
    runtime: ContainerRuntime, make_config: ConfigMaker, tmp_path: pathlib.Path,
) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    (tmp_path / "ipc").mkdir()
    server.bind(str(tmp_path / "ipc" / "ipc.sock"))
    server.listen(1)
    try:
        config = make_config(mountIpcSocket=True, command=[
            "/bin/sh", "-c", 'test -S "$HEDGEROW_IPC_SOCKET" && test -S /run/hedgerow/ipc.sock'])
        runtime.apply(config)
        _wait_state(runtime, config.component, ComponentState.FINISHED)
    finally:
        server.close()


def test_logs_are_lines_of_output(
    runtime: ContainerRuntime, make_config: ConfigMaker,
) -> None:
    config = make_config(command=["/bin/sh", "-c", "echo one; echo two >&2; printf three"])
    runtime.apply(config)
    _wait_state(runtime, config.component, ComponentState.FINISHED)
    # stdout and stderr are separate pipes: Docker does not promise their interleaving.
    lines = list(runtime.logs(config.component, timestamps=False))
    assert sorted(lines) == ["one", "three", "two"]
    stamped = list(runtime.logs(config.component))
    assert sorted(line.split(" ", 1)[1] for line in stamped) == ["one", "three", "two"]
    assert all(line[:4].isdigit() for line in stamped)
    with pytest.raises(PermanentError, match="no container"):
        runtime.logs("nothing-here")


def test_logs_follow_streams_new_output(
    runtime: ContainerRuntime, make_config: ConfigMaker,
) -> None:
    config = make_config(command=["/bin/sh", "-c", "echo a; sleep 1; echo b"])
    runtime.apply(config)
    start = time.monotonic()
    assert list(runtime.logs(config.component, follow=True, timestamps=False)) == ["a", "b"]
    assert time.monotonic() - start >= 0.5  # it waited for the second line


# --- images ---------------------------------------------------------------------------

@pytest.fixture
def saved_image(docker_client: docker.DockerClient, test_image: str, made: Made,
                tmp_path: pathlib.Path) -> tuple[str, pathlib.Path, str]:
    """The test image saved under a fresh tag, the tag then removed: only the archive has it."""
    ref = f"hedgerow/archived-{uuid.uuid4().hex[:8]}:1"
    made.images.append(ref)
    image = docker_client.images.get(test_image)
    repository, tag = ref.rsplit(":", 1)
    image.tag(repository, tag)
    archive = tmp_path / "image.tar"
    with archive.open("wb") as out:
        for chunk in docker_client.images.get(ref).save(named=True):
            out.write(chunk)
    docker_client.images.remove(ref)
    return ref, archive, hashlib.sha256(archive.read_bytes()).hexdigest()


def test_an_image_archive_is_verified_then_loaded(
    runtime: ContainerRuntime, make_config: ConfigMaker, docker_client: docker.DockerClient,
    saved_image: tuple[str, pathlib.Path, str],
) -> None:
    ref, archive, digest = saved_image
    config = make_config(image=ref, imageArchive={"uri": "file:///i.tar", "sha256": digest})
    assert runtime.ensure_image(config, archive) == "loaded"
    docker_client.images.get(ref)
    assert set(owned_images(runtime)) == {ref}
    assert runtime.ensure_image(config, archive) == "present"
    runtime.apply(config, archive)
    assert _state_of(runtime, config.component) is ComponentState.RUNNING


def test_an_archive_with_the_wrong_digest_is_not_loaded(
    runtime: ContainerRuntime, make_config: ConfigMaker, docker_client: docker.DockerClient,
    saved_image: tuple[str, pathlib.Path, str],
) -> None:
    ref, archive, _ = saved_image
    config = make_config(image=ref, imageArchive={"uri": "file:///i.tar", "sha256": "e" * 64})
    with pytest.raises(PermanentError, match="not loaded"):
        runtime.ensure_image(config, archive)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(ref)
    assert owned_images(runtime) == {}
    with pytest.raises(PermanentError, match="not provided"):
        runtime.ensure_image(config, None)


def test_a_single_image_archive_can_back_another_tag(
    runtime: ContainerRuntime, make_config: ConfigMaker, docker_client: docker.DockerClient,
    saved_image: tuple[str, pathlib.Path, str], made: Made,
) -> None:
    _, archive, digest = saved_image
    other = f"hedgerow/retagged-{uuid.uuid4().hex[:8]}:2"
    made.images.append(other)
    config = make_config(image=other, imageArchive={"uri": "file:///i.tar", "sha256": digest})
    assert runtime.ensure_image(config, archive) == "loaded"
    docker_client.images.get(other)
    assert other in owned_images(runtime)


def test_image_gc_removes_only_what_the_runtime_loaded(
    runtime: ContainerRuntime, make_config: ConfigMaker, docker_client: docker.DockerClient,
    saved_image: tuple[str, pathlib.Path, str], test_image: str, tmp_path: pathlib.Path,
    made: Made,
) -> None:
    ref, archive, digest = saved_image
    config = make_config(image=ref, imageArchive={"uri": "file:///i.tar", "sha256": digest})
    runtime.apply(config, archive)

    # Still referenced, or in use by a container: kept.
    assert runtime.gc_images({ref}) == []
    assert runtime.gc_images(set()) == []
    docker_client.images.get(ref)

    runtime.remove(config.component, timeout=5)
    # Someone else's container of the same image, through its own tag, keeps its tag only.
    stranger = docker_client.containers.create(test_image, ["true"])
    made.containers.append(stranger.name or stranger.id)
    # The record survives an agent restart (it lives in state/), so GC still knows.
    restarted = ContainerRuntime(docker.from_env, thing=runtime.thing,
                                 state_dir=tmp_path / "state")
    try:
        assert restarted.gc_images(set()) == [ref]
    finally:
        restarted.close()
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(ref)
    docker_client.images.get(test_image)  # never ours to remove
    stranger.reload()  # and the stranger's container is untouched


def test_image_gc_keeps_a_tag_someone_else_created_a_container_from(
    runtime: ContainerRuntime, make_config: ConfigMaker, docker_client: docker.DockerClient,
    saved_image: tuple[str, pathlib.Path, str], made: Made,
) -> None:
    ref, archive, digest = saved_image
    config = make_config(image=ref, imageArchive={"uri": "file:///i.tar", "sha256": digest})
    runtime.apply(config, archive)
    runtime.remove(config.component, timeout=5)
    stranger = docker_client.containers.create(ref, ["true"])
    made.containers.append(stranger.name or stranger.id)
    # Untagging would leave that container unrecreatable: kept, and still ours to collect.
    assert runtime.gc_images(set()) == []
    docker_client.images.get(ref)
    assert ref in owned_images(runtime)
    stranger.remove()
    assert runtime.gc_images(set()) == [ref]


def test_image_gc_keeps_an_image_a_container_runs_by_its_bare_id(
    runtime: ContainerRuntime, make_config: ConfigMaker, docker_client: docker.DockerClient,
    test_image: str, made: Made, tmp_path: pathlib.Path,
) -> None:
    """Our tag is the image's only one and a stranger's container runs it by id: Docker
    refuses to remove that last tag, and GC keeps the image (and its record)."""
    base = docker_client.containers.create(test_image, ["true"])
    made.containers.append(base.name or base.id)
    ref = f"hedgerow/only-{uuid.uuid4().hex[:8]}:1"
    made.images.append(ref)
    image = base.commit(*ref.rsplit(":", 1))  # an image of its own: one tag, its own id
    archive = tmp_path / "only.tar"
    with archive.open("wb") as out:
        for chunk in image.save(named=True):
            out.write(chunk)
    docker_client.images.remove(ref)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    config = make_config(image=ref, imageArchive={"uri": "file:///i.tar", "sha256": digest})
    runtime.apply(config, archive)
    runtime.remove(config.component, timeout=5)
    stranger = docker_client.containers.create(docker_client.images.get(ref).id, ["true"])
    made.containers.append(stranger.name or stranger.id)
    assert runtime.gc_images(set()) == []
    docker_client.images.get(ref)
    assert ref in owned_images(runtime)


def test_pull_retries_transient_failures_with_capped_jittered_backoff(
    thing: str, make_config: ConfigMaker,
) -> None:
    # No registry is reachable here: dockerd answers 500 (DNS failure) — transient.
    delays: list[float] = []
    runtime = ContainerRuntime(docker.from_env, thing=thing,
                               pull_backoff=Backoff(attempts=4, base_seconds=1, cap_seconds=3),
                               sleep=delays.append, rng=lambda: 1.0)
    try:
        config = make_config(image=f"hedgerow/unpullable-{uuid.uuid4().hex[:8]}:1")
        with pytest.raises(TransientError, match="pull"):
            runtime.ensure_image(config)
    finally:
        runtime.close()
    assert delays == [1.0, 2.0, 3.0]  # three waits between four attempts, capped at 3


# --- daemon unreachable ---------------------------------------------------------------

def test_an_unreachable_daemon_is_unavailable_and_transient(
    thing: str, make_config: ConfigMaker,
) -> None:
    def dead(*, timeout: int) -> docker.DockerClient:
        return docker.DockerClient(base_url="unix:///tmp/nonexistent.sock", timeout=timeout)

    runtime = ContainerRuntime(dead, thing=thing)
    start = time.monotonic()
    with pytest.raises(TransientError):
        runtime.observe()
    with pytest.raises(TransientError):
        runtime.apply(make_config())
    with pytest.raises(TransientError):
        runtime.remove_orphans(set())
    assert time.monotonic() - start < 5


def test_an_update_to_an_archived_image_loads_it_while_the_old_one_runs(
    runtime: ContainerRuntime, make_config: ConfigMaker,
    saved_image: tuple[str, pathlib.Path, str],
) -> None:
    ref, archive, digest = saved_image
    old = runtime.apply(make_config())
    config = make_config(image=ref, imageArchive={"uri": "file:///i.tar", "sha256": digest},
                         version="2.0.0")
    new = runtime.apply(config, archive)
    assert new.action == "replaced" and new.container_id != old.container_id
    assert ref in owned_images(runtime)
    [observed] = runtime.observe()
    assert (observed.image, observed.version, observed.status) == (ref, "2.0.0", "running")
