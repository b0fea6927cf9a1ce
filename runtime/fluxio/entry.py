"""The console scripts' first code: load a command module, with Ctrl-C already handled.

Standard library only: an interrupt while the command module (typer, the protocol) loads is
one line and exit 130, like any other interruption, instead of a traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any


def _on_unraisable(prog: str) -> Callable[[Any], None]:
    """A Ctrl-C that lands where Python cannot raise it (a weakref callback of the import
    machinery, a finalizer) would print "Exception ignored ... KeyboardInterrupt" and be lost,
    and the program would go on as if no key was pressed. End it there as interrupted: one
    line, exit 130 (what is on disk is safe: every transfer resumes after a crash)."""
    default = sys.unraisablehook

    def hook(report: Any) -> None:
        if report.exc_type is not KeyboardInterrupt:
            default(report)
            return
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        os._exit(130)

    return hook


def guarded(prog: str, module: str) -> None:
    """Import `module` and call its `main()`; an interrupt during the import, or one that
    `main` lets out (it lands before main's own handling is in place), ends the process as
    `prog: interrupted`, exit 130."""
    sys.unraisablehook = _on_unraisable(prog)
    try:
        importlib.import_module(module).main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
