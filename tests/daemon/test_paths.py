"""The path sandbox: normalisation, refusals, and symlinks leading out of the root."""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluxd.storage.local_tree import LocalTree
from fluxd.storage.paths import normalize, require_file_path, resolve
from fluxio.beneath import Beneath
from fluxproto.errors import PermissionDenied
from fluxproto.frames import MAX_PATH
from tests import hostile_paths

ACCEPTED = [
    ("/", ""),
    ("", ""),
    (".", ""),
    ("//", ""),
    ("/./.", ""),
    ("/backups/x.tar", "backups/x.tar"),
    ("a/b", "a/b"),
    ("a//b///c", "a/b/c"),
    ("./a/./b/.", "a/b"),
    ("a/b/", "a/b"),
    ("/a/.hidden", "a/.hidden"),
    ("a/.flux", "a/.flux"),  # only the first component is reserved
    (".fluxx", ".fluxx"),
    ("flux", "flux"),
    ("a/...", "a/..."),
    ("..a/b..", "..a/b.."),
    ("with space/ tab-free ", "with space/ tab-free "),
    ("caf\u0065\u0301", "caf\u00e9"),  # NFD input becomes NFC
    ("日本/файл.txt", "日本/файл.txt"),
    ("x" * 255, "x" * 255),
    ("é" * 127, "é" * 127),  # 254 bytes
    ("/".join(["d" * 200] * 20), "/".join(["d" * 200] * 20)),  # 4019 bytes
]

REFUSED = [
    "..",
    "/..",
    "../",
    "../etc/passwd",
    "/../etc/passwd",
    "a/../../b",
    "a/..",
    "a/../b",
    "./..",
    "a/./../b",
    "//..//",
    "a/b/../../..",
    "a\x00b",
    "\x00",
    "/etc/passwd\x00.txt",
    "a\nb",
    "a\rb",
    "a\tb",
    "\x1b[31mred",
    "a\x7fb",
    "a\x1fb",
    "a\x01",
    "a\\b",
    "..\\..\\windows",
    "\\",
    "C:\\x",
    ".flux",
    "/.flux",
    ".flux/",
    ".flux/staging/x",
    "/.flux/manifests/abc",
    "./.flux/x",
    "//.flux",
    ".FLUX/x",
    ".Flux",
    "x" * 256,
    "a/" + "x" * 256,
    "é" * 128,  # 256 bytes
    "/".join(["d" * 250] * 17),  # 4266 bytes
    "a" * (MAX_PATH + 1),
    "/" * (MAX_PATH + 1),
    "a\ud800b",  # lone surrogate: not UTF-8
]


