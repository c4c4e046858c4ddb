"""The desired document (and the local deployments) are parsed, hashed and resolved
once per change of their files, not on every pass — and no change is missed, not even
a same-size rewrite in place within the filesystem's timestamp granularity."""

from __future__ import annotations

import os
import pathlib

from hedgerow.agent import desired
from hedgerow.agent.layout import Layout
from hedgerow.core import documents
from tests.support.deployments import local_deployment

from .conftest import rc

THING = "gw-reader"
PLATFORM = documents.PlatformInfo(os="linux", arch="amd64")
LOCAL = local_deployment(THING)


def layout_at(tmp_path: pathlib.Path) -> Layout:
    layout = Layout(tmp_path)
    layout.ensure()
    return layout


def cloud(*names: str, version: str = "1.0.0") -> documents.DesiredState:
    ref = documents.DeploymentRef(name="cloud")
    return documents.render_desired_state(THING, [ref],
                                          [rc(n, version=version) for n in names])


def publish(layout: Layout, doc: documents.DesiredState) -> None:
    """As the connector does: a new file renamed into place."""
    tmp = layout.desired_file.with_suffix(".tmp")
    tmp.write_bytes(documents.render_bytes(doc))
    tmp.replace(layout.desired_file)


def age(path: pathlib.Path, seconds: float = 60) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def test_parsed_once_per_change(tmp_path: pathlib.Path) -> None:
    layout, reader = layout_at(tmp_path), desired.Reader()
    first = cloud("a", "b")
    publish(layout, first)
    readings = [reader.fetch(layout, THING, PLATFORM) for _ in range(20)]
    assert reader.parses == 1
    assert all(r is readings[0] for r in readings)
    assert readings[0].desired is not None and readings[0].desired.revision == first.revision

    second = cloud("a", "b", "c")
    publish(layout, second)
    reading = reader.fetch(layout, THING, PLATFORM)
    assert reader.parses == 2
    assert reading.desired is not None and reading.desired.revision == second.revision

    # A local deployment appears: read with the cloud document, merged, once.
    (layout.deployments / "by-hand.yaml").write_text(LOCAL)
    for _ in range(5):
        reading = reader.fetch(layout, THING, PLATFORM)
    assert reader.parses == 3
    assert reading.desired is not None
    assert [c.name for c in reading.desired.components] == ["a", "b", "c", "on-site"]
    assert reading.cloud_revision == second.revision

    # … and goes: back to the cloud document alone.
    (layout.deployments / "by-hand.yaml").unlink()
    reading = reader.fetch(layout, THING, PLATFORM)
    assert reader.parses == 4 and reading.desired == second


def test_a_same_size_rewrite_in_place_is_seen(tmp_path: pathlib.Path) -> None:
    """Same inode, same size, same mtime: only the bytes tell. A file written moments ago
    is compared by content, not trusted by its stat."""
    layout, reader = layout_at(tmp_path), desired.Reader()
    one, two = cloud("a", version="1.0.1"), cloud("a", version="1.0.2")
    data_one, data_two = documents.render_bytes(one), documents.render_bytes(two)
    assert len(data_one) == len(data_two)
    layout.desired_file.write_bytes(data_one)
    before = layout.desired_file.stat()
    assert reader.fetch(layout, THING, PLATFORM).desired == one
    with layout.desired_file.open("r+b") as f:  # in place: same inode
        f.write(data_two)
    os.utime(layout.desired_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert layout.desired_file.stat().st_ino == before.st_ino
    assert reader.fetch(layout, THING, PLATFORM).desired == two
    assert reader.parses == 2


def test_a_settled_file_is_not_read_again_and_a_touch_does_not_reparse(
        tmp_path: pathlib.Path) -> None:
    layout, reader = layout_at(tmp_path), desired.Reader()
    doc = cloud("a")
    publish(layout, doc)
    age(layout.desired_file)
    assert reader.fetch(layout, THING, PLATFORM).desired == doc
    for _ in range(5):  # settled: not even read again
        assert reader.fetch(layout, THING, PLATFORM).desired == doc
    layout.desired_file.touch()  # new mtime, same bytes: read, compared, not parsed
    assert reader.fetch(layout, THING, PLATFORM).desired == doc
    assert reader.parses == 1


def test_bad_input_is_reported_and_its_fix_is_seen(tmp_path: pathlib.Path) -> None:
    layout, reader = layout_at(tmp_path), desired.Reader()
    layout.desired_file.write_bytes(b'{"torn": ')
    reading = reader.fetch(layout, THING, PLATFORM)
    assert reading.desired is None
    assert any("not a JSON document" in p for p in reading.problems)
    assert reader.fetch(layout, THING, PLATFORM).problems == reading.problems
    doc = cloud("a")
    publish(layout, doc)
    assert reader.fetch(layout, THING, PLATFORM).desired == doc
