"""fluxd.config: sizes, HOST:PORT, loopback, the data directory, ServerConfig, load_config."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path
from typing import Any

import pytest

from fluxd.config import (
    DEFAULT_LISTEN,
    AuthConfig,
    Limits,
    ServerConfig,
    data_dir,
    load_config,
)
from fluxd.storage.base import TREE_ENTRIES
from fluxio import parsing
from fluxio.parsing import DEFAULT_PORT, format_hostport, is_loopback, parse_hostport, parse_size
from fluxproto import MAX_CHUNK, ConfigError
from fluxproto.frames import MAX_WINDOW, MIN_WINDOW

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own HOME and no FLUXD_HOME / XDG_DATA_HOME from the environment."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("FLUXD_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    return home


# --- parse_size ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1048576", MiB),
        ("512k", 512 * KiB),
        ("512K", 512 * KiB),
        ("512KiB", 512 * KiB),
        ("512kib", 512 * KiB),
        ("512KB", 512 * KiB),
        ("512Ki", 512 * KiB),
        ("4M", 4 * MiB),
        ("4m", 4 * MiB),
        ("4MiB", 4 * MiB),
        ("4MB", 4 * MiB),  # binary units even with the SI spelling
        ("2G", 2 * GiB),
        ("2gib", 2 * GiB),
        ("1T", TiB),
        ("1TiB", TiB),
        ("100B", 100),
        ("100b", 100),
        ("  8M  ", 8 * MiB),
        ("8 M", 8 * MiB),
    ],
)
def test_parse_size_units_and_case(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_parse_size_passes_ints_through() -> None:
    assert parse_size(12345) == 12345
    assert parse_size(0) == 0


@pytest.mark.parametrize(
    "text",
    ["", " ", "M", "4X", "4MM", "-4M", "+4M", "1.5M", "4 M B", "0x10", "4 MiBs", "four", "4Mi B"],
)
def test_parse_size_rejects_garbage(text: str) -> None:
    with pytest.raises(ConfigError, match="not a size"):
        parse_size(text)


# --- parse_hostport / format_hostport -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7000", ("127.0.0.1", 7000)),
        ("example.test:1", ("example.test", 1)),
        ("localhost", ("localhost", DEFAULT_PORT)),
        ("10.1.2.3", ("10.1.2.3", DEFAULT_PORT)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::1]", ("::1", DEFAULT_PORT)),
        ("[fe80::1%eth0]:9", ("fe80::1%eth0", 9)),
        ("host:0", ("host", 0)),
        ("host:65535", ("host", 65535)),
        ("  host:80  ", ("host", 80)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


def test_parse_hostport_custom_default_port() -> None:
    assert parse_hostport("h", 1234) == ("h", 1234)
    assert parse_hostport("[::1]", 1234) == ("::1", 1234)
    assert parse_hostport("h:5", 1234) == ("h", 5)


@pytest.mark.parametrize("text", ["host:65536", "host:99999", "[::1]:70000"])
def test_parse_hostport_port_out_of_range(text: str) -> None:
    with pytest.raises(ConfigError, match="port out of range"):
        parse_hostport(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":80",
        "host:",
        "host:port",
        "host:-1",
        "::1",  # IPv6 needs brackets
        "::1:80",
        "[::1",
        "[]:80",
        "[::1]:",
        "[::1]80",
        "a:b:c",
        "host:80:90",
    ],
)
def test_parse_hostport_rejects_garbage(text: str) -> None:
    with pytest.raises(ConfigError, match="not a HOST:PORT"):
        parse_hostport(text)


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [
        ("127.0.0.1", 7070, "127.0.0.1:7070"),
        ("localhost", 1, "localhost:1"),
        ("::1", 8080, "[::1]:8080"),
        ("2001:db8::5", 0, "[2001:db8::5]:0"),
    ],
)
def test_format_hostport_round_trips(host: str, port: int, text: str) -> None:
    assert format_hostport(host, port) == text
    assert parse_hostport(text) == (host, port)


# --- is_loopback --------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1"])
def test_loopback_literals(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["192.0.2.1", "0.0.0.0", "::", "10.0.0.1", "2001:db8::1"])
def test_non_loopback_literals(host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dns(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an IP literal must not be resolved")

    monkeypatch.setattr(parsing.socket, "getaddrinfo", no_dns)
    assert not is_loopback(host)


def test_localhost_is_loopback() -> None:
    assert is_loopback("localhost")  # /etc/hosts, not DNS


def _fake_resolver(
    monkeypatch: pytest.MonkeyPatch, table: dict[str, list[str]], asked: list[str]
) -> None:
    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for addr in table[host]:
            if ":" in addr:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (addr, 0, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, 0)))
        return out

    monkeypatch.setattr(parsing.socket, "getaddrinfo", getaddrinfo)


def test_names_are_loopback_only_if_every_address_is(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    _fake_resolver(
        monkeypatch,
        {
            "both.test": ["127.0.0.1", "::1"],
            "mixed.test": ["127.0.0.1", "192.0.2.1"],
            "remote.test": ["192.0.2.1"],
            "empty.test": [],
        },
        asked,
    )
    assert is_loopback("both.test")
    assert not is_loopback("mixed.test")
    assert not is_loopback("remote.test")
    assert not is_loopback("empty.test")
    assert not is_loopback("unresolvable.test")
    assert asked == ["both.test", "mixed.test", "remote.test", "empty.test", "unresolvable.test"]


# --- data_dir -----------------------------------------------------------------------------------


def test_data_dir_defaults_under_home(isolated_home: Path) -> None:
    assert data_dir() == isolated_home / ".local" / "share" / "fluxd"


def test_data_dir_xdg_data_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "fluxd"


def test_data_dir_fluxd_home_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("FLUXD_HOME", str(tmp_path / "fh"))
    assert data_dir() == tmp_path / "fh"  # used as is, no "fluxd" appended


def test_empty_variables_are_ignored(monkeypatch: pytest.MonkeyPatch, isolated_home: Path) -> None:
    monkeypatch.setenv("FLUXD_HOME", "")
    monkeypatch.setenv("XDG_DATA_HOME", "")
    assert data_dir() == isolated_home / ".local" / "share" / "fluxd"


def test_server_config_defaults_follow_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FLUXD_HOME", str(tmp_path / "a"))
    first = ServerConfig()
    monkeypatch.setenv("FLUXD_HOME", str(tmp_path / "b"))
    second = ServerConfig()
    assert (first.root, first.certs) == (tmp_path / "a" / "files", tmp_path / "a" / "certs")
    assert (second.root, second.certs) == (tmp_path / "b" / "files", tmp_path / "b" / "certs")


# --- ServerConfig -------------------------------------------------------------------------------


def test_server_config_defaults() -> None:
    cfg = ServerConfig()
    assert cfg.listen == DEFAULT_LISTEN
    assert cfg.address == ("127.0.0.1", DEFAULT_PORT)
    assert cfg.insecure_plaintext is False
    assert cfg.window == 32 * MiB
    assert cfg.limits.max_chunk == MAX_CHUNK
    assert cfg.limits.idle_timeout == 120.0
    assert cfg.log_level == "info"
    assert cfg.anonymous is True  # loopback by default


def test_server_config_is_frozen() -> None:
    cfg = ServerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.window = 1  # type: ignore[misc]


def test_server_config_address_parses_listen() -> None:
    assert ServerConfig(listen="[::1]:9000").address == ("::1", 9000)
    assert ServerConfig(listen="0.0.0.0").address == ("0.0.0.0", DEFAULT_PORT)


@pytest.mark.parametrize("window", [MIN_WINDOW, MAX_WINDOW])
def test_window_bounds_are_inclusive(window: int) -> None:
    assert ServerConfig(window=window).window == window


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"listen": "nope:port"}, "HOST:PORT"),
        ({"listen": "h:70000"}, "port out of range"),
        ({"window": MIN_WINDOW - 1}, "window"),
        ({"window": MAX_WINDOW + 1}, "window"),
        ({"window": 0}, "window"),
        ({"shutdown_grace": -0.5}, "shutdown_grace"),
        ({"log_level": "verbose"}, "log_level"),
        ({"log_level": "INFO"}, "log_level"),
    ],
)
def test_server_config_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ServerConfig(**kwargs)


def test_zero_shutdown_grace_is_allowed() -> None:
    assert ServerConfig(shutdown_grace=0).shutdown_grace == 0


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf")])
def test_bad_timeouts_are_refused(value: float) -> None:
    with pytest.raises(ConfigError, match="idle_timeout"):
        Limits(idle_timeout=value)
    with pytest.raises(ConfigError, match="handshake_timeout"):
        Limits(handshake_timeout=value)


# --- load_config --------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fluxd.toml"
    path.write_text(text)
    return path


def test_load_without_file_gives_defaults() -> None:
    assert load_config(None, {}) == ServerConfig()


def test_load_every_key_from_toml(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
root = "/srv/flux"
certs = "/etc/flux/certs"
listen = "[::1]:9000"
insecure_plaintext = true
window = "8M"
shutdown_grace = 2.5
log_level = "debug"
access_log = "/var/log/fluxd-access.log"

[auth]
anonymous = false
anonymous_scope = "read:/pub/"
audience = "fluxd:example"
root = "/users/{sub}"
trusted_keys = ["/etc/flux/issuer.pem"]
jwks = "/etc/flux/jwks.json"

[limits]
max_header = "32K"
max_chunk = "1MiB"
max_file_size = "10G"
quota = "1G"
connections = 100
connections_per_address = 10
connections_per_subject = 5
uploads_per_subject = 2
handshake_timeout = 5
idle_timeout = 30
rate = "100M"
rate_per_subject = "10M"
memory = "64M"
tree_entries = 5000
""",
    )
    cfg = load_config(path, {})
    assert cfg == ServerConfig(
        root=Path("/srv/flux"),
        certs=Path("/etc/flux/certs"),
        listen="[::1]:9000",
        insecure_plaintext=True,
        window=8 * MiB,
        shutdown_grace=2.5,
        log_level="debug",
        access_log="/var/log/fluxd-access.log",
        auth=AuthConfig(
            anonymous=False,
            anonymous_scope="read:/pub/",
            audience="fluxd:example",
            root="/users/{sub}",
            trusted_keys=(Path("/etc/flux/issuer.pem"),),
            jwks=Path("/etc/flux/jwks.json"),
        ),
        limits=Limits(
            max_header=32 * 1024,
            max_chunk=MiB,
            max_file_size=10 * 1024 * MiB,
            quota=1024 * MiB,
            connections=100,
            connections_per_address=10,
            connections_per_subject=5,
            uploads_per_subject=2,
            handshake_timeout=5.0,
            idle_timeout=30.0,
            rate=100 * MiB,
            rate_per_subject=10 * MiB,
            memory=64 * MiB,
            tree_entries=5000,
        ),
    )
    assert isinstance(cfg.limits.idle_timeout, float)
    assert cfg.anonymous is False


