"""python -m bench [NAME ...]: list the benchmarks, or run some and print JSON figures."""

from __future__ import annotations

import importlib
import pathlib
import pkgutil
import sys
from typing import Any

_SKIP = {"__main__", "harness"}


def _names() -> list[str]:
    here = pathlib.Path(__file__).parent
    # Modules starting with "_" are shared helpers (simulators, fixtures), not benchmarks.
    return sorted(m.name for m in pkgutil.iter_modules([str(here)])
                  if m.name not in _SKIP and not m.name.startswith("_"))


def _summary(module: Any) -> str:
    doc = (module.__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""


def main(argv: list[str]) -> int:
    names = _names()
    if not argv or argv[0] in ("-h", "--help", "list"):
        print("usage: python -m bench [NAME ...]   (run from the repository root)\n")
        for name in names:
            print(f"  {name:20} {_summary(importlib.import_module(f'bench.{name}'))}")
        return 0
    unknown = [a for a in argv if a not in names and a != "all"]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(names)}",
              file=sys.stderr)
        return 2
    for name in names if "all" in argv else argv:
        print(f"# {name}", file=sys.stderr, flush=True)
        module = importlib.import_module(f"bench.{name}")
        for figure in module.run():
            print(figure.to_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
