"""`make fuzz`: every fuzz property of the test suite with many more inputs, and the count.

    python -m benchmarks.fuzz [--examples N] [--no-results]

Runs tests/protocol/test_proto_fuzz.py (the wire codec and both roles of the state machine)
and tests/daemon/test_decoders_fuzz.py (paths, scopes, tokens, configs, manifests, journals,
known_hosts, client config, tickets) with FLUX_FUZZ_EXAMPLES=N (`make test` uses 800), adds up
the inputs hypothesis reports having run, and writes the figure to benchmarks/RESULTS.md. Any
unhandled error fails the run (exit status of pytest) and is shown with its minimal input.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from .machine import describe, load_average
from .report import markdown_table, publish

HERE = Path(__file__).resolve().parent
FILES = ("tests/protocol/test_proto_fuzz.py", "tests/daemon/test_decoders_fuzz.py")
_TEST = re.compile(r"^(tests/\S+::\S+):\s*$")
_COUNTS = re.compile(r"- (\d+) passing, (\d+) failing, and (\d+) invalid")


def count_inputs(output: str) -> dict[str, list[int]]:
    """Per property: inputs passed, failed and rejected, from --hypothesis-show-statistics."""
    counts: dict[str, list[int]] = {}
    current = None
    for line in output.splitlines():
        if m := _TEST.match(line.strip()):
            current = m.group(1)
            counts.setdefault(current, [0, 0, 0])
        elif current and (m := _COUNTS.search(line)):
            for i in range(3):
                counts[current][i] += int(m.group(i + 1))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__)
    parser.add_argument("--examples", type=int, default=10_000, help="per property [10000]")
    parser.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    root = HERE.parent
    env = dict(os.environ, FLUX_FUZZ_EXAMPLES=str(args.examples))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FILES]
    cmd += ["--hypothesis-show-statistics", "--timeout", "0"]
    machine = describe(root)
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    counts = count_inputs(proc.stdout)
    if proc.returncode != 0 or not counts:
        print(proc.stdout[-20000:], proc.stderr[-5000:], sep="\n")
        print(f"fuzz: pytest exited with {proc.returncode}", file=sys.stderr)
        return proc.returncode or 1
    total = sum(c[0] + c[1] for c in counts.values())
    failing = sum(c[1] for c in counts.values())
    rows = [[name.split("::")[1], f"{c[0] + c[1]:,}", c[1], c[2]] for name, c in counts.items()]
    data = {
        "scenario": "fuzz",
        "examples": args.examples,
        "inputs": total,
        "failing": failing,
        "seconds": round(seconds, 1),
        "properties": counts,
        "machine": machine | {"load_at_end": load_average()},
    }
    m = data["machine"]
    text = (
        f"## Fuzzing\n\nMachine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; commit "
        f"{m['commit']}; run {m['date']}, one process.\n\n"
        f"`make fuzz` (`python -m benchmarks.fuzz --examples {args.examples}`): every fuzz "
        "property of the suite with FLUX_FUZZ_EXAMPLES raised from 800. "
        f"**{total:,} inputs over {len(counts)} properties in {seconds:.0f} s, {failing} "
        "unhandled errors** (inputs = passing + failing test cases as hypothesis counts "
        "them; rejected draws not included).\n\n"
        + markdown_table(["property", "inputs", "failing", "rejected"], rows)
    )
    publish("fuzz", text, data, not args.no_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