def test_sizes_may_be_integers_in_toml(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "window = 65536\n"), {})
    assert cfg.window == 65536


def test_paths_expand_tilde(tmp_path: Path, isolated_home: Path) -> None:
    cfg = load_config(write(tmp_path, 'root = "~/files"\n'), {"certs": "~/c"})
    assert cfg.root == isolated_home / "files"
    assert cfg.certs == isolated_home / "c"


def test_flag_overrides_win_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = "127.0.0.1:1000"\nwindow = "8M"\nlog_level = "debug"\n')
    cfg = load_config(path, {"listen": "127.0.0.1:2000", "window": "16M"})
    assert cfg.listen == "127.0.0.1:2000"
    assert cfg.window == 16 * MiB
    assert cfg.log_level == "debug"  # not overridden: the file's value stays


def test_none_overrides_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = "127.0.0.1:1000"\ninsecure_plaintext = true\n')
    cfg = load_config(
        path, {"listen": None, "insecure_plaintext": None, "window": None, "root": None}
    )
    assert cfg.listen == "127.0.0.1:1000"
    assert cfg.insecure_plaintext is True
    assert cfg.window == ServerConfig().window
    assert cfg.root == ServerConfig().root


def test_false_override_is_not_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "insecure_plaintext = true\n")
    assert load_config(path, {"insecure_plaintext": False}).insecure_plaintext is False


