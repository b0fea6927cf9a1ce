"""fluxio.cliutil keeps its own copy of the exit codes (the protocol package is too heavy for
fluxctl's start-up): the copies must match the one table in fluxproto.errors."""

from __future__ import annotations

from fluxio import cliutil
from fluxproto import errors


def test_exit_codes_match_the_protocol_packages_table() -> None:
    assert cliutil.EXIT_OTHER == errors.EXIT_OTHER
    assert cliutil.EXIT_USAGE == errors.EXIT_USAGE
    assert cliutil.EXIT_INTERRUPTED == 130
