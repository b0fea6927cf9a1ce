"""A command hook for the events tests: `eventhook.py OUTDIR [FIFO]`.

Reads the event's JSON from stdin; with FIFO, first waits for one line from that pipe (the
test holds it open and writes a line to let one run go on); then writes the event to
OUTDIR/ID.N.json (N counts deliveries of the same id), published by rename.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def main() -> None:
    signal.alarm(120)  # a safety net when a test died and left this waiting: never the timing
    body = sys.stdin.buffer.read()
    out = Path(sys.argv[1])
    if len(sys.argv) > 2:
        with open(sys.argv[2], "rb") as pipe:
            if not pipe.readline():
                sys.exit(1)  # the test closed the pipe: fail, the daemon retries later
    event_id = json.loads(body)["id"]
    n = 0
    while (out / f"{event_id}.{n}.json").exists():
        n += 1
    tmp = out / f".{event_id}.{n}.{os.getpid()}"
    tmp.write_bytes(body)
    tmp.rename(out / f"{event_id}.{n}.json")


if __name__ == "__main__":
    main()
