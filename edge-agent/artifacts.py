"""Artifacts: fetch (file://, http(s)://), verify sha256 before use, unarchive safely.

A content-addressed cache (artifacts/sha256/<digest>) is shared across component
versions; each component version gets its own view under artifacts/<name>/<version>/,
owned by the component's user with the recipe's permissions, and archives are unpacked
under artifacts-unarchived/<name>/<version>/<archive stem>/. Nothing is unpacked outside
that folder: absolute paths, `..`, links and device files in archives are refused.
Blocking I/O; the agent runs it in a worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable

from hedgerow.agent.layout import Layout
from hedgerow.core import component, documents

_CHUNK = 1 << 16


class ArtifactError(RuntimeError):
    """Permanent for this spec: a wrong digest or a bad archive does not fix itself."""


def _open(uri: str, timeout: float) -> tuple[object, str]:
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        path = urllib.parse.unquote(parsed.path)
        return pathlib.Path(path).open("rb"), path
    response = urllib.request.urlopen(uri, timeout=timeout)  # noqa: S310 - scheme checked
    return response, uri


class Store:
    def __init__(self, layout: Layout, timeout_s: float = 60.0) -> None:
        self.layout, self.timeout_s = layout, timeout_s
        self.cache = layout.artifacts / "sha256"

    def view_of(self, comp: documents.ResolvedComponent) -> pathlib.Path:
        return self.layout.artifacts / comp.name / comp.version

    def unpacked_of(self, comp: documents.ResolvedComponent) -> pathlib.Path:
        return self.layout.unarchived / comp.name / comp.version

    def fetch(self, artifact: component.Artifact) -> pathlib.Path:
        """The cached file for this artifact, downloading and verifying it if needed."""
        self.cache.mkdir(exist_ok=True, mode=0o700)
        if artifact.sha256 and (self.cache / artifact.sha256).exists():
            return self.cache / artifact.sha256
        try:
            source, where = _open(artifact.uri, self.timeout_s)
        except OSError as exc:
            raise ArtifactError(f"{artifact.uri}: cannot fetch: {exc}") from None
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=self.cache, prefix=".fetch.")
        try:
            with os.fdopen(fd, "wb") as out, contextlib.closing(source):  # type: ignore[type-var]
                while chunk := source.read(_CHUNK):  # type: ignore[attr-defined]
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            actual = digest.hexdigest()
            if artifact.sha256 and actual != artifact.sha256:
                raise ArtifactError(f"{where}: sha256 mismatch: expected {artifact.sha256}, "
                                    f"got {actual}")
            pathlib.Path(tmp).replace(self.cache / actual)
            return self.cache / actual
        except OSError as exc:
            raise ArtifactError(f"{where}: cannot fetch: {exc}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                pathlib.Path(tmp).unlink()

    def prepare(self, comp: documents.ResolvedComponent, uid: int, gid: int) -> None:
        if not comp.artifacts and not _mentions_artifacts(comp):
            return  # nothing to put there and no recipe looks: spare the folders
        view, unpacked = self.view_of(comp), self.unpacked_of(comp)
        for folder in (view, unpacked):
            folder.mkdir(parents=True, exist_ok=True)
            folder.parent.chmod(0o711)
            folder.chmod(0o755 if _all(comp.artifacts) else 0o700)
            if os.geteuid() == 0:
                os.chown(folder, uid, gid)
        for artifact in comp.artifacts:
            cached = self.fetch(artifact)
            target = view / artifact.filename
            if not target.exists():
                tmp = view / f".{artifact.filename}.tmp"
                shutil.copyfile(cached, tmp)
                tmp.replace(target)
            _permit(target, artifact.permission, uid, gid)
            if artifact.unarchive is not component.Unarchive.NONE:
                dest = unpacked / _stem(artifact.filename)
                if not dest.exists():
                    _unarchive(target, dest, artifact.unarchive)
                    for path in [dest, *dest.rglob("*")]:
                        _permit(path, artifact.permission, uid, gid, folder=path.is_dir())

    def collect_garbage(self, keep: Iterable[documents.ResolvedComponent]) -> list[str]:
        """Remove cache entries and views no kept component needs; returns what went."""
        kept = list(keep)
        digests = {a.sha256 for c in kept for a in c.artifacts if a.sha256}
        views = {(c.name, c.version) for c in kept}
        removed = []
        for entry in self.cache.glob("*") if self.cache.exists() else ():
            if entry.name not in digests and not entry.name.startswith("."):
                entry.unlink()
                removed.append(entry.name)
        for base in (self.layout.artifacts, self.layout.unarchived):
            for version in base.glob("*/*"):
                if version.parent.name != "sha256" and (
                        version.parent.name, version.name) not in views:
                    shutil.rmtree(version, ignore_errors=True)
                    removed.append(str(version.relative_to(self.layout.root)))
        return removed


def _all(artifacts: list[component.Artifact]) -> bool:
    return any(a.permission.read is component.Access.ALL for a in artifacts)


def _stem(filename: str) -> str:
    for suffix in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip"):
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return filename.rsplit(".", 1)[0]


def _permit(path: pathlib.Path, permission: component.Permission, uid: int, gid: int,
            folder: bool = False) -> None:
    read = {component.Access.NONE: 0, component.Access.OWNER: 0o400,
            component.Access.ALL: 0o444}[permission.read]
    execute = {component.Access.NONE: 0, component.Access.OWNER: 0o100,
               component.Access.ALL: 0o111}[permission.execute]
    mode = read | execute | (0o700 if folder else 0)
    if folder and permission.read is component.Access.ALL:
        mode |= 0o555
    if os.geteuid() == 0:
        os.chown(path, uid, gid, follow_symlinks=False)
    path.chmod(mode)


def _inside(dest: pathlib.Path, name: str) -> pathlib.Path:
    target = (dest / name).resolve()
    if name.startswith("/") or not target.is_relative_to(dest.resolve()):
        raise ArtifactError(f"archive member {name!r} escapes the extraction folder")
    return target


def _unarchive(archive: pathlib.Path, dest: pathlib.Path, kind: component.Unarchive) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if kind is component.Unarchive.ZIP:
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise ArtifactError(f"archive member {info.filename!r} is a link")
                    _inside(tmp, info.filename)
                zf.extractall(tmp)  # noqa: S202 - every member checked above
        else:
            with tarfile.open(archive) as tf:
                for member in tf.getmembers():
                    _inside(tmp, member.name)
                    if not (member.isfile() or member.isdir()):
                        raise ArtifactError(
                            f"archive member {member.name!r} is a link or device")
                tf.extractall(tmp, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ArtifactError(f"{archive.name}: cannot unarchive: {exc}") from None
    except ArtifactError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.replace(dest)


def _mentions_artifacts(comp: documents.ResolvedComponent) -> bool:
    """Whether the recipe uses {artifacts:path} or {artifacts:decompressedPath}."""
    return comp.lifecycle is not None and "{artifacts:" in comp.lifecycle.model_dump_json()
