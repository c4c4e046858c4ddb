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

from hedgerow import files

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


def _ca(args: argparse.Namespace, create: bool = False) -> Any:
    """The fleet CA in --ca-dir. Only `broker config` creates one (`create`), and says so
    loudly: a CA made anywhere else would sign certificates no broker trusts."""
    from hedgerow.controller import pki

    directory = pathlib.Path(args.ca_dir)
    if (directory / pki.CA_KEY).exists():
        return pki.FleetCA.load(directory)
    if not create:
        raise _FailedError(
            f"no fleet CA in {directory} (no {pki.CA_KEY}); pass --ca-dir (or set "
            "$HEDGEROW_CA_DIR) to the folder of the CA your broker trusts - "
            "`hedgerow broker config --ca-dir DIR` creates one")
    ca = pki.FleetCA.create(directory)
    print(f"WARNING: created a NEW fleet CA in {directory}\n"
          f"WARNING: every device certificate depends on it: keep {pki.CA_KEY} secret and "
          "backed up,\nWARNING: and give this folder as --ca-dir (or $HEDGEROW_CA_DIR) to "
          "`device register|sign|bundle` and `controller`", file=sys.stderr)
    return ca


BROKER_FILE = "broker.json"  # in the CA folder, written by `broker config`


def _broker_url(args: argparse.Namespace) -> str:
    """The URL a bundle gives the device: --broker-url, else $HEDGEROW_BROKER_URL, else
    what `broker config` wrote beside the fleet CA; which one is said on stderr."""
    url: str | None = args.broker_url
    origin = "--broker-url"
    if not url and os.environ.get("HEDGEROW_BROKER_URL"):
        url, origin = os.environ["HEDGEROW_BROKER_URL"], "$HEDGEROW_BROKER_URL"
    if not url:
        path = pathlib.Path(args.ca_dir) / BROKER_FILE
        try:
            url = str(json.loads(path.read_text())["brokerUrl"])
        except (OSError, ValueError, KeyError, TypeError):
            raise _FailedError(
                f"no broker URL for the bundle: pass --broker-url mqtts://HOST:PORT (or set "
                f"$HEDGEROW_BROKER_URL); {path}, which `hedgerow broker config` writes, "
                "is missing or unreadable") from None
        origin = f"{path}, written by `hedgerow broker config`"
    print(f"broker URL for the bundle: {url} (from {origin})", file=sys.stderr)
    return url


