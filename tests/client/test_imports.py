"""fluxctl's start-up stays small (issue 11: `fluxctl version` under 100 ms, measured in the
`startup` benchmark): what each path imports is pinned here, so an eager import that comes back
fails a test instead of only a benchmark."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def loaded_after(code: str) -> set[str]:
    """Top-level names of the modules a fresh interpreter holds after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return {name.split(".")[0] for name in json.loads(out)} | set(json.loads(out))


@pytest.mark.parametrize("heavy", ["aioquic", "uvloop", "fluxproto", "rich", "cryptography"])
def test_the_command_module_loads_nothing_heavy(heavy: str) -> None:
    assert heavy not in loaded_after("import fluxctl.cli")


def test_a_tcp_transfer_loads_no_quic_and_no_daemon_storage() -> None:
    loaded = loaded_after("import fluxctl.upload, fluxctl.retry, fluxctl.connect")
    assert "aioquic" not in loaded
    assert "fluxd.storage" not in loaded
    assert "fluxd.auth" not in loaded


def test_the_client_imports_no_daemon_module() -> None:
    """The client builds on fluxproto and fluxio only: installing or loading it never pulls in
    the daemon (its storage, auth, server)."""
    every_path = (
        "import fluxctl.cli, fluxctl.connect, fluxctl.upload, fluxctl.download, fluxctl.ops, "
        "fluxctl.retry, fluxctl.trust, fluxctl.tickets, fluxctl.tokens, fluxctl.demo, "
        "fluxctl.targets, fluxctl.tree, fluxctl.treewalk, fluxctl.excludes, fluxctl.treeplan, "
        "fluxctl.treeactions, fluxctl.treeresult, "
        "fluxio.transports.quic"
    )
    daemon = sorted(m for m in loaded_after(every_path) if m == "fluxd" or m.startswith("fluxd."))
    assert daemon == []
