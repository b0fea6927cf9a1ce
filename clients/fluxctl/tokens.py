"""Which token fluxctl presents to a server: `--token`, `FLUX_TOKEN`, or the client config file
(servers.py), in the server's table:

    [servers."backup.example.com:7070"]
    token = "eyJhbGciOiJFZERTQSIs..."

Like rsync's password file, a config file holding a token must not be readable by group or
others: fluxctl refuses to use it until it is `chmod 600`.
"""

from __future__ import annotations

from pathlib import Path

from fluxproto import ConfigError
from fluxproto.frames import MAX_TOKEN

from .servers import CONFIG_FILE, server_entry

__all__ = ["CONFIG_FILE", "resolve_token"]


def resolve_token(given: str | None, host: str, port: int, path: Path | None = None) -> str | None:
    """The token for `host:port`: `given` (flag or FLUX_TOKEN) if set, else the config file's.

    Raises:
        ConfigError: the token is too long or not printable, or the config file is unreadable,
            malformed, or readable by others.
    """
    token = given if given else _from_config(path, host, port)
    if token is None:
        return None
    token = token.strip()
    if not token or len(token.encode()) > MAX_TOKEN or not token.isprintable():
        raise ConfigError(f"the token must be 1 to {MAX_TOKEN} printable characters")
    return token


def _from_config(path: Path | None, host: str, port: int) -> str | None:
    entry = server_entry(host, port, path)
    if entry is None or "token" not in entry.values:
        return None
    token = entry.values["token"]
    if not isinstance(token, str):
        raise ConfigError(f"{entry.path}: token for {entry.key} must be a string")
    if not entry.private:
        raise ConfigError(
            f"{entry.path} holds tokens but others can read it; run chmod 600 {entry.path}"
        )
    return token