def _read_csr(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else pathlib.Path(path).read_text()
    except OSError as exc:
        raise _FailedError(f"{path}: cannot read: {exc.strerror}") from None


def _signing_key_pem(ca_dir: str) -> str:
    """The public half of the fleet's document-signing key (made on first use)."""
    from hedgerow.controller import pki

    signer, made = pki.signing_key_of(pathlib.Path(ca_dir))
    if made:
        print(f"created the desired-document signing key {ca_dir}/{pki.SIGNING_KEY} "
              f"(key id {signer.key_id}; keep it with the CA: devices pin it)",
              file=sys.stderr)
    return signer.public_pem


def _bundle(args: argparse.Namespace, thing: str, ca_pem: str, cert_pem: str) -> pathlib.Path:
    from hedgerow.core import identity

    bundle = identity.Bundle(thing=thing, broker_url=args.broker_url, ca_pem=ca_pem,
                             certificate_pem=cert_pem,
                             signing_key_pem=_signing_key_pem(args.ca_dir))
    out = pathlib.Path(args.out or f"{thing}.bundle.json")
    out.write_text(json.dumps(bundle.to_dict(), indent=1) + "\n")
    print(f"wrote {out} (public material only); on the device: hedgerow agent "
          f"install-bundle --root DIR {out.name}", file=sys.stderr)
    return out


def _sign(ca: Any, csr: str, thing: str, days: int, record: bool = True) -> Any:
    from hedgerow.controller import pki

    try:
        cert = ca.sign_device_csr(csr, thing, days=days)
    except pki.CertificateRequestError as exc:
        raise _FailedError(f"refusing to sign the CSR for {thing}: {exc}") from None
    if record:  # so that `device revoke` finds every certificate the device holds
        ca.record_issued(cert, thing)
    return cert


def _api(args: argparse.Namespace) -> Any:
    from hedgerow.controller import kube

    kube.load_config(args.kubeconfig)
    return kube.Kube().custom


def _register(args: argparse.Namespace) -> int:
    from kubernetes.client.exceptions import ApiException

    from hedgerow.controller import kube, pki
    from hedgerow.core import base, broker, coredevice

    thing = args.name
    if not broker.is_thing_name(thing):
        raise _FailedError(f"{thing!r} is not a valid thing name: lowercase letters, digits, "
                      "'-' and '.', at most 64 characters")
    labels = _labels(args.label)
    if not re.fullmatch(coredevice.NAMESPACE_NAME, args.namespace):
        raise _FailedError(f"--namespace {args.namespace!r} is not a namespace name")
    csr = _read_csr(args.csr) if args.csr else None
    if csr is not None:
        args.broker_url = _broker_url(args)
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
        if ca is not None and csr is not None:
            # Re-registering with a CSR is the admin's approval of a new key: the
            # certificates of the device's other keys are revoked, as `device approve` does.
            revoked = ca.revoke_device(thing, "superseded by re-registration",
                                       current=_current_certificate(existing),
                                       keep_key_of_csr=csr)
            if revoked:
                print(f"revoked the previous certificate(s) of {thing} (serial "
                      f"{', '.join(f'{s:x}' for s in revoked)})", file=sys.stderr)
                _refresh_broker(args, ca)
    if ca is None or cert is None:
        print("no --csr: run `hedgerow agent init` on the device and register again with "
              "--csr, or commit the CSR as spec.csr (GitOps)", file=sys.stderr)
        return 0
    pem = pki.cert_pem(cert).decode()
    # Server-side apply as our own field manager: the controller's status writes (its
    # own manager) leave status.certificate alone.
    certificate = coredevice.CertificateStatus(pem=pem, not_after=cert.not_valid_after_utc)
    kube.apply_status(api, "CoreDevice", None, thing, {"certificate": certificate.to_dict()},
                      kube.REGISTRAR)
    _bundle(args, thing, ca.pem, pem)
    return 0


def _sign_offline(args: argparse.Namespace) -> int:
    from hedgerow.controller import pki

    args.broker_url = _broker_url(args)
    ca = _ca(args)
    cert = _sign(ca, _read_csr(args.csr), args.name, args.days)
    _bundle(args, args.name, ca.pem, pki.cert_pem(cert).decode())
    return 0


def _fetch_bundle(args: argparse.Namespace) -> int:
    """GitOps: the controller signed spec.csr into status.certificate; package it."""
    from kubernetes.client.exceptions import ApiException

    from hedgerow.core import base

    args.broker_url = _broker_url(args)
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


def _topic_acl(args: argparse.Namespace) -> str:
    """The ACL with components' topic rules (hedgerow.core.topicrule); a bad rule is an
    error naming the flag or file and the field, and nothing is written."""
    from hedgerow.core import topicrule

    rules = [] if args.no_device_namespace else list(topicrule.DEFAULT_RULES)
    for text in args.topic_rule:
        try:
            rules.append(topicrule.parse_flag(text))
        except topicrule.RuleError as exc:
            raise _FailedError(f"--topic-rule {text!r}: {exc}") from None
    sources = [("--topic-rules", args.topic_rules, topicrule.parse_rules),
               ("--devices", args.devices, topicrule.parse_devices)]
    parsed: dict[str, Any] = {}
    for flag, path, parse in sources:
        if path is None:
            continue
        try:
            parsed[flag] = parse(pathlib.Path(path).read_text())
        except OSError as exc:
            raise _FailedError(f"{flag} {path}: {exc.strerror}") from None
        except topicrule.RuleError as exc:
            raise _FailedError(f"{flag} {path}: {exc}") from None
    rules += parsed.get("--topic-rules", ())
    devices = parsed.get("--devices")
    try:
        acl = topicrule.render_acl(args.controller_identity, rules, devices)
    except topicrule.RuleError as exc:
        raise _FailedError(f"topic rules: {exc}; pass --devices FILE") from None
    except ValueError as exc:
        raise _FailedError(str(exc)) from None
    for rule in topicrule.resolve_unmatched(rules, devices or {}):
        print(f"warning: no device in {args.devices} carries the labels of the rule "
              f"'{rule.access} {rule.topic}'", file=sys.stderr)
    return acl


def _broker_config(args: argparse.Namespace) -> int:
    from hedgerow.core import broker

    acl = _topic_acl(args)  # before any write: a bad rule changes nothing
    out = pathlib.Path(args.out)
    if args.acl_only:
        if not (out / "mosquitto.conf").is_file():
            raise _FailedError(f"--acl-only: {out} holds no broker configuration yet; run "
                               "`hedgerow broker config` without --acl-only first")
        files.write_atomic(out / "acl", acl.encode(), 0o644)
        print(f"wrote {out / 'acl'}; reload the broker (SIGHUP to mosquitto) to apply it")
        return 0
    out.mkdir(parents=True, exist_ok=True, mode=0o755)
    seen_as = args.config_dir or str(out.resolve())
    ca = _ca(args, create=True)
    try:
        config = broker.render_mosquitto_config(broker.MosquittoSettings(
            cafile=f"{seen_as}/ca.pem", certfile=f"{seen_as}/server.pem",
            keyfile=f"{seen_as}/server.key", acl_file=f"{seen_as}/acl", port=args.port,
            bind=args.bind, persistence_location=args.data_dir, user=args.user,
            crlfile=f"{seen_as}/crl.pem"))
    except ValueError as exc:
        raise _FailedError(str(exc)) from None
    (out / "ca.pem").write_text(ca.pem)
    ca.issue_server(args.host).write(out / "server.pem", out / "server.key")
    (out / "acl").write_text(acl)
    _write_crl(out, ca)
    (out / "mosquitto.conf").write_text(config)
    _signing_key_pem(args.ca_dir)  # made now, so a controller with a read-only CA folder finds it
    written = ["mosquitto.conf", "acl", "ca.pem", "crl.pem", "server.pem",
               "server.key (0600)"]
    if not args.no_controller_cert:
        ca.issue_controller(args.controller_identity).write(out / "controller.pem",
                                                            out / "controller.key")
        written += ["controller.pem", "controller.key (0600)"]
    url = f"mqtts://{args.host[0]}:{args.port}"
    files.write_json(pathlib.Path(args.ca_dir) / BROKER_FILE, {"brokerUrl": url}, mode=0o644)
    print(f"wrote {', '.join(written)} to {out}")
    print(f"wrote {pathlib.Path(args.ca_dir) / BROKER_FILE}: bundles that `device "
          f"register|sign|bundle` make with this CA send devices to {url} "
          "(--broker-url overrides)")
    print(f"run: mosquitto -c {seen_as}/mosquitto.conf; controller: hedgerow controller "
          f"--broker mqtts://{args.host[0]}:{args.port} --ca {out}/ca.pem "
          f"--cert {out}/controller.pem --key {out}/controller.key")
    return 0


def _write_crl(directory: pathlib.Path, ca: Any) -> pathlib.Path:
    from hedgerow import files

    path = directory / "crl.pem"
    files.write_atomic(path, ca.render_crl(), 0o644)
    return path


def _refresh_broker(args: argparse.Namespace, ca: Any) -> None:
    """Put the new CRL where the broker reads it and make mosquitto re-read it (SIGHUP:
    mosquitto 2.0 reloads crlfile for new connections; sessions already open stay)."""
    import signal

    if not args.broker_dir:
        print(f"the broker's CRL is NOT updated: copy {args.ca_dir}/crl.pem to the "
              "broker's crlfile and send mosquitto SIGHUP (or pass --broker-dir and "
              "--broker-pid)", file=sys.stderr)
        return
    path = _write_crl(pathlib.Path(args.broker_dir), ca)
    if args.broker_pid is None:
        print(f"wrote {path}; reload the broker (SIGHUP to mosquitto) to apply it",
              file=sys.stderr)
        return
    try:
        os.kill(args.broker_pid, signal.SIGHUP)
    except OSError as exc:
        raise _FailedError(f"wrote {path} but could not signal the broker "
                           f"(pid {args.broker_pid}): {exc.strerror}") from None
    print(f"wrote {path}; sent SIGHUP to the broker (pid {args.broker_pid}): new "
          "connections with a revoked certificate are refused", file=sys.stderr)


def _current_certificate(obj: dict[str, Any]) -> Any:
    from hedgerow.controller import pki

    pem = ((obj.get("status") or {}).get("certificate") or {}).get("pem")
    if not pem:
        return None
    try:
        return pki.load_certificate(pem)
    except ValueError:
        return None


def _get_device(args: argparse.Namespace) -> dict[str, Any]:
    from kubernetes.client.exceptions import ApiException

    from hedgerow.core import base

    try:
        obj: dict[str, Any] = _api(args).get_cluster_custom_object(
            base.GROUP, base.VERSION, "coredevices", args.name)
    except ApiException as exc:
        raise _FailedError(f"CoreDevice {args.name}: {exc.status} {exc.reason}") from None
    return obj


def _approve(args: argparse.Namespace) -> int:
    """Approve the CSR now in spec.csr: revoke the certificate it replaces, then write the
    CA-signed approval annotation the controller checks before signing."""
    from hedgerow.controller import pki
    from hedgerow.core import base

    thing = args.name
    obj = _get_device(args)
    csr = (obj.get("spec") or {}).get("csr")
    if not csr:
        raise _FailedError(f"CoreDevice {thing} has no spec.csr to approve")
    ca = pki.FleetCA.load(pathlib.Path(args.ca_dir))
    _sign(ca, csr, thing, 1, record=False)  # must be signable: refuse before any change
    digest = pki.csr_digest(csr)
    if args.sha256 and args.sha256 != digest:
        raise _FailedError(f"spec.csr of {thing} has SHA-256 {digest}, not the "
                           f"{args.sha256} you meant to approve: it changed; look again")
    # Every certificate of the device's other keys goes: the new key replaces them.
    revoked = ca.revoke_device(thing, "superseded by an approved CSR",
                               current=_current_certificate(obj), keep_key_of_csr=csr)
    if revoked:
        print(f"revoked the current certificate of {thing} (serial "
              f"{', '.join(f'{s:x}' for s in revoked)})", file=sys.stderr)
        _refresh_broker(args, ca)
    patch = {"metadata": {"annotations": {pki.APPROVAL_ANNOTATION: ca.approve_csr(thing, csr)}}}
    _api(args).patch_cluster_custom_object(base.GROUP, base.VERSION, "coredevices", thing,
                                           patch, _content_type=MERGE_PATCH)
    print(f"approved the CSR of {thing} (sha256 {digest}); the controller signs it on its "
          f"next pass; then: hedgerow device bundle {thing}", file=sys.stderr)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from cryptography.exceptions import InvalidSignature

    from hedgerow.controller import pki

    thing = args.name
    ca = pki.FleetCA.load(pathlib.Path(args.ca_dir))
    cert: Any
    if args.cert:
        try:
            cert = pki.load_certificate(pathlib.Path(args.cert).read_bytes())
        except (OSError, ValueError) as exc:
            raise _FailedError(f"--cert {args.cert}: {exc}") from None
        try:
            cert.verify_directly_issued_by(ca.certificate)
        except (ValueError, TypeError, InvalidSignature):
            raise _FailedError(f"--cert {args.cert} was not issued by this CA") from None
    else:
        cert = _current_certificate(_get_device(args))
    # The certificate in the status, and every other one recorded as issued to it.
    revoked = ca.revoke_device(thing, args.reason, current=cert)
    if not revoked and cert is None and not ca.issued_to(thing):
        raise _FailedError(f"no certificate of {thing} to revoke (none in its CoreDevice "
                           "status or the CA's issued.log; give one with --cert FILE)")
    print(f"revoked {len(revoked)} certificate(s) of {thing} "
          f"({', '.join(f'{s:x}' for s in revoked) or 'all already revoked'}); a new CSR "
          f"for {thing} now needs `hedgerow device approve {thing}`", file=sys.stderr)
    _refresh_broker(args, ca)
    if args.disconnect:
        _disconnect(args, ca, thing)
    return 0


def _disconnect(args: argparse.Namespace, ca: Any, thing: str) -> None:
    """End the device's open session: a reloaded CRL only refuses *new* connections.

    A throw-away certificate for the device's CN (made in memory, never written, revoked
    right after) connects with a clean start, which makes the broker close the device's
    live connection and discard its session (use_username_as_clientid); the device's
    reconnect then meets the CRL."""
    import ssl
    import tempfile
    import urllib.parse

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    if not args.broker_url or args.broker_pid is None:
        raise _FailedError("--disconnect needs --broker-url and --broker-pid (the CRL must "
                           "be reloaded first, or the device simply reconnects)")
    url = urllib.parse.urlsplit(args.broker_url)
    kicker = ca.issue_client(thing, days=1)
    with tempfile.TemporaryDirectory(prefix="hedgerow-kick-") as tmp:
        folder = pathlib.Path(tmp)
        kicker.write(folder / "kick.pem", folder / "kick.key")
        context = ssl.create_default_context(cafile=str(pathlib.Path(args.ca_dir) / "ca.pem"))
        context.load_cert_chain(str(folder / "kick.pem"), str(folder / "kick.key"))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=thing, protocol=mqtt.MQTTv5)
    client.tls_set_context(context)
    try:
        client.connect(url.hostname or "127.0.0.1", url.port or 8883, keepalive=10,
                       clean_start=True)
        deadline = 50
        while not client.is_connected() and deadline:
            client.loop(timeout=0.1)
            deadline -= 1
        ended = client.is_connected()
        client.disconnect()
        client.loop(timeout=0.5)
    except OSError as exc:
        raise _FailedError(f"could not reach the broker to end {thing}'s session: {exc}"
                           ) from None
    finally:
        ca.revoke(kicker.certificate, thing, "session-ending certificate of device revoke")
        _refresh_broker(args, ca)
    if not ended:
        raise _FailedError(f"the broker did not accept the session-ending connection for "
                           f"{thing}; its open session (if any) lasts until it drops")
    print(f"ended {thing}'s open session on the broker", file=sys.stderr)



