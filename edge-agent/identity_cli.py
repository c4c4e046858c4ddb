"""`hedgerow agent init`, `agent install-bundle` and `agent identity`: the device side of
the certificate round trip (docs/identity.md).

These join the `agent` command that hedgerow.agent.cli creates, so this module must be
listed after it in hedgerow.cli._PLUGINS (alone, it creates `agent` itself). Kept light:
cryptography is imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Any

import hedgerow

DEFAULT_ROOT = os.environ.get("HEDGEROW_ROOT", "/var/lib/hedgerow")


def subcommands_of(subparsers: argparse._SubParsersAction[Any], command: str = "agent",
                   text: str = "run the edge agent on this device",
                   ) -> argparse._SubParsersAction[Any]:
    """The actions of `hedgerow COMMAND`, created by another plugin (or here, alone), so
    a plugin can add actions to a command it does not own."""
    parser: argparse.ArgumentParser | None = subparsers.choices.get(command)
    if parser is None:
        parser = subparsers.add_parser(command, help=text)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse._SubParsersAction[Any] = action
            return found
    return parser.add_subparsers(dest="action", metavar="ACTION", required=True)


def _init(args: argparse.Namespace) -> int:
    from hedgerow.agent import identity

    try:
        path = identity.init(pathlib.Path(args.root), args.thing, renew=args.renew)
    except (identity.IdentityError, OSError) as exc:
        print(f"hedgerow agent init: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} (the private key stays in {path.parent}); give this CSR to "
          f"`hedgerow device register {args.thing} --csr FILE`, or put it in the "
          "CoreDevice's spec.csr:", file=sys.stderr)
    sys.stdout.write(path.read_text())
    return 0


def _install(args: argparse.Namespace) -> int:
    from hedgerow.agent import identity

    try:
        data = (sys.stdin.buffer.read() if args.bundle == "-"
                else pathlib.Path(args.bundle).read_bytes())
        installed = identity.install_bundle(pathlib.Path(args.root), data, args.thing,
                                            replace_trust=args.replace_trust)
    except (identity.IdentityError, OSError) as exc:
        print(f"hedgerow agent install-bundle: {exc}", file=sys.stderr)
        return 1
    for change in installed.changed:
        print(f"replaced the pinned {change}", file=sys.stderr)
    print(f"installed the certificate for {installed.thing} (expires in "
          f"{installed.days_left()} days); broker {installed.broker_url}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from hedgerow.agent import identity

    try:
        ident = identity.load(pathlib.Path(args.root))
        days = ident.days_left()
        signing = {"signingKey": _key_id(ident.signing_key)}
    except (identity.IdentityError, OSError, ValueError) as exc:
        print(f"hedgerow agent identity: {exc}", file=sys.stderr)
        return 1
    row = {"thing": ident.thing, "broker": ident.broker_url, "certificate": str(ident.cert),
           "daysLeft": days, "version": hedgerow.__version__}
    if args.output == "json":
        print(json.dumps({**row, **signing}, indent=2))
    else:
        for key, value in {**row, **signing}.items():
            print(f"{key}: {value}")
    return 0


def _key_id(path: pathlib.Path | None) -> str:
    """The pinned document-signing key's id (as the controller logs it), or 'none'."""
    if path is None:
        return "none pinned: every desired document is refused"
    from cryptography.hazmat.primitives import serialization

    from hedgerow.core import envelope

    try:
        key = serialization.load_pem_public_key(path.read_bytes())
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc})"
    return envelope.key_id_of(raw)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    actions = subcommands_of(subparsers)
    root_help = f"the agent's root folder (default: {DEFAULT_ROOT}, or $HEDGEROW_ROOT)"

    init = actions.add_parser(
        "init", help="make this device's private key and a CSR",
        description="Generate the device's private key on this device (EC P-256, "
                    "ROOT/identity/device.key, mode 0600; kept if it exists) and write a "
                    "certificate signing request with CN = the thing name. The CSR (PEM) "
                    "is printed on stdout; the key never leaves the device.")
    init.add_argument("--root", default=DEFAULT_ROOT, help=root_help)
    init.add_argument("--thing", required=True, help="this device's thing name")
    init.add_argument("--renew", action="store_true",
                      help="make a second key and CSR for a certificate rotation; the "
                           "current certificate works until the new one is installed")
    init.set_defaults(handler=_init)

    install = actions.add_parser(
        "install-bundle", help="install the signed certificate, CA and broker URL",
        description="Install a bootstrap bundle from `hedgerow device register`: checked "
                    "against this device's key, thing name, CA and validity before "
                    "anything is written. The first bundle pins the fleet CA, the "
                    "desired-document signing key and the broker URL; a later one may "
                    "change them only with --replace-trust.")
    install.add_argument("--root", default=DEFAULT_ROOT, help=root_help)
    install.add_argument("--thing", help="refuse a bundle for another thing")
    install.add_argument("--replace-trust", action="store_true",
                         help="allow the bundle to replace the pinned fleet CA, signing "
                              "key, broker URL or thing name of an initialised device "
                              "(refused without it; what changed is printed)")
    install.add_argument("bundle", metavar="BUNDLE", help="bundle file ('-' for stdin)")
    install.set_defaults(handler=_install)

    show = actions.add_parser("identity", help="show the installed identity and its expiry")
    show.add_argument("--root", default=DEFAULT_ROOT, help=root_help)
    show.add_argument("-o", "--output", choices=["text", "json"], default="text")
    show.set_defaults(handler=_show)
