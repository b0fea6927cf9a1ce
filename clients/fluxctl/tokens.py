"""Which token fluxctl presents to a server: `--token`, `FLUX_TOKEN`, or the client config file.

The config file is `CONFIG_DIR/config.toml` (see `trust.config_dir`), with one table per server,
keyed like known_hosts (`host:port`, IPv6 bracketed):

    [servers."backup.example.com:7070"]
    token = "eyJhbGciOiJFZERTQSIs..."

Like rsync's password file, a config file holding a token must not be readable by group or
others: fluxctl refuses to use it until it is `chmod 600`.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

from fluxproto import ConfigError
from fluxproto.frames import MAX_TOKEN

from .trust import config_dir, host_key

CONFIG_FILE = "config.toml"

__all__ = ["CONFIG_FILE", "resolve_token"]


def resolve_token(given: str | None, host: str, port: int, path: Path | None = None) -> str | None:
    """The token for `host:port`: `given` (flag or FLUX_TOKEN) if set, else the config file's.

    Raises:
        ConfigError: the token is too long or not printable, or the config file is unreadable,
            malformed, or readable by others.
    """
    token = given if given else _from_config(path or config_dir() / CONFIG_FILE, host, port)
    if token is None:
        return None
    token = token.strip()
    if not token or len(token.encode()) > MAX_TOKEN or not token.isprintable():
        raise ConfigError(f"the token must be 1 to {MAX_TOKEN} printable characters")
    return token


def _from_config(path: Path, host: str, port: int) -> str | None:
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
    entry = servers.get(host_key(host, port)) if isinstance(servers, dict) else None
    if not isinstance(entry, dict) or "token" not in entry:
        return None
    token = entry["token"]
    if not isinstance(token, str):
        raise ConfigError(f"{path}: token for {host_key(host, port)} must be a string")
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and os.name == "posix":
        raise ConfigError(f"{path} holds tokens but others can read it; run chmod 600 {path}")
    return token
