"""`hedgerow component import` as a user runs it: files in, manifests out, losses named,
--strict refusing them, and nothing written when any recipe fails."""

from __future__ import annotations

import pathlib

from hedgerow.core import manifest
from tests.core.test_greengrass import HELLO
from tests.test_cli import ROOT, hedgerow

NAMED = HELLO.replace("  - Platform:", "  - Name: Linux\n    Platform:")


def test_import_writes_manifests_that_validate(tmp_path: pathlib.Path) -> None:
    (tmp_path / "hello.yaml").write_text(HELLO)
    out = tmp_path / "out"
    result = hedgerow("component", "import", str(tmp_path / "hello.yaml"),
                      "--artifact-base", "https://mirror.example.com", "-o", str(out))
    assert result.returncode == 0, result.stderr
    written = out / "com.example.helloworld-1.0.0.yaml"
    [doc] = manifest.parse_documents(written.read_text(), str(written))
    assert doc.kind == "Component"
    assert hedgerow("validate", str(written)).returncode == 0
    # Without -o: the manifest on stdout, ready for `| kubectl apply -f -`.
    shown = hedgerow("component", "import", str(tmp_path / "hello.yaml"),
                     "--artifact-base", "https://mirror.example.com")
    assert shown.stdout == written.read_text()


def test_losses_are_warnings_and_strict_makes_them_errors(tmp_path: pathlib.Path) -> None:
    (tmp_path / "named.yaml").write_text(NAMED)
    args = ("component", "import", str(tmp_path / "named.yaml"),
            "--artifact-base", "https://m.example.com", "-o", str(tmp_path / "out"))
    lenient = hedgerow(*args)
    assert lenient.returncode == 0, lenient.stderr
    assert (f"warning: {tmp_path / 'named.yaml'}: Manifests[0].Name: not carried over"
            in lenient.stderr)
    (tmp_path / "out" / "com.example.helloworld-1.0.0.yaml").unlink()
    strict = hedgerow(*args, "--strict")
    assert strict.returncode == 1
    assert "error: " in strict.stderr and "Manifests[0].Name" in strict.stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_one_bad_recipe_writes_nothing(tmp_path: pathlib.Path) -> None:
    (tmp_path / "good.yaml").write_text(HELLO)
    (tmp_path / "bad.yaml").write_text(HELLO.replace("ComponentVersion: '1.0.0'",
                                                     "ComponentVersion: '1.0.1'")
                                       .replace("s3://", "docker:"))
    result = hedgerow("component", "import", str(tmp_path / "good.yaml"),
                      str(tmp_path / "bad.yaml"), "-o", str(tmp_path / "out"),
                      "--artifact-base", "https://m.example.com")
    assert result.returncode == 1
    assert f"error: {tmp_path / 'bad.yaml'}: Manifests[0].Artifacts[0].URI" in result.stderr
    assert "docker artifacts are not imported" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_greengrass_example_imports_naming_only_the_nucleus(tmp_path: pathlib.Path,
                                                                ) -> None:
    recipe = ROOT / "examples" / "greengrass" / "recipes" / \
        "com.example.PubSubConfig-1.0.0.yaml"
    # No Digest in the recipe (the Greengrass cloud adds it when a version is created):
    # fine for a file:// location, refused for http(s) — the device must verify those.
    https = hedgerow("component", "import", str(recipe), "--artifact-base",
                     "https://artifacts.example.com", "-o", str(tmp_path))
    assert https.returncode == 1
    assert "Manifests[0].Artifacts[0]: an http(s) artifact needs a sha256 digest" in \
        https.stderr
    result = hedgerow("component", "import", str(recipe), "--artifact-base",
                      "file:///srv/mirror", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("not carried over") == 1
    assert "ComponentDependencies.aws.greengrass.Nucleus" in result.stderr
    [doc] = manifest.parse_documents(
        (tmp_path / "com.example.pubsubconfig-1.0.0.yaml").read_text(), "out")
    assert doc.kind == "Component"
    assert doc.spec.manifests[0].artifacts[0].uri == (
        "file:///srv/mirror/DOC-EXAMPLE-BUCKET/artifacts/"
        "com.example.PubSubConfig/1.0.0/pubsub_config.py")
