"""What `fluxd token` remembers beside the key: issued tokens and revocations, as JSON lines.

    tokens.jsonl   one line per issued token: jti, sub, scope, iat, exp (never the token itself)
    revoked.jsonl  one line per revocation: jti, at

Both are append-only (O_APPEND + fsync), so concurrent `fluxd token` commands and a crash can
at worst leave a torn last line, which readers skip. A running daemon re-reads `revoked.jsonl`
when its size, mtime or inode changes (`Revocations.refresh`, called every second).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fluxproto.errors import ConfigError

ISSUED_FILE = "tokens.jsonl"
REVOKED_FILE = "revoked.jsonl"
_MAX_JTI = 256

__all__ = ["ISSUED_FILE", "REVOKED_FILE", "Revocations", "TokenRegistry"]


def _append(path: Path, record: dict[str, Any]) -> None:
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None


def _records(path: Path) -> Iterator[dict[str, Any]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    for line in raw.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if isinstance(record, dict) and isinstance(record.get("jti"), str):
            yield record


class TokenRegistry:
    """The two files in the token directory (the certificate directory)."""

    def __init__(self, directory: Path) -> None:
        self.issued_path = directory / ISSUED_FILE
        self.revoked_path = directory / REVOKED_FILE

    def record(self, claims: dict[str, Any]) -> None:
        """Remember an issued token's claims (for `fluxd token list`)."""
        keep = ("jti", "sub", "aud", "scope", "iat", "exp")
        _append(self.issued_path, {k: claims[k] for k in keep if k in claims})

    def issued(self) -> list[dict[str, Any]]:
        return list(_records(self.issued_path))

    def revoked(self) -> dict[str, float]:
        """jti -> when it was revoked."""
        return {r["jti"]: float(r.get("at", 0)) for r in _records(self.revoked_path)}

    def revoke(self, jti: str) -> None:
        """Add `jti` to the revocation list (any jti: tokens of external issuers too).

        Raises:
            ConfigError: an empty or overlong jti, or the file cannot be written.
        """
        if not jti or len(jti) > _MAX_JTI or not jti.isprintable():
            raise ConfigError(f"not a token id: {jti[:64]!r}")
        _append(self.revoked_path, {"jti": jti, "at": round(time.time(), 3)})


class Revocations:
    """The daemon's in-memory copy of the revocation list."""

    def __init__(self, registry: TokenRegistry) -> None:
        self._path = registry.revoked_path
        self._registry = registry
        self._seen: tuple[int, int, int] | None = None
        self._jtis: frozenset[str] = frozenset()
        self.refresh()

    def __contains__(self, jti: object) -> bool:
        return jti in self._jtis

    def refresh(self) -> bool:
        """Re-read the file if it changed; True if it did.

        An unreadable file keeps the last good list (and the caller logs nothing new).
        """
        try:
            st = os.stat(self._path)
            seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            seen = (0, 0, 0)
        except OSError:
            return False
        if seen == self._seen:
            return False
        try:
            self._jtis = frozenset(self._registry.revoked())
        except ConfigError:
            return False
        self._seen = seen
        return True
