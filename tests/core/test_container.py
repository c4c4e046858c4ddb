"""render_container: recipe → docker create arguments; render_component_state: → state."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import pytest

from hedgerow.core import component, container, deployment, documents
from hedgerow.core.container import ContainerSpecError, ObservedContainer
from hedgerow.core.documents import ComponentState
from hedgerow.core.lifecycle import Event

ROOT = "/var/lib/hedgerow"
SOCKET = "/var/lib/hedgerow/ipc/ipc.sock"


def _resolved(spec: dict[str, Any] | None = None, *, limits: dict[str, Any] | None = None,
              name: str = "com.example.Web", version: str = "1.0.0",
              configuration: dict[str, Any] | None = None) -> documents.ResolvedComponent:
    return documents.ResolvedComponent(
        name=name, version=version,
        container=component.Container.model_validate(
            {"image": "hedgerow/busybox:latest", **(spec or {})}),
        configuration=configuration or {},
        run_with=None if limits is None else deployment.RunWith(
            system_resource_limits=deployment.SystemResourceLimits(**limits)),
    )


def _fake_render(text: str) -> str:
    """Stands in for hedgerow.core.recipe: enough to see where rendering is applied."""
    return text.replace("{iot:thingName}", "gw-1").replace("{configuration:/title}", "Hi")


def _render(resolved: documents.ResolvedComponent, **kwargs: Any) -> container.ContainerConfig:
    return container.render_container(
        resolved, thing=kwargs.pop("thing", "gw-1"), root=ROOT, ipc_socket=SOCKET,
        render=_fake_render, **kwargs)


def test_example_web_status_renders_to_create_arguments() -> None:
    config = _render(_resolved({
        "command": ["/bin/sh", "-c"],
        "args": ["echo '{configuration:/title} on {iot:thingName}' && exec httpd -f"],
        "env": {"THING": "{iot:thingName}"},
        "ports": [{"containerPort": 8080}],
        "healthCheck": {"command": ["wget", "-q", "http://127.0.0.1:8080/"],
                        "intervalSeconds": 5},
    }))
    kwargs = config.create_kwargs()
    assert kwargs["name"] == "hedgerow-gw-1_com.example.Web"
    assert kwargs["image"] == "hedgerow/busybox:latest"
    # Kubernetes semantics: command replaces the entrypoint, args the image's CMD.
    assert kwargs["entrypoint"] == ["/bin/sh", "-c"]
    assert kwargs["command"] == ["echo 'Hi on gw-1' && exec httpd -f"]
    assert kwargs["environment"] == {"THING": "gw-1", "HEDGEROW_THING_NAME": "gw-1"}
    assert kwargs["ports"] == {"8080/tcp": [("127.0.0.1", 8080)]}
    assert kwargs["restart_policy"] == {"Name": "no"}
    assert kwargs["privileged"] is False
    assert kwargs["healthcheck"] == {
        "test": ["CMD", "wget", "-q", "http://127.0.0.1:8080/"],
        "interval": 5_000_000_000, "timeout": 5_000_000_000, "retries": 3,
        "start_period": 0,
    }
    assert kwargs["labels"] == {
        "hedgerow.dev/thing": "gw-1", "hedgerow.dev/component": "com.example.Web",
        "hedgerow.dev/version": "1.0.0", "hedgerow.dev/spec-hash": config.spec_hash,
    }
    assert "mem_limit" not in kwargs and "nano_cpus" not in kwargs and "volumes" not in kwargs


@pytest.mark.parametrize(("spec", "key", "expected"), [
    ({}, "read_only", False),
    ({"readOnlyRootFilesystem": True}, "read_only", True),
    ({"user": "65534:65534"}, "user", "65534:65534"),
    ({"ports": [{"containerPort": 80, "hostPort": 8081}]}, "ports",
     {"80/tcp": [("127.0.0.1", 8081)]}),
    ({"ports": [{"containerPort": 53, "protocol": "udp", "hostIp": "0.0.0.0"}]}, "ports",
     {"53/udp": [("0.0.0.0", 53)]}),
    ({"ports": [{"containerPort": 80}, {"containerPort": 80, "hostPort": 8080}]}, "ports",
     {"80/tcp": [("127.0.0.1", 80), ("127.0.0.1", 8080)]}),
    ({"volumes": [{"source": "data", "target": "/data"}]}, "volumes", ["data:/data:rw"]),
    ({"volumes": [{"source": f"{ROOT}/work/com.example.Web", "target": "/db"}]},
     "volumes", [f"{ROOT}/work/com.example.Web:/db:rw"]),
    ({"volumes": [{"source": f"{ROOT}/artifacts/com.example.Web/1.0.0", "target": "/a",
                   "readOnly": True}]},
     "volumes", [f"{ROOT}/artifacts/com.example.Web/1.0.0:/a:ro"]),
    ({"mountIpcSocket": True}, "volumes", ["/var/lib/hedgerow/ipc:/run/hedgerow:ro"]),
    ({"healthCheck": {"command": ["CMD-SHELL", "test -f /ok"], "timeoutSeconds": 2,
                      "retries": 1, "startPeriodSeconds": 3}}, "healthcheck",
     {"test": ["CMD-SHELL", "test -f /ok"], "interval": 10_000_000_000,
      "timeout": 2_000_000_000, "retries": 1, "start_period": 3_000_000_000}),
    ({"args": ["only", "args"]}, "command", ["only", "args"]),
])
def test_recipe_fields_map_to_create_arguments(
    spec: dict[str, Any], key: str, expected: object,
) -> None:
    assert _render(_resolved(spec)).create_kwargs()[key] == expected


def test_ipc_socket_mount_also_tells_the_component_where_it_is() -> None:
    env = _render(_resolved({"mountIpcSocket": True})).create_kwargs()["environment"]
    assert env["HEDGEROW_IPC_SOCKET"] == "/run/hedgerow/ipc.sock"
    assert "HEDGEROW_IPC_SOCKET" not in _render(_resolved()).create_kwargs()["environment"]


def test_agent_variables_win_over_the_recipe() -> None:
    config = _render(_resolved({"env": {"HEDGEROW_THING_NAME": "other", "TOKEN": "x"}}),
                     agent_env={"TOKEN": "from-agent"})
    env = config.create_kwargs()["environment"]
    assert env["HEDGEROW_THING_NAME"] == "gw-1"
    assert env["TOKEN"] == "from-agent"


def test_environment_values_stay_out_of_repr() -> None:
    config = _render(_resolved({"env": {"PASSWORD": "hunter2"}}))
    assert "hunter2" not in repr(config)


@pytest.mark.parametrize(("limits", "mem_limit", "nano_cpus"), [
    ({"memory": "64Mi"}, 64 * 2**20, None),
    ({"memory": "0.5Gi"}, 2**29, None),
    ({"memory": "100M"}, 100_000_000, None),
    ({"memory": "1k"}, 1000, None),
    ({"memory": "7340032"}, 7340032, None),
    ({"cpus": 0.5}, None, 500_000_000),
    ({"cpus": 2, "memory": "1Gi"}, 2**30, 2_000_000_000),
    ({}, None, None),
])
def test_limits_come_from_run_with(
    limits: dict[str, Any], mem_limit: int | None, nano_cpus: int | None,
) -> None:
    kwargs = _render(_resolved(limits=limits)).create_kwargs()
    assert kwargs.get("mem_limit") == mem_limit
    assert kwargs.get("nano_cpus") == nano_cpus


@pytest.mark.parametrize(("spec", "thing", "message"), [
    ({"volumes": [{"source": ROOT, "target": "/r"}]}, "gw-1", "expose the agent's root"),
    ({"volumes": [{"source": "/var", "target": "/r"}]}, "gw-1", "expose the agent's root"),
    ({"volumes": [{"source": "/", "target": "/r", "readOnly": True}]}, "gw-1",
     "expose the agent's root"),
    ({"volumes": [{"source": f"{ROOT}/state", "target": "/s", "readOnly": True}]}, "gw-1",
     "expose the agent's root"),
    ({"volumes": [{"source": f"{ROOT}/work/other", "target": "/w"}]}, "gw-1",
     "expose the agent's root"),
    ({"volumes": [{"source": f"{ROOT}/work/com.example.Web/../other", "target": "/w"}]},
     "gw-1", "expose the agent's root"),
    ({"volumes": [{"source": f"{ROOT}/artifacts/x", "target": "/a"}]}, "gw-1",
     "expose the agent's root"),
    # read-only is not enough for another component's artifacts, or the cache
    ({"volumes": [{"source": f"{ROOT}/artifacts/com.example.Other/1.0.0", "target": "/a",
                   "readOnly": True}]}, "gw-1", "expose the agent's root"),
    ({"volumes": [{"source": f"{ROOT}/artifacts/sha256", "target": "/a",
                   "readOnly": True}]}, "gw-1", "expose the agent's root"),
    # host paths outside the component's folders: refused without privilege (issue 12)
    ({"volumes": [{"source": "/etc", "target": "/e", "readOnly": True}]}, "gw-1",
     "host path outside the component's own folders"),
    ({"volumes": [{"source": "/root", "target": "/r"}]}, "gw-1",
     "host path outside the component's own folders"),
    ({"volumes": [{"source": "/srv/x/", "target": "/x", "readOnly": True}]}, "gw-1",
     "host path outside the component's own folders"),
    ({"volumes": [{"source": "/proc/self/root/etc", "target": "/e"}]}, "gw-1",
     "kernel interface"),
    ({"volumes": [{"source": "/sys/fs/cgroup", "target": "/c"}]}, "gw-1", "kernel interface"),
    ({"volumes": [{"source": "/dev/sda", "target": "/d"}]}, "gw-1", "kernel interface"),
    ({"volumes": [{"source": "/var/run/docker.sock", "target": "/d"}]}, "gw-1",
     "container runtime's socket"),
    ({"volumes": [{"source": "/run/containerd/containerd.sock", "target": "/d"}]}, "gw-1",
     "container runtime's socket"),
    ({"requiresPrivilege": True}, "gw-1", "does not allow privileged components"),
    ({"volumes": [{"source": f"{ROOT}/work/com.example.Web/db", "target": "/db"}]}, "gw-1",
     "inside the work folder, which the component can change"),
    ({"volumes": [{"source": "../etc", "target": "/e"}]}, "gw-1", "neither an absolute"),
    ({"volumes": [{"source": "/a:b", "target": "/e"}]}, "gw-1", "':' is not allowed"),
    ({"volumes": [{"source": "v", "target": "/run/hedgerow/ipc.sock"}],
      "mountIpcSocket": True}, "gw-1", "used twice"),
    ({"ports": [{"containerPort": 80, "hostPort": 90}, {"containerPort": 81, "hostPort": 90}]},
     "gw-1", "bound twice"),
    ({"env": {"BAD-NAME": "x"}}, "gw-1", "invalid environment variable"),
    ({"imageArchive": {"uri": "file:///a.tar", "sha256": "a" * 64},
      "image": "hedgerow/busybox@sha256:" + "b" * 64}, "gw-1", "needs a tag reference"),
    ({}, "Bad_Thing", "not a valid thing name"),
])
def test_recipes_that_cannot_run_are_rejected(
    spec: dict[str, Any], thing: str, message: str,
) -> None:
    with pytest.raises(ContainerSpecError, match=message):
        _render(_resolved(spec), thing=thing)


def test_requires_privilege_is_the_way_to_bind_anything() -> None:
    config = _render(_resolved({"requiresPrivilege": True,
                                "volumes": [{"source": "/", "target": "/host"}]}),
                     allow_privileged=True)
    assert config.create_kwargs()["volumes"] == ["/:/host:rw"]
    assert config.privileged


def test_binds_are_checked_as_the_canonical_path_and_docker_gets_that_path() -> None:
    """The shell resolves links (`canonical`); the check and Docker see its answer, never
    the string the recipe wrote: a link to the agent's state is the agent's state."""
    links = {f"{ROOT}/work/com.example.Web": f"{ROOT}/work/com.example.Web",
             "/proc/self/root/var/lib/hedgerow/state": f"{ROOT}/state",
             "/data/web": f"{ROOT}/work/com.example.Web"}
    def canonical(path: str) -> str:
        return links.get(path, path)
    spec = {"volumes": [{"source": "/proc/self/root/var/lib/hedgerow/state", "target": "/s"}]}
    with pytest.raises(ContainerSpecError, match="expose the agent's root"):
        _render(_resolved(spec), canonical=canonical)
    ok = _render(_resolved({"volumes": [{"source": "/data/web", "target": "/w"}]}),
                 canonical=canonical)
    assert ok.create_kwargs()["volumes"] == [f"{ROOT}/work/com.example.Web:/w:rw"]


def test_a_process_component_is_not_a_container() -> None:
    resolved = documents.ResolvedComponent(
        name="p", version="1.0.0", lifecycle=component.Lifecycle(
            run=component.Step(script="true")))
    with pytest.raises(ContainerSpecError, match="not a container"):
        _render(resolved)


@pytest.mark.parametrize("change", [
    {"spec": {"env": {"A": "2"}}},
    {"spec": {"env": {"A": "1"}, "user": "1000"}},
    {"spec": {"env": {"A": "1"}, "ports": [{"containerPort": 1}]}},
    {"spec": {"env": {"A": "1"}, "image": "hedgerow/busybox:v2"}},
    {"spec": {"env": {"A": "1"}}, "limits": {"memory": "64Mi"}},
    {"spec": {"env": {"A": "1"}}, "version": "1.0.1"},
    {"spec": {"env": {"A": "1"}}, "thing": "gw-2"},
    {"spec": {"env": {"A": "1"}}, "agent_env": {"TOKEN": "t"}},
    {"spec": {"env": {"A": "1"},
              "imageArchive": {"uri": "file:///a.tar", "sha256": "c" * 64}}},
])
def test_spec_hash_changes_with_anything_docker_would_run_differently(
    change: dict[str, Any],
) -> None:
    def config(spec: dict[str, Any], limits: dict[str, Any] | None = None,
               version: str = "1.0.0", thing: str = "gw-1",
               agent_env: dict[str, str] | None = None) -> container.ContainerConfig:
        return _render(_resolved(spec, limits=limits, version=version), thing=thing,
                       agent_env=agent_env)

    base = config({"env": {"A": "1"}})
    assert base.spec_hash == config({"env": {"A": "1"}}).spec_hash  # deterministic
    assert config(**change).spec_hash != base.spec_hash


def test_configuration_reaches_the_hash_only_through_rendering() -> None:
    # Configuration that no placeholder reads does not restart the container.
    one = _render(_resolved(configuration={"unused": 1}))
    two = _render(_resolved(configuration={"unused": 2}))
    assert one.spec_hash == two.spec_hash
    assert one == two


def test_names_are_unique_across_things() -> None:
    assert container.render_container_name("a-b", "c") != \
        container.render_container_name("a", "b-c")


@pytest.mark.parametrize(("image", "ref"), [
    ("busybox", "busybox:latest"),
    ("docker.io/library/busybox:1.36", "busybox:1.36"),
    ("docker.io/acme/app", "acme/app:latest"),
    ("localhost:5000/app", "localhost:5000/app:latest"),
    ("localhost:5000/app:2", "localhost:5000/app:2"),
    ("app@sha256:" + "a" * 64, "app@sha256:" + "a" * 64),
])
def test_image_refs_are_named_as_docker_names_them(image: str, ref: str) -> None:
    assert container.render_image_ref(image) == ref


@pytest.mark.parametrize(("ref", "created_from", "in_use"), [
    ("acme/app:1", ["acme/app:1"], True),
    ("docker.io/acme/app", ["acme/app:latest"], True),  # named as Docker names it
    ("acme/app:1", ["acme/app:2", "busybox"], False),
    # the same image through another tag: untagging ours leaves that container its own
    ("acme/app:1", ["hedgerow/busybox:latest"], False),
    # created from the bare id: Docker itself refuses to remove the image's last tag
    ("acme/app:1", ["sha256:" + "b" * 64], False),
    ("acme/app:1", [], False),
])
def test_an_image_is_in_use_only_by_containers_created_from_its_reference(
    ref: str, created_from: list[str], in_use: bool,
) -> None:
    assert container.is_image_in_use(ref, created_from) is in_use


def _observed(**changes: Any) -> ObservedContainer:
    base = ObservedContainer(
        name="hedgerow-gw-1_c", container_id="abc", component="c", version="1.0.0",
        spec_hash="h", image="i", status="running", exit_code=None, health="none",
        started_at=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC), finished_at=None)
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(("changes", "state"), [
    ({}, ComponentState.RUNNING),
    ({"health": "healthy"}, ComponentState.RUNNING),
    ({"health": "starting"}, ComponentState.STARTING),
    ({"health": "unhealthy"}, ComponentState.ERRORED),
    ({"status": "exited", "exit_code": 0}, ComponentState.FINISHED),
    ({"status": "exited", "exit_code": 3}, ComponentState.ERRORED),
    ({"status": "exited", "exit_code": 0, "oom_killed": True}, ComponentState.ERRORED),
    ({"status": "created"}, ComponentState.INSTALLED),
    ({"status": "created", "error": "exec: not found"}, ComponentState.ERRORED),
    ({"status": "restarting"}, ComponentState.STARTING),
    ({"status": "removing"}, ComponentState.STOPPING),
    ({"status": "paused"}, ComponentState.ERRORED),
    ({"status": "dead", "exit_code": 137}, ComponentState.ERRORED),
])
def test_component_state_of_a_container(changes: dict[str, Any], state: ComponentState) -> None:
    assert container.render_component_state(_observed(**changes)) is state


_GONE = object()  # no container of the component was found


@pytest.mark.parametrize(("state", "changes", "event"), [
    # What Docker reports is judged only while the component should be running.
    (ComponentState.STARTING, {}, (Event.STARTED, "healthy")),
    (ComponentState.STARTING, {"health": "healthy"}, (Event.STARTED, "healthy")),
    (ComponentState.STARTING, {"health": "starting"}, None),
    (ComponentState.RUNNING, {}, None),
    (ComponentState.RUNNING, {"health": "starting"}, None),
    (ComponentState.RUNNING, {"health": "unhealthy"}, (Event.FAILED, "container unhealthy")),
    (ComponentState.RUNNING, {"status": "exited", "exit_code": 0},
     (Event.EXITED_OK, "exited with 0")),
    (ComponentState.STARTING, {"status": "exited", "exit_code": 0},
     (Event.EXITED_OK, "exited with 0")),
    (ComponentState.RUNNING, {"status": "exited", "exit_code": 3},
     (Event.FAILED, "container exited with 3")),
    (ComponentState.RUNNING, {"status": "exited", "exit_code": 137, "oom_killed": True},
     (Event.FAILED, "container killed: out of memory")),
    (ComponentState.STARTING, {"status": "created", "error": "exec: not found"},
     (Event.FAILED, "container failed to start: exec: not found")),
    (ComponentState.RUNNING, {"status": "created"}, (Event.FAILED, "container created")),
    (ComponentState.RUNNING, {"status": "paused"}, (Event.FAILED, "container paused")),
    (ComponentState.RUNNING, {"status": "restarting"}, None),
    (ComponentState.RUNNING, {"status": "removing"}, None),
    (ComponentState.RUNNING, _GONE, (Event.FAILED, "container disappeared")),
    (ComponentState.STARTING, _GONE, (Event.FAILED, "container disappeared")),
    # The agent's own doing (stopped, installed, errored): the container is as expected.
    (ComponentState.INSTALLED, {"status": "exited", "exit_code": 3}, None),
    (ComponentState.STOPPING, _GONE, None),
    (ComponentState.ERRORED, {"health": "unhealthy"}, None),
    (ComponentState.FINISHED, {"status": "exited", "exit_code": 0}, None),
    (ComponentState.BROKEN, _GONE, None),
])
def test_event_docker_reports(state: ComponentState, changes: Any,
                              event: tuple[Event, str] | None) -> None:
    observed = None if changes is _GONE else _observed(**changes)
    assert container.resolve_container_event(state, observed) == event
