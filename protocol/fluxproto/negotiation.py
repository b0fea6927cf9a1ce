"""Version negotiation's words: the VersionMismatch each side reports when no version is shared.

The message, not the code, tells the user what to do (PROTOCOL.md section 14), so it names both
versions and which program to upgrade. The server words the ERROR 505 it sends; the client
rewords the 505 it receives, because an older server's message cannot know the remedy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .errors import VersionMismatch
from .fields import PROTOCOL_VERSION

# Matches version 1's "server speaks protocol version 1" and version 2's "fluxd speaks flux
# protocol 2, ..."; the first number after "speaks" is the server's own version.
_SERVER_VERSION = re.compile(r"speaks (?:flux )?protocol (?:version )?(\d{1,5})")


def _listed(versions: Sequence[int]) -> str:
    return ", ".join(str(v) for v in sorted(set(versions))) or "no version"


def mismatch_for_client(
    client_versions: Sequence[int], ours: int = PROTOCOL_VERSION
) -> VersionMismatch:
    """The error a server sends (ERROR 505, no rid) to a HELLO that does not offer `ours`.

    Example: `fluxd speaks flux protocol 2, this client speaks 1: upgrade fluxctl`.
    """
    newer = bool(client_versions) and max(client_versions) > ours
    remedy = "upgrade fluxd" if newer else "upgrade fluxctl"
    return VersionMismatch(
        f"fluxd speaks flux protocol {ours}, this client speaks {_listed(client_versions)}: "
        f"{remedy}"
    )


def server_version_in(message: str) -> int | None:
    """The server's version named in an ERROR 505 message, if it names one."""
    m = _SERVER_VERSION.search(message)
    return int(m[1]) if m else None


def mismatch_from_server(host: str, message: str, ours: int = PROTOCOL_VERSION) -> VersionMismatch:
    """What a client reports when the server answers its HELLO with ERROR 505.

    A server that does not say its version is taken to be version 1 (the only older one).
    Example: `HOST speaks flux protocol 1 (fluxd too old), fluxctl speaks 2: upgrade fluxd`.
    """
    theirs = server_version_in(message) or 1
    if theirs > ours:
        return VersionMismatch(
            f"{host} speaks flux protocol {theirs} (fluxctl too old), fluxctl speaks {ours}: "
            "upgrade fluxctl"
        )
    return VersionMismatch(
        f"{host} speaks flux protocol {theirs} (fluxd too old), fluxctl speaks {ours}: "
        "upgrade fluxd"
    )
