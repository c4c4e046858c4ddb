"""Privilege levels, table-driven: which recipe features each level grants."""

from __future__ import annotations

from typing import Any

import pytest

from hedgerow.core import component, deployment, privilege

R, B, P = privilege.Level.RESTRICTED, privilege.Level.BASELINE, privilege.Level.PRIVILEGED


def _lifecycle(**steps: Any) -> component.Lifecycle:
    return component.Lifecycle.model_validate(
        {"run": {"script": "sleep 1"}, **{k: {"script": "true", **v} for k, v in steps.items()}})


def _container(**fields: Any) -> component.Container:
    return component.Container.model_validate({"image": "hedgerow/busybox:latest", **fields})


def _user(text: str) -> deployment.RunWith:
    return deployment.RunWith.model_validate({"posixUser": text})


@pytest.mark.parametrize(("labels", "level"), [
    (None, R),
    ({}, R),
    ({privilege.LABEL: "restricted"}, R),
    ({privilege.LABEL: "baseline"}, B),
    ({privilege.LABEL: "privileged"}, P),
    ({privilege.LABEL: "Privileged"}, R),  # unknown values grant nothing
    ({privilege.LABEL: ""}, R),
    ({"other": "privileged"}, R),
])
def test_level_from_namespace_labels(labels: dict[str, str] | None,
                                     level: privilege.Level) -> None:
    assert privilege.resolve_level(labels) is level


# (lifecycle, container, runWith) -> the fields that need more than nothing, with levels
CASES: list[tuple[str, Any, Any, Any, dict[str, privilege.Level]]] = [
    ("plain process", _lifecycle(), None, None, {}),
    ("named user", _lifecycle(), None, _user("ggc_user:ggc_group"), {}),
    ("root user", _lifecycle(), None, _user("root"), {"runWith.posixUser": P}),
    ("uid 0", _lifecycle(), None, _user("0"), {"runWith.posixUser": P}),
    ("gid 0", _lifecycle(), None, _user("nobody:0"), {"runWith.posixUser": P}),
    ("root group", _lifecycle(), None, _user("nobody:root"), {"runWith.posixUser": P}),
    ("a name that contains root", _lifecycle(), None, _user("rootless"), {}),
    ("privileged install", _lifecycle(install={"requiresPrivilege": True}), None, None,
     {"lifecycle.install.requiresPrivilege": P}),
    ("plain container", None, _container(), None, {}),
    ("privileged container", None, _container(requiresPrivilege=True), None,
     {"container.requiresPrivilege": P}),
    ("loopback port", None, _container(ports=[{"containerPort": 80}]), None, {}),
    ("open port", None, _container(ports=[{"containerPort": 80, "hostIp": "0.0.0.0"}]),
     None, {"container.ports[0].hostIp": B}),
    ("own work folder", None,
     _container(volumes=[{"source": "{work:path}", "target": "/data"}]), None, {}),
    ("a folder inside work", None,
     _container(volumes=[{"source": "{work:path}/data", "target": "/data"}]), None,
     {"container.volumes[0].source": P}),
    ("below the artifacts, read-only", None, _container(volumes=[
        {"source": "{artifacts:decompressedPath}/model", "target": "/m", "readOnly": True}]),
     None, {}),
    ("artifacts read-only", None, _container(volumes=[
        {"source": "{artifacts:path}", "target": "/a", "readOnly": True}]), None, {}),
    ("artifacts writable", None, _container(volumes=[
        {"source": "{artifacts:path}", "target": "/a"}]), None,
     {"container.volumes[0].source": P}),
    ("escape from work", None, _container(volumes=[
        {"source": "{work:path}/../../state", "target": "/s"}]), None,
     {"container.volumes[0].source": P}),
    ("host /etc", None, _container(volumes=[{"source": "/etc", "target": "/e"}]), None,
     {"container.volumes[0].source": P}),
    ("docker socket", None, _container(volumes=[
        {"source": "/var/run/docker.sock", "target": "/s", "readOnly": True}]), None,
     {"container.volumes[0].source": P}),
    ("path from configuration", None, _container(volumes=[
        {"source": "{configuration:/dir}", "target": "/c"}]), None,
     {"container.volumes[0].source": P}),
    ("configuration below the artifacts", None, _container(volumes=[
        {"source": "{artifacts:path}/{configuration:/sub}", "target": "/c", "readOnly": True}]),
     None,
     {"container.volumes[0].source": P}),
    ("named volume", None, _container(volumes=[{"source": "cache", "target": "/c"}]),
     None, {}),
]


@pytest.mark.parametrize(("what", "lifecycle", "container", "run_with", "needs"), CASES,
                         ids=[c[0] for c in CASES])
def test_needs(what: str, lifecycle: Any, container: Any, run_with: Any,
               needs: dict[str, privilege.Level]) -> None:
    found = privilege.resolve_needs(lifecycle, container, run_with)
    assert {v.field: v.needs for v in found} == needs


@pytest.mark.parametrize(("what", "lifecycle", "container", "run_with", "needs"), CASES,
                         ids=[c[0] for c in CASES])
def test_each_level_refuses_exactly_what_it_does_not_grant(
    what: str, lifecycle: Any, container: Any, run_with: Any,
    needs: dict[str, privilege.Level],
) -> None:
    for granted in (R, B, P):
        refused = privilege.resolve_violations(lifecycle, container, run_with, granted)
        assert {v.field for v in refused} == {
            f for f, level in needs.items() if not privilege.is_allowed(level, granted)}


def test_message_names_the_field_the_need_and_the_grant() -> None:
    [v] = privilege.resolve_violations(_lifecycle(), None, _user("root"), R)
    text = privilege.render_violation("com.example.Tool", v, R)
    assert "com.example.Tool" in text and "runWith.posixUser" in text
    assert "'privileged'" in text and "'restricted'" in text and privilege.LABEL in text
