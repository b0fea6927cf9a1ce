"""Command line: `python -m benchmarks SCENARIO [options]`, plus `setup` for the system tools."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from . import BenchError
from .scenarios import SCENARIOS
from .sysdeps import ensure_tools


def _setup(args: argparse.Namespace) -> int:
    ensure_tools()
    print("sshd, scp, rsync, GNU time, iperf3, iproute2, ping and nftables are installed")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks of fluxd, each run side by side with a reference tool.",
    )
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    setup = sub.add_parser("setup", help="install peers and emulator tools if missing (apt-get)")
    setup.set_defaults(func=_setup)
    for name, module in SCENARIOS.items():
        scenario = sub.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(scenario)
        scenario.set_defaults(func=module.run)
    return parser


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwind through every context manager, as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one scenario; 1 on a benchmark error, 130 if interrupted."""
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        status: int = args.func(args)
    except BenchError as exc:
        print(f"benchmarks: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("benchmarks: interrupted; servers stopped and files removed", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