@pytest.mark.parametrize(("raw", "expected"), ACCEPTED)
def test_accepted_paths_normalise(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


@pytest.mark.parametrize("raw", REFUSED)
def test_hostile_paths_are_refused(raw: str) -> None:
    with pytest.raises(PermissionDenied) as info:
        normalize(raw)
    assert "\n" not in info.value.message
    assert len(info.value.message) < 200


def test_there_are_enough_hostile_cases() -> None:
    assert len(REFUSED) >= 30


@pytest.mark.parametrize("raw", ["", "/", ".", "//./"])
def test_require_file_path_refuses_root(raw: str) -> None:
    with pytest.raises(PermissionDenied, match="a file path is needed"):
        require_file_path(raw)


def test_require_file_path_normalises() -> None:
    assert require_file_path("//a/./b") == "a/b"


@given(st.text(max_size=60))
def test_normalize_is_canonical_or_refuses(raw: str) -> None:
    try:
        rel = normalize(raw)
    except PermissionDenied:
        return
    assert normalize(rel) == rel
    assert not rel.startswith("/") and "//" not in rel
    parts = rel.split("/") if rel else []
    assert all(p not in ("", ".", "..") for p in parts)
    assert unicodedata.is_normalized("NFC", rel)
    assert not any(ord(c) < 0x20 or c in "\x7f\\" for c in rel)


def test_resolve_joins_inside_root(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert resolve(tmp_path, "a/new.bin") == tmp_path.resolve() / "a" / "new.bin"
    assert resolve(tmp_path, "") == tmp_path.resolve()


def test_resolve_refuses_symlink_out_of_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("s")
    os.symlink(outside, root / "escape")
    os.symlink(outside / "secret", root / "secret-link")
    os.symlink(tmp_path / "nowhere", root / "dangling")
    for rel in ("escape", "escape/secret", "escape/new/file", "secret-link", "dangling/x"):
        with pytest.raises(PermissionDenied, match="outside"):
            resolve(root, rel)


def test_resolve_allows_symlink_within_root(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "alias")
    assert resolve(tmp_path, "alias/f") == tmp_path.resolve() / "real" / "f"


def test_resolve_refuses_symlink_into_reserved_area(tmp_path: Path) -> None:
    (tmp_path / ".flux").mkdir()
    os.symlink(tmp_path / ".flux", tmp_path / "sneaky")
    os.symlink(tmp_path, tmp_path / "self")
    for rel in ("sneaky", "sneaky/manifests", "self/.flux/x"):
        with pytest.raises(PermissionDenied, match="reserved"):
            resolve(tmp_path, rel)


@pytest.mark.parametrize("openat2", [True, False], ids=["fast", "resolve"])
def test_the_tree_leads_paths_where_resolve_does(tmp_path: Path, openat2: bool) -> None:
    # LocalTree.inner skips resolve() when the walk meets no link: both must agree everywhere.
    root = tmp_path / "root"
    (root / "real" / "sub").mkdir(parents=True)
    (root / "real" / "f").write_text("f")
    (root / ".flux").mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(root / "real", root / "alias")
    os.symlink(tmp_path / "outside", root / "escape")
    os.symlink(root / ".flux", root / "sneaky")
    tree = LocalTree(root.resolve())
    tree._beneath = Beneath(tree.root, use_openat2=openat2)
    paths = ["real", "real/f", "real/new", "real/sub/new/deeper", "real/f/under", "alias/f"]
    paths += ["alias/new", "escape", "escape/x", "sneaky", "sneaky/x", ".flux", ".FLUX/x", "new"]
    for rel in paths:
        try:
            want: object = os.path.relpath(resolve(tree.root, rel), tree.root)
        except PermissionDenied as exc:
            want = str(exc)
        try:
            got: object = tree.inner(rel)
        except PermissionDenied as exc:
            got = str(exc)
        assert got == want, rel


# --- the traversal corpus -----------------------------------------------------------------------


def test_the_corpus_is_large_enough() -> None:
    assert len(hostile_paths.ALL) >= 50
    assert len(set(hostile_paths.ALL)) == len(hostile_paths.ALL)


@pytest.mark.parametrize("path", hostile_paths.REFUSED_BY_RULES)
def test_normalize_refuses_every_hostile_path(path: str) -> None:
    with pytest.raises(PermissionDenied):
        normalize(path)


@pytest.mark.parametrize(
    "path",
    [
        "100%",
        "a%20b",
        "%41",
        "50%off/x",
        "%e2%82%ac",
        "a%2e%2eb",  # reads as "a..b": a name, not a step up
        "%2e%2e%2e",  # "..."
        "%e2%80%a6",  # U+2026 HORIZONTAL ELLIPSIS, "..." under NFKC
        "x/%2eflux",  # only the first component is reserved
        "%uD83D%uDE00",  # one emoji as JavaScript's escape() writes it
        "%25" * 40 + "2e",  # 40 percent signs and a dot
        "\uff05\uff14\uff11",  # fullwidth "%41"
    ],
)
def test_harmless_percent_signs_are_plain_characters(path: str) -> None:
    assert normalize(path) == path


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("%ef%bc%8e%ef%bc%8e/x", "reads as '..'"),
        ("..%e2%88%95x", "reads as U+2215, a slash look-alike"),
        ("a%0ab", "reads as a control character"),
        ("%2eflux", "reads as the reserved name .flux"),
        ("%c0%ae", "hides invalid UTF-8"),
        ("%" + "25" * 40 + "2e", "encoded too many times"),
    ],
)
def test_a_decoded_name_is_refused_for_what_it_reads_as(path: str, reason: str) -> None:
    with pytest.raises(PermissionDenied, match=re.escape(reason)):
        normalize(path)
