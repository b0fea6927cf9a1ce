"""fluxctl.targets: where each argument of `send -r` / `recv -r` goes (the trailing-slash rule)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fluxctl.targets import RootPair, map_roots, names_folder
from fluxproto import ConfigError, PermissionDenied

# (sources, remote destination) -> (source, remote root) pairs, for send -r.
SEND = [
    # The copy goes to PATH itself when PATH does not end in "/", whatever the source's slash.
    (["photos"], "/backup", [("photos", "/backup")]),
    (["photos/"], "/backup", [("photos/", "/backup")]),
    (["a/b/photos"], "/backup/2024", [("a/b/photos", "/backup/2024")]),
    # PATH ending in "/": inside it under the source's name, or its contents for "photos/".
    (["photos"], "/backup/", [("photos", "/backup/photos")]),
    (["a/b/photos"], "/backup/", [("a/b/photos", "/backup/photos")]),
    (["photos/"], "/backup/", [("photos/", "/backup")]),
    (["photos"], "/", [("photos", "/photos")]),  # flux://HOST and flux://HOST/ alike
    (["photos/"], "/", [("photos/", "/")]),
    # ".", ".." and "/" have no name of their own: they stand for their contents.
    (["."], "/backup/", [(".", "/backup")]),
    (["a/.."], "/backup/", [("a/..", "/backup")]),
    (["/"], "/backup/", [("/", "/backup")]),
    # Several sources: each inside PATH/.
    (["a", "b/c"], "/d/", [("a", "/d/a"), ("b/c", "/d/c")]),
    (["a", "b", "c"], "//d//", [("a", "/d/a"), ("b", "/d/b"), ("c", "/d/c")]),
]

# (remote sources, local destination) -> pairs, for recv -r: the same rules, mirrored.
RECV = [
    (["/photos"], "out", [("/photos", "out")]),
    (["/photos/"], "out", [("/photos", "out")]),
    (["/photos"], "out/", [("/photos", "out/photos")]),
    (["/a/photos"], "out/", [("/a/photos", "out/photos")]),
    (["/photos/"], "out/", [("/photos", "out")]),
    (["/photos"], ".", [("/photos", "photos")]),  # "." is a folder: inside it, as cp and scp
    (["/photos"], "..", [("/photos", "../photos")]),
    (["/"], "out/", [("/", "out")]),  # the root has no name: its contents
    (["/a", "/b/c"], "out/", [("/a", "out/a"), ("/b/c", "out/c")]),
]


@pytest.mark.parametrize(("sources", "dest", "want"), SEND)
def test_send_targets(sources: list[str], dest: str, want: list[tuple[str, str]]) -> None:
    assert map_roots(sources, dest, remote_dest=True) == [RootPair(*p) for p in want]


@pytest.mark.parametrize(("sources", "dest", "want"), RECV)
def test_recv_targets(sources: list[str], dest: str, want: list[tuple[str, str]]) -> None:
    assert map_roots(sources, dest, remote_dest=False) == [RootPair(*p) for p in want]


@pytest.mark.parametrize(
    ("sources", "dest", "remote_dest", "message"),
    [
        ([], "/d/", True, "at least one source"),
        (["a", "b"], "/d", True, "2 sources need a destination folder ending in '/'"),
        (["/a", "/b"], "out", False, "2 sources need a destination folder ending in '/'"),
        (["x/a", "y/a"], "/d/", True, "would both write to '/d/a'"),
        (["/x/a", "/y/a/"], "out/", False, "would both write to"),
        (["a/", "b"], "/d/", True, "would both write to '/d'"),  # b would land inside a's copy
        (["a/", "b/"], "/d/", True, "would both write to"),
        ([""], "/d", True, "an empty path"),
        (["a"], "", False, "an empty path"),
    ],
)
def test_bad_combinations_are_one_line(
    sources: list[str], dest: str, remote_dest: bool, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        map_roots(sources, dest, remote_dest=remote_dest)
    assert message in caught.value.message
    assert "\n" not in caught.value.message


def test_a_remote_path_the_server_refuses_is_refused_here() -> None:
    with pytest.raises(PermissionDenied, match=r"'\.\.'"):
        map_roots(["a"], "/d/../x", remote_dest=True)
    with pytest.raises(PermissionDenied, match="reserved"):
        map_roots([".flux"], "/", remote_dest=True)


def test_the_text_decides_not_what_exists(tmp_path: Path) -> None:
    """A second run of the same command writes where the first did: "out" is the copy whether
    or not it exists (cp -r and scp -r would put the second copy in out/photos)."""
    out = str(tmp_path / "out")
    before = map_roots(["/photos"], out, remote_dest=False)
    os.mkdir(out)
    assert map_roots(["/photos"], out, remote_dest=False) == before == [RootPair("/photos", out)]


@pytest.mark.parametrize(
    ("path", "folder"),
    [("a/", True), (".", True), ("..", True), ("a/.", True), ("/", True), ("a", False),
     ("a.", False), ("...", False)],
)  # fmt: skip
def test_names_folder(path: str, folder: bool) -> None:
    assert names_folder(path) is folder
