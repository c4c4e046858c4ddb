"""Artifacts: fetch (file://, http(s)://), verify sha256 before use, unarchive safely.

A content-addressed cache (artifacts/sha256/<digest>) is shared across component
versions; each component version gets its own view under artifacts/<name>/<version>/,
owned by the component's user with the recipe's permissions, and archives are unpacked
under artifacts-unarchived/<name>/<version>/<file name without extension>/ (as in
Greengrass; two archives that would share a folder are refused, see
component.resolve_artifact_clash). Nothing is unpacked outside that folder: absolute
paths, `..`, links and device files in archives are refused.

The folders are root's and only their files the component's: a component cannot put a
name where the agent writes, and the agent never follows one (fsguard.py). Blocking
I/O; the agent runs it in a worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import secrets
import shutil
import stat
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable, Iterator

from hedgerow.agent import fsguard
from hedgerow.agent.layout import Layout
from hedgerow.core import component, documents

_CHUNK = 1 << 16


class ArtifactError(RuntimeError):
    """Permanent for this spec: a wrong digest or a bad archive does not fix itself."""


def _open(uri: str, timeout: float) -> tuple[object, str]:
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        path = urllib.parse.unquote(parsed.path)
        if "\0" in path:
            raise OSError(f"{path!r}: holds a NUL byte")
        # Not blocking on a FIFO or a device: a file:// artifact is a regular file.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"{path}: not a regular file")
        return os.fdopen(fd, "rb"), path
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
        """The component version's view and unpacked archives, made by root in folders
        only root can change (root:GID, 0750, or 0755 when an artifact is readable by
        all); each file is the component's (UID:GID) with the recipe's permissions.
        Nothing here follows a link or trusts a name a component could have placed."""
        if not comp.artifacts and not _mentions_artifacts(comp):
            return  # nothing to put there and no recipe looks: spare the folders
        clash = component.resolve_artifact_clash(comp.artifacts)
        if clash:
            raise ArtifactError(clash)
        mode = 0o755 if _all(comp.artifacts) else 0o750
        with _version_dir(self.layout.artifacts, comp, gid, mode) as view, \
                _version_dir(self.layout.unarchived, comp, gid, mode) as unpacked:
            for artifact in comp.artifacts:
                cached = self.fetch(artifact)
                _place_copy(view, artifact, cached, uid, gid)
                if artifact.unarchive is not component.Unarchive.NONE:
                    _place_unpacked(unpacked, artifact, cached, uid, gid, mode)

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


def _mode(permission: component.Permission) -> int:
    read = {component.Access.NONE: 0, component.Access.OWNER: 0o400,
            component.Access.ALL: 0o444}[permission.read]
    execute = {component.Access.NONE: 0, component.Access.OWNER: 0o100,
               component.Access.ALL: 0o111}[permission.execute]
    return read | execute


@contextlib.contextmanager
def _version_dir(base: pathlib.Path, comp: documents.ResolvedComponent, gid: int,
                 mode: int) -> Iterator[int]:
    """base/<name>/<version>, root's, opened. An older agent gave this folder to the
    component: such a folder (or anything else in its place) is made anew."""
    base_fd = fsguard.open_dir(base)
    try:
        name_fd = fsguard.make_private_dir(base_fd, comp.name, 0, 0o711)
        try:
            version_fd = fsguard.make_private_dir(name_fd, comp.version, gid, mode)
        finally:
            os.close(name_fd)
    finally:
        os.close(base_fd)
    try:
        yield version_fd
    finally:
        os.close(version_fd)


def _place_copy(view: int, artifact: component.Artifact, cached: pathlib.Path,
                uid: int, gid: int) -> None:
    """The cached bytes as view/<file name>: a temp file made with O_EXCL|O_NOFOLLOW,
    owner and mode set on its descriptor, renamed into place (the folder is root's: no
    one else can put a name there). An existing regular file of the right size stays."""
    name, mode = artifact.filename, _mode(artifact.permission)
    size = cached.stat().st_size
    with contextlib.suppress(OSError):
        fd = fsguard.open_regular(name, view)
        try:
            if os.fstat(fd).st_size == size:
                _own(fd, uid, gid, mode)
                return
        finally:
            os.close(fd)
    tmp = f".{name}.{secrets.token_hex(4)}.tmp"
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                  0o600, dir_fd=view)
    try:
        with cached.open("rb") as src, os.fdopen(os.dup(out), "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
        _own(out, uid, gid, mode)
        os.rename(tmp, name, src_dir_fd=view, dst_dir_fd=view)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=view)
        raise
    finally:
        os.close(out)


def _own(fd: int, uid: int, gid: int, mode: int) -> None:
    """Owner (as root; an unprivileged agent keeps its own) and mode, on a descriptor."""
    if os.geteuid() == 0:
        os.fchown(fd, uid, gid)
    os.fchmod(fd, mode)


def _place_unpacked(unpacked: int, artifact: component.Artifact, archive: pathlib.Path,
                    uid: int, gid: int, dir_mode: int) -> None:
    """Unpack into a staging folder only root can reach (0700, in a root folder), give
    files to the component and folders to root (group GID), then rename it into place.
    An existing unpacked folder (root's) stays."""
    folder = artifact.folder
    with contextlib.suppress(OSError):
        fd = fsguard.open_dir(folder, unpacked)
        try:
            if os.fstat(fd).st_uid == os.geteuid():
                return
        finally:
            os.close(fd)
    staging = f".{folder}.{secrets.token_hex(4)}.staging"
    os.mkdir(staging, 0o700, dir_fd=unpacked)
    try:
        # Every folder above is root's and not writable by a component: a path there
        # names what the agent made (extraction by path is safe in it).
        _unarchive(artifact, archive, pathlib.Path(f"/proc/self/fd/{unpacked}") / staging)
        file_mode = _mode(artifact.permission)
        staged = fsguard.open_dir(staging, unpacked)
        try:
            for _root, dirs, names, dir_fd in os.fwalk(dir_fd=staged):  # never follows
                for entry in names:
                    fd = fsguard.open_regular(entry, dir_fd)  # links were refused
                    try:
                        _own(fd, uid, gid, file_mode)
                    finally:
                        os.close(fd)
                for entry in dirs:
                    fd = fsguard.open_dir(entry, dir_fd)
                    try:
                        _own(fd, 0, gid, dir_mode)
                    finally:
                        os.close(fd)
            _own(staged, 0, gid, dir_mode)
        finally:
            os.close(staged)
        fsguard.remove_entry(unpacked, folder)  # a leftover of an older version
        os.rename(staging, folder, src_dir_fd=unpacked, dst_dir_fd=unpacked)
    except BaseException:
        fsguard.remove_entry(unpacked, staging)
        raise


def _inside(dest: pathlib.Path, name: str, archive: str) -> pathlib.Path:
    target = (dest / name).resolve()
    if name.startswith("/") or not target.is_relative_to(dest.resolve()):
        raise ArtifactError(f"{archive}: archive member {name!r} escapes the extraction "
                            "folder")
    return target


def _unarchive(artifact: component.Artifact, archive: pathlib.Path,
               dest: pathlib.Path) -> None:
    """Unpack `archive` (the cached bytes of `artifact`) into the empty folder `dest`;
    errors name the artifact's file. Absolute names, `..`, links and devices are
    refused, whatever the archive says."""
    name = artifact.filename
    try:
        if artifact.unarchive is component.Unarchive.ZIP:
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise ArtifactError(f"{name}: archive member {info.filename!r} "
                                            "is a link")
                    _inside(dest, info.filename, name)
                zf.extractall(dest)  # noqa: S202 - every member checked above
        else:
            with tarfile.open(archive) as tf:
                for member in tf.getmembers():
                    _inside(dest, member.name, name)
                    if not (member.isfile() or member.isdir()):
                        raise ArtifactError(
                            f"{name}: archive member {member.name!r} is a link or device")
                tf.extractall(dest, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, OSError, ValueError) as exc:
        raise ArtifactError(f"{name}: cannot unarchive: {exc}") from None


def _mentions_artifacts(comp: documents.ResolvedComponent) -> bool:
    """Whether the recipe uses {artifacts:path} or {artifacts:decompressedPath}."""
    return comp.lifecycle is not None and "{artifacts:" in comp.lifecycle.model_dump_json()
