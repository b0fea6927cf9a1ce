"""flux:// URLs (fluxctl.url) and where `recv` puts a download (fluxctl.download helpers)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fluxctl.download import PARTIAL_SUFFIX, destination, partial_paths
from fluxctl.url import FluxURL
from fluxio.parsing import DEFAULT_PORT
from fluxproto import ConfigError

# --- FluxURL.parse ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "path"),
    [
        ("flux://example.test:9000/a/b.bin", "example.test", 9000, "/a/b.bin"),
        ("flux://127.0.0.1/x", "127.0.0.1", DEFAULT_PORT, "/x"),
        ("flux://h", "h", DEFAULT_PORT, "/"),
        ("flux://h/", "h", DEFAULT_PORT, "/"),
        ("flux://h:1/dir/", "h", 1, "/dir/"),
        ("flux://[::1]:7443/f", "::1", 7443, "/f"),
        ("flux://[::1]/f", "::1", DEFAULT_PORT, "/f"),
        ("flux://[2001:db8::1]", "2001:db8::1", DEFAULT_PORT, "/"),
        # The path is literal: no percent-decoding, queries or fragments.
        ("flux://h/a%20b", "h", DEFAULT_PORT, "/a%20b"),
        # Disguises reach the server as typed, for its path rules to refuse.
        ("flux://h/%ef%bc%8e%ef%bc%8e/x", "h", DEFAULT_PORT, "/%ef%bc%8e%ef%bc%8e/x"),
        ("flux://h/a?b#c", "h", DEFAULT_PORT, "/a?b#c"),
        ("flux://h//double", "h", DEFAULT_PORT, "//double"),
        ("flux://h/ünï cödé", "h", DEFAULT_PORT, "/ünï cödé"),
    ],
)
def test_parse(text: str, host: str, port: int, path: str) -> None:
    url = FluxURL.parse(text)
    assert (url.host, url.port, url.path) == (host, port, path)


def test_default_port_is_7070() -> None:
    assert DEFAULT_PORT == 7070
    assert FluxURL.parse("flux://h/x").port == 7070


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "not a flux URL"),
        ("h:7070/x", "not a flux URL"),
        ("http://h/x", "not a flux URL"),
        ("FLUX://h/x", "not a flux URL"),
        ("flux:/h/x", "not a flux URL"),
        ("/local/path", "not a flux URL"),
        ("flux://", "no host"),
        ("flux:///x", "no host"),
        ("flux://:80/x", "HOST:PORT"),
        ("flux://h:port/x", "HOST:PORT"),
        ("flux://h:0/x", "port 0"),
        ("flux://[::1]:0/x", "port 0"),
        ("flux://h:/x", "HOST:PORT"),
        ("flux://::1/x", "HOST:PORT"),
        ("flux://[::1/x", "HOST:PORT"),
        ("flux://h:70000/x", "port out of range"),
    ],
)
def test_parse_errors(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FluxURL.parse(text)


# --- name, address, str -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("flux://h/file.bin", "file.bin"),
        ("flux://h/a/b/c.txt", "c.txt"),
        ("flux://h/dir/", "dir"),
        ("flux://h/dir//", "dir"),
        ("flux://h/", ""),
        ("flux://h", ""),
        ("flux://h//", ""),
    ],
)
def test_name_is_last_component(text: str, name: str) -> None:
    assert FluxURL.parse(text).name == name


def test_address() -> None:
    assert FluxURL.parse("flux://h/x").address == "h:7070"
    assert FluxURL.parse("flux://[::1]:8/x").address == "[::1]:8"


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("flux://h", "flux://h:7070/"),
        ("flux://h/a/b", "flux://h:7070/a/b"),
        ("flux://h:1/dir/", "flux://h:1/dir/"),
        ("flux://[::1]/x", "flux://[::1]:7070/x"),
        ("flux://[fe80::1%eth0]:9/x", "flux://[fe80::1%eth0]:9/x"),
    ],
)
def test_str_is_canonical_and_round_trips(text: str, canonical: str) -> None:
    url = FluxURL.parse(text)
    assert str(url) == canonical
    assert FluxURL.parse(str(url)) == url


def test_urls_are_values() -> None:
    a, b = FluxURL.parse("flux://h/x"), FluxURL.parse("flux://h:7070/x")
    assert a == b
    assert hash(a) == hash(b)
    assert a != FluxURL.parse("flux://h/y")


# --- download destination (fluxctl.download helpers) --------------------------------------------


def url(path: str) -> FluxURL:
    return FluxURL.parse(f"flux://h{path}")


def test_destination_into_existing_directory_uses_remote_name(tmp_path: Path) -> None:
    assert destination(tmp_path, url("/a/b/file.bin")) == tmp_path / "file.bin"


def test_destination_into_directory_named_with_trailing_separator(tmp_path: Path) -> None:
    local = Path(str(tmp_path) + os.sep)
    assert destination(local, url("/dir/data")) == tmp_path / "data"


def test_destination_directory_url_with_trailing_slash(tmp_path: Path) -> None:
    assert destination(tmp_path, url("/remote/dir/")) == tmp_path / "dir"


def test_destination_is_the_local_path_when_not_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "renamed.bin"
    assert destination(target, url("/a/file.bin")) == target
    (tmp_path / "exists").write_bytes(b"old")
    assert destination(tmp_path / "exists", url("/x")) == tmp_path / "exists"


def test_destination_missing_parent_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such local directory"):
        destination(tmp_path / "missing" / "out", url("/x"))


def test_destination_parent_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(ConfigError, match="no such local directory"):
        destination(tmp_path / "f" / "out", url("/x"))


def test_destination_names_the_system_cannot_take_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="longer than 255 bytes"):
        destination(tmp_path / ("a" * 256), url("/x"))
    with pytest.raises(ConfigError, match="longer than 255 bytes"):
        destination(tmp_path / ("é" * 128), url("/x"))  # 256 bytes in UTF-8
    with pytest.raises(ConfigError, match="cannot use local path"):
        destination(tmp_path / ("a" * 300) / "out", url("/x"))  # a parent too long to look up
    assert destination(tmp_path / ("a" * 255), url("/x")) == tmp_path / ("a" * 255)


@pytest.mark.parametrize("path", ["/", ""])
def test_destination_directory_for_the_root_url_names_no_file(tmp_path: Path, path: str) -> None:
    with pytest.raises(ConfigError, match="names no file"):
        destination(tmp_path, url(path))


def test_destination_trailing_separator_means_a_directory(tmp_path: Path) -> None:
    # `fluxctl recv flux://h/data newdir/` where newdir does not exist: the argument is taken
    # as typed (a Path would drop the slash and write the file as `newdir`).
    local = str(tmp_path / "newdir") + os.sep
    with pytest.raises(ConfigError, match="no such local directory"):
        destination(local, url("/data"))


def test_partial_paths_are_hidden_siblings(tmp_path: Path) -> None:
    data, journal = partial_paths(tmp_path / "movie.mkv")
    assert data == tmp_path / f".movie.mkv{PARTIAL_SUFFIX}"
    assert journal == tmp_path / f".movie.mkv{PARTIAL_SUFFIX}.journal"
    assert data.parent == journal.parent == tmp_path
    assert data.name.startswith(".") and journal.name.startswith(".")


def test_partial_paths_differ_per_destination(tmp_path: Path) -> None:
    a, b = partial_paths(tmp_path / "a"), partial_paths(tmp_path / "b")
    assert set(a).isdisjoint(b)
    assert len(set(a)) == 2
