"""Subcommands this side adds to `hedgerow` (filled in as the side is built)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    del subparsers
