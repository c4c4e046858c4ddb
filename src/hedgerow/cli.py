"""The `hedgerow` command: one entry point for operators and devices.

Each side registers its own subcommands (`hedgerow.agent.cli`, `hedgerow.controller.cli`);
those modules only define arguments and import their heavy machinery inside the handler,
so `hedgerow component list` on a small device never loads kopf or the Kubernetes client.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import sys
from collections.abc import Callable, Sequence

import yaml

import hedgerow
from hedgerow.core import accesscontrol, crd, manifest

Handler = Callable[[argparse.Namespace], int]

# Modules that contribute subcommands through a `register(subparsers)` function. Order
# matters: identity_cli adds to the `agent` command that hedgerow.agent.cli creates.
_PLUGINS = (
    "hedgerow.agent.cli",
    "hedgerow.agent.identity_cli",
    "hedgerow.agent.recipe_cli",
    "hedgerow.controller.cli",
    "hedgerow.controller.fleet_cli",
)


def _validate(args: argparse.Namespace) -> int:
    total = 0
    for path in args.files:
        file = pathlib.Path(path)
        try:
            text = file.read_text()
        except OSError as exc:
            print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
            return 2
        try:
            resources = manifest.parse_documents(text, str(file))
        except manifest.InvalidDocumentError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            return 1
        problems = [f"{file}: {resource.kind}/{resource.metadata.name}: {problem}"
                    for resource in resources
                    for problem in accesscontrol.resolve_manifest_problems(resource)]
        if problems:
            print("\n".join(problems), file=sys.stderr)
            return 1
        for resource in resources:
            total += 1
            if not args.quiet:
                print(f"{file}: {resource.kind}/{resource.metadata.name} is valid")
    if not args.quiet:
        print(f"{total} document(s) valid")
    return 0


def _crds(args: argparse.Namespace) -> int:
    out = pathlib.Path(args.dir)
    rendered = {name: yaml.safe_dump(doc, sort_keys=False)
                for name, doc in crd.render_all().items()}
    if args.check:
        stale = [n for n, text in rendered.items()
                 if not (out / n).is_file() or (out / n).read_text() != text]
        extra = sorted(p.name for p in out.glob("*.yaml") if p.name not in rendered)
        for name in stale:
            print(f"{out / name}: differs from the models; run `make crds`", file=sys.stderr)
        for name in extra:
            print(f"{out / name}: no model renders this file", file=sys.stderr)
        return 1 if stale or extra else 0
    out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hedgerow",
        description="Kubernetes-native edge orchestration: components, deployments, fleets.",
        epilog="Run `hedgerow COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"hedgerow {hedgerow.__version__}")
    parser.add_argument(
        "--root", metavar="DIR", dest="root_anywhere",  # taken out first: split_root
        help="the agent's root folder, for the device commands (agent, component, "
             "deployment, logs); accepted anywhere on the line, like `kubectl -n` "
             "(default: $HEDGEROW_ROOT, else /var/lib/hedgerow)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    validate = sub.add_parser(
        "validate", help="check Component/Deployment/ThingGroup/CoreDevice YAML files",
        description="Validate Hedgerow manifests offline. Exits 1 at the first invalid "
                    "document, listing every problem in it as FILE#DOC KIND/NAME: FIELD: REASON.",
    )
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    validate.set_defaults(handler=_validate)

    crds = sub.add_parser(
        "crds", help="render the CustomResourceDefinitions from the models",
        description="Write crds/*.yaml from hedgerow.core, or --check that they are current.",
    )
    crds.add_argument("--dir", default="crds", help="output folder (default: crds)")
    crds.add_argument("--check", action="store_true", help="fail if the files are stale")
    crds.set_defaults(handler=_crds)

    for name in _PLUGINS:
        module = importlib.import_module(name)
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def split_root(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """`--root DIR` (or `--root=DIR`) from anywhere on the command line, and the rest.
    Sub-commands define their own --root; taking it out first lets it stand before the
    sub-command too (`hedgerow --root DIR component list`), as `kubectl -n` does."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--root")
    rest = list(argv)
    if "--" in rest:  # nothing after `--` is an option
        cut = rest.index("--")
        known, head = pre.parse_known_args(rest[:cut])
        return known.root, [*head, *rest[cut:]]
    known, rest = pre.parse_known_args(rest)
    return known.root, rest


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    root, rest = split_root(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(rest)
    if root is not None:
        if not hasattr(args, "root"):
            parser.error(f"--root does not apply to `{args.command}`")
        args.root = root  # else the sub-command's default: $HEDGEROW_ROOT or /var/lib/hedgerow
    handler: Handler = args.handler
    try:
        code = handler(args)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