def test_overrides_without_file(tmp_path: Path) -> None:
    cfg = load_config(None, {"root": tmp_path, "window": "1M", "limits": {"idle_timeout": 5}})
    assert (cfg.root, cfg.window, cfg.limits.idle_timeout) == (tmp_path, MiB, 5.0)


def test_unknown_keys_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = "127.0.0.1:0"\nbogus = 1\nalso_bad = "x"\n')
    with pytest.raises(ConfigError, match=r"unknown key\(s\).*also_bad, bogus") as info:
        load_config(path, {})
    assert str(path) in str(info.value)


def test_unknown_tables_are_unknown_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="server"):
        load_config(write(tmp_path, '[server]\nlisten = "127.0.0.1:0"\n'), {})


def test_unknown_keys_inside_tables_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"limits\.bogus"):
        load_config(write(tmp_path, "[limits]\nbogus = 1\n"), {})


def test_a_table_given_as_a_value_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[limits\].*table"):
        load_config(write(tmp_path, "limits = 5\n"), {})


def test_flag_overrides_inside_tables_keep_the_file_values(tmp_path: Path) -> None:
    path = write(tmp_path, '[limits]\nidle_timeout = 30\nrate = "1M"\n')
    cfg = load_config(path, {"limits": {"idle_timeout": 5, "rate": None}})
    assert (cfg.limits.idle_timeout, cfg.limits.rate) == (5.0, MiB)


