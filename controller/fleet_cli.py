"""`hedgerow device register|sign|bundle` and `hedgerow broker config`: the operator side
of device identity (docs/identity.md).

Kept light: cryptography and the Kubernetes client are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys
from typing import Any

DEFAULT_CA_DIR = os.environ.get(
    "HEDGEROW_CA_DIR", str(pathlib.Path("~/.config/hedgerow/fleet-ca").expanduser()))
MERGE_PATCH = "application/merge-patch+json"


class _FailedError(Exception):
    """A permanent problem with the request; printed, exit code 1."""


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise _FailedError(f"--label {pair!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


def _ca(args: argparse.Namespace) -> Any:
    from hedgerow.controller import pki

    directory = pathlib.Path(args.ca_dir)
    if not (directory / pki.CA_KEY).exists():
        ca = pki.FleetCA.create(directory)
        print(f"created a new fleet CA in {directory} (keep {pki.CA_KEY} secret and "
              "backed up: every device certificate depends on it)", file=sys.stderr)
        return ca
    return pki.FleetCA.load(directory)


def _read_csr(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else pathlib.Path(path).read_text()
    except OSError as exc:
        raise _FailedError(f"{path}: cannot read: {exc.strerror}") from None


def _bundle(args: argparse.Namespace, thing: str, ca_pem: str, cert_pem: str) -> pathlib.Path:
    from hedgerow.core import identity

    bundle = identity.Bundle(thing=thing, broker_url=args.broker_url, ca_pem=ca_pem,
                             certificate_pem=cert_pem)
    out = pathlib.Path(args.out or f"{thing}.bundle.json")
    out.write_text(json.dumps(bundle.to_dict(), indent=1) + "\n")
    print(f"wrote {out} (public material only); on the device: hedgerow agent "
          f"install-bundle --root DIR {out.name}", file=sys.stderr)
    return out


def _sign(ca: Any, csr: str, thing: str, days: int) -> Any:
    from hedgerow.controller import pki

    try:
        return ca.sign_device_csr(csr, thing, days=days)
    except pki.CertificateRequestError as exc:
        raise _FailedError(f"refusing to sign the CSR for {thing}: {exc}") from None


def _api(args: argparse.Namespace) -> Any:
    from hedgerow.controller import kube

    kube.load_config(args.kubeconfig)
    return kube.Kube().custom


def _register(args: argparse.Namespace) -> int:
    from kubernetes.client.exceptions import ApiException

    from hedgerow.controller import pki
    from hedgerow.core import base, broker, coredevice

    thing = args.name
    if not broker.is_thing_name(thing):
        raise _FailedError(f"{thing!r} is not a valid thing name: lowercase letters, digits, "
                      "'-' and '.', at most 64 characters")
    labels = _labels(args.label)
    if not re.fullmatch(coredevice.NAMESPACE_NAME, args.namespace):
        raise _FailedError(f"--namespace {args.namespace!r} is not a namespace name")
    csr = _read_csr(args.csr) if args.csr else None
    if csr is not None and not args.broker_url:
        raise _FailedError("--broker-url (or $HEDGEROW_BROKER_URL) is needed to write a bundle")
    ca = cert = None
    if csr is not None:  # sign before any write: a refused CSR leaves the cluster alone
        ca = _ca(args)
        cert = _sign(ca, csr, thing, args.days)
    body = coredevice.CoreDevice(
        metadata=base.ObjectMeta(name=thing, labels=labels),
        spec=coredevice.CoreDeviceSpec(namespace=args.namespace, csr=csr)).to_dict()
    api = _api(args)
    plural = "coredevices"
    try:
        api.create_cluster_custom_object(base.GROUP, base.VERSION, plural, body)
        print(f"coredevice.{base.GROUP}/{thing} created in namespace {args.namespace}",
              file=sys.stderr)
    except ApiException as exc:
        if exc.status != 409:
            raise _FailedError(f"creating CoreDevice {thing}: {exc.status} {exc.reason}") from None
        existing = api.get_cluster_custom_object(base.GROUP, base.VERSION, plural, thing)
        current = (existing.get("spec") or {}).get("namespace")
        # Moving a device hands it (and what runs on it) to another team: never as a side
        # effect of re-registering, only when asked for.
        if current and current != args.namespace and not args.move:
            raise _FailedError(
                f"CoreDevice {thing} belongs to namespace {current!r}, not "
                f"{args.namespace!r}; moving it to another namespace is an explicit act: "
                "add --move (nothing was changed)") from None
        patch: dict[str, Any] = {"metadata": {"labels": labels}} if labels else {}
        spec: dict[str, Any] = {}
        if current != args.namespace:
            spec["namespace"] = args.namespace
        if csr is not None:
            spec["csr"] = csr
        if spec:
            patch["spec"] = spec
        if patch:
            api.patch_cluster_custom_object(base.GROUP, base.VERSION, plural, thing, patch,
                                            _content_type=MERGE_PATCH)
        print(f"coredevice.{base.GROUP}/{thing} exists; updated", file=sys.stderr)
    if ca is None or cert is None:
        print("no --csr: run `hedgerow agent init` on the device and register again with "
              "--csr, or commit the CSR as spec.csr (GitOps)", file=sys.stderr)
        return 0
    pem = pki.cert_pem(cert).decode()
    status = {"status": {"certificate": coredevice.CertificateStatus(
        pem=pem, not_after=cert.not_valid_after_utc).to_dict()}}
    api.patch_cluster_custom_object_status(base.GROUP, base.VERSION, plural, thing, status,
                                           _content_type=MERGE_PATCH)
    _bundle(args, thing, ca.pem, pem)
    return 0


def _sign_offline(args: argparse.Namespace) -> int:
    from hedgerow.controller import pki

    if not args.broker_url:
        raise _FailedError("--broker-url (or $HEDGEROW_BROKER_URL) is needed to write a bundle")
    ca = _ca(args)
    cert = _sign(ca, _read_csr(args.csr), args.name, args.days)
    _bundle(args, args.name, ca.pem, pki.cert_pem(cert).decode())
    return 0


def _fetch_bundle(args: argparse.Namespace) -> int:
    """GitOps: the controller signed spec.csr into status.certificate; package it."""
    from kubernetes.client.exceptions import ApiException

    from hedgerow.core import base

    if not args.broker_url:
        raise _FailedError("--broker-url (or $HEDGEROW_BROKER_URL) is needed to write a bundle")
    try:
        obj = _api(args).get_cluster_custom_object(base.GROUP, base.VERSION, "coredevices",
                                                   args.name)
    except ApiException as exc:
        raise _FailedError(f"CoreDevice {args.name}: {exc.status} {exc.reason}") from None
    pem = ((obj.get("status") or {}).get("certificate") or {}).get("pem")
    if not pem:
        raise _FailedError(f"CoreDevice {args.name} has no status.certificate yet (is spec.csr "
                      "set, and is the controller signing?)")
    ca_pem = pathlib.Path(args.ca_file or pathlib.Path(args.ca_dir) / "ca.pem").read_text()
    _bundle(args, args.name, ca_pem, pem)
    return 0


def _broker_config(args: argparse.Namespace) -> int:
    from hedgerow.core import broker

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True, mode=0o755)
    seen_as = args.config_dir or str(out.resolve())
    ca = _ca(args)
    try:
        acl = broker.render_acl(args.controller_identity)
        config = broker.render_mosquitto_config(broker.MosquittoSettings(
            cafile=f"{seen_as}/ca.pem", certfile=f"{seen_as}/server.pem",
            keyfile=f"{seen_as}/server.key", acl_file=f"{seen_as}/acl", port=args.port,
            bind=args.bind, persistence_location=args.data_dir, user=args.user))
    except ValueError as exc:
        raise _FailedError(str(exc)) from None
    (out / "ca.pem").write_text(ca.pem)
    ca.issue_server(args.host).write(out / "server.pem", out / "server.key")
    (out / "acl").write_text(acl)
    (out / "mosquitto.conf").write_text(config)
    written = ["mosquitto.conf", "acl", "ca.pem", "server.pem", "server.key (0600)"]
    if not args.no_controller_cert:
        ca.issue_controller(args.controller_identity).write(out / "controller.pem",
                                                            out / "controller.key")
        written += ["controller.pem", "controller.key (0600)"]
    print(f"wrote {', '.join(written)} to {out}")
    print(f"run: mosquitto -c {seen_as}/mosquitto.conf; controller: hedgerow controller "
          f"--broker mqtts://{args.host[0]}:{args.port} --ca {out}/ca.pem "
          f"--cert {out}/controller.pem --key {out}/controller.key")
    return 0


def _guard(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            code: int = handler(args)
        except _FailedError as exc:
            print(f"hedgerow: {exc}", file=sys.stderr)
            return 1
        return code
    return run


def _ca_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ca-dir", default=DEFAULT_CA_DIR,
                        help="the fleet CA folder (created if missing; default: "
                             "$HEDGEROW_CA_DIR or %(default)s)")


def _bundle_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker-url", default=os.environ.get("HEDGEROW_BROKER_URL"),
                        help="mqtts://HOST:PORT the device connects to "
                             "(default: $HEDGEROW_BROKER_URL)")
    parser.add_argument("--out", help="bundle file (default: NAME.bundle.json)")
    parser.add_argument("--days", type=int, default=365,
                        help="certificate validity in days (default: %(default)s)")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    device = subparsers.add_parser("device", help="register devices and sign their CSRs")
    dev = device.add_subparsers(dest="action", metavar="ACTION", required=True)

    reg = dev.add_parser(
        "register", help="create the CoreDevice; with --csr, sign it and write a bundle",
        description="Create (or update) the CoreDevice NAME in --namespace with its labels. "
                    "Given the CSR from `hedgerow agent init`, check and sign it with the fleet "
                    "CA, store the CSR in spec.csr and the certificate in status.certificate, "
                    "and write the device's bootstrap bundle (certificate, CA, broker URL).")
    reg.add_argument("name", metavar="NAME", help="the thing name")
    reg.add_argument("--namespace", "-n", required=True,
                     help="the namespace (team) the device belongs to: only its ThingGroups "
                          "and Deployments reach the device")
    reg.add_argument("--move", action="store_true",
                     help="allow changing the namespace of an existing CoreDevice")
    reg.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    reg.add_argument("--csr", metavar="FILE", help="the device's CSR ('-' for stdin)")
    reg.add_argument("--kubeconfig", help="kubeconfig (default: in-cluster or ~/.kube/config)")
    _ca_args(reg)
    _bundle_args(reg)
    reg.set_defaults(handler=_guard(_register))

    sign = dev.add_parser(
        "sign", help="sign a CSR and write a bundle, without the cluster",
        description="Offline signing: check and sign NAME's CSR with the fleet CA and write "
                    "the bootstrap bundle. Touches no Kubernetes object.")
    sign.add_argument("name", metavar="NAME")
    sign.add_argument("--csr", required=True, metavar="FILE", help="'-' for stdin")
    _ca_args(sign)
    _bundle_args(sign)
    sign.set_defaults(handler=_guard(_sign_offline))

    fetch = dev.add_parser(
        "bundle", help="write the bundle from the certificate in the CoreDevice's status",
        description="GitOps round trip: after the CSR was committed as spec.csr and the "
                    "controller wrote status.certificate, package it for the device.")
    fetch.add_argument("name", metavar="NAME")
    fetch.add_argument("--kubeconfig")
    fetch.add_argument("--ca-file", help="the fleet CA certificate (default: CA_DIR/ca.pem)")
    _ca_args(fetch)
    _bundle_args(fetch)
    fetch.set_defaults(handler=_guard(_fetch_bundle))

    brk = subparsers.add_parser("broker", help="cloud broker configuration")
    brk_sub = brk.add_subparsers(dest="action", metavar="ACTION", required=True)
    conf = brk_sub.add_parser(
        "config", help="write mosquitto.conf, the ACL and the broker's certificates",
        description="Write a mosquitto configuration for the cloud broker: one TLS listener, "
                    "client certificates from the fleet CA required, the certificate CN as "
                    "identity, and the Hedgerow ACL. Also writes the controller's client "
                    "certificate. See docs/identity.md for other brokers.")
    conf.add_argument("--out", required=True, metavar="DIR")
    conf.add_argument("--host", action="append", default=None,
                      help="DNS name or IP in the server certificate (repeatable; default: "
                           "127.0.0.1 and localhost)")
    conf.add_argument("--port", type=int, default=8883)
    conf.add_argument("--bind", default="127.0.0.1",
                      help="listen address (default: %(default)s; 0.0.0.0 for a real fleet)")
    conf.add_argument("--config-dir", help="OUT as the broker sees it (e.g. a container "
                                           "mount); default: OUT")
    conf.add_argument("--data-dir", help="persistence folder (retained documents and "
                                         "sessions survive restarts); default: none")
    conf.add_argument("--user", help="OS user mosquitto runs as (default: mosquitto)")
    conf.add_argument("--controller-identity", default="hedgerow_controller",
                      help="the controller certificate's CN (default: %(default)s)")
    conf.add_argument("--no-controller-cert", action="store_true")
    _ca_args(conf)
    conf.set_defaults(handler=_guard(_with_hosts(_broker_config)))


def _with_hosts(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        args.host = args.host or ["127.0.0.1", "localhost"]
        code: int = handler(args)
        return code
    return run
