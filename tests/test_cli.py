"""`hedgerow validate` and `hedgerow crds` as a user runs them."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parents[1]


def hedgerow(*args: str, cwd: pathlib.Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hedgerow", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_validate_accepts_the_examples() -> None:
    result = hedgerow("validate", *sorted(str(p) for p in (ROOT / "examples").glob("*.yaml")))
    assert result.returncode == 0, result.stderr
    assert "Deployment/factory-1-apps is valid" in result.stdout


def test_validate_stops_at_the_first_invalid_document_listing_its_errors(
    tmp_path: pathlib.Path,
) -> None:
    good = (ROOT / "examples" / "hello-world.yaml").read_text()
    bad = good.replace("version: 1.0.0", "version: one").replace("publisher:", "publishr:")
    (tmp_path / "a.yaml").write_text(good + "---\n" + bad + "---\n" + bad)
    result = hedgerow("validate", str(tmp_path / "a.yaml"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, lines  # both errors of document 2, nothing from document 3
    assert all("a.yaml#2 Component/com.example.helloworld-1.0.0:" in line for line in lines)
    assert any("spec.version: must be a semantic version" in line for line in lines)
    assert any("spec.publishr: unknown field" in line for line in lines)


def test_validate_reports_a_missing_file() -> None:
    result = hedgerow("validate", "/nonexistent/x.yaml")
    assert result.returncode == 2
    assert "/nonexistent/x.yaml: cannot read" in result.stderr


def test_crds_check_detects_drift(tmp_path: pathlib.Path) -> None:
    assert hedgerow("crds", "--dir", str(tmp_path)).returncode == 0
    assert hedgerow("crds", "--check", "--dir", str(tmp_path)).returncode == 0
    target = tmp_path / "components.hedgerow.dev.yaml"
    target.write_text(target.read_text().replace("Version", "Verzion"))
    result = hedgerow("crds", "--check", "--dir", str(tmp_path))
    assert result.returncode == 1
    assert "components.hedgerow.dev.yaml: differs from the models" in result.stderr


def test_validate_refuses_a_policy_with_an_unknown_operation(tmp_path: pathlib.Path) -> None:
    """A typo in an accessControl operation would grant nothing and fail only on the
    device, at run time: validate names the file, the component, the service, the
    policy and the field."""
    good = (ROOT / "examples" / "ipc-pubsub.yaml").read_text()
    assert hedgerow("validate", str(ROOT / "examples" / "ipc-pubsub.yaml")).returncode == 0
    bad = good.replace("- aws.greengrass#PublishToTopic", "- aws.greengrass#PublishTopic", 1)
    (tmp_path / "bad.yaml").write_text(bad)
    result = hedgerow("validate", str(tmp_path / "bad.yaml"))
    assert result.returncode == 1
    assert ("bad.yaml: Component/com.example.sensorpublisher-1.0.0: "
            "com.example.SensorPublisher: configuration.accessControl."
            "aws.greengrass.ipc.pubsub.com.example.SensorPublisher:pubsub:1.operations: "
            "unknown operation(s) ['aws.greengrass#PublishTopic']") in result.stderr
