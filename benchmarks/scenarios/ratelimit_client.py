# The client-side case of the `ratelimit` scenario: fluxctl's own --bwlimit.
"""`fluxctl send` and `recv` with `--bwlimit RATE` against an unlimited fluxd.

Each limit is paired with an unlimited run of the same file just before it (the reference:
what the machine does without the limit), alternating, several repetitions. A run's rate is
the payload fluxctl moved (`--json` `sent` or `received`, not `bytes`: a resume would count
what was already there) over its own `seconds`. Every send goes to a fresh name and every
receive to a fresh local file, so nothing is skipped.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxio.parsing import parse_size

from ..measure import Stats
from ..report import markdown_table

MB = 1_000_000
TOLERANCE = 0.10


def moved_rate(report: dict[str, Any]) -> float:
    """MB/s of one fluxctl `--json` report: payload moved (`sent`/`received`) over `seconds`.

    Raises:
        ValueError: the report moved nothing or took no time (a skipped transfer says nothing
            about a rate).
    """
    moved = report["sent"] if report["op"] == "send" else report["received"]
    if not moved or not report["seconds"]:
        raise ValueError(f"fluxctl {report['op']} moved {moved} bytes: no rate to measure")
    return float(moved) / float(report["seconds"]) / MB


@dataclass(frozen=True)
class Run:
    """One transfer of the plan, for `pair` (a --bwlimit value): limited, or its unlimited
    reference."""

    rep: int
    pair: str
    limited: bool
    way: str  # "send" or "recv"

    @property
    def limit(self) -> str | None:
        """The --bwlimit value to pass (None: no limit)."""
        return self.pair if self.limited else None

    @property
    def name(self) -> str:
        """A name of its own, so no run finds a previous one's file (nothing is skipped)."""
        return f"c{self.rep}-{self.pair}-{'lim' if self.limited else 'free'}-{self.way}.bin"


def plan(limits: list[str], reps: int) -> Iterator[Run]:
    """Per repetition, per limit: an unlimited send, the limited send, the same for recv."""
    for rep in range(reps):
        for limit in limits:
            for way in ("send", "recv"):
                yield Run(rep, limit, False, way)
                yield Run(rep, limit, True, way)


def measure(
    limits: list[str],
    reps: int,
    seconds: float,
    source: Callable[[int], Path],
    transfer: Callable[[Run, Path], dict[str, Any]],
) -> dict[str, Any]:
    """Run the plan; `source(size)` gives a local file, `transfer(run, src)` fluxctl's report
    (for a recv, of the file the send of the same limit and repetition stored)."""
    rates: dict[str, dict[str, dict[str, list[float]]]] = {
        limit: {way: {"limited": [], "unlimited": []} for way in ("send", "recv")}
        for limit in limits
    }
    sizes = {limit: int(parse_size(limit) * seconds) for limit in limits}
    for run in plan(limits, reps):
        shown = run.limit or f"none (for {run.pair})"
        print(f"  --bwlimit {shown} {run.way}, repetition {run.rep + 1}/{reps}", file=sys.stderr)
        report = transfer(run, source(sizes[run.pair]))
        kind = "limited" if run.limited else "unlimited"
        rates[run.pair][run.way][kind].append(moved_rate(report))
    return {
        "limits": [
            {
                "limit": limit,
                "bytes_per_s": parse_size(limit),
                "size": sizes[limit],
                **rates[limit],
            }
            for limit in limits
        ],
        "seconds": seconds,
        "reps": reps,
    }


def limit_share(measured: float, limit: float) -> str:
    """`measured` as a share of `limit` (both in one unit), and whether it is within
    TOLERANCE of it."""
    share = measured / limit
    ok = abs(share - 1) <= TOLERANCE
    return f"{share * 100:.1f} % ({'within' if ok else 'OUTSIDE'} ±10 %)"


def verdict(measured_mb: float, limit_bytes: int) -> str:
    """limit_share of a rate in MB/s against a limit in bytes/s."""
    return limit_share(measured_mb * MB, limit_bytes)


def render(data: dict[str, Any], burst: float) -> str:
    rows = []
    for r in data["limits"]:
        for way in ("send", "recv"):
            lim, free = Stats.of(r[way]["limited"]), Stats.of(r[way]["unlimited"])
            rows.append(
                [
                    f"--bwlimit {r['limit']} ({r['bytes_per_s'] / MB:.2f} MB/s)",
                    way,
                    f"{lim.median:.2f}",
                    f"{lim.min:.2f}-{lim.max:.2f}",
                    verdict(lim.median, r["bytes_per_s"]),
                    f"{free.median:.1f}",
                ]
            )
    table = markdown_table(
        [
            "client limit",
            "command",
            "limited MB/s (median)",
            "min-max",
            "of limit",
            "unlimited MB/s (median)",
        ],
        rows,
    )
    seconds = data["seconds"]
    return (
        "### Client side: `fluxctl --bwlimit`\n\n"
        f"fluxd unlimited; `fluxctl send` and `recv` with `--bwlimit` (K = 1024, M = 1024 K), "
        f"each limited run just after an unlimited run of the same file (about {seconds:g} s "
        f"of data at the limit; {data['reps']} repetitions), every send to a fresh name and "
        "every recv to a fresh file. Rate = payload moved (`--json` `sent`/`received`) over "
        f"fluxctl's `seconds`. The bucket's burst ({burst:g} s of its rate) lets a short run "
        f"come out up to {seconds / (seconds - burst) * 100 - 100:.0f} % above the limit; "
        "connect and handshake pull it below.\n\n"
        f"{table}"
    )
