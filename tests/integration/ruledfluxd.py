"""fluxd whose storage has an object store's kind of rule for uploads, for the tests of WELCOME
`min_chunk` and `max_chunks`: `python ruledfluxd.py MIN_CHUNK MAX_CHUNKS serve ...`.

LocalStorage takes any geometry; here its class announces (and so fluxd enforces) the rule
given, and everything else is the real fluxd in a real process.
"""

from __future__ import annotations

import sys

from fluxd.__main__ import main
from fluxd.storage.local import LocalStorage


def program(min_chunk: int, max_chunks: int) -> list[str]:
    """The command that runs fluxd with this rule (Daemon.program)."""
    return [sys.executable, __file__, str(min_chunk), str(max_chunks)]


if __name__ == "__main__":
    LocalStorage.min_chunk, LocalStorage.max_chunks = int(sys.argv[1]), int(sys.argv[2])
    del sys.argv[1:3]
    main()