def _guard(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            code: int = handler(args)
        except _FailedError as exc:
            print(f"hedgerow: {exc}", file=sys.stderr)
            return 1
        return code
    return run


def _ca_args(parser: argparse.ArgumentParser, create: bool = False) -> None:
    missing = ("created, with a warning, if missing" if create else
               "must hold the CA `broker config` created")
    parser.add_argument("--ca-dir", default=DEFAULT_CA_DIR,
                        help=f"the fleet CA folder ({missing}; default: "
                             "$HEDGEROW_CA_DIR or %(default)s)")


def _bundle_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker-url",
                        help="mqtts://HOST:PORT the device connects to (default: "
                             f"$HEDGEROW_BROKER_URL, else CA_DIR/{BROKER_FILE} as `broker "
                             "config` wrote it; the one used is printed)")
    parser.add_argument("--out", help="bundle file (default: NAME.bundle.json)")
    parser.add_argument("--days", type=int, default=365,
                        help="certificate validity in days (default: %(default)s)")


def _broker_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker-dir", metavar="DIR",
                        help="the folder `hedgerow broker config --out` wrote: its crl.pem "
                             "is replaced")
    parser.add_argument("--broker-pid", type=int, metavar="PID",
                        help="mosquitto's pid: sent SIGHUP to re-read the CRL")


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
    _broker_args(reg)  # re-registering a device with a new key revokes its old certificate
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

    approve = dev.add_parser(
        "approve", help="approve the CSR in spec.csr of a device that has a certificate",
        description="The CertificateSigningRequest model: the controller signs a CSR for a "
                    "device that already holds a certificate (a new key, or after "
                    "revocation) only once approved. This revokes the certificate the CSR "
                    "replaces (and refreshes the broker's CRL with --broker-dir), then "
                    "writes the annotation hedgerow.dev/approved-csr, signed with the CA "
                    "key and bound to this CSR's SHA-256: a CSR swapped in later is not "
                    "approved by it.")
    approve.add_argument("name", metavar="NAME")
    approve.add_argument("--sha256", help="refuse unless spec.csr has this SHA-256 (as "
                                          "shown by a previous run or the device)")
    approve.add_argument("--kubeconfig")
    _ca_args(approve)
    _broker_args(approve)
    approve.set_defaults(handler=_guard(_approve))

    revoke = dev.add_parser(
        "revoke", help="revoke the device's certificate (the broker refuses it)",
        description="Add the device's current certificate (status.certificate, or --cert) "
                    "to the fleet CA's revocation list, render the CRL, and with "
                    "--broker-dir/--broker-pid put it in the broker's folder and reload "
                    "mosquitto. A new CSR for the device then needs `device approve`.")
    revoke.add_argument("name", metavar="NAME")
    revoke.add_argument("--cert", metavar="FILE", help="revoke this certificate file "
                                                       "instead of the one in the cluster")
    revoke.add_argument("--reason", default="revoked by an operator")
    revoke.add_argument("--disconnect", action="store_true",
                        help="also end the device's open session (a CRL reload refuses "
                             "only new connections); needs --broker-url and --broker-pid")
    revoke.add_argument("--broker-url", default=os.environ.get("HEDGEROW_BROKER_URL"),
                        help="mqtts://HOST:PORT, for --disconnect")
    revoke.add_argument("--kubeconfig")
    _ca_args(revoke)
    _broker_args(revoke)
    revoke.set_defaults(handler=_guard(_revoke))

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
    conf.add_argument("--topic-rule", action="append", default=[],
                      metavar="'ACCESS TOPIC [KEY=VALUE,...]'",
                      help="let devices use a cloud topic: ACCESS is read, write or "
                           "readwrite, %%u in TOPIC is the device's thing name, labels "
                           "limit the rule to the devices carrying them (repeatable; see "
                           "docs/cloud-messaging.md)")
    conf.add_argument("--topic-rules", metavar="FILE",
                      help="YAML file of topic rules (rules: [{access, topic, selector}])")
    conf.add_argument("--devices", metavar="FILE",
                      help="the fleet for label rules: `kubectl get coredevices -o yaml`")
    conf.add_argument("--no-device-namespace", action="store_true",
                      help="do not grant each device readwrite on devices/%%u/# (its own "
                           "namespace, granted by default)")
    conf.add_argument("--acl-only", action="store_true",
                      help="write only OUT/acl (after devices joined or labels changed); "
                           "certificates and mosquitto.conf stay as they are")
    _ca_args(conf, create=True)
    conf.set_defaults(handler=_guard(_with_hosts(_broker_config)))


def _with_hosts(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        args.host = args.host or ["127.0.0.1", "localhost"]
        code: int = handler(args)
        return code
    return run
