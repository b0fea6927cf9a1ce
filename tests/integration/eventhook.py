"""A command hook for the events tests: `eventhook.py OUTDIR [FIFO]`.

Reads the event's JSON from stdin; with FIFO, first waits for one byte from that pipe (the
test holds it open and writes one byte to let one run go on); then writes the event to
OUTDIR/ID.N.json (N counts deliveries of the same id), published by rename. A run at the
gate first leaves OUTDIR/waiting.PID.
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
        # Read-write: opening never blocks, and the run waits for a byte even when the test
        # has not opened the pipe yet or closed it meanwhile.
        pipe = os.open(sys.argv[2], os.O_RDWR)
        (out / f"waiting.{os.getpid()}").touch()  # tells the test a run is at the gate
        os.read(pipe, 1)  # one byte per run
        os.close(pipe)
    event_id = json.loads(body)["id"]
    n = 0
    while (out / f"{event_id}.{n}.json").exists():
        n += 1
    tmp = out / f".{event_id}.{n}.{os.getpid()}"
    tmp.write_bytes(body)
    tmp.rename(out / f"{event_id}.{n}.json")


if __name__ == "__main__":
    main()
