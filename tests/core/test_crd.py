"""crds/ is generated from the models and must not drift; the schemas are structural."""

from __future__ import annotations

import pathlib
from typing import Any

import yaml

from hedgerow.core import crd

CRDS = pathlib.Path(__file__).parents[2] / "crds"


def test_crds_folder_matches_the_models() -> None:
    rendered = crd.render_all()
    on_disk = {p.name: yaml.safe_load(p.read_text()) for p in CRDS.glob("*.yaml")}
    assert set(on_disk) == set(rendered), "run `make crds`"
    for name, doc in rendered.items():
        assert on_disk[name] == doc, f"{name} drifted from hedgerow.core; run `make crds`"


def _walk(node: Any, path: str = "") -> list[str]:
    """Paths of nodes that break the structural-schema rules the API server enforces."""
    bad: list[str] = []
    if isinstance(node, dict):
        if "$ref" in node or "anyOf" in node or "$defs" in node:
            bad.append(path)
        schemaish = "properties" in node or "items" in node or "pattern" in node
        if schemaish and "type" not in node:
            bad.append(path)
        for key, value in node.items():
            if key not in ("enum", "x-kubernetes-validations", "required"):
                bad += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            bad += _walk(value, f"{path}[{i}]")
    return bad


def test_schemas_are_structural() -> None:
    for kind in crd.KINDS:
        schema = crd.render_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert _walk(schema) == [], kind.kind


def test_every_kind_is_in_the_hedgerow_category_with_status() -> None:
    for kind in crd.KINDS:
        doc = crd.render_crd(kind)
        assert doc["spec"]["names"]["categories"] == ["hedgerow"]
        assert doc["spec"]["versions"][0]["subresources"] == {"status": {}}
        assert doc["spec"]["names"]["shortNames"]
