"""QUIC session tickets kept between commands, so a repeat command resumes the TLS session (0-RTT).

One JSON file in the config dir (0600), keyed like known_hosts by `host:port`. A resumed session
presents no certificate, so each ticket is stored with the certificate that was verified when
it was issued, and a resumption checks that certificate against the trust policy in force now
(a --pin or known_hosts entry that no longer matches refuses it, as a full handshake would).
Expired tickets are dropped when the file is written; the server honours each ticket once.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
from pathlib import Path
from typing import Any

from aioquic.tls import CipherSuite, SessionTicket

from .trust import config_dir

MAX_TICKETS = 64


def _default_path() -> Path:
    return config_dir() / "quic_tickets.json"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def ticket_to_json(ticket: SessionTicket) -> dict[str, Any]:
    return {
        "age_add": ticket.age_add,
        "cipher_suite": int(ticket.cipher_suite),
        "not_valid_after": ticket.not_valid_after.isoformat(),
        "not_valid_before": ticket.not_valid_before.isoformat(),
        "resumption_secret": _b64(ticket.resumption_secret),
        "server_name": ticket.server_name,
        "ticket": _b64(ticket.ticket),
        "max_early_data_size": ticket.max_early_data_size,
        "other_extensions": [[kind, _b64(value)] for kind, value in ticket.other_extensions],
    }


def ticket_from_json(value: dict[str, Any]) -> SessionTicket:
    """Raises KeyError, TypeError or ValueError on a malformed entry."""
    return SessionTicket(
        age_add=int(value["age_add"]),
        cipher_suite=CipherSuite(int(value["cipher_suite"])),
        not_valid_after=datetime.datetime.fromisoformat(value["not_valid_after"]),
        not_valid_before=datetime.datetime.fromisoformat(value["not_valid_before"]),
        resumption_secret=base64.b64decode(value["resumption_secret"]),
        server_name=str(value["server_name"]),
        ticket=base64.b64decode(value["ticket"]),
        max_early_data_size=value.get("max_early_data_size"),
        other_extensions=[(int(k), base64.b64decode(v)) for k, v in value["other_extensions"]],
    )


class TicketStore:
    """Load and save tickets; a damaged or unreadable file just means a full handshake."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or _default_path()

    def load(self, key: str) -> tuple[SessionTicket, bytes] | None:
        """A valid ticket for `key` and the server certificate (DER) it was issued under."""
        entry = self._read().get(key)
        if entry is None:
            return None
        try:
            ticket = ticket_from_json(entry)
            certificate = base64.b64decode(entry["certificate"])
        except (KeyError, TypeError, ValueError):
            return None
        return (ticket, certificate) if ticket.is_valid else None

    def save(self, key: str, ticket: SessionTicket, certificate: bytes) -> None:
        entries = self._read()
        entries[key] = {**ticket_to_json(ticket), "certificate": _b64(certificate)}
        entries = {k: v for k, v in entries.items() if self._still_valid(v)}
        newest = sorted(entries.items(), key=lambda kv: kv[1]["not_valid_after"])[-MAX_TICKETS:]
        self._write(dict(newest))

    @staticmethod
    def _still_valid(entry: dict[str, Any]) -> bool:
        try:
            return ticket_from_json(entry).is_valid
        except (KeyError, TypeError, ValueError):
            return False

    def _read(self) -> dict[str, Any]:
        try:
            value = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def _write(self, entries: dict[str, Any]) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(entries, f)
            os.replace(tmp, self.path)
        except OSError:
            pass  # tickets are an optimisation: without one the next command does a full handshake
