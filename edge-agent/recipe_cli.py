"""`hedgerow component import RECIPE…`: Greengrass recipe files as Component manifests.

Offline (no agent, no cluster): reads the files, converts them with
hedgerow.core.greengrass, and writes every manifest only when every recipe converted —
with --strict, only when none lost a field. Joins the `component` command that
hedgerow.agent.cli creates (listed after it in hedgerow.cli._PLUGINS).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any

from hedgerow import files
from hedgerow.agent import identity_cli
from hedgerow.core import greengrass


def _import(args: argparse.Namespace) -> int:
    mapping = greengrass.ArtifactMap(args.artifact_base)
    converted: list[tuple[pathlib.Path, greengrass.Imported]] = []
    failed = False
    for name in args.recipes:
        path = pathlib.Path(name)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            print(f"error: {path}: cannot read: {exc}", file=sys.stderr)
            return 2
        try:
            imported = greengrass.resolve_text(text, str(path), mapping)
        except greengrass.RecipeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed = True
            continue
        for loss in imported.losses:
            level = "error" if args.strict else "warning"
            print(f"{level}: {path}: {loss.path}: not carried over: {loss.reason}",
                  file=sys.stderr)
        failed = failed or (args.strict and bool(imported.losses))
        converted.append((path, imported))
    if failed:
        print("nothing written" + (" (--strict: every field must be carried over)"
                                   if args.strict else ""), file=sys.stderr)
        return 1
    if args.output_dir is None:
        sys.stdout.write("---\n".join(greengrass.render_manifest(i, str(p))
                                      for p, i in converted))
        return 0
    out = pathlib.Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path, imported in converted:
        target = out / f"{imported.component.metadata.name}.yaml"
        files.write_atomic(target, greengrass.render_manifest(imported, str(path)).encode(),
                           mode=0o644, durable=False)
        print(f"{path} -> {target}")
    return 0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    actions = identity_cli.subcommands_of(subparsers, "component",
                                          "list and control components on a device")
    imp = actions.add_parser(
        "import", help="convert Greengrass recipe files into Component manifests",
        description="Read Greengrass V2 recipes (YAML or JSON, RecipeFormatVersion "
                    "2020-01-25) and write one Component manifest each, ready for "
                    "`kubectl apply` or a device's deployments/ folder. Recipe variables "
                    "({artifacts:path}, {configuration:/x}, …) are kept. Every field that "
                    "cannot be carried over is named with its path; --strict refuses them.")
    imp.add_argument("recipes", nargs="+", metavar="RECIPE")
    imp.add_argument("--artifact-base", metavar="URL",
                     help="where s3:// artifacts are mirrored: s3://BUCKET/KEY becomes "
                          "URL/BUCKET/KEY (https://, http:// or file://)")
    imp.add_argument("--strict", action="store_true",
                     help="fail (and write nothing) if any field is not carried over")
    imp.add_argument("-o", "--output-dir", metavar="DIR",
                     help="write DIR/NAME-VERSION.yaml per recipe (default: stdout)")
    imp.set_defaults(handler=_import)
