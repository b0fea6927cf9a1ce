"""What both command-line tools share: the one place where any failure, a usage error included,
becomes one line on stderr and a distinct exit code (README "Exit codes").

Imports stay light here: every fluxctl command pays for them before doing any work.
"""

from __future__ import annotations

import difflib
import json
import os
import signal
import sys
import threading
from typing import Any, NoReturn

import typer

# Mirrors fluxproto.errors (not imported: it costs the whole protocol package at start-up).
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: How close an unknown option must be to a real one before it is suggested.
SUGGEST_CUTOFF = 0.8
#: Both tools accept -h as well as --help.
CONTEXT = {"help_option_names": ["-h", "--help"]}


#: Standard descriptors (0, 1, 2) that were closed when the process started.
CLOSED_AT_START: frozenset[int] = frozenset()


def _reopen_closed_std_fds() -> frozenset[int]:
    """Point closed standard descriptors at /dev/null. Otherwise the next file or socket takes
    the number (uvloop aborts on such a socket, and output meant for stdout lands in it)."""
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one
    return frozenset(closed)


def run_app(app: typer.Typer, prog: str, *, json_errors: bool = False) -> NoReturn:
    """Run a typer `app` as the process; never returns, never prints a traceback.

    Args:
        app: the command tree.
        prog: the program name for messages (`fluxd`, `fluxctl`).
        json_errors: with `--json` among the arguments, usage errors also print one JSON
            object on stdout (fluxctl's contract with scripts).
    """
    global CLOSED_AT_START  # noqa: PLW0603 - set once, at start, before any command runs
    CLOSED_AT_START = _reopen_closed_std_fds()
    try:
        # standalone_mode=False: click returns a command's typer.Exit code instead of exiting.
        code = app(prog_name=prog, standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # bad arguments or options, a group without a command
        _usage_error(app, prog, exc, json_errors)
    except (typer.Abort, KeyboardInterrupt):
        _reply(prog, "interrupted", EXIT_INTERRUPTED, json_errors)
    except Exception as exc:  # noqa: BLE001 - the one place every failure becomes an exit code
        _unexpected(prog, exc)
    if code == EXIT_INTERRUPTED:  # typer turns a Ctrl-C outside our own handling into this
        _reply(prog, "interrupted", EXIT_INTERRUPTED, json_errors)
    sys.exit(code if isinstance(code, int) else 0)


def decided() -> None:
    """The command's outcome is being reported: a Ctrl-C from now on ends the process by the
    signal, as it would any program that has finished, instead of a second line saying
    `interrupted` after the outcome (the shell still sees 130)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def fail(prog: str, message: str, code: int) -> NoReturn:
    """One line on stderr, then exit with `code`."""
    decided()
    print(f"{prog}: {message}", file=sys.stderr)
    sys.exit(code)


def _unexpected(prog: str, exc: Exception) -> NoReturn:
    # Imported late: only a failing run pays for the protocol package here.
    from fluxproto.errors import FluxError  # noqa: PLC0415

    if isinstance(exc, FluxError):
        fail(prog, exc.message, exc.exit_code)
    if os.environ.get("FLUX_DEBUG"):
        raise exc
    fail(prog, f"internal error: {exc!r} (set FLUX_DEBUG=1 for a traceback)", EXIT_OTHER)


def _usage_error(app: typer.Typer, prog: str, exc: Any, json_errors: bool) -> NoReturn:
    if type(exc).__name__ == "NoArgsIsHelpError":
        sys.exit(EXIT_USAGE)  # a bare `fluxd` or `fluxd token`: typer has shown the help
    where = _command_path(getattr(exc, "ctx", None), prog, app)
    _reply(prog, f"{usage_message(exc)} (see {where} --help)", EXIT_USAGE, json_errors)


def _reply(prog: str, message: str, code: int, json_errors: bool) -> NoReturn:
    """`fail`, plus the one JSON object fluxctl promises with --json."""
    if json_errors and "--json" in sys.argv:
        print(json.dumps({"ok": False, "error": message, "exit_code": code}))
    fail(prog, message, code)


def usage_message(exc: Any) -> str:
    """Click's message, with a suggestion for an unknown option only when it is a close one
    (click offers `--root` for `--frob`)."""
    name = getattr(exc, "option_name", None)
    if type(exc).__name__ != "NoSuchOption" or not name:
        return str(exc.format_message())
    close = difflib.get_close_matches(name, exc.possibilities or (), n=1, cutoff=SUGGEST_CUTOFF)
    if close:
        return f"no such option: {name} (did you mean {close[0]}?)"
    if any(a.startswith(name) and a != name and a[1] != "-" for a in sys.argv[1:]):
        # `-abc` read as the options -a -b -c: most likely a value, such as a token id.
        return f"no such option: {name} (an argument that begins with - goes after --)"
    return f"no such option: {name}"


def _command_path(ctx: Any, prog: str, app: typer.Typer) -> str:
    """`fluxd serve`: the command the error is about (some errors carry no context: then the
    subcommands named at the start of the arguments)."""
    path: Any = getattr(ctx, "command_path", None)
    if path:
        return str(path)
    words, group = [prog], typer.main.get_command(app)
    for arg in sys.argv[1:]:
        sub = getattr(group, "commands", {}).get(arg)
        if sub is None:
            break
        words.append(arg)
        group = sub
    return " ".join(words)
