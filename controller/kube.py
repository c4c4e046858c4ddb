"""Kubernetes API calls the controller makes besides kopf's watches: status writes and
the one-off listing `hedgerow plan` needs. Synchronous client; callers use threads."""

from __future__ import annotations

from typing import Any, Final

from kubernetes import client, config

from hedgerow.core import base

JSON_PATCH: Final = "application/json-patch+json"
PLURALS: Final = {"Component": "components", "Deployment": "deployments",
                  "ThingGroup": "thinggroups", "CoreDevice": "coredevices"}


def load_config(kubeconfig: str | None) -> None:
    if kubeconfig:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig)
        return
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]


class Kube:
    def __init__(self) -> None:
        self.custom = client.CustomObjectsApi()

    def apply_status(self, kind: str, namespace: str | None, name: str,
                     status: dict[str, Any]) -> None:
        """Replace .status whole (a JSON patch): a merge patch could not drop map keys."""
        body = [{"op": "add", "path": "/status", "value": status}]
        plural = PLURALS[kind]
        if namespace:
            self.custom.patch_namespaced_custom_object_status(
                base.GROUP, base.VERSION, namespace, plural, name, body,
                _content_type=JSON_PATCH)
        else:
            self.custom.patch_cluster_custom_object_status(
                base.GROUP, base.VERSION, plural, name, body, _content_type=JSON_PATCH)

    def fetch_namespace_labels(self) -> dict[str, dict[str, str]]:
        """Every namespace's labels (they grant privilege levels: hedgerow.dev/enforce)."""
        result = client.CoreV1Api().list_namespace()
        out: dict[str, dict[str, str]] = {}
        for ns in result.items:
            if ns.metadata is not None and ns.metadata.name:
                out[ns.metadata.name] = dict(ns.metadata.labels or {})
        return out

    def fetch_all(self, kind: str) -> list[dict[str, Any]]:
        result: dict[str, Any] = self.custom.list_cluster_custom_object(  # type: ignore[assignment]
            base.GROUP, base.VERSION, PLURALS[kind])
        items: list[dict[str, Any]] = result.get("items", [])
        for item in items:
            item.setdefault("apiVersion", base.API_VERSION)
            item.setdefault("kind", kind)
        return items
