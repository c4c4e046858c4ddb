"""`hedgerow agent run`, `component`, `deployment` and `logs` subcommands.

Kept light: only argparse here; the agent, asyncio and pydantic-heavy modules are
imported inside handlers, so `hedgerow component list` starts fast on a small device.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from typing import Any

DEFAULT_ROOT = os.environ.get("HEDGEROW_ROOT", "/var/lib/hedgerow")


def _root(args: argparse.Namespace) -> pathlib.Path:
    return pathlib.Path(args.root)


def _call(args: argparse.Namespace, payload: dict[str, Any]) -> Any:
    from hedgerow.agent import control
    return control.request(_root(args) / "agent.sock", payload)


def _print(args: argparse.Namespace, rows: Any, columns: list[str]) -> None:
    if args.output == "json":
        print(json.dumps(rows, indent=2, default=str))
        return
    rows = rows if isinstance(rows, list) else [rows]
    table = [[str(r.get(c, "") if r.get(c) is not None else "") for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in table)]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _guard(fn: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        from hedgerow.agent import control
        try:
            result: int = fn(args)
        except control.CommandError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return result
    return wrapped


def _build_gate(args: argparse.Namespace) -> int:
    from hedgerow.agent import gatebuild
    try:
        built = gatebuild.apply_build(args.out or gatebuild.DEFAULT_OUTPUT, args.cc)
    except (gatebuild.GateBuildError, OSError) as exc:
        print(f"hedgerow agent build-gate: {exc}", file=sys.stderr)
        return 1
    print(built)
    return 0


def _agent_run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from hedgerow.agent import agent as agent_
    from hedgerow.agent import settings as settings_
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    from hedgerow.core import cloudmessage, privilege
    settings = settings_.Settings(resync_s=args.resync, default_user=args.default_user,
                               deployment_timeout_s=args.deployment_timeout,
                               settle_s=args.settle,
                               max_privilege=privilege.Level(args.max_privilege),
                               aws_region=args.region or settings_.DEFAULT_REGION,
                               cloud_spool_policy=cloudmessage.SpoolPolicy(
                                   args.cloud_spool_policy),
                               cloud_spool_max_messages=args.cloud_spool_max_messages,
                               cloud_spool_max_bytes=args.cloud_spool_max_bytes)
    the_agent = agent_.Agent(args.root, args.thing, settings)
    if args.metrics_port is not None:  # opt-in: prometheus_client is not even imported
        from hedgerow.agent import metrics

        metrics.serve(the_agent, args.metrics_port, args.metrics_address)
    cloud = _connector(args, the_agent.cloud)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, the_agent.shutdown)
        await the_agent.run()

    if cloud is not None:
        cloud.start()  # its own thread; it talks to the loop only through files
    try:
        asyncio.run(main())
    finally:
        if cloud is not None:
            cloud.stop()
    return 0


def _connector(args: argparse.Namespace, proxy: Any = None) -> Any:
    """The cloud connector, when an identity is installed (`hedgerow agent install-bundle`).

    Without one, or with one that cannot be used, the agent still runs: it converges on
    the desired document already on disk and on local deployments."""
    import logging

    if not (_root(args) / "identity" / "connection.json").exists():
        logging.info("no identity installed; running without the cloud connection")
        return None
    from hedgerow.agent import connector, identity

    try:
        return connector.Connector.from_root(_root(args), args.thing,
                                             heartbeat_s=args.heartbeat, proxy=proxy)
    except (identity.IdentityError, OSError, ValueError) as exc:
        logging.error("cloud connector not started: %s; running on the last desired "
                      "state on disk", exc)
        return None


@_guard
def _component(args: argparse.Namespace) -> int:
    if args.action == "list":
        _print(args, _call(args, {"op": "component.list"}),
               ["name", "version", "state", "pid", "message"])
    elif args.action == "details":
        result = _call(args, {"op": "component.details", "name": args.name})
        if args.output == "json":
            print(json.dumps(result, indent=2))
        else:
            for key, value in result.items():
                shown = json.dumps(value) if isinstance(value, dict | list) else value
                print(f"{key + ':':16}{shown}")
    else:
        result = _call(args, {"op": f"component.{args.action}", "name": args.name})
        _print(args, result, ["name", "version", "state"])
    return 0


@_guard
def _deployment(args: argparse.Namespace) -> int:
    if args.action == "create":
        recipes = {}
        if args.recipes:
            folder = pathlib.Path(args.recipes)  # Greengrass recipes may be JSON
            for path in sorted([*folder.glob("*.y*ml"), *folder.glob("*.json")]):
                recipes[path.name] = path.read_text()
        merge = dict(item.split("=", 1) for item in args.merge)
        update = json.loads(args.update_config) if args.update_config else {}
        result = _call(args, {"op": "deployment.create", "recipes": recipes, "merge": merge,
                              "remove": args.remove, "update_config": update,
                              "artifacts": str(pathlib.Path(args.artifacts).resolve())
                              if args.artifacts else None})
        _print(args, result, ["id", "components"])
    elif args.action == "list":
        _print(args, _call(args, {"op": "deployment.list"}),
               ["id", "source", "outcome", "revision", "reason"])
    else:
        _print(args, _call(args, {"op": "deployment.status", "id": args.id}),
               ["id", "outcome", "revision", "rolledBackTo", "reason"])
    return 0


def _logs(args: argparse.Namespace) -> int:
    path = _root(args) / "logs" / f"{args.name}.log"
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - args.since)) \
        if args.since else ""
    if not path.exists():
        print(f"error: no log for {args.name} at {path}", file=sys.stderr)
        return 1
    olds = sorted(path.parent.glob(f"{args.name}.log.*"), reverse=True)
    for file in [*olds, path]:
        for line in file.read_text(errors="replace").splitlines():
            if line[:19] >= since:
                print(line)
    if args.follow:
        try:
            _follow(path)
        except KeyboardInterrupt:
            return 0
    return 0


def _follow(path: pathlib.Path) -> None:
    """Print lines appended to `path`, across rotations: once the writer has moved the
    file aside (rename) and started a new one, the rest of the old one is printed, then
    the new one from its start — nothing is skipped or printed twice."""
    handle = path.open(errors="replace")
    handle.seek(0, os.SEEK_END)
    try:
        while True:
            line = handle.readline()
            if line:
                print(line, end="", flush=True)
                continue
            try:
                rotated = path.stat().st_ino != os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                rotated = False  # between the rename and the new file: wait for it
            if rotated:
                rest = handle.read()
                if rest:
                    print(rest, end="", flush=True)
                handle.close()
                handle = path.open(errors="replace")
            else:
                time.sleep(0.2)
    finally:
        handle.close()


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=DEFAULT_ROOT,
                        help=f"the agent's root folder (default: {DEFAULT_ROOT}, or "
                             "$HEDGEROW_ROOT)")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")


def _spool_bound(most: int) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if not 1 <= value <= most:
            raise argparse.ArgumentTypeError(f"must be 1 to {most} (got {value})")
        return value
    return parse


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    from hedgerow.core import limits  # constants only: the CLI still starts fast

    agent = subparsers.add_parser("agent", help="run the edge agent on this device")
    agent_sub = agent.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = agent_sub.add_parser(
        "run", help="run the converge loop in the foreground",
        description="Run the edge agent: watch ROOT/desired and ROOT/deployments, run the "
                    "components they name as processes, and keep them converged. With an "
                    "identity installed (`hedgerow agent install-bundle`) the cloud "
                    "connector runs too. Stop "
                    "with SIGTERM; components keep running and are adopted on restart.")
    run.add_argument("--root", default=DEFAULT_ROOT, help="root folder (default: %(default)s)")
    run.add_argument("--thing", required=True, help="this device's thing name")
    run.add_argument("--default-user", default="nobody",
                     help="user for components without runWith.posixUser "
                          "(default: %(default)s)")
    run.add_argument("--max-privilege", choices=["restricted", "baseline", "privileged"],
                     default="baseline",
                     help="the most a component may get on this device (as the namespace "
                          "label hedgerow.dev/enforce, checked again here): a desired "
                          "document needing more is refused and no step runs as uid/gid "
                          "0 below privileged (default: %(default)s)")
    run.add_argument("--resync", type=float, default=30.0,
                     help="seconds between periodic passes (default: %(default)s)")
    run.add_argument("--deployment-timeout", type=float, default=600.0,
                     help="seconds a revision may take to become RUNNING (default: %(default)s)")
    run.add_argument("--settle", type=float, default=2.0,
                     help="seconds every component must stay RUNNING before a revision "
                          "counts as succeeded (default: %(default)s)")
    run.add_argument("--region", default=None,
                     help="AWS_REGION given to components (default: us-east-1)")
    run.add_argument("--cloud-spool-policy", choices=["refuse-new", "drop-oldest"],
                     default="refuse-new",
                     help="when the spool of components' cloud publishes made offline is "
                          "full: refuse the new one (the component is told; default) or "
                          "drop the oldest queued ones")
    run.add_argument("--cloud-spool-max-messages", type=_spool_bound(
        limits.CLOUD_SPOOL_MAX_MESSAGES), default=limits.CLOUD_SPOOL_MAX_MESSAGES,
        metavar="N", help="at most N spooled cloud messages (default and most: "
                          "%(default)s)")
    run.add_argument("--cloud-spool-max-bytes", type=_spool_bound(
        limits.CLOUD_SPOOL_MAX_BYTES), default=limits.CLOUD_SPOOL_MAX_BYTES,
        metavar="BYTES", help="at most BYTES of spooled cloud messages (default and "
                              "most: %(default)s)")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                     default="info", help="debug adds each pass's actions and timings "
                     "(default: %(default)s)")
    run.add_argument("--heartbeat", type=float, default=60.0, metavar="SECONDS",
                     help="resend an unchanged status report this often (default: "
                          "%(default)s)")
    run.add_argument("--metrics-port", type=int, metavar="PORT",
                     help="serve Prometheus metrics on http://ADDRESS:PORT/metrics "
                          "(off by default)")
    run.add_argument("--metrics-address", default="127.0.0.1", metavar="ADDRESS",
                     help="the address --metrics-port listens on (default: %(default)s: "
                          "loopback only)")
    run.set_defaults(handler=_agent_run)
    gate = agent_sub.add_parser(
        "build-gate", help="compile hedgerow-gate for this device (once, at install)",
        description="Compile the agent's hedgerow-gate (the first program of every step it "
                    "starts as another user) from the source shipped in the package, for "
                    "this machine. Run it once after installing, as the user who installed "
                    "the package. Without it the agent uses setpriv.")
    gate.add_argument("--out", type=pathlib.Path, default=None,
                      help="where to put it (default: beside the agent's modules, where the "
                           "agent looks; elsewhere needs HEDGEROW_GATE=PATH for the agent)")
    gate.add_argument("--cc", default=os.environ.get("CC", "cc"),
                      help="the C compiler (default: $CC or cc)")
    gate.set_defaults(handler=_build_gate)

    comp = subparsers.add_parser("component", help="list and control components on a device")
    comp_sub = comp.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (("list", "components and their states"),
                         ("details", "one component: state, config, limits"),
                         ("restart", "stop and start one component"),
                         ("stop", "stop one component until the next revision or restart")):
        p = comp_sub.add_parser(action, help=text)
        _common(p)
        if action != "list":
            p.add_argument("name")
        p.set_defaults(handler=_component)

    dep = subparsers.add_parser("deployment", help="local deployments on a device")
    dep_sub = dep.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = dep_sub.add_parser(
        "create", help="merge components into the local deployment",
        description="Add, update or remove components in this device's local deployment.")
    _common(create)
    create.add_argument("--recipes", metavar="DIR",
                        help="folder of Component YAML files or Greengrass recipes")
    create.add_argument("--artifacts", metavar="DIR",
                        help="folder copied to ROOT/local-artifacts (for file:// URIs)")
    create.add_argument("--merge", action="append", default=[], metavar="NAME=VERSION")
    create.add_argument("--remove", action="append", default=[], metavar="NAME")
    create.add_argument("--update-config", metavar="JSON",
                        help='{"NAME": {"merge": {...}, "reset": ["/ptr"]}}')
    create.set_defaults(handler=_deployment)
    lst = dep_sub.add_parser(
        "list", help="deployments and their outcomes",
        description="Every revision this device was asked to run, with its "
                    "outcome (IN_PROGRESS, SUCCEEDED, FAILED, ROLLED_BACK, or SUPERSEDED "
                    "when a newer one came before it settled) and its source: local "
                    "(files in ROOT/deployments, from `deployment create` or by hand), "
                    "cloud, or cloud+local.")
    _common(lst)
    lst.set_defaults(handler=_deployment)
    status = dep_sub.add_parser("status", help="one deployment's outcome")
    _common(status)
    status.add_argument("id")
    status.set_defaults(handler=_deployment)

    logs = subparsers.add_parser("logs", help="component logs on a device")
    logs_sub = logs.add_subparsers(dest="action", metavar="ACTION", required=True)
    get = logs_sub.add_parser("get", help="print a component's log")
    get.add_argument("--root", default=DEFAULT_ROOT)
    get.add_argument("name")
    get.add_argument("-f", "--follow", action="store_true")
    get.add_argument("--since", type=float, metavar="SECONDS",
                     help="only lines from the last SECONDS")
    get.set_defaults(handler=_logs)
