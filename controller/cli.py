"""Subcommands this side adds to `hedgerow`: `controller` (run the operator) and `plan`
(dry run of deployments against the live cluster). Heavy imports stay inside handlers."""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the handlers import what they use: `hedgerow --help` stays fast
    from hedgerow.core import deployment, resolve


def _controller(args: argparse.Namespace) -> int:
    from hedgerow.controller import broker, leader, operator

    if args.broker.startswith("mqtts://") and not args.ca:
        print("--ca is required with an mqtts:// broker", file=sys.stderr)
        return 2
    if args.cert:
        problem = _check_identity(args.cert)
        if problem:
            print(problem, file=sys.stderr)
            return 2
    # Desired documents are signed with the fleet's signing key: --signing-key, or
    # signing.key in the fleet CA folder (made there on first use).
    signing_key = args.signing_key or (
        str(pathlib.Path(args.ca_dir) / "signing.key") if args.ca_dir else None)
    settings = operator.Settings(
        broker=broker.BrokerSettings(args.broker, args.ca, args.cert, args.key, args.client_id,
                                     signing_key=signing_key),
        kubeconfig=args.kubeconfig, resync=args.resync, status_interval=args.status_interval,
        rollout_window=args.rollout_minute, verbose=args.verbose, liveness=args.liveness,
        ca_dir=args.ca_dir, metrics=args.metrics, stats_file=args.stats_file,
        last_seen_interval=args.last_seen_interval, status_workers=args.status_workers,
        status_qps=args.status_qps,
        leader_election=leader.Settings(
            namespace=args.leader_elect_namespace or leader.default_namespace(),
            name=args.leader_elect_name, duration_s=args.leader_elect_lease,
        ) if args.leader_elect else None,
    )
    if args.leader_elect_lease < 2:
        print("--leader-elect-lease must be at least 2 seconds", file=sys.stderr)
        return 2
    if args.metrics:
        from hedgerow.controller import metrics

        try:
            metrics.resolve_address(args.metrics)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
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


_WORDS = {"+": "added", "~": "changed", "-": "removed"}
LEGEND = "+ added, ~ changed, - removed"


