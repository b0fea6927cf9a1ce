"""`python -m benchmarks.netem up|selftest [--link NAME] [settings]`: the link emulator by hand.

`up` sets the link up and relays until Ctrl-C (run commands in it with `ip netns exec
fluxbench-TAG-srv|cli ...`); `selftest` sets it up, checks it and takes it down.
"""

from __future__ import annotations

import argparse
import os
import sys

from .emulator import Emulator, serve, spec_from_json
from .selftest import run_selftest
from .spec import SpecError, add_arguments, from_args
from .topology import TopologyError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.netem", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="set the link up and relay until interrupted")
    up.add_argument("--tag", default=str(os.getpid()), help="names the namespaces")
    up.add_argument("--spec-json", help=argparse.SUPPRESS)  # how the harness passes a link
    test = sub.add_parser("selftest", help="check that the link's delay, rate and loss hold")
    for p in (up, test):
        add_arguments(p)
        p.add_argument("--tcp-cc", help="default TCP congestion control in both namespaces")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            emulated = spec_from_json(args.spec_json) if args.spec_json else from_args(args)
            return serve(emulated, args.tag, sys.stdout, args.tcp_cc)
        with Emulator(from_args(args), tcp_cc=args.tcp_cc) as emu:
            checks = run_selftest(emu)
        for check in checks:
            print(check.line())
        print(f"relay: {emu.counters}")
        return 0 if all(c.ok for c in checks) else 1
    except (SpecError, TopologyError, RuntimeError) as exc:
        print(f"netem: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
