"""Artifacts (digest, unarchive safety, cache GC) and log rotation, without an agent loop."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import pathlib
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator

import pytest

from hedgerow.agent import artifacts, layout, spawner
from hedgerow.core import component, documents


def _store(tmp_path: pathlib.Path) -> artifacts.Store:
    lay = layout.Layout(tmp_path / "root")
    lay.ensure()
    return artifacts.Store(lay)


def _comp(*arts: component.Artifact, version: str = "1.0.0") -> documents.ResolvedComponent:
    return documents.ResolvedComponent(
        name="c", version=version, artifacts=list(arts),
        lifecycle=component.Lifecycle(run=component.Step(script="true")))


def _artifact(path: pathlib.Path, **kw: object) -> component.Artifact:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return component.Artifact.model_validate({"uri": f"file://{path}", "sha256": digest, **kw})


def test_verified_unpacked_with_permissions_and_collected(tmp_path: pathlib.Path) -> None:
    archive = tmp_path / "app.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        data = b"#!/bin/sh\necho hi\n"
        info = tarfile.TarInfo("app/run.sh")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    store = _store(tmp_path)
    art = _artifact(archive, unarchive="TAR", permission={"read": "ALL", "execute": "ALL"})
    store.prepare(_comp(art), 65534, 65534)
    unpacked = store.unpacked_of(_comp(art)) / "app" / "app" / "run.sh"
    assert unpacked.read_bytes() == data
    assert unpacked.stat().st_mode & 0o777 == 0o555 and unpacked.stat().st_uid == 65534
    digest = art.sha256
    assert digest is not None and (store.cache / digest).exists()
    removed = store.collect_garbage([])
    assert digest in removed and not (store.cache / digest).exists()


def test_digest_mismatch_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "f").write_text("x")
    art = component.Artifact(uri=f"file://{tmp_path / 'f'}", sha256="1" * 64)
    with pytest.raises(artifacts.ArtifactError, match="sha256 mismatch"):
        _store(tmp_path).prepare(_comp(art), 0, 0)


@pytest.mark.parametrize("member", ["../evil", "/abs/evil", "a/../../evil"])
def test_zip_traversal_is_refused(tmp_path: pathlib.Path, member: str) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(member, "x")
    with pytest.raises(artifacts.ArtifactError, match="escapes"):
        _store(tmp_path).prepare(_comp(_artifact(archive, unarchive="ZIP")), 0, 0)
    assert not (tmp_path / "evil").exists()


def test_tar_link_escape_is_refused(tmp_path: pathlib.Path) -> None:
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tf:
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc"
        tf.addfile(link)
    with pytest.raises(artifacts.ArtifactError, match="link"):
        _store(tmp_path).prepare(_comp(_artifact(archive, unarchive="TAR")), 0, 0)


def test_logpipe_timestamps_and_rotates_with_a_cap(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "c.log"
    lines = "".join(f"line {i:04d} " + "x" * 80 + "\n" for i in range(200)).encode()
    subprocess.run([sys.executable, "-I", "-S", spawner.LOGPIPE, "4000", "2", f"0={log}"],
                   input=lines, check=True)
    files = sorted(tmp_path.glob("c.log*"))
    assert [f.name for f in files] == ["c.log", "c.log.1", "c.log.2"]
    assert sum(f.stat().st_size for f in files) <= 3 * 4000
    last = log.read_text().splitlines()[-1]
    assert last.endswith("line 0199 " + "x" * 80) and last[10] == "T" and "Z line" in last


@pytest.fixture
def http_server(tmp_path: pathlib.Path) -> Iterator[tuple[str, pathlib.Path]]:
    """A real HTTP server on 127.0.0.1 serving a folder (artifact downloads)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()
    server.server_close()


def test_http_artifacts_are_downloaded_verified_and_cached(
    tmp_path: pathlib.Path, http_server: tuple[str, pathlib.Path],
) -> None:
    url, served = http_server
    (served / "model.bin").write_bytes(b"weights" * 1000)
    digest = hashlib.sha256(b"weights" * 1000).hexdigest()
    art = component.Artifact(uri=f"{url}/model.bin", sha256=digest)
    store = _store(tmp_path)
    store.prepare(_comp(art), 0, 0)
    assert (store.cache / digest).read_bytes() == b"weights" * 1000
    # Cached by content: the second prepare does not need the server any more.
    (served / "model.bin").unlink()
    store.prepare(_comp(art, version="1.0.1"), 0, 0)

    # A download whose bytes do not match its digest is refused (the digest names
    # content the cache does not hold, so the server is asked).
    expected = hashlib.sha256(b"the real v2 weights").hexdigest()
    bad = component.Artifact(uri=f"{url}/tampered.bin", sha256=expected)
    (served / "tampered.bin").write_bytes(b"tampered v2 weights")
    with pytest.raises(artifacts.ArtifactError, match="sha256 mismatch"):
        store.prepare(_comp(bad, version="2.0.0"), 0, 0)
    missing = component.Artifact(uri=f"{url}/gone.bin", sha256="2" * 64)
    with pytest.raises(artifacts.ArtifactError, match=r"gone\.bin"):
        store.prepare(_comp(missing, version="3.0.0"), 0, 0)