def _plan(args: argparse.Namespace) -> int:
    """Dry run for CI. The baseline of each device is what the controller has published
    to it: every Deployment at the generation the device's document was built from
    (CoreDevice status.desiredGenerations, older specs from the Deployment's
    status.history) — so while a Deployment is failing and devices keep its last good
    generation, planning that good version shows no change. Deployments not in FILEs stay
    at that generation after too: the plan shows what the files change. Exit 1 only for
    problems the files cause or change; the cluster's other problems are listed as
    context."""
    import json

    from hedgerow.controller import kube
    from hedgerow.core import (
        accesscontrol,
        component,
        coredevice,
        deployment,
        fleet,
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

    # The Deployments FILEs define (overlay keeps the live objects it does not replace).
    planned = {resolve.deployment_id(d) for d in overlay("Deployment")
               if not any(d is o for o in live["Deployment"])}
    levels = {name: privilege.resolve_level(labels)
              for name, labels in api.fetch_namespace_labels().items()}
    current = resolve.Fleet(live["ThingGroup"], live["Deployment"], live["Component"], levels)
    before = resolve.Fleet(live["ThingGroup"], live["Deployment"], live["Component"], levels)
    after = resolve.Fleet(overlay("ThingGroup"), overlay("Deployment"), overlay("Component"),
                          levels)
    # A CoreDevice in no namespace (stored before tenancy) is reached by nothing.
    devices = sorted((d for d in live["CoreDevice"] if d.spec.namespace is not None),
                     key=lambda d: d.metadata.name)
    everyone = [(d.metadata.name, d.metadata.labels, d.spec.namespace) for d in devices]

    def key(p: resolve.Problem) -> str:
        return f"{p.deployment}: {p.reason}: {p.message}"

    # The cluster's own problems, with every Deployment at its current generation.
    context: dict[str, resolve.Problem] = {}
    for device in devices:
        platform = device.status.platform if device.status else None
        for p in current.resolve(device.metadata.name, device.metadata.labels,
                                 platform, namespace=device.spec.namespace).problems:
            context[key(p)] = p
    context.update((key(p), p) for p in current.empty_targets(everyone))

    blocking: dict[str, None] = {}
    rows: list[dict[str, Any]] = []
    for device in devices:
        thing, labels = device.metadata.name, device.metadata.labels
        status = device.status or coredevice.CoreDeviceStatus()
        sent = status.desired_generations

        def held(d: deployment.Deployment, fleet_: resolve.Fleet,
                 sent: dict[str, int] = sent) -> deployment.Deployment:
            return _held(fleet_, d, sent.get(resolve.deployment_id(d)))

        namespace = device.spec.namespace
        old = before.resolve(thing, labels, status.platform,
                             lambda d: held(d, before), namespace=namespace).combination
        new = after.resolve(thing, labels, status.platform,
                            lambda d: d if resolve.deployment_id(d) in planned
                            else held(d, after), namespace=namespace)
        if new.problems:
            for p in new.problems:
                if p.deployment in planned or key(p) not in context:
                    blocking[key(p)] = None
            rows.append({"thing": thing, "keeps": new.problems[0].reason, "changes": []})
            continue
        changes = fleet.plan_changes(old.components, new.combination.components)
        # Each added or changed component's effective IPC permissions (its merged
        # accessControl); a policy that cannot work is a problem of these files.
        policies = {c.name: accesscontrol.resolve_policies(c.name, c.configuration)
                    for c in new.combination.components}
        for change in changes:
            for wrong in policies.get(change.name, accesscontrol.Policies("")).problems:
                blocking[f"{thing}: {wrong}"] = None
        rows.append({"thing": thing, "changes": [
            {"op": _WORDS[c.op], "name": c.name, "before": c.before, "after": c.after,
             "what": c.what, "permissions": accesscontrol.render_permissions(
                 policies.get(c.name, accesscontrol.Policies(c.name)))}
            for c in changes]})
    for p in after.empty_targets(everyone):
        if p.deployment in planned or key(p) not in context:
            blocking[key(p)] = None
    # Context: what the cluster has wrong anyway, but not what FILEs replace (a file
    # that fixes a failing Deployment does not list the failure it fixes).
    others = [text for text, p in context.items()
              if text not in blocking and p.deployment not in planned]
    changed = sum(1 for row in rows if row["changes"])

    if args.output == "json":
        print(json.dumps({"devices": rows, "changed": changed, "problems": list(blocking),
                          "context": others}, indent=2))
        return 1 if blocking else 0
    for row in rows:
        if "keeps" in row:
            print(f"{row['thing']}: would keep its current state ({row['keeps']})")
        elif not row["changes"]:
            if not args.quiet:
                print(f"{row['thing']}: no change")
        else:
            print(f"{row['thing']}:")
            for c in row["changes"]:
                print(f"  {_SYMBOLS[c['op']]} {c['name']} " + _describe(c))
                for line in c["permissions"] if c["op"] != "removed" else ():
                    print(f"      may call {line}")
    for text in blocking:
        print(f"problem: {text}", file=sys.stderr)
    for text in others:
        print(f"context (in the cluster already, not caused by these files): {text}",
              file=sys.stderr)
    print(f"{changed} device(s) would change" + (f" ({LEGEND})" if changed else ""))
    return 1 if blocking else 0


_SYMBOLS = {word: symbol for symbol, word in _WORDS.items()}


def _describe(change: dict[str, Any]) -> str:
    before, after, what = change["before"], change["after"], change["what"]
    if change["op"] == "added":
        return str(after)
    if change["op"] == "removed":
        return str(before)
    version = after if before == after else f"{before} -> {after}"
    return f"{version}" + (f" ({what})" if what else "")


def _held(fleet_: resolve.Fleet, d: deployment.Deployment,
          record: int | None) -> deployment.Deployment:
    """`d` at the generation a device's published document was built from, when that is
    an older one the Deployment's status.history still has; else `d` as it is."""
    from hedgerow.core import fleet

    status = d.status
    if record is None or record == (d.metadata.generation or 0) or status is None:
        return d
    for spec in status.history:
        if spec.generation == record:
            return fleet.render_history_object(fleet_, d, spec)
    return d


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
    run.add_argument("--signing-key", metavar="FILE",
                     help="the Ed25519 key that signs every desired document (made on "
                          "first use; default: CA_DIR/signing.key with --ca-dir). Devices "
                          "pin its public half from their bundle and refuse unsigned "
                          "documents; without a key documents go out unsigned")
    run.add_argument("--resync", type=float, default=60.0, metavar="SECONDS",
                     help="re-plan the whole fleet at least this often (default 60)")
    run.add_argument("--status-interval", type=float, default=1.0, metavar="SECONDS",
                     help="at most one CoreDevice status write per device this often")
    run.add_argument("--last-seen-interval", type=float, default=300.0, metavar="SECONDS",
                     help="a report that changes nothing but the device's lastSeen is "
                          "written only when the lastSeen written is this much older "
                          "(default 300; every other change is written as it happens)")
    run.add_argument("--status-workers", type=int, default=8, metavar="N",
                     help="CoreDevice status writes in flight at once (default 8)")
    run.add_argument("--status-qps", type=float, default=100.0, metavar="N",
                     help="at most N CoreDevice status writes per second on average, "
                          "bursts of one second's worth (default 100; 0: no budget)")
    run.add_argument("--rollout-minute", type=float, default=60.0, metavar="SECONDS",
                     help=argparse.SUPPRESS)  # tests shorten rollout windows
    run.add_argument("--liveness", metavar="URL",
                     help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--metrics", metavar="HOST:PORT",
                     help="serve Prometheus metrics on http://HOST:PORT/metrics (PORT "
                          "alone: 127.0.0.1; :PORT: every interface); off by default")
    run.add_argument("--leader-elect", action="store_true",
                     help="run as one of several replicas: only the holder of a "
                          "coordination.k8s.io Lease is active, the others stand by "
                          "(docs/controller.md: High availability)")
    run.add_argument("--leader-elect-namespace", metavar="NAMESPACE",
                     help="the Lease's namespace (default: the pod's own, else default)")
    run.add_argument("--leader-elect-name", default="hedgerow-controller", metavar="NAME",
                     help="the Lease's name (default: %(default)s)")
    run.add_argument("--leader-elect-lease", type=int, default=8, metavar="SECONDS",
                     help="a standby takes over this long after the active replica's last "
                          "renew (default: %(default)s; renewed every 1/8 of it)")
    run.add_argument("--stats-file", metavar="FILE",
                     help="write the controller's counters (passes, published, "
                          "brokerConnected) to FILE as JSON after every pass; SIGUSR1 "
                          "asks for a pass now")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(handler=_controller)

    plan = subparsers.add_parser(
        "plan", help="dry run: what each device would run after applying FILEs",
        description="Resolve the cluster with the Deployments (and Components, "
                    "ThingGroups) in FILEs applied, and print per device the components "
                    "that would be added (+), changed (~) or removed (-). Changes nothing. "
                    "The baseline is what the controller has published to each device "
                    "(each Deployment at the generation the device got: while a rollout "
                    "is failing, its last good one); Deployments not in FILEs stay there, "
                    "so the plan shows what FILEs change. Exit status: 0, or 1 when FILEs "
                    "cause or change a problem (an unresolvable or empty Deployment); "
                    "the cluster's other problems are printed as context and do not fail "
                    "the plan; 2 when a FILE cannot be read or is invalid.",
    )
    plan.add_argument("files", nargs="+", metavar="FILE")
    plan.add_argument("--kubeconfig")
    plan.add_argument("-n", "--namespace", default="default",
                      help="namespace for objects in FILEs that name none (default: default)")
    plan.add_argument("-q", "--quiet", action="store_true", help="omit unchanged devices")
    plan.add_argument("-o", "--output", choices=["text", "json"], default="text",
                      help="json: {devices: [{thing, changes: [{op: added|changed|removed, "
                           "name, before, after, what}], keeps?}], changed, problems, "
                           "context} (default: text)")
    plan.set_defaults(handler=_plan)
