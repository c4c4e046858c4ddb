"""Subcommands this side adds to `hedgerow`: `controller` (run the operator) and `plan`
(dry run of deployments against the live cluster). Heavy imports stay inside handlers."""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any


def _controller(args: argparse.Namespace) -> int:
    from hedgerow.controller import broker, operator

    if args.broker.startswith("mqtts://") and not args.ca:
        print("--ca is required with an mqtts:// broker", file=sys.stderr)
        return 2
    if args.cert:
        problem = _check_identity(args.cert)
        if problem:
            print(problem, file=sys.stderr)
            return 2
    settings = operator.Settings(
        broker=broker.BrokerSettings(args.broker, args.ca, args.cert, args.key, args.client_id),
        kubeconfig=args.kubeconfig, resync=args.resync, status_interval=args.status_interval,
        rollout_window=args.rollout_minute, verbose=args.verbose, liveness=args.liveness,
        ca_dir=args.ca_dir,
    )
    operator.run(settings)
    return 0


def _check_identity(cert_path: str) -> str | None:
    """The controller's certificate CN must be a name no device can be issued
    (`hedgerow broker config` makes one: CN hedgerow_controller)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from hedgerow.core import broker as core_broker

    try:
        cert = x509.load_pem_x509_certificate(pathlib.Path(cert_path).read_bytes())
    except (OSError, ValueError) as exc:
        return f"--cert {cert_path}: cannot read a PEM certificate: {exc}"
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else ""
    try:
        core_broker.check_controller_identity(cn)
    except ValueError as exc:
        return f"--cert {cert_path}: {exc}"
    return None


def _plan(args: argparse.Namespace) -> int:
    from hedgerow.controller import fleet, kube
    from hedgerow.core import (
        component,
        coredevice,
        deployment,
        manifest,
        privilege,
        resolve,
        thinggroup,
    )

    proposed: list[Any] = []
    for path in args.files:
        try:
            proposed += manifest.parse_documents(pathlib.Path(path).read_text(), path)
        except OSError as exc:
            print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
            return 2
        except manifest.InvalidDocumentError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            return 2
    kube.load_config(args.kubeconfig)
    api = kube.Kube()
    live: dict[str, list[Any]] = {}
    for kind, model in (("Component", component.Component), ("ThingGroup", thinggroup.ThingGroup),
                        ("Deployment", deployment.Deployment),
                        ("CoreDevice", coredevice.CoreDevice)):
        live[kind] = [model.model_validate(item) for item in api.fetch_all(kind)]

    def overlay(kind: str) -> list[Any]:
        # Objects from the files replace live ones of the same namespace/name.
        mine = {}
        for obj in proposed:
            if obj.kind == kind:
                meta = obj.metadata
                if kind != "CoreDevice" and not meta.namespace:
                    meta = meta.model_copy(update={"namespace": args.namespace})
                    obj = obj.model_copy(update={"metadata": meta})
                mine[(meta.namespace or "", meta.name)] = obj
        kept = [o for o in live[kind]
                if (o.metadata.namespace or "", o.metadata.name) not in mine]
        return kept + list(mine.values())

    levels = {name: privilege.resolve_level(labels)
              for name, labels in api.fetch_namespace_labels().items()}
    before = resolve.Fleet(live["ThingGroup"], live["Deployment"], live["Component"], levels)
    after = resolve.Fleet(overlay("ThingGroup"), overlay("Deployment"), overlay("Component"),
                          levels)
    problems: dict[str, str] = {}
    changed = 0
    for device in sorted(live["CoreDevice"], key=lambda d: d.metadata.name):
        thing, labels = device.metadata.name, device.metadata.labels
        namespace = device.spec.namespace
        if namespace is None:
            continue  # in no namespace: nothing reaches it
        platform = device.status.platform if device.status else None
        old = before.resolve(thing, labels, platform, namespace=namespace).combination
        new = after.resolve(thing, labels, platform, namespace=namespace)
        if new.problems:
            for p in new.problems:
                problems[f"{p.deployment}: {p.reason}: {p.message}"] = thing
            print(f"{thing}: would keep its current state ({new.problems[0].reason})")
            continue
        changes = fleet.plan_changes(old.components, new.combination.components)
        if not changes:
            if not args.quiet:
                print(f"{thing}: no change")
            continue
        changed += 1
        print(f"{thing}:")
        for change in changes:
            print(f"  {change}")
    empty = after.empty_targets((d.metadata.name, d.metadata.labels, d.spec.namespace)
                                for d in live["CoreDevice"] if d.spec.namespace is not None)
    for p in empty:
        problems[f"{p.deployment}: {p.reason}: {p.message}"] = ""
    for text in problems:
        print(f"problem: {text}", file=sys.stderr)
    print(f"{changed} device(s) would change")
    return 1 if problems else 0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    run = subparsers.add_parser(
        "controller", help="run the controller (a kopf operator) against a cluster",
        description="Watch Components, ThingGroups, Deployments and CoreDevices; publish each "
                    "device's desired state to the MQTT broker; fold device status back.",
    )
    run.add_argument("--kubeconfig", help="default: in-cluster, then ~/.kube/config")
    run.add_argument("--broker", required=True, metavar="URL",
                     help="mqtts://host:8883 (mTLS) or, for tests, mqtt://127.0.0.1:PORT")
    run.add_argument("--ca", help="CA bundle that signed the broker's certificate")
    run.add_argument("--cert", help="the controller's client certificate (PEM)")
    run.add_argument("--key", help="the controller's client key (PEM)")
    run.add_argument("--client-id", default="hedgerow_controller",
                     help="MQTT client id (brokers that take the identity from the "
                          "certificate, as `hedgerow broker config` sets up, override it)")
    run.add_argument("--ca-dir", metavar="DIR",
                     help="the fleet CA folder (ca.pem, ca.key): sign each CoreDevice's "
                          "spec.csr into status.certificate (GitOps registration)")
    run.add_argument("--resync", type=float, default=60.0, metavar="SECONDS",
                     help="re-plan the whole fleet at least this often (default 60)")
    run.add_argument("--status-interval", type=float, default=1.0, metavar="SECONDS",
                     help="at most one CoreDevice status write per device this often")
    run.add_argument("--rollout-minute", type=float, default=60.0, metavar="SECONDS",
                     help=argparse.SUPPRESS)  # tests shorten rollout windows
    run.add_argument("--liveness", metavar="URL",
                     help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(handler=_controller)

    plan = subparsers.add_parser(
        "plan", help="dry run: what each device would run after applying FILEs",
        description="Resolve the live cluster with the Deployments (and Components, "
                    "ThingGroups) in FILEs applied, and print per device the components "
                    "that would be added (+), changed (~) or removed (-). Changes nothing. "
                    "Rollouts are ignored: this is where every device ends up.",
    )
    plan.add_argument("files", nargs="+", metavar="FILE")
    plan.add_argument("--kubeconfig")
    plan.add_argument("-n", "--namespace", default="default",
                      help="namespace for objects in FILEs that name none (default: default)")
    plan.add_argument("-q", "--quiet", action="store_true", help="omit unchanged devices")
    plan.set_defaults(handler=_plan)
