"""Entry kind "link" with its target (issue 12): a link carries its text, files and folders a nil
one (PROTOCOL.md section 4), and an entry without the key decodes as before."""

from __future__ import annotations

import pytest

from fluxproto import Entry
from fluxproto.errors import LocalProtocolError
from fluxproto.frames import MAX_PATH


def test_a_link_round_trips_with_its_target() -> None:
    link = Entry("a/b", "link", 3, 5, 0o777, None, "../c")
    assert link.to_wire()["target"] == "../c"
    assert Entry.from_wire(link.to_wire()) == link


def test_files_and_folders_have_a_nil_target() -> None:
    assert Entry("f", "file", 1).to_wire()["target"] is None
    assert Entry.from_wire({"name": "d", "kind": "dir"}) == Entry("d", "dir")


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "l", "kind": "link"},  # a link without its text
        {"name": "l", "kind": "link", "target": ""},
        {"name": "f", "kind": "file", "target": "x"},  # only links have one
        {"name": "l", "kind": "link", "target": "x" * (MAX_PATH + 1)},
        {"name": "n" * (MAX_PATH + 1), "kind": "file"},
    ],
)
def test_bad_link_fields_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError):
        Entry.from_wire(fields)


def test_a_recursive_name_may_be_a_whole_path() -> None:
    name = "/".join(["d" * 200] * 20)  # 4019 bytes: more than one name, within MAX_PATH
    assert Entry.from_wire({"name": name, "kind": "file"}).name == name
