# `fluxctl completion SHELL`: the shell completion script, from typer's own machinery.
"""The `fluxctl completion` command. typer writes the scripts (the same ones its
`--show-completion` prints for the shell it detects); this command names the shell, so a
script can be generated for another shell, in a package build or a dotfile, without
detection."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

#: The variable the scripts set to ask fluxctl for completions (click's `_PROG_COMPLETE`).
COMPLETE_VAR = "_FLUXCTL_COMPLETE"


class Shell(enum.StrEnum):
    """The shells fluxctl documents completion for."""

    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def completion(
    shell: Annotated[Shell, typer.Argument(help="bash, zsh or fish.", show_default=False)],
) -> None:
    """Print the shell completion script for SHELL, e.g.
    `fluxctl completion bash > ~/.local/share/bash-completion/completions/fluxctl`."""
    # typer's script template (a private module, within the typer range pyproject.toml pins).
    from typer._completion_shared import get_completion_script  # noqa: PLC0415

    typer.echo(get_completion_script(prog_name="fluxctl", complete_var=COMPLETE_VAR, shell=shell))