def test_anonymous_defaults_to_loopback_only() -> None:
    assert ServerConfig(listen="127.0.0.1:0").anonymous is True
    assert ServerConfig(listen="0.0.0.0:0").anonymous is False
    assert ServerConfig(listen="0.0.0.0:0", auth=AuthConfig(anonymous=True)).anonymous is True
    assert ServerConfig(listen="[::1]:0", auth=AuthConfig(anonymous=False)).anonymous is False


def test_quota_needs_a_root_per_subject() -> None:
    with pytest.raises(ConfigError, match="quota needs"):
        ServerConfig(limits=Limits(quota=MiB))
    cfg = ServerConfig(limits=Limits(quota=MiB), auth=AuthConfig(root="/users/{sub}"))
    assert cfg.limits.quota == MiB


def test_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bad TOML"):
        load_config(write(tmp_path, "listen = \n"), {})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config.*No such file"):
        load_config(tmp_path / "absent.toml", {})


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path, {})


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "fluxd.toml"
    path.write_bytes(b'log_level = "\xff"\n')
    with pytest.raises(ConfigError):
        load_config(path, {})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('insecure_plaintext = "yes"\n', "insecure_plaintext must be true or false"),
        ("insecure_plaintext = 1\n", "insecure_plaintext must be true or false"),
        ('window = "lots"\n', "not a size"),
        ("window = 1.5\n", "bad config value"),
        ('window = "1K"\n', "window must be between"),
        ('[limits]\nidle_timeout = "soon"\n', "limits.idle_timeout"),
        ("[limits]\nidle_timeout = 0\n", "idle_timeout"),
        ("root = 5\n", "root: expected a file path"),
        ("certs = [1, 2]\n", "certs: expected a file path"),
        ("[auth]\nanonymous = 1\n", "auth.anonymous: must be true or false"),
        ('[auth]\nanonymous_scope = "fly:/"\n', "anonymous_scope"),
        ('[auth]\nroot = "users/{sub}"\n', "must start with /"),
        ("[auth]\ntrusted_keys = [1]\n", "list of file paths"),
        ('[limits]\nmax_header = "1K"\n', "max_header"),
        ("[limits]\nconnections = 0\n", "connections must be at least 1"),
        ("[limits]\ntree_entries = 0\n", "tree_entries must be at least 1"),
        ('[limits]\ntree_entries = "many"\n', "limits.tree_entries"),
        ('[limits]\nrate = "-1"\n', "not a size"),
        ('[limits]\nmemory = "1M"\n', "memory"),
        ('listen = "127.0.0.1:http"\n', "HOST:PORT"),
        ('log_level = "loud"\n', "log_level"),
        ('[limits]\nmax_chunk = "big"\n', "not a size"),
    ],
)
def test_wrong_types_and_values(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text), {})


def test_bad_override_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a size"):
        load_config(None, {"window": "huge"})


def test_unknown_override_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        load_config(None, {"bogus": 1})


def test_tree_entries_default_is_the_storage_default() -> None:
    assert Limits().tree_entries == TREE_ENTRIES == 10_000_000
