"""Kubernetes API calls the controller makes besides kopf's watches: status writes and
the one-off listing `hedgerow plan` needs. Synchronous client; callers use threads."""

from __future__ import annotations

import dataclasses
import ssl
from typing import Any, Final

from kubernetes import client, config

from hedgerow.core import base

APPLY_PATCH: Final = "application/apply-patch+yaml"  # server-side apply (JSON is YAML)
# One field manager per writer of a status: each owns its fields, and the API server
# merges them (server-side apply). The controller's pass and status writer; the
# controller's CSR signer (status.certificate only); `hedgerow device register`.
CONTROLLER: Final = "hedgerow-controller"
SIGNER: Final = "hedgerow-signer"
REGISTRAR: Final = "hedgerow-device-register"
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


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where and how to reach the API server outside the kubernetes client (the
    CoreDevice informer streams its watch with aiohttp): from the configuration
    ``load_config`` loaded, so both speak with the same credentials."""

    host: str
    ssl: ssl.SSLContext | bool
    headers: dict[str, str]


def endpoint() -> Endpoint:
    """Read again for each connection: an in-cluster token is refreshed by the client's
    configuration (its ``auth_settings`` hook)."""
    cfg = client.Configuration.get_default_copy()
    context: ssl.SSLContext | bool = False
    if cfg.verify_ssl:
        context = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        if cfg.assert_hostname is False:
            context.check_hostname = False
    if cfg.cert_file and isinstance(context, ssl.SSLContext):
        context.load_cert_chain(cfg.cert_file, cfg.key_file)
    headers = {}
    bearer = cfg.auth_settings().get("BearerToken")
    if bearer and bearer.get("value"):
        headers[str(bearer["key"])] = str(bearer["value"])
    return Endpoint(str(cfg.host).rstrip("/"), context, headers)


def is_permanent(exc: BaseException) -> bool:
    """A refusal that the same write would get again (bad request, forbidden, gone,
    invalid): not retried until the object or what we write changes. Everything else
    (5xx, 408/429, connection errors, timeouts) is transient."""
    status = getattr(exc, "status", None) if isinstance(exc, client.ApiException) else None
    return isinstance(status, int) and 400 <= status < 500 and status not in _TRANSIENT_4XX


_TRANSIENT_4XX: Final = frozenset({408, 409, 425, 429})


def apply_status(custom: client.CustomObjectsApi, kind: str, namespace: str | None,
                 name: str, status: dict[str, Any], manager: str) -> None:
    """Server-side apply of ``.status`` as ``manager``: the fields this manager applied
    before and leaves out now are removed; fields other managers own are left alone (so
    `hedgerow device register`'s status.certificate needs no carrying by the controller).
    """
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    body = {"apiVersion": base.API_VERSION, "kind": kind, "metadata": metadata,
            "status": prune_empty_maps(status)}
    plural = PLURALS[kind]
    if namespace:
        custom.patch_namespaced_custom_object_status(
            base.GROUP, base.VERSION, namespace, plural, name, body, field_manager=manager,
            force=True, _content_type=APPLY_PATCH)
    else:
        custom.patch_cluster_custom_object_status(
            base.GROUP, base.VERSION, plural, name, body, field_manager=manager, force=True,
            _content_type=APPLY_PATCH)


def prune_empty_maps(value: Any) -> Any:
    """The value without empty objects. Server-side apply turns an applied ``{}`` into
    null, which the CRD's schema refuses (422); leaving the key out instead removes it
    (the field is ours), and every reader defaults an absent map to an empty one."""
    if isinstance(value, dict):
        pruned = {k: prune_empty_maps(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v != {}}
    if isinstance(value, list):
        return [prune_empty_maps(v) for v in value]
    return value


class Kube:
    def __init__(self) -> None:
        self.custom = client.CustomObjectsApi()

    def apply_status(self, kind: str, namespace: str | None, name: str,
                     status: dict[str, Any], manager: str = CONTROLLER) -> None:
        apply_status(self.custom, kind, namespace, name, status, manager)

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
