"""The test API server serves CRDs, core secrets and discovery to kubectl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.apiserver import ApiServer

GADGET_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.selftest.hedgerow.dev
spec:
  group: selftest.hedgerow.dev
  scope: Namespaced
  names:
    plural: gadgets
    singular: gadget
    kind: Gadget
    shortNames: [gdg]
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
    additionalPrinterColumns:
    - name: Colour
      type: string
      jsonPath: .spec.colour
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [colour]
            properties:
              colour:
                type: string
                enum: [red, green]
          status:
            type: object
            x-kubernetes-preserve-unknown-fields: true
"""


@pytest.fixture(scope="module")
def gadget_crd(apiserver: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    crd_dir = tmp_path_factory.mktemp("crds")
    (crd_dir / "gadgets.yaml").write_text(GADGET_CRD)
    applied = apiserver.apply_crds(crd_dir)
    assert applied == [
        "customresourcedefinition.apiextensions.k8s.io/gadgets.selftest.hedgerow.dev"
    ]
    return "gadgets.selftest.hedgerow.dev"


def test_readyz(apiserver: ApiServer) -> None:
    assert apiserver.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"


def test_kubeconfig_is_private(apiserver: ApiServer) -> None:
    assert isinstance(apiserver.kubeconfig, Path)
    assert apiserver.kubeconfig.stat().st_mode & 0o777 == 0o600
    assert apiserver.url.startswith("https://127.0.0.1:")


def test_crd_is_established(apiserver: ApiServer, gadget_crd: str) -> None:
    crd = json.loads(apiserver.kubectl("get", "crd", gadget_crd, "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"


def test_custom_object_and_printer_column(apiserver: ApiServer, gadget_crd: str) -> None:
    apiserver.kubectl(
        "apply",
        "-f",
        "-",
        input=(
            "apiVersion: selftest.hedgerow.dev/v1\n"
            "kind: Gadget\n"
            "metadata: {name: g1, namespace: default}\n"
            "spec: {colour: green}\n"
        ),
    )
    table = apiserver.kubectl("get", "gadgets", "-n", "default").stdout.splitlines()
    assert table[0].split() == ["NAME", "COLOUR"]
    assert table[1].split() == ["g1", "green"]


def test_schema_is_enforced(apiserver: ApiServer, gadget_crd: str) -> None:
    bad = apiserver.kubectl(
        "apply",
        "-f",
        "-",
        check=False,
        input=(
            "apiVersion: selftest.hedgerow.dev/v1\n"
            "kind: Gadget\n"
            "metadata: {name: g2, namespace: default}\n"
            "spec: {colour: purple}\n"
        ),
    )
    assert bad.returncode != 0
    assert "Unsupported value" in bad.stderr


def test_secret_in_default_namespace(apiserver: ApiServer) -> None:
    apiserver.kubectl(
        "create", "secret", "generic", "selftest", "-n", "default", "--from-literal=token=s3cr3t"
    )
    secret = json.loads(
        apiserver.kubectl("get", "secret", "selftest", "-n", "default", "-o", "json").stdout
    )
    assert secret["type"] == "Opaque"
    assert secret["data"] == {"token": "czNjcjN0"}


def test_api_resources_lists_crd(apiserver: ApiServer, gadget_crd: str) -> None:
    out = apiserver.kubectl("api-resources").stdout
    rows = [line.split() for line in out.splitlines()[1:]]
    assert ["gadgets", "gdg", "selftest.hedgerow.dev/v1", "true", "Gadget"] in rows
    assert ["secrets", "v1", "true", "Secret"] in rows


def test_legacy_discovery_lists_crd_group(apiserver: ApiServer, gadget_crd: str) -> None:
    groups = json.loads(apiserver.kubectl("get", "--raw", "/apis").stdout)
    assert groups["kind"] == "APIGroupList"
    assert "selftest.hedgerow.dev" in {g["name"] for g in groups["groups"]}
    core = json.loads(apiserver.kubectl("get", "--raw", "/api").stdout)
    assert core["versions"] == ["v1"]
