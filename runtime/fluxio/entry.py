"""The console scripts' first code: load a command module, with Ctrl-C already handled.

Standard library only: an interrupt while the command module (typer, the protocol) loads is
one line and exit 130, like any other interruption, instead of a traceback.
"""

from __future__ import annotations

import importlib
import sys


def guarded(prog: str, module: str) -> None:
    """Import `module` and call its `main()`; an interrupt during the import ends the process
    as `prog: interrupted`, exit 130."""
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    main()
