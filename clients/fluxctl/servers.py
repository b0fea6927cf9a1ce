"""The client config file: `CONFIG_DIR/config.toml` (see `trust.config_dir`), one table per
server, keyed like known_hosts (`host:port`, IPv6 bracketed), read by every part of fluxctl
that looks a server up there (tokens.py: its token; nodes.py: its nodes):

    [servers."backup.example.com:7070"]
    token = "eyJhbGciOiJFZERTQSIs..."
    nodes = ["node1.example.com:7070", "10.0.0.12:7071"]
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxproto import ConfigError

from .trust import config_dir, host_key

CONFIG_FILE = "config.toml"

__all__ = ["CONFIG_FILE", "ServerEntry", "server_entry"]


@dataclass(frozen=True)
class ServerEntry:
    """One server's table in the config file.

    Attributes:
        values: the table's keys and values.
        key: the table's name (`host:port`), for messages.
        path: the config file, for messages.
        private: the file is readable by its owner only (what a file holding tokens must be).
    """

    values: dict[str, Any]
    key: str
    path: Path
    private: bool


def server_entry(host: str, port: int, path: Path | None = None) -> ServerEntry | None:
    """The config file's table for `host:port` (None: no file, or no table for it).

    Raises:
        ConfigError: the file is unreadable or not TOML.
    """
    path = path or config_dir() / CONFIG_FILE
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"bad TOML in {path}: {exc}") from None
    servers = doc.get("servers", {})
    key = host_key(host, port)
    entry = servers.get(key) if isinstance(servers, dict) else None
    if not isinstance(entry, dict):
        return None
    private = not (mode & (stat.S_IRWXG | stat.S_IRWXO) and os.name == "posix")
    return ServerEntry(entry, key, path, private)
